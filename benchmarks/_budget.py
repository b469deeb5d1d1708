"""Pieces the training benchmarks share: a learning rate on a half cosine over a time
budget (a schedule in steps would need the step count the budget buys)."""

from __future__ import annotations

import time

import keras
import numpy as np


class CosineOverTime(keras.callbacks.Callback):
    """The learning rate follows a half cosine from ``base`` to 0 over ``minutes`` of
    training time, read from ``budget`` (a callback with ``spent``: seconds of the
    finished epochs, and ``start``: when the current epoch began)."""

    def __init__(self, base, minutes, budget):
        super().__init__()
        self.base, self.seconds, self.budget = base, minutes * 60, budget

    def on_train_batch_begin(self, batch, logs=None):
        spent = self.budget.spent + time.perf_counter() - self.budget.start
        fraction = min(spent / self.seconds, 1.0)
        self.model.optimizer.learning_rate.assign(
            self.base * 0.5 * (1.0 + np.cos(np.pi * fraction)))
