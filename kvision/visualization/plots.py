"""Training curves and confusion matrices as PNG files."""

from __future__ import annotations

import csv
import os

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _save(figure, path):
    """Save through a temporary file, then rename: never a half-written PNG."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp.png")
    try:
        figure.savefig(tmp, dpi=100)
        os.replace(tmp, path)  # onto a folder: an OSError, and the PNG goes
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def read_log(path) -> dict:
    """A ``keras.callbacks.CSVLogger`` file as ``{column: [float, ...]}``."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return {}
    # CSVLogger writes "NA" for a figure an epoch did not log.
    return {key: [float(row[key]) for row in rows if row.get(key) not in (None, "", "NA")]
            for key in rows[0]}


def plot_training_curves(history, path, metrics=("loss", "accuracy")):
    """``metrics`` per epoch (training and validation: ``val_<metric>``), one panel
    each, to ``path`` (PNG); a metric the history lacks is left out.

    ``history``: a CSVLogger file path, a ``History`` or its ``.history`` dict.
    ``metrics``: e.g. ``("loss", "map_50")`` for a detector, whose held-out mAP@0.5
    is logged as ``val_map_50`` only.
    """
    if isinstance(history, (str, os.PathLike)):
        history = read_log(history)
    history = getattr(history, "history", history)
    epochs = history.get("epoch")
    wanted = tuple(metrics)
    metrics = [m for m in wanted if m in history or f"val_{m}" in history]
    if not metrics:
        raise ValueError(f"None of {list(wanted)} in the training history "
                         f"(columns: {sorted(history)}).")
    plt = _pyplot()
    figure, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 3.6),
                                squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for key, style in ((metric, "-"), (f"val_{metric}", "--")):
            if key in history:
                x = [int(e) + 1 for e in epochs] if epochs else range(1, len(history[key]) + 1)
                ax.plot(x, history[key], style, marker="o", markersize=3,
                        label="training" if key == metric else "validation")
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    figure.tight_layout()
    try:
        return _save(figure, path)
    finally:
        plt.close(figure)


def plot_confusion_matrix(matrix, class_names, path, normalize=True):
    """A confusion matrix (rows: true class, columns: predicted) to ``path`` (PNG)."""
    matrix = np.asarray(matrix)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] \
            or matrix.shape[0] != len(class_names):
        raise ValueError(f"Expected a square matrix of {len(class_names)} classes, got "
                         f"shape {matrix.shape}.")
    shown = matrix / np.maximum(matrix.sum(1, keepdims=True), 1) if normalize else matrix
    plt = _pyplot()
    n = len(class_names)
    size = min(4 + 0.4 * n, 20)
    figure, ax = plt.subplots(figsize=(size, size))
    image = ax.imshow(shown, cmap="Blues", vmin=0)
    figure.colorbar(image, ax=ax, fraction=0.046)
    ax.set_xticks(range(n), class_names, rotation=90 if n > 10 else 0)
    ax.set_yticks(range(n), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 30:
        for i in range(n):
            for j in range(n):
                ax.text(j, i, str(int(matrix[i, j])), ha="center", va="center",
                        color="white" if shown[i, j] > 0.5 * shown.max() else "black",
                        fontsize=8)
    figure.tight_layout()
    try:
        return _save(figure, path)
    finally:
        plt.close(figure)
