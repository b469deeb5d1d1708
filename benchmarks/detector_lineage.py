"""The detection lineage measured side by side: R-CNN, Fast R-CNN, Faster R-CNN, Mask
R-CNN, YOLOv3-tiny and OverFeat trained on the same digit scenes with the same CPU
budget, then measured on the same held-out scenes.

Budget: CPU seconds of this process (``time.process_time()``: every thread, the
tf.data workers and OpenCV's selective search included), not wall time, so other
work sharing the machine does not shrink a detector's share. A Keras callback
(:class:`CPUBudget`) stops ``fit`` once the budget is spent and moves Adam's
learning rate on a half cosine over it; held-out evaluations in between are not
counted. What each detector needs before its training loop is counted too where it is
part of its training: selective search on its training scenes (R-CNN, Fast R-CNN),
the warped crops (R-CNN), the windows cut (OverFeat). R-CNN's fine-tuning gets what
is left of the budget after its proposals and crops, less a reserve for its SVMs and
regressors; the CPU it spent in all is printed (it may pass the budget by that
reserve's error).

Data: ``digit_scenes(--train, 96 px, subset="train", seed=1, distortion=0.5)`` for
training (R-CNN: its first ``--rcnn-train``: every proposal becomes a stored crop),
``digit_scenes(--test, subset="test", seed=2)`` held out (other hands). Bodies: the
four two-stage detectors share VGG-11 from random weights (the paper's family; no
BatchNorm, see the README for why), YOLOv3-tiny has its own width-0.5 body, OverFeat
a LeNet-5 window classifier (32 px windows, stride 4) slid at scales 1 and 1.5.

Figures: held-out mAP@0.5 and mAP@[.5:.95] by :func:`kvision.metrics.detection.
evaluate` (COCO's rules, equal to pycocotools), mask AP (``iou_type="segm"``) for
Mask R-CNN, and inference images per second (wall clock, batches of 8 after one
warm-up batch, proposals included where the detector needs selective search) with
images per CPU-second beside it (the CPU is shared: the wall figure is a lower
bound).

Usage (the README's figures: parts in separate processes, then merged)::

    python benchmarks/detector_lineage.py --constant-lr --minutes 3 --only rcnn fast_rcnn --out p2
    python benchmarks/detector_lineage.py --constant-lr --minutes 3 --only faster_rcnn \
        --faster-minutes 30 --eval-every 1.5 --stop-at 0.8 --out p1   # on to 0.8
    python benchmarks/detector_lineage.py --table p*/lineage.json
    python benchmarks/detector_lineage.py --smoke                # seconds each

Writes ``lineage.json`` (and per detector its curve) under ``--out``.
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
from kvision.metrics.detection import evaluate  # noqa: E402

CLASSES = 10
SIZE = 96
DETECTORS = ("rcnn", "fast_rcnn", "faster_rcnn", "mask_rcnn", "yolov3_tiny", "overfeat")
# The measured Faster R-CNN run's settings (README), shared by the two-stage family.
TWO_STAGE = {"backbone": "vgg11", "fpn_channels": 64, "representation": 256,
             "sampling": {"box_batch_size_per_image": 64},
             "rpn_pre_nms_top_n": (600, 300), "rpn_post_nms_top_n": (300, 100)}
SVM_RESERVE = 0.15  # of R-CNN's budget kept for its SVMs and regressors


class CPUBudget(keras.callbacks.Callback):
    """Stops ``fit`` once ``seconds`` of process CPU time are spent in training
    (``time.process_time()``, evaluations excluded); optionally a half-cosine
    learning rate from ``base_lr`` to 0 over the budget, and every ``every`` CPU
    seconds ``measure()`` -> mAP@0.5 (recorded in ``curve``; stops at ``stop_at``)."""

    def __init__(self, seconds, *, base_lr=None, measure=None, every=None,
                 stop_at=None, spent=0.0, report_every=60.0, checkpoint=None,
                 at_checkpoint=None):
        super().__init__()
        self.seconds, self.base_lr, self.measure = seconds, base_lr, measure
        self.checkpoint, self.at_checkpoint = checkpoint, at_checkpoint
        self.every, self.stop_at, self.spent = every, stop_at, spent
        self.report_every, self.curve = report_every, []
        self.next_eval = every or float("inf")
        self.next_report = report_every

    def on_train_begin(self, logs=None):
        self.mark = time.process_time()

    def on_train_batch_begin(self, batch, logs=None):
        if self.base_lr is not None:
            fraction = min(self.spent / self.seconds, 1.0)
            self.model.optimizer.learning_rate.assign(
                self.base_lr * 0.5 * (1.0 + np.cos(np.pi * fraction)))

    def on_train_batch_end(self, batch, logs=None):
        now = time.process_time()
        self.spent += now - self.mark
        if self.spent >= self.next_report:
            self.next_report += self.report_every
            print(f"    {self.spent / 60:.1f} CPU-min, loss {float(logs['loss']):.3f}",
                  flush=True)
        if self.checkpoint is not None and self.spent >= self.checkpoint:
            self.checkpoint = None
            self.at_checkpoint(self.spent)
        if self.measure is not None and self.spent >= self.next_eval:
            self.next_eval += self.every
            figure = self.measure()
            self.curve.append({"cpu_minutes": round(self.spent / 60, 3),
                               "map_50": figure})
            print(f"    held-out mAP@0.5 {figure:.3f} after {self.spent / 60:.2f} "
                  f"CPU-min", flush=True)
            if self.stop_at is not None and figure >= self.stop_at \
                    and self.checkpoint is None:  # the budget's row is taken first
                self.model.stop_training = True
        if self.spent >= self.seconds:
            self.model.stop_training = True
        self.mark = time.process_time()  # an evaluation above is not counted


def _fit(model, data, budget):
    """``model.fit`` on ``data`` repeated until ``budget`` stops it."""
    model.fit(data.repeat(), epochs=1, steps_per_epoch=10**7, verbose=0,
              callbacks=[budget])
    return budget.spent


def _unpadded(out):
    out = {k: np.asarray(v) for k, v in out.items()}
    return [{"boxes": out["boxes"][i][:n], "scores": out["scores"][i][:n],
             "classes": out["classes"][i][:n]}
            for i, n in enumerate(out["num_detections"].astype(int))]


def _timed(run, images, batch=8):
    """Every image through ``run(batch) -> detector dict`` in batches of ``batch``,
    one warm-up batch first: ``(detections per image, images/s wall, images per
    CPU-second)``."""
    run(images[:batch])
    found, wall, cpu = [], time.perf_counter(), time.process_time()
    for start in range(0, len(images), batch):
        found += _unpadded(run(images[start:start + batch]))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return found, len(images) / wall, len(images) / cpu


def _truth(scenes, masks=False):
    return [{"boxes": b, "classes": c, **({"masks": m} if masks else {})}
            for b, c, m in zip(scenes.boxes, scenes.classes, scenes.masks)]


def _box_map(found, test):
    return evaluate(_truth(test), found, num_classes=CLASSES)


def _rpn_family(name, train, test, args, measure_every=None):
    from kvision.models.detection import mask_rcnn, rcnn

    module = mask_rcnn if name == "mask_rcnn" else rcnn
    wh = np.concatenate([b[:, 2:] - b[:, :2] for b in train.boxes])
    extra = {"mask_channels": 64} if name == "mask_rcnn" else {}
    model = kvision.create(name, classes=CLASSES, input_shape=(SIZE, SIZE, 3),
                           **TWO_STAGE, **extra, **rcnn.data_arguments(name, wh))
    model.compile(optimizer=keras.optimizers.Adam(args.learning_rate))
    data = module.training_dataset(train, model, batch_size=8, seed=0)
    detector = module.inference_model(model, score_threshold=0.05)
    images = test.images.astype("float32")

    def measure():
        out = detector.predict(images, batch_size=8, verbose=0)
        return _box_map(_unpadded(out), test)["map_50"]

    at_budget = {}

    def checkpoint(spent):  # the lineage's row: the figures at the common budget
        out = detector.predict(images, batch_size=8, verbose=0)
        at_budget.update(cpu_minutes=spent / 60, **_figures(_box_map(_unpadded(out), test)))
        print(f"    at the budget ({spent / 60:.2f} CPU-min): mAP@0.5 "
              f"{at_budget['map_50']:.3f}, mAP@[.5:.95] {at_budget['map']:.3f}", flush=True)

    longer = name == "faster_rcnn" and args.faster_minutes > args.minutes
    budget = CPUBudget((args.faster_minutes if longer else args.minutes) * 60,
                       base_lr=None if args.constant_lr or longer else args.learning_rate,
                       measure=measure if measure_every else None,
                       every=measure_every and measure_every * 60, stop_at=args.stop_at,
                       checkpoint=args.minutes * 60 if longer else None,
                       at_checkpoint=checkpoint)
    spent = _fit(model, data, budget)
    found, speed, per_cpu = _timed(lambda x: detector(x), images)
    result = {"cpu_minutes": spent / 60, "curve": budget.curve, "images_per_s": speed,
              "images_per_cpu_s": per_cpu, **_figures(_box_map(found, test))}
    if longer:  # trained on past the budget: the row is the budget's checkpoint
        result.update(trained_on={k: result[k] for k in ("cpu_minutes", "map_50", "map")},
                      **at_budget)
    if name == "mask_rcnn":
        from kvision.models.segmentation import instance

        masks = instance.predict_instances(detector, images, batch_size=8)
        segm = evaluate(_truth(test, masks=True), masks, iou_type="segm",
                        num_classes=CLASSES)
        result.update(mask_map_50=segm["map_50"], mask_map=segm["map"])
    result["params"] = model.count_params()
    return result


def _figures(figures):
    return {"map_50": figures["map_50"], "map": figures["map"]}


def _proposals_of(images, limit):
    from kvision.data.proposals import selective_search

    return [selective_search(image.astype("uint8"), "fast", limit) for image in images]


def _fast_rcnn(train, test, args):
    from kvision.models.detection import fast_rcnn

    start = time.process_time()
    proposals = _proposals_of(train.images, args.max_proposals)
    search = time.process_time() - start
    print(f"    selective search on {len(train)} training scenes: {search / 60:.2f} "
          f"CPU-min", flush=True)
    model = kvision.create("fast_rcnn", classes=CLASSES, input_shape=(SIZE, SIZE, 3),
                           backbone=TWO_STAGE["backbone"],
                           representation=TWO_STAGE["representation"],
                           max_proposals=args.max_proposals)
    model.compile(optimizer=keras.optimizers.Adam(args.learning_rate))
    data = fast_rcnn.training_dataset(train, model, proposals=proposals, batch_size=8,
                                      seed=0)
    budget = CPUBudget(args.minutes * 60, spent=search,
                       base_lr=None if args.constant_lr else args.learning_rate)
    spent = _fit(model, data, budget)
    detector = fast_rcnn.inference_model(model, score_threshold=0.05)

    def run(images):  # selective search is part of inference
        boxes = fast_rcnn.pad_proposals(_proposals_of(images, args.max_proposals),
                                        args.max_proposals)
        return detector([images, boxes])

    found, speed, per_cpu = _timed(run, test.images.astype("float32"))
    return {"cpu_minutes": spent / 60, "images_per_s": speed, "images_per_cpu_s": per_cpu,
            "params": model.count_params(), **_figures(_box_map(found, test))}


class _SinceStart(CPUBudget):
    """:class:`CPUBudget` whose count starts at ``origin`` (a ``process_time``), so
    that what R-CNN spent before fine-tuning (proposals, crops) is counted."""

    def __init__(self, seconds, origin, **kwargs):
        super().__init__(seconds, **kwargs)
        self.origin = origin

    def on_train_begin(self, logs=None):
        self.spent = time.process_time() - self.origin
        super().on_train_begin(logs)


def _rcnn(train, test, args):
    from kvision.models.detection import rcnn_classic as rc

    train = train[:args.rcnn_train]
    start = time.process_time()
    model = kvision.create("rcnn", classes=CLASSES, backbone=TWO_STAGE["backbone"],
                           input_shape=(args.crop, args.crop, 3))
    rate = 1e-3
    budget = _SinceStart(args.minutes * 60 * (1 - SVM_RESERVE), start,
                         base_lr=None if args.constant_lr else rate)
    rc.fit(model, train.images.astype("float32"), train.boxes, train.classes,
           epochs=100, context=args.context, C=0.01, seed=0, callbacks=[budget],
           max_proposals=args.max_proposals)
    spent = time.process_time() - start
    print(f"    fine-tuning stopped at {budget.spent / 60:.2f} CPU-min; SVMs and "
          f"regressors done at {spent / 60:.2f}", flush=True)
    images = test.images.astype("float32")
    found, speed, per_cpu = _timed(
        lambda x: rc.detect(model, x, context=args.context,
                            max_proposals=args.max_proposals), images)
    return {"cpu_minutes": spent / 60, "images_per_s": speed, "images_per_cpu_s": per_cpu,
            "train_scenes": len(train), "params": model.count_params(),
            **_figures(_box_map(found, test))}


def _yolo(train, test, args):
    from kvision.models.detection import yolo
    from kvision.ops import boxes as box_ops

    wh = np.concatenate([b[:, 2:] - b[:, :2] for b in train.boxes])
    model = kvision.create("yolov3_tiny", classes=CLASSES, width=0.5,
                           input_shape=(SIZE, SIZE, 3),
                           anchors=box_ops.kmeans_anchors(wh, 6, seed=0))
    rate = 2e-3
    model.compile(optimizer=keras.optimizers.Adam(rate), loss=yolo.losses(model))
    data = yolo.training_dataset(train, model, batch_size=16, seed=0)
    spent = _fit(model, data, CPUBudget(args.minutes * 60,
                                        base_lr=None if args.constant_lr else rate))
    detector = yolo.inference_model(model, objectness_threshold=0.1, score_threshold=0.1)
    found, speed, per_cpu = _timed(lambda x: detector(x), test.images.astype("float32"))
    return {"cpu_minutes": spent / 60, "images_per_s": speed, "images_per_cpu_s": per_cpu,
            "params": model.count_params(), **_figures(_box_map(found, test))}


def _overfeat(train, test, args):
    import tensorflow as tf

    from kvision.models.detection import overfeat

    start = time.process_time()
    windows, targets = overfeat.window_samples(
        train.images.astype("float32"), train.boxes, train.classes, (32, 32),
        num_classes=CLASSES, positives=2, negatives=3, seed=0)
    cut = time.process_time() - start
    model = kvision.create("overfeat", backbone="lenet5", classes=CLASSES,
                           input_shape=(32, 32, 3), units=(256, 128), box_units=(128,),
                           dropout=0.3)
    rate = 1e-3
    model.compile(optimizer=keras.optimizers.Adam(rate), loss=overfeat.losses())
    data = tf.data.Dataset.from_tensor_slices((windows, targets)).shuffle(
        len(windows), seed=0).batch(64)
    spent = _fit(model, data, CPUBudget(args.minutes * 60, spent=cut,
                                        base_lr=None if args.constant_lr else rate))
    detector = overfeat.inference_model(model, image_shape=(SIZE, SIZE, 3),
                                        scales=(1.0, 1.5), score_threshold=0.1)
    found, speed, per_cpu = _timed(lambda x: detector(x), test.images.astype("float32"))
    return {"cpu_minutes": spent / 60, "images_per_s": speed, "images_per_cpu_s": per_cpu,
            "params": model.count_params(), **_figures(_box_map(found, test))}


def run_one(name, train, test, args):
    keras.utils.set_random_seed(0)
    if name in ("faster_rcnn", "mask_rcnn"):
        return _rpn_family(name, train, test, args, measure_every=args.eval_every)
    return {"rcnn": _rcnn, "fast_rcnn": _fast_rcnn, "yolov3_tiny": _yolo,
            "overfeat": _overfeat}[name](train, test, args)


def table(results, minutes):
    lines = [f"| detector | body | training CPU-min (budget {minutes:g}) | held-out "
             f"mAP@0.5 | mAP@[.5:.95] | mask AP@0.5 / @[.5:.95] | images/s (wall) | "
             f"images per CPU-s | parameters |", "|---|---|---|---|---|---|---|---|---|"]
    bodies = {"rcnn": "VGG-11 on warped crops", "fast_rcnn": "VGG-11",
              "faster_rcnn": "VGG-11 + FPN", "mask_rcnn": "VGG-11 + FPN",
              "yolov3_tiny": "tiny Darknet x0.5", "overfeat": "LeNet-5 windows"}
    for name, r in results.items():
        mask = (f"{r['mask_map_50']:.3f} / {r['mask_map']:.3f}" if "mask_map" in r
                else "-")
        lines.append(f"| {name} | {bodies[name]} | {r['cpu_minutes']:.2f} | "
                     f"{r['map_50']:.3f} | {r['map']:.3f} | {mask} | "
                     f"{r['images_per_s']:.1f} | {r['images_per_cpu_s']:.1f} | "
                     f"{r['params']:,} |")
    return "\n".join(lines)


def _print_results(results, minutes):
    print(table(results, minutes))
    for name, r in results.items():
        for point in r.get("curve", []):
            print(f"{name}: held-out mAP@0.5 {point['map_50']:.3f} after "
                  f"{point['cpu_minutes']:.2f} CPU-min")
        if "trained_on" in r:
            t = r["trained_on"]
            print(f"{name} trained on: mAP@0.5 {t['map_50']:.3f}, mAP@[.5:.95] "
                  f"{t['map']:.3f} after {t['cpu_minutes']:.2f} CPU-min")


def _merged(paths):
    """The table of several runs' lineage.json (parts run side by side), in the
    lineage's order."""
    results, minutes = {}, set()
    for path in paths:
        with open(path) as f:
            run = json.load(f)
        results.update(run["results"])
        minutes.add(run["args"]["minutes"])
    if len(minutes) != 1:
        raise SystemExit(f"the runs had different budgets: {sorted(minutes)} CPU-min")
    ordered = {n: results[n] for n in DETECTORS if n in results}
    _print_results(ordered, minutes.pop())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=3.0,
                        help="CPU minutes of training per detector (process CPU time)")
    parser.add_argument("--only", nargs="*", choices=DETECTORS, default=list(DETECTORS))
    parser.add_argument("--train", type=int, default=2000, help="training scenes")
    parser.add_argument("--rcnn-train", type=int, default=600,
                        help="R-CNN's training scenes (the first of --train)")
    parser.add_argument("--test", type=int, default=200, help="held-out scenes")
    parser.add_argument("--learning-rate", type=float, default=1e-3,
                        help="the two-stage detectors' Adam rate")
    parser.add_argument("--constant-lr", action="store_true",
                        help="no cosine over the budget")
    parser.add_argument("--faster-minutes", type=float, default=0.0,
                        help="Faster R-CNN trains on to this many CPU-min (constant rate, "
                             "--stop-at, --eval-every); its row is taken at --minutes")
    parser.add_argument("--table", nargs="*", default=None,
                        help="print the table of these lineage.json files and stop")
    parser.add_argument("--eval-every", type=float, default=None,
                        help="Faster/Mask R-CNN: held-out mAP@0.5 every this many CPU-min")
    parser.add_argument("--stop-at", type=float, default=None,
                        help="with --eval-every: stop once mAP@0.5 reaches this")
    parser.add_argument("--max-proposals", type=int, default=64,
                        help="selective search's boxes kept per scene")
    parser.add_argument("--crop", type=int, default=32, help="R-CNN's warped side")
    parser.add_argument("--context", type=int, default=2, help="R-CNN's context px")
    parser.add_argument("--out", default="runs/lineage")
    parser.add_argument("--smoke", action="store_true", help="tiny run")
    args = parser.parse_args(argv)
    if args.table is not None:
        return _merged(args.table)
    if args.smoke:
        args.train, args.rcnn_train, args.test, args.minutes = 64, 16, 16, 0.2
    os.makedirs(args.out, exist_ok=True)
    train = digit_scenes(args.train, image_size=SIZE, subset="train", seed=1,
                         distortion=0.5)
    test = digit_scenes(args.test, image_size=SIZE, subset="test", seed=2)
    print(f"{len(train)} training scenes, {len(test)} held out, {SIZE}x{SIZE}; "
          f"{args.minutes:g} CPU-minutes of training each (process CPU time)",
          flush=True)
    results = {}
    for name in args.only:
        print(f"{name}:", flush=True)
        wall = time.perf_counter()
        results[name] = run_one(name, train, test, args)
        results[name]["wall_minutes"] = (time.perf_counter() - wall) / 60
        r = results[name]
        print(f"  {name}: mAP@0.5 {r['map_50']:.3f}, mAP@[.5:.95] {r['map']:.3f} after "
              f"{r['cpu_minutes']:.2f} CPU-min ({r['wall_minutes']:.1f} wall-min in all)",
              flush=True)
        with open(os.path.join(args.out, "lineage.json"), "w") as f:
            json.dump({"args": vars(args), "results": results}, f, indent=1)
    print()
    _print_results(results, args.minutes)


if __name__ == "__main__":
    main()
