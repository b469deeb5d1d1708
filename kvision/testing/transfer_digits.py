"""Evidence for transfer learning on real data, offline: digits 0-4 -> digits 5-9.

LeNet-5 is trained on the digits 0-4 of the embedded training split (674 images).
Its knowledge is then moved to a new task, the digits 5-9, with only
``per_class`` labelled images per class, and compared with the same network
trained from scratch on the same images, with the same optimizer, augmentation and
number of epochs. Accuracy is measured on all held-out 5-9 digits (225 images).

The variants (``kvision.transfer.build_classifier`` on the trained network):

- ``transfer``: the convolutional backbone (C1-S4) frozen; the classifier layers
  (C5, F6) start from the 0-4 weights and fine-tune with a new 5-way output
  (``trainable_layers=2``: the last two blocks).
- ``frozen``: everything but the new output frozen (``regime="small-similar"``):
  F6's features were shaped to tell 0-4 apart and are too specific for 5-9.
- ``scratch``: the same LeNet-5, randomly initialized, all of it trained.

``benchmarks/transfer_digits.py`` prints the table; a test asserts the ordering.
"""

from __future__ import annotations

import dataclasses
import time

import keras
import numpy as np

OLD_CLASSES = (0, 1, 2, 3, 4)
NEW_CLASSES = (5, 6, 7, 8, 9)


@dataclasses.dataclass
class Row:
    variant: str
    accuracies: list
    trainable_params: int
    seconds_per_epoch: float

    @property
    def mean(self):
        return float(np.mean(self.accuracies))


def _fit(model, x, y, epochs, batch_size, learning_rate, seed):
    from kvision.data import augment

    steps = epochs * -(-len(x) // batch_size)
    model.compile(optimizer=keras.optimizers.Adam(
        keras.optimizers.schedules.CosineDecay(learning_rate, steps)),
        loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    data = augment.training_dataset(x, y, batch_size,
                                    augment.geometric_augmentation(seed=seed), seed=seed)
    start = time.perf_counter()
    model.fit(data, epochs=epochs, verbose=0, shuffle=False)
    return (time.perf_counter() - start) / epochs


def trainable_params(model) -> int:
    return int(sum(np.prod(v.shape) for v in model.trainable_weights))


def _subset(y, classes, per_class, seed):
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.choice(np.flatnonzero(y == c), per_class, replace=False)
                           for c in classes])


def pretrain(epochs=30, seed=0):
    """LeNet-5 trained on the digits 0-4 (the main job's recipe)."""
    from kvision.data import load_digits
    from kvision.models import create

    (x, y), _ = load_digits()
    old = np.isin(y, OLD_CLASSES)
    keras.utils.set_random_seed(seed)
    model = create("lenet5", classes=len(OLD_CLASSES))
    _fit(model, x[old], y[old], epochs, 32, 3e-3, seed)
    return model


def builders(pretrained):
    """``{variant: () -> new model}`` for the variants of the module docstring."""
    from kvision import transfer
    from kvision.models import create

    return {
        "transfer": lambda: transfer.build_classifier(pretrained, len(NEW_CLASSES),
                                                      weights=None, trainable_layers=2),
        "frozen": lambda: transfer.build_classifier(pretrained, len(NEW_CLASSES),
                                                    weights=None, regime="small-similar"),
        "scratch": lambda: create("lenet5", classes=len(NEW_CLASSES)),
    }


def compare(pretrained, seeds=(0, 1, 2), per_class=20, epochs=30, learning_rate=3e-3,
            variants=("transfer", "frozen", "scratch")):
    """Rows for the ``variants``, one accuracy per seed (a random labelled subset)."""
    from kvision.data import load_digits

    (x, y), (x_test, y_test) = load_digits()
    new_test = np.isin(y_test, NEW_CLASSES)
    x_eval, y_eval = x_test[new_test], y_test[new_test] - NEW_CLASSES[0]
    make = {name: build for name, build in builders(pretrained).items() if name in variants}
    rows = {name: Row(name, [], 0, 0.0) for name in make}
    for seed in seeds:
        chosen = _subset(y, NEW_CLASSES, per_class, seed)
        x_small, y_small = x[chosen], y[chosen] - NEW_CLASSES[0]
        for name, build in make.items():
            keras.utils.set_random_seed(seed)
            model = build()
            seconds = _fit(model, x_small, y_small, epochs, 20, learning_rate, seed)
            predictions = model.predict(x_eval, verbose=0).argmax(-1)
            row = rows[name]
            row.accuracies.append(float(np.mean(predictions == y_eval)))
            row.trainable_params = trainable_params(model)
            row.seconds_per_epoch += seconds / len(seeds)
            keras.backend.clear_session(free_memory=False)
    return list(rows.values())


def format_rows(rows, per_class=20):
    lines = [f"| variant | held-out 5-9 accuracy (mean of {len(rows[0].accuracies)} "
             f"subsets of {per_class}/class) | per subset | trainable params | s/epoch |",
             "|---|---|---|---|---|"]
    for r in rows:
        each = ", ".join(f"{a:.1%}" for a in r.accuracies)
        lines.append(f"| {r.variant} | {r.mean:.1%} | {each} | {r.trainable_params:,} | "
                     f"{r.seconds_per_epoch:.3f} |")
    return "\n".join(lines)
