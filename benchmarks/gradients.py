"""Why deep plain networks stop learning and residual ones do not, on the digits.

Two networks of the same depth and the same parameters: a stem convolution, 28
3x3 convolutions of ``--width`` channels and a Dense classifier (30 layers with
weights), ReLU, Keras' default (Glorot uniform) initialisation and no BatchNorm. The
*plain* one stacks the 28 convolutions; the *residual* one pairs them into 14 blocks
``x + conv(relu(conv(x)))`` (He et al., 2016). Both are trained on the embedded digits
(1,347 training, 450 held-out images, 8x8, pixels / 255) with the same optimizer,
batches, epochs and seed. :class:`kvision.callbacks.GradientNorms` records each
layer's gradient norm on 256 held training images before the first step and after
every epoch.

Prints the per-layer gradient norms at the start, the held-out accuracy after each
epoch, the step from which the first layer's gradient is exactly zero (the plain
network's ReLUs all die) and the seconds taken, and writes ``--out`` (a PNG: the norms against depth at
the start, the accuracy curves side by side) and ``--out`` with ``_norms.png`` (every
layer's norm over training, both networks).

    python benchmarks/gradients.py [--epochs 15] [--optimizer adam] [--seeds 0 1 2]
"""

import argparse
import os
import time

import keras
import numpy as np

from kvision.callbacks import GradientNorms, plot_gradient_norms
from kvision.data.digits import load_digits
from kvision.visualization.plots import _pyplot, _save

OPTIMIZERS = {"sgd": lambda rate: keras.optimizers.SGD(rate, momentum=0.9),
              "adam": keras.optimizers.Adam}


def network(residual, width=16, blocks=14, name=None):
    """Stem conv, ``2 * blocks`` 3x3 convs (paired with identity shortcuts if
    ``residual``), global average pooling, Dense 10: ``2 * blocks + 2`` layers."""
    inputs = keras.Input((8, 8, 1), name="images")
    x = keras.layers.Conv2D(width, 3, padding="same", activation="relu", name="conv0")(inputs)
    for b in range(blocks):
        y = keras.layers.Conv2D(width, 3, padding="same", activation="relu",
                                name=f"conv{2 * b + 1}")(x)
        y = keras.layers.Conv2D(width, 3, padding="same", name=f"conv{2 * b + 2}")(y)
        if residual:
            y = keras.layers.Add(name=f"add{b + 1}")([x, y])
        x = keras.layers.ReLU(name=f"relu{b + 1}")(y)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(10, activation="softmax", name="classifier")(x)
    return keras.Model(inputs, outputs, name=name or ("residual" if residual else "plain"))


class HeldOutAccuracy(keras.callbacks.Callback):
    """Held-out accuracy after every epoch (and before the first)."""

    def __init__(self, x, y):
        super().__init__()
        self.x, self.y, self.accuracy = x, y, []

    def _measure(self):
        predicted = self.model.predict(self.x, batch_size=450, verbose=0).argmax(-1)
        self.accuracy.append(float(np.mean(predicted == self.y)))

    def on_train_begin(self, logs=None):
        self._measure()

    def on_epoch_end(self, epoch, logs=None):
        self._measure()


def train(residual, data, args, seed):
    (x, y), (x_test, y_test) = data
    keras.utils.set_random_seed(seed)
    model = network(residual, args.width)
    model.compile(optimizer=OPTIMIZERS[args.optimizer](args.lr),
                  loss="sparse_categorical_crossentropy")
    per_epoch = -(-len(x) // args.batch_size)
    norms = GradientNorms((x[:256], y[:256]), every=per_epoch)
    accuracy = HeldOutAccuracy(x_test, y_test)
    start = time.perf_counter()
    model.fit(x, y, batch_size=args.batch_size, epochs=args.epochs, verbose=0,
              callbacks=[norms, accuracy])
    return model, norms, accuracy.accuracy, time.perf_counter() - start


def dead_from(norms):
    """The first recorded step from which the first layer's gradient stays exactly
    0 (every ReLU path to the output off: the network can no longer learn), or None."""
    first = list(norms.norms.values())[0]
    for k in range(len(first)):
        if all(v == 0 for v in first[k:]):
            return norms.steps[k]
    return None


def table(runs):
    """The start's per-layer norms, every 5th layer, as Markdown."""
    names = list(runs["plain"][1].norms)
    shown = [i for i in range(len(names)) if i % 5 == 0 or i == len(names) - 1]
    lines = ["| layer | " + " | ".join(runs) + " |", "|---|" + "---|" * len(runs)]
    for i in shown:
        cells = [f"{run[1].norms[names[i]][0]:.2e}" for run in runs.values()]
        lines.append(f"| {i + 1} `{names[i]}` | " + " | ".join(cells) + " |")
    ratio = [run[1].norms[names[0]][0] / run[1].norms[names[-2]][0] for run in runs.values()]
    lines.append("| layer 1 / layer 29 | " + " | ".join(f"{r:.1e}" for r in ratio) + " |")
    return "\n".join(lines)


def figure(runs, curves, path, title):
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8))
    for (label, run), colour in zip(runs.items(), ("tab:red", "tab:blue")):
        values = [v[0] for v in run[1].norms.values()]
        left.plot(range(1, len(values) + 1), values, marker="o", markersize=3,
                  color=colour, label=label)
        for k, acc in enumerate(curves[label]):
            right.plot(range(len(acc)), acc, color=colour, alpha=1.0 if k == 0 else 0.4,
                       label=label if k == 0 else None)
    left.set_yscale("log")
    left.set_xlabel("layer (1 = nearest the input)")
    left.set_ylabel("gradient L2 norm before training")
    right.set_xlabel("epoch")
    right.set_ylabel("held-out accuracy")
    right.set_ylim(0, 1)
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    try:
        return _save(fig, path)
    finally:
        plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--optimizer", choices=sorted(OPTIMIZERS), default="adam")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default="docs/figures/gradients_plain_residual.png")
    args = parser.parse_args(argv)
    (x, y), (x_test, y_test) = load_digits(image_size=8)
    data = (x / 255.0, y), (x_test / 255.0, y_test)
    runs, curves, seconds = {}, {"plain": [], "residual": []}, {"plain": [], "residual": []}
    dead = {"plain": [], "residual": []}
    for seed in args.seeds:
        for label in ("plain", "residual"):
            run = train(label == "residual", data, args, seed)
            curves[label].append(run[2])
            seconds[label].append(run[3])
            runs.setdefault(label, run)  # the first seed's norms are shown
            dead[label].append(dead_from(run[1]))
            print(f"seed {seed} {label:8s} held-out accuracy by epoch: "
                  f"{' '.join(f'{a:.3f}' for a in run[2])}  ({run[3]:.1f} s)", flush=True)
    print(f"\n{args.optimizer} lr {args.lr}, batch {args.batch_size}, {args.epochs} epochs, "
          f"width {args.width}; {runs['plain'][0].count_params():,} parameters each\n")
    print(table(runs))
    print("\n| network | final held-out accuracy (seeds " +
          ", ".join(map(str, args.seeds)) + ") | first layer's gradient exactly 0 from "
          "step | s per run |\n|---|---|---|---|")
    for label in curves:
        finals = ", ".join(f"{c[-1]:.3f}" for c in curves[label])
        died = ", ".join("never" if d is None else str(d) for d in dead[label])
        print(f"| {label} | {finals} | {died} | {np.mean(seconds[label]):.1f} |")
    title = (f"30 layers, digits, {args.optimizer} lr {args.lr}, {args.epochs} epochs "
             f"(seed {args.seeds[0]} solid)")
    print("\nwrote", figure(runs, curves, args.out, title))
    stem, _ = os.path.splitext(args.out)
    for label, run in runs.items():
        print("wrote", plot_gradient_norms(run[1], f"{stem}_{label}_norms.png",
                                           title=f"{label}: per-layer gradient norms"))


if __name__ == "__main__":
    main()
