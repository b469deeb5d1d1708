"""Segmentation on digit scenes, trained on this CPU: mIoU against minutes, instance AP.

Three measurements, each from one run:

1. U-Net (``filters`` wide, "same" padding) and DeepLab v3+ (a small backbone) trained
   on ``digit_scenes`` (11 classes: background + 10 digits) for a budget of minutes;
   after every epoch the held-out mIoU (scenes of unseen handwriting,
   ``subset="test"``) is measured with :func:`kvision.metrics.segmentation.mean_iou`,
   giving mIoU against training minutes (a PNG curve and a table).
2. The two-network instance method (:mod:`kvision.models.segmentation.instance`) on
   scenes where same-class digits touch (``touching=1.0``): mask AP
   (``kvision.metrics.detection.evaluate(iou_type="segm")``, COCO's definition) on
   held-out touching scenes, with the separation network and without it (the class
   map's connected components alone), and with oracle maps (the method's ceiling).
3. Overlays (PNG) of the held-out predictions.
4. Each trained semantic network (and the instance method's semantic U-Net) exported
   to TFLite, float32 and int8 (calibrated on 200 training scenes), and its per-pixel
   argmax agreement with Keras on the held-out scenes (the bar the exporter holds:
   99.5% / 97%); the Keras model is saved as ``<name>.keras``.

Usage::

    python benchmarks/segmentation_train.py --minutes 15 --out runs/segmentation
    python benchmarks/segmentation_train.py --models --instance-minutes 25 --cosine
    python benchmarks/segmentation_train.py --smoke          # a one-minute check
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import kvision  # noqa: E402
from kvision.data.synthetic import digit_scenes  # noqa: E402
from kvision.layers import InstanceLabeling  # noqa: E402
from kvision.metrics import detection as det_metrics  # noqa: E402
from kvision.metrics import segmentation as seg_metrics  # noqa: E402
from kvision.models.segmentation import instance  # noqa: E402
from kvision.saving import save_model  # noqa: E402
from kvision.visualization import masks as overlays  # noqa: E402
from _budget import CosineOverTime  # noqa: E402  (benchmarks/_budget.py)

CLASSES = 11  # background + digits 0..9


class TimeBudget(keras.callbacks.Callback):
    """Stop training once ``minutes`` have passed; record (minutes, held-out mIoU)."""

    def __init__(self, minutes, images, labels, curve):
        super().__init__()
        self.seconds, self.images, self.labels, self.curve = minutes * 60, images, labels, curve
        self.spent = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.spent += time.perf_counter() - self.start  # evaluation time not counted
        outputs = self.model.predict(self.images, batch_size=32, verbose=0)
        probs = outputs["semantic"] if isinstance(outputs, dict) else outputs
        miou = seg_metrics.mean_iou(self.labels, probs, CLASSES)
        self.curve.append((self.spent / 60, miou))
        print(f"  epoch {epoch + 1}: {self.spent / 60:.2f} min, held-out mIoU {miou:.4f}",
              flush=True)
        if self.spent >= self.seconds:
            self.model.stop_training = True


def scenes(args, count, subset, seed, touching=0.0):
    return digit_scenes(count, image_size=args.size, objects=(2, 4), touching=touching,
                        subset=subset, seed=seed)


def callbacks(args, name, test, curve):
    """The time budget (held-out mIoU after each epoch) and, with ``--cosine``, the
    learning rate's half cosine over that budget."""
    timer = TimeBudget(budget(args, name), test.images.astype("float32"), test.semantic,
                       curve)
    return [timer, CosineOverTime(args.lr, budget(args, name), timer)] if args.cosine \
        else [timer]


def budget(args, name):
    """Training minutes of ``name``: its own flag, else ``--minutes``."""
    own = getattr(args, f"{name}_minutes", None)
    return args.minutes if own is None else own


def set_bn_momentum(model, momentum):
    """BatchNorm momentum of every layer, nested models included (keras.applications'
    MobileNetV2 uses 0.999: its moving statistics lag a short run by ~1,000 steps)."""
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            set_bn_momentum(layer, momentum)
        elif isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = momentum


def train_semantic(name, model, train, test, args, curve):
    if args.bn_momentum is not None:
        set_bn_momentum(model, args.bn_momentum)
    model.compile(optimizer=keras.optimizers.Adam(args.lr),
                  loss=keras.losses.SparseCategoricalCrossentropy(),
                  metrics=[seg_metrics.MeanIoU(CLASSES)], jit_compile=False)
    print(f"{name}: {model.count_params():,} parameters", flush=True)
    model.fit(train.images.astype("float32"), train.semantic, batch_size=args.batch,
              epochs=1000, verbose=args.verbose, callbacks=callbacks(args, name, test, curve))
    return model


def semantic_benchmark(args, train, test, results):
    builds = {
        "unet": lambda: kvision.create("unet", classes=CLASSES,
                                       input_shape=(args.size, args.size, 3),
                                       filters=args.unet_filters),
        "deeplabv3_plus": lambda: kvision.create(
            "deeplabv3_plus", classes=CLASSES, input_shape=(args.size, args.size, 3),
            backbone=args.deeplab_backbone, filters=args.deeplab_filters,
            output_stride=args.deeplab_output_stride,
            low_level_filters=max(8, args.deeplab_filters // 4),
            backbone_kwargs=json.loads(args.deeplab_backbone_kwargs)),
    }
    for name in args.models:
        keras.utils.set_random_seed(0)
        curve = []
        model = train_semantic(name, builds[name](), train, test, args, curve)
        probs = model.predict(test.images.astype("float32"), batch_size=32, verbose=0)
        report = seg_metrics.evaluate(test.semantic, probs, CLASSES,
                                      class_names=("background", *test.class_names))
        results[name] = {"params": int(model.count_params()), "curve": curve,
                         "mean_iou": report["mean_iou"],
                         "pixel_accuracy": report["pixel_accuracy"],
                         "mean_dice": report["mean_dice"]}
        overlays.save_overlay(os.path.join(args.out, f"{name}_overlay.png"),
                              test.images[0], probs[0],
                              class_names=("background", *test.class_names))
        save_model(model, os.path.join(args.out, f"{name}.keras"),  # names inside
                   class_names=("background", *test.class_names))
        if args.export:
            results[name].update(export_agreement(name, model, train, test, args))


def export_agreement(name, model, train, test, args):
    """Per-pixel argmax agreement of the float32 and int8 TFLite files with Keras on
    the held-out scenes (measured, not refused: the bar is reported next to it)."""
    from kvision.export import tflite

    figures = {}
    for quantize in (None, "int8"):
        fmt = quantize or "float32"
        result = tflite(model, os.path.join(args.out, f"{name}_{fmt}.tflite"),
                        quantize=quantize,
                        representative_data=train.images[:200].astype("float32"),
                        check_data=test.images.astype("float32"), atol=None,
                        min_top1_agreement=0.0)
        figures[f"tflite_{fmt}_pixel_agreement"] = result.parity["top1_agreement"]
        print(f"{name} TFLite {fmt}: per-pixel agreement "
              f"{result.parity['top1_agreement']:.4f}, {result.size_mb:.2f} MB", flush=True)
    return figures


def instance_benchmark(args, results):
    train = scenes(args, args.train_images, "train", 1, touching=1.0)
    test = scenes(args, args.test_images, "test", 2, touching=1.0)
    targets = instance.training_targets(train.semantic, train.masks,
                                        width=args.separation_width)
    keras.utils.set_random_seed(0)
    model = instance.TwoNetworkInstance(CLASSES, (args.size, args.size, 3), network="unet",
                                        filters=args.unet_filters)
    model.compile(optimizer=keras.optimizers.Adam(args.lr),
                  loss=instance.losses(args.positive_weight), jit_compile=False)
    print(f"two-network instance: {model.count_params():,} parameters", flush=True)
    curve = []
    model.fit(train.images.astype("float32"), targets, batch_size=args.batch, epochs=1000,
              verbose=args.verbose, callbacks=callbacks(args, "instance", test, curve))
    truth = [{"boxes": b, "classes": c, "masks": m} for b, c, m in
             zip(test.boxes, test.classes, test.masks)]
    row = {"minutes": curve[-1][0], "semantic_miou": curve[-1][1]}
    for key, use in (("mask_ap", True), ("mask_ap_without_separation", False)):
        found = instance.predict_instances(model, test.images, score_threshold=0.0,
                                           use_separation=use,
                                           separation_threshold=args.separation_threshold,
                                           grow=args.grow)
        row[key] = det_metrics.evaluate(truth, found, iou_type="segm", num_classes=10)
        if use:
            overlays.save_overlay(os.path.join(args.out, "instances_overlay.png"),
                                  test.images[0], instances=found[0],
                                  class_names=test.class_names)
    row["mask_ap_oracle_maps"] = det_metrics.evaluate(
        truth, oracle_instances(test, args.separation_width), iou_type="segm",
        num_classes=10)
    row["objects"] = int(sum(len(c) for c in test.classes))
    if args.export:  # the semantic network alone is a U-Net from pixels to class maps
        row.update(export_agreement("instance_semantic", model.get_layer("semantic"),
                                    train, test, args))
    results["two_network_instance"] = row


def oracle_instances(test, width):
    """The combination step on the true class and separation maps."""
    probs = np.eye(CLASSES, dtype="float32")[test.semantic]
    targets = instance.training_targets(test.semantic, test.masks, width=width)
    labeling = InstanceLabeling(grow=width + 1, min_area=1)
    return instance.to_instances(labeling(probs, targets["separation"]))


def plot(results, path):
    from kvision.visualization.plots import _pyplot, _save

    plt = _pyplot()
    figure, ax = plt.subplots(figsize=(6, 4))
    for name in ("unet", "deeplabv3_plus"):
        if name in results:
            minutes, miou = zip(*results[name]["curve"])
            ax.plot(minutes, miou, marker="o", markersize=3, label=name)
    ax.axhline(0.8, color="grey", linestyle=":", label="target 0.8")
    ax.set_xlabel("training minutes (this CPU)")
    ax.set_ylabel("held-out mIoU")
    ax.set_ylim(0, 1)
    ax.legend()
    figure.tight_layout()
    _save(figure, path)
    plt.close(figure)


def _minutes_to(curve, target):
    reached = [minutes for minutes, miou in curve if miou >= target]
    return f"{reached[0]:.2f}" if reached else "not reached"


def summary(results):
    lines = ["| model | parameters | minutes | held-out mIoU | pixel acc. | Dice | "
             "minutes to mIoU 0.8 | TFLite float32 / int8 pixel agreement |",
             "|---|---|---|---|---|---|---|---|"]
    for name in ("unet", "deeplabv3_plus"):
        if name in results:
            r = results[name]
            agreement = " / ".join(f"{r[key]:.4f}" for key in (
                "tflite_float32_pixel_agreement", "tflite_int8_pixel_agreement")
                if key in r) or "not exported"
            lines.append(f"| {name} | {r['params']:,} | {r['curve'][-1][0]:.1f} | "
                         f"{r['mean_iou']:.3f} | {r['pixel_accuracy']:.3f} | "
                         f"{r['mean_dice']:.3f} | {_minutes_to(r['curve'], 0.8)} | "
                         f"{agreement} |")
    if "two_network_instance" in results:
        r = results["two_network_instance"]
        lines += ["", f"instances: {r['minutes']:.1f} minutes, semantic held-out mIoU "
                  f"{r['semantic_miou']:.3f}", "",
                  "| instances on touching digits | mask AP | AP50 | AP75 |",
                  "|---|---|---|---|"]
        for key, label in (("mask_ap", "two networks"),
                           ("mask_ap_without_separation", "semantic network alone"),
                           ("mask_ap_oracle_maps", "oracle maps (ceiling)")):
            ap = r[key]
            lines.append(f"| {label} | {ap['map']:.3f} | {ap['map_50']:.3f} | "
                         f"{ap['map_75']:.3f} |")
        if "tflite_int8_pixel_agreement" in r:
            lines += ["", "its semantic U-Net as TFLite, per-pixel agreement: float32 "
                      f"{r['tflite_float32_pixel_agreement']:.4f}, int8 "
                      f"{r['tflite_int8_pixel_agreement']:.4f}"]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=15.0,
                        help="training budget per model (minutes)")
    for name in ("unet", "deeplabv3_plus", "instance"):
        parser.add_argument(f"--{name.replace('_', '-')}-minutes", type=float, default=None,
                            help=f"training budget of {name} (default: --minutes)")
    parser.add_argument("--size", type=int, default=64, help="image side")
    parser.add_argument("--train-images", type=int, default=2000)
    parser.add_argument("--test-images", type=int, default=200)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--unet-filters", type=int, default=16)
    parser.add_argument("--deeplab-backbone", default="mobilenet_v2")
    parser.add_argument("--deeplab-backbone-kwargs", default='{"alpha": 0.35}')
    parser.add_argument("--deeplab-filters", type=int, default=64)
    parser.add_argument("--deeplab-output-stride", type=int, default=8)
    parser.add_argument("--separation-width", type=int, default=1)
    parser.add_argument("--separation-threshold", type=float, default=0.5)
    parser.add_argument("--grow", type=int, default=3,
                        help="rings over which cut pixels are given back to instances")
    parser.add_argument("--positive-weight", type=float, default=None,
                        help="fixed weight of separation pixels (default: balanced)")
    parser.add_argument("--models", nargs="*", default=["unet", "deeplabv3_plus"])
    parser.add_argument("--cosine", action="store_true",
                        help="learning rate on a half cosine over each budget (default: "
                             "constant)")
    parser.add_argument("--bn-momentum", type=float, default=0.99,
                        help="BatchNorm momentum of the semantic networks "
                             "(U-Net's own is 0.99)")
    parser.add_argument("--no-instance", action="store_true")
    parser.add_argument("--no-export", dest="export", action="store_false",
                        help="skip the TFLite exports of the semantic networks")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny sets and budgets: check that everything runs")
    parser.add_argument("--verbose", type=int, default=2)
    parser.add_argument("--out", default="runs/segmentation")
    args = parser.parse_args(argv)
    if args.smoke:
        args.minutes, args.train_images, args.test_images = 0.1, 64, 16
        args.unet_minutes = args.deeplabv3_plus_minutes = args.instance_minutes = None
    os.makedirs(args.out, exist_ok=True)
    results = {"settings": vars(args)}
    if args.models:
        train = scenes(args, args.train_images, "train", 1)
        test = scenes(args, args.test_images, "test", 2)
        semantic_benchmark(args, train, test, results)
    if not args.no_instance:
        instance_benchmark(args, results)
    plot(results, os.path.join(args.out, "miou_vs_minutes.png"))
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=1, default=float)
    print(summary(results))
    return results


if __name__ == "__main__":
    main()
