"""Measuring a trained classifier: the library behind ``kvision evaluate``.

Top-1 accuracy and error, top-5 where there are more than 5 classes (with 5 or fewer
every label is among the top 5: always 1.0, a figure that says nothing), per-class
precision and recall, and the confusion matrix (also drawn as a PNG).
"""

from __future__ import annotations

import dataclasses

import numpy as np

TOP_K = 5


@dataclasses.dataclass
class Report:
    """Classification figures on one labelled set; ``top5_accuracy`` is None with
    ``TOP_K`` classes or fewer."""

    class_names: tuple
    top1_accuracy: float
    top5_accuracy: float | None
    precision: np.ndarray
    recall: np.ndarray
    support: np.ndarray
    confusion: np.ndarray

    @property
    def top1_error(self):
        return 1.0 - self.top1_accuracy

    @property
    def top5_error(self):
        return None if self.top5_accuracy is None else 1.0 - self.top5_accuracy

    def format(self) -> str:
        """The report as a text table."""
        width = max(12, *(len(n) for n in self.class_names))
        lines = [f"top-1 accuracy {self.top1_accuracy:.4f} (error {self.top1_error:.4f})"]
        if self.top5_accuracy is not None:
            lines.append(f"top-5 accuracy {self.top5_accuracy:.4f} "
                         f"(error {self.top5_error:.4f})")
        lines += ["", f"{'class':<{width}} {'precision':>9} {'recall':>9} {'support':>8}"]
        for name, p, r, s in zip(self.class_names, self.precision, self.recall,
                                 self.support):
            lines.append(f"{name:<{width}} {p:>9.4f} {r:>9.4f} {int(s):>8}")
        return "\n".join(lines)

    def as_dict(self) -> dict:
        """The figures for JSON; the top-5 keys only where there are more than 5
        classes."""
        top5 = ({} if self.top5_accuracy is None else
                {"top5_accuracy": self.top5_accuracy, "top5_error": self.top5_error})
        return {"top1_accuracy": self.top1_accuracy, "top1_error": self.top1_error,
                **top5,
                "per_class": {name: {"precision": float(p), "recall": float(r),
                                     "support": int(s)}
                              for name, p, r, s in zip(self.class_names, self.precision,
                                                       self.recall, self.support)}}


def top_k_accuracy(probabilities, labels, k) -> float:
    """Fraction of rows whose label is among the ``k`` highest scores."""
    k = min(k, probabilities.shape[-1])
    best = np.argsort(-probabilities, axis=-1, kind="stable")[:, :k]
    return float(np.mean(np.any(best == np.asarray(labels)[:, None], axis=-1)))


def classification_report(probabilities, labels, class_names) -> Report:
    """Figures of ``probabilities`` ``(N, classes)`` against integer ``labels`` ``(N,)``.

    Precision of a class is 0 when nothing was predicted as it (scikit-learn's
    ``zero_division=0``); recall is 0 for a class with no example.
    """
    probabilities = np.asarray(probabilities)
    labels = np.asarray(labels).astype("int64").reshape(-1)
    n = len(class_names)
    if probabilities.ndim != 2 or probabilities.shape[1] != n:
        raise ValueError(f"Expected scores of shape (N, {n}), got {probabilities.shape}.")
    if len(labels) != len(probabilities):
        raise ValueError(f"{len(labels)} labels for {len(probabilities)} predictions.")
    predicted = probabilities.argmax(-1)
    confusion = np.zeros((n, n), "int64")
    np.add.at(confusion, (labels, predicted), 1)
    true_positive = np.diag(confusion).astype("float64")
    predicted_count = confusion.sum(0)
    support = confusion.sum(1)
    precision = np.divide(true_positive, predicted_count,
                          out=np.zeros(n), where=predicted_count > 0)
    recall = np.divide(true_positive, support, out=np.zeros(n), where=support > 0)
    top5 = top_k_accuracy(probabilities, labels, TOP_K) if n > TOP_K else None
    return Report(tuple(class_names), top_k_accuracy(probabilities, labels, 1), top5,
                  precision, recall, support, confusion)


def evaluate(trained, dataset, batch_size=64, confusion_png=None) -> Report:
    """Evaluate a :class:`kvision.predict.Trained` on a tf.data set of (image, label)."""
    import tensorflow as tf

    images = dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)
    probabilities, labels = [], []
    for x, y in images:
        probabilities.append(trained.model.predict_on_batch(x))
        labels.append(y.numpy())
    if not labels:
        raise ValueError("The evaluation data holds no images.")
    report = classification_report(np.concatenate(probabilities), np.concatenate(labels),
                                   trained.class_names)
    if confusion_png:
        from kvision.visualization import plot_confusion_matrix

        plot_confusion_matrix(report.confusion, report.class_names, confusion_png)
    return report
