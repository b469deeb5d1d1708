"""Stacked hourglasses trained on the figures, on this CPU: held-out PCK@0.2 and
PCKh@0.5 against training minutes for 1 stack and 2 stacks under the same budget
(does intermediate supervision pay here?), then flip testing on and off for each.

Each network is ``kvision.create("stacked_hourglass", stacks=S, features=--features)``
at ``--size`` pixels, trained with ``model.fit`` on ``--train`` figures
(:func:`kvision.data.figures.figures`, subset "train") with Adam (``--optimizer
rmsprop --lr 2.5e-4``: the paper's RMSprop) on a half cosine over
``--minutes`` of training time; after every epoch the flip-averaged inference model is
measured on ``--test`` held-out figures (subset "test": other colours and poses) by
the pose task's own evaluation (:func:`kvision.tasks.pose.evaluate`); evaluation time
is not counted. At the end each model is measured with flip averaging and without it
on the same held-out figures, side by side.

Usage::

    python benchmarks/pose_train.py --minutes 12
    python benchmarks/pose_train.py --smoke          # a two-minute check

Writes ``results.json`` and ``pck_vs_minutes.png`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402

import kvision  # noqa: E402
from kvision.data.figures import figures  # noqa: E402
from kvision.models.pose import hourglass  # noqa: E402
from kvision.predict import Trained  # noqa: E402
from kvision.tasks import pose  # noqa: E402
from _budget import CosineOverTime  # noqa: E402  (benchmarks/_budget.py)


OPTIMIZERS = {"adam": keras.optimizers.Adam, "rmsprop": keras.optimizers.RMSprop}


class HeldOutPCK(keras.callbacks.Callback):
    """After each epoch: held-out PCK of the flip-averaged model against training
    minutes; stops at the time budget."""

    def __init__(self, trained, held_out, minutes, curve):
        super().__init__()
        self.trained, self.held_out, self.curve = trained, held_out, curve
        self.budget, self.spent = minutes * 60, 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.spent += time.perf_counter() - self.start
        figures_ = pose.evaluate(self.trained, self.held_out).figures
        self.curve.append({"epoch": epoch + 1, "minutes": round(self.spent / 60, 3),
                           "pck": figures_["pck"], "pckh": figures_.get("pckh")})
        print(f"  epoch {epoch + 1}: {self.spent / 60:.2f} min, held-out PCK@0.2 "
              f"{figures_['pck']:.3f}", flush=True)
        if self.spent >= self.budget:
            self.model.stop_training = True


def train(stacks, args, data, held_out):
    keras.utils.set_random_seed(0)
    model = kvision.create("stacked_hourglass", stacks=stacks, features=args.features,
                           input_shape=(args.size, args.size, 3))
    optimizer = OPTIMIZERS[args.optimizer](args.lr)
    model.compile(optimizer=optimizer, loss=hourglass.losses(model))
    names = held_out.class_names
    flipped = Trained(hourglass.inference_model(model, flip=True), names, "flip")
    plain = Trained(hourglass.inference_model(model, flip=False), names, "no flip")
    curve = []
    budget = HeldOutPCK(flipped, held_out, args.minutes, curve)
    model.fit(hourglass.training_dataset(data, model, batch_size=args.batch_size),
              epochs=1000, verbose=0,
              callbacks=[budget, CosineOverTime(args.lr, args.minutes, budget)])
    with_flip = pose.evaluate(flipped, held_out).figures
    without = pose.evaluate(plain, held_out).figures
    return {"stacks": stacks, "params": int(model.count_params()), "curve": curve,
            "pck_flip": with_flip["pck"], "pck_no_flip": without["pck"],
            "pckh_flip": with_flip.get("pckh"), "pckh_no_flip": without.get("pckh")}


def plot(rows, path):
    from kvision.visualization.plots import _pyplot, _save

    plt = _pyplot()
    figure, ax = plt.subplots(figsize=(6, 4))
    for row in rows:
        ax.plot([p["minutes"] for p in row["curve"]], [p["pck"] for p in row["curve"]],
                marker="o", markersize=3, label=f"{row['stacks']} stack(s)")
    ax.axhline(0.9, color="grey", linestyle=":", label="PCK@0.2 = 0.9")
    ax.set(xlabel="training minutes (this CPU)", ylabel="held-out PCK@0.2", ylim=(0, 1))
    ax.legend(loc="lower right")
    figure.tight_layout()
    _save(figure, path)
    plt.close(figure)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=12.0,
                        help="training budget of each network")
    parser.add_argument("--train", type=int, default=4000, help="training figures")
    parser.add_argument("--test", type=int, default=200, help="held-out figures")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--features", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--optimizer", choices=sorted(OPTIMIZERS), default="adam",
                        help="rmsprop --lr 2.5e-4 is the paper's recipe")
    parser.add_argument("--stacks", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--out", default="runs/pose")
    parser.add_argument("--smoke", action="store_true", help="tiny run, ~2 minutes")
    args = parser.parse_args(argv)
    if args.smoke:
        args.train, args.test, args.minutes, args.features = 64, 16, 0.2, 16
    os.makedirs(args.out, exist_ok=True)
    data = figures(args.train, image_size=args.size, subset="train", seed=1).as_dataset()
    held_out = _held_out(args)
    rows = [train(stacks, args, data, held_out) for stacks in args.stacks]
    print("\n| stacks | parameters | minutes | held-out PCK@0.2 (flip) | without flip | "
          "PCKh@0.5 (flip) | without flip | minutes to PCK@0.2 0.9 |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        reached = next((p["minutes"] for p in row["curve"] if p["pck"] >= 0.9), None)
        print(f"| {row['stacks']} | {row['params']:,} | {row['curve'][-1]['minutes']:.1f} | "
              f"{row['pck_flip']:.3f} | {row['pck_no_flip']:.3f} | "
              f"{_shown(row['pckh_flip'])} | {_shown(row['pckh_no_flip'])} | "
              f"{'not reached' if reached is None else f'{reached:.2f}'} |")
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"settings": vars(args), "rows": rows}, f, indent=1)
    plot(rows, os.path.join(args.out, "pck_vs_minutes.png"))
    print(f"wrote {args.out}/results.json, pck_vs_minutes.png")
    return rows


def _held_out(args):
    from kvision.tasks.detection import _Shape

    return pose.load_data(pose.FIGURES, _Shape((args.size, args.size), 3), seed=0,
                          max_images=args.test)


def _shown(value):
    return "-" if value is None else f"{value:.3f}"


if __name__ == "__main__":
    main()
