"""YOLOv3-tiny trained with ``model.fit`` on digit scenes, on this CPU: held-out
mAP@0.5 against training minutes, and the minutes to reach mAP@0.5 >= 0.8.

The network is ``kvision.create("yolov3_tiny", classes=10, width=WIDTH)`` at
``SIZE x SIZE`` input (strides 32 and 16: a 3x3 and a 6x6 grid at 96 px), its 6
anchors from k-means (1 - IoU) on the training boxes. Training scenes come from
``digit_scenes(subset="train", distortion=--distortion)`` (each digit randomly
rotated, sheared and squeezed: the training half holds only 899 source digits, and
without it the detector learns those by heart, 0.99 on training scenes against 0.77
held out); held-out scenes from ``subset="test"`` (digits written by other hands,
undistorted). After every epoch the inference model (decoding, score
threshold ``--score`` on objectness x class, per-class NMS at 0.5) runs on the
held-out scenes and :func:`kvision.metrics.detection.evaluate` gives COCO's mAP@0.5;
evaluation time is not counted as training time. Adam's learning rate follows a half
cosine from ``--learning-rate`` to 0 over the ``--minutes`` budget (by training time,
``--constant-lr`` to keep it fixed). Training stops at ``--minutes`` or once mAP@0.5
reaches ``--stop-at``.

Usage::

    python benchmarks/detection_train.py --minutes 18 --train 8000 --distortion 0.5
    python benchmarks/detection_train.py --smoke        # a two-minute check

Writes ``curve.json``, ``curve.png`` (mAP@0.5 against minutes),
``detections.png`` (held-out scenes with their detections) and the trained inference
model ``detector.keras`` with ``class_names.txt`` (for ``kvision predict`` and
``kvision export``) under ``--out``.
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
from kvision.models.detection import yolo  # noqa: E402
from kvision.ops import boxes as box_ops  # noqa: E402
from kvision.saving import save_model  # noqa: E402
from _budget import CosineOverTime  # noqa: E402  (benchmarks/_budget.py)

CLASSES = 10


class HeldOutMap(keras.callbacks.Callback):
    """After each epoch: held-out mAP@0.5 against training minutes; stops at a
    time budget or at the target mAP."""

    def __init__(self, detector, scenes, minutes, stop_at, curve):
        super().__init__()
        self.detector, self.scenes = detector, scenes
        self.budget, self.stop_at, self.curve = minutes * 60, stop_at, curve
        self.spent = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.spent += time.perf_counter() - self.start
        found = [self.detector(self.scenes.images[i:i + 64].astype("float32"))
                 for i in range(0, len(self.scenes), 64)]
        result = evaluate(self.scenes.ground_truth(), found, num_classes=CLASSES)
        minutes = self.spent / 60
        self.curve.append({"epoch": epoch + 1, "minutes": round(minutes, 3),
                           "loss": float(logs["loss"]), "map_50": result["map_50"],
                           "map": result["map"]})
        print(f"\n  epoch {epoch + 1}: {minutes:.2f} training minutes, held-out "
              f"mAP@0.5 {result['map_50']:.3f}, mAP@[.5:.95] {result['map']:.3f}",
              flush=True)
        if self.spent >= self.budget or result["map_50"] >= self.stop_at:
            self.model.stop_training = True


def _plot(curve, target, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([p["minutes"] for p in curve], [p["map_50"] for p in curve], marker="o")
    ax.axhline(target, color="gray", linestyle="--", label=f"mAP@0.5 = {target}")
    ax.set(xlabel="training minutes (this CPU)", ylabel="held-out mAP@0.5",
           title="YOLOv3-tiny on digit scenes", ylim=(0, 1))
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _draw(scenes, found, path, count=8):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, count, figsize=(2 * count, 2.3))
    for i, ax in enumerate(axes):
        ax.imshow(scenes.images[i])
        for box, cls, score in zip(found["boxes"][i], found["classes"][i],
                                   found["scores"][i]):
            if cls < 0:
                continue
            x1, y1, x2, y2 = box
            ax.add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False,
                                       color="lime", linewidth=1.2))
            ax.text(x1, y1, f"{cls} {score:.2f}", color="yellow", fontsize=6,
                    va="bottom")
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", type=int, default=8000, help="training scenes")
    parser.add_argument("--test", type=int, default=300, help="held-out scenes")
    parser.add_argument("--size", type=int, default=96, help="input side, pixels")
    parser.add_argument("--distortion", type=float, default=0.5,
                        help="strength of each training digit's random warp (0: none)")
    parser.add_argument("--width", type=float, default=0.5, help="YOLOv3-tiny width")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=2e-3,
                        help="peak rate; it decays to 0 over --minutes (cosine)")
    parser.add_argument("--constant-lr", action="store_true",
                        help="keep --learning-rate constant (no time cosine)")
    parser.add_argument("--epochs", type=int, default=100, help="at most")
    parser.add_argument("--minutes", type=float, default=18.0, help="training budget")
    parser.add_argument("--stop-at", type=float, default=1.01,
                        help="stop once held-out mAP@0.5 reaches this (default: never)")
    parser.add_argument("--target", type=float, default=0.8)
    parser.add_argument("--score", type=float, default=0.1,
                        help="score threshold (low: mAP ranks by score)")
    parser.add_argument("--out", default="runs/detection")
    parser.add_argument("--smoke", action="store_true", help="tiny run, ~2 minutes")
    args = parser.parse_args(argv)
    if args.smoke:
        args.train, args.test, args.epochs, args.minutes = 256, 64, 2, 2.0
    os.makedirs(args.out, exist_ok=True)
    keras.utils.set_random_seed(0)

    train = digit_scenes(args.train, image_size=args.size, subset="train", seed=1,
                         distortion=args.distortion)
    test = digit_scenes(args.test, image_size=args.size, subset="test", seed=2)
    wh = np.concatenate([b[:, 2:] - b[:, :2] for b in train.boxes])
    anchors = box_ops.kmeans_anchors(wh, 6, seed=0)
    model = kvision.create("yolov3_tiny", classes=CLASSES, width=args.width,
                           input_shape=(args.size, args.size, 3), anchors=anchors)
    print(f"YOLOv3-tiny width {args.width} at {args.size}x{args.size}: "
          f"{model.count_params():,} parameters; anchors (w, h) "
          f"{np.round(anchors, 1).tolist()}; {len(train)} training scenes "
          f"({sum(len(b) for b in train.boxes)} digits), {len(test)} held out")
    model.compile(optimizer=keras.optimizers.Adam(args.learning_rate),
                  loss=yolo.losses(model), jit_compile=False)
    data = yolo.training_dataset(train, model, batch_size=args.batch_size)
    detector = yolo.inference_model(model, objectness_threshold=args.score,
                                    score_threshold=args.score)
    curve = []
    budget = HeldOutMap(detector, test, args.minutes, args.stop_at, curve)
    callbacks = [budget] if args.constant_lr else [
        budget, CosineOverTime(args.learning_rate, args.minutes, budget)]
    model.fit(data, epochs=args.epochs, callbacks=callbacks, verbose=1)

    reached = next((p["minutes"] for p in curve if p["map_50"] >= args.target), None)
    best = max(curve, key=lambda p: p["map_50"])
    print("\n| epoch | training minutes | loss | held-out mAP@0.5 | mAP@[.5:.95] |")
    print("|---|---|---|---|---|")
    for p in curve:
        print(f"| {p['epoch']} | {p['minutes']:.2f} | {p['loss']:.2f} | "
              f"{p['map_50']:.3f} | {p['map']:.3f} |")
    print(f"\nbest held-out mAP@0.5 {best['map_50']:.3f} after {best['minutes']:.2f} "
          f"minutes; mAP@0.5 >= {args.target}: "
          + (f"after {reached:.2f} training minutes" if reached is not None
             else "not reached"))
    summary = {"width": args.width, "size": args.size, "params": model.count_params(),
               "distortion": args.distortion,
               "train": len(train), "test": len(test), "batch_size": args.batch_size,
               "anchors": np.round(anchors, 2).tolist(), "curve": curve,
               "minutes_to_target": reached, "target": args.target}
    with open(os.path.join(args.out, "curve.json"), "w") as f:
        json.dump(summary, f, indent=1)
    _plot(curve, args.target, os.path.join(args.out, "curve.png"))
    # The inference model (decoding + NMS in the graph) for `kvision predict` / export,
    # its class names inside (and in class_names.txt, the readable copy).
    save_model(detector, os.path.join(args.out, "detector.keras"),
               class_names=test.class_names)
    with open(os.path.join(args.out, "class_names.txt"), "w") as f:
        f.write("\n".join(test.class_names) + "\n")
    found = detector(test.images[:8].astype("float32"))
    _draw(test, {k: np.asarray(v) for k, v in found.items()},
          os.path.join(args.out, "detections.png"))
    print(f"wrote {args.out}/curve.json, curve.png, detections.png, detector.keras")


if __name__ == "__main__":
    main()
