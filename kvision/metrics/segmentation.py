"""Semantic segmentation metrics on label maps: confusion matrix, IoU, accuracy, Dice.

Every function takes ``y_true`` and ``y_pred`` as numpy arrays or tensors of any
shape (one label map ``(H, W)``, a batch ``(B, H, W)``…). ``y_pred`` may also be
per-pixel probabilities with a trailing class axis (``(B, H, W, C)``, the output of a
kvision segmenter): it is reduced with argmax. Pixels whose true label is
``ignore_index`` count nowhere.

Conventions (those of ``keras.metrics.MeanIoU`` and scikit-learn):

- the confusion matrix has true classes on rows, predicted classes on columns;
- a class absent from both truth and prediction has no IoU or Dice (NaN in the
  per-class arrays) and is left out of the means, so ``mean_iou`` averages over the
  classes that occur;
- Dice of a class is ``2 TP / (2 TP + FP + FN)`` (its F1 score).

:class:`MeanIoU` accumulates the same confusion matrix in a Keras metric, for
``model.fit`` / ``model.evaluate`` with sparse labels ``(B, H, W)`` and softmax
outputs ``(B, H, W, C)``.

Instance masks are scored with mask AP by
``kvision.metrics.detection.evaluate(..., iou_type="segm")`` (COCO's evaluation).
"""

from __future__ import annotations

import keras
import numpy as np

__all__ = ["MeanIoU", "confusion_matrix", "dice", "evaluate", "iou_from_confusion",
           "dice_from_confusion", "mean_iou", "per_class_iou", "pixel_accuracy"]


def _numpy(x, what):
    if x is None:
        raise ValueError(f"{what} is None; expected a label map (array or tensor).")
    try:
        return np.asarray(keras.ops.convert_to_numpy(x))
    except Exception as error:  # lists, strings, odd objects
        raise ValueError(f"{what} must be an array or tensor of labels, "
                         f"got {type(x).__name__}: {error}") from None


def _where(index, ndim):
    """'sample 3' for a batch of label maps, 'pixel (2, 5)' for one map."""
    if ndim >= 3:
        return f"sample {index[0]}"
    return f"position {tuple(int(i) for i in index)}"


def _check_labels(labels, num_classes, ignore_index, what):
    bad = (labels < 0) | (labels >= num_classes)
    if ignore_index is not None:
        bad &= labels != ignore_index
    if bad.any():
        first = np.argwhere(bad)[0]
        values = np.unique(labels[bad])[:10].tolist()
        allowed = f"[0, {num_classes})" + (
            f" or the ignore label {ignore_index}" if ignore_index is not None else "")
        raise ValueError(f"{what}: {_where(first, labels.ndim)} holds labels {values} "
                         f"(the first bad ones); expected labels in {allowed}.")


def _as_labels(y_true, y_pred, num_classes, ignore_index):
    """Validated integer label maps of the same shape."""
    if not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}.")
    y_true = _numpy(y_true, "y_true")
    y_pred = _numpy(y_pred, "y_pred")
    if y_pred.ndim == y_true.ndim + 1 and y_pred.shape[:-1] == y_true.shape:
        if y_pred.shape[-1] != num_classes:
            raise ValueError(f"y_pred has {y_pred.shape[-1]} class scores per pixel "
                             f"(shape {y_pred.shape}); expected num_classes={num_classes}.")
        y_pred = np.argmax(y_pred, axis=-1)
    # A trailing channel of 1 on either side (masks stored as (H, W, 1)).
    if y_true.ndim == y_pred.ndim + 1 and y_true.shape[-1] == 1:
        y_true = y_true[..., 0]
    if y_pred.ndim == y_true.ndim + 1 and y_pred.shape[-1] == 1:
        y_pred = y_pred[..., 0]
    if y_true.shape != y_pred.shape:
        raise ValueError(f"Label maps differ in size: y_true {y_true.shape}, "
                         f"y_pred {y_pred.shape}; expected the same shape, or y_pred "
                         f"with a trailing axis of {num_classes} class scores.")
    for name, labels in (("y_true", y_true), ("y_pred", y_pred)):
        if not np.issubdtype(labels.dtype, np.integer) and labels.dtype != bool:
            if not np.all(np.isfinite(labels)) or np.any(labels != np.round(labels)):
                raise ValueError(f"{name} must hold integer class labels, got "
                                 f"non-integer values of dtype {labels.dtype}.")
    y_true = y_true.astype(np.int64)
    y_pred = y_pred.astype(np.int64)
    _check_labels(y_true, num_classes, ignore_index, "y_true")
    keep = y_true != ignore_index if ignore_index is not None else np.ones_like(y_true, bool)
    _check_labels(np.where(keep, y_pred, 0), num_classes, None, "y_pred")
    return y_true[keep], y_pred[keep]


def confusion_matrix(y_true, y_pred, num_classes, ignore_index=None) -> np.ndarray:
    """Pixel counts ``(num_classes, num_classes)``: row = true class, column = predicted.

    Raises ``ValueError`` for label maps of different sizes and for labels outside
    ``[0, num_classes)`` other than ``ignore_index`` (naming the sample and values).
    """
    t, p = _as_labels(y_true, y_pred, num_classes, ignore_index)
    counts = np.bincount(t * num_classes + p, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def iou_from_confusion(matrix) -> np.ndarray:
    """Per-class IoU ``TP / (TP + FP + FN)``; NaN for classes absent from both sides."""
    matrix = np.asarray(matrix, np.float64)
    tp = np.diag(matrix)
    union = matrix.sum(0) + matrix.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / union, np.nan)


def dice_from_confusion(matrix) -> np.ndarray:
    """Per-class Dice ``2 TP / (2 TP + FP + FN)``; NaN for classes absent from both."""
    matrix = np.asarray(matrix, np.float64)
    tp = np.diag(matrix)
    total = matrix.sum(0) + matrix.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, 2 * tp / total, np.nan)


def _mean(values):
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else float("nan")


def per_class_iou(y_true, y_pred, num_classes, ignore_index=None) -> np.ndarray:
    """IoU of each class ``(num_classes,)``; NaN where a class is in neither map."""
    return iou_from_confusion(confusion_matrix(y_true, y_pred, num_classes, ignore_index))


def mean_iou(y_true, y_pred, num_classes, ignore_index=None) -> float:
    """Mean IoU over the classes present in truth or prediction (Keras' MeanIoU)."""
    return _mean(per_class_iou(y_true, y_pred, num_classes, ignore_index))


def pixel_accuracy(y_true, y_pred, num_classes, ignore_index=None) -> float:
    """Fraction of (non-ignored) pixels labelled correctly."""
    matrix = confusion_matrix(y_true, y_pred, num_classes, ignore_index)
    total = matrix.sum()
    return float(np.trace(matrix) / total) if total else float("nan")


def dice(y_true, y_pred, num_classes, ignore_index=None, average="mean"):
    """Dice (F1) per class; ``average="mean"`` (default) averages the present classes,
    ``average=None`` returns the ``(num_classes,)`` array (NaN where absent)."""
    if average not in ("mean", None):
        raise ValueError(f"average must be 'mean' or None, got {average!r}.")
    values = dice_from_confusion(confusion_matrix(y_true, y_pred, num_classes, ignore_index))
    return _mean(values) if average == "mean" else values


def evaluate(y_true, y_pred, num_classes, ignore_index=None, class_names=None) -> dict:
    """All the figures from one confusion matrix, as a dict.

    Keys: ``mean_iou``, ``pixel_accuracy``, ``mean_dice``, ``per_class_iou`` and
    ``per_class_dice`` (``{class name or id: value}``, present classes only) and
    ``confusion_matrix``.
    """
    matrix = confusion_matrix(y_true, y_pred, num_classes, ignore_index)
    names = list(class_names) if class_names is not None else list(range(num_classes))
    if len(names) != num_classes:
        raise ValueError(f"{len(names)} class names for num_classes={num_classes}.")
    iou, dsc = iou_from_confusion(matrix), dice_from_confusion(matrix)
    total = matrix.sum()
    return {
        "mean_iou": _mean(iou),
        "pixel_accuracy": float(np.trace(matrix) / total) if total else float("nan"),
        "mean_dice": _mean(dsc),
        "per_class_iou": {n: float(v) for n, v in zip(names, iou) if not np.isnan(v)},
        "per_class_dice": {n: float(v) for n, v in zip(names, dsc) if not np.isnan(v)},
        "confusion_matrix": matrix,
    }


@keras.saving.register_keras_serializable(package="kvision")
class MeanIoU(keras.metrics.Metric):
    """Streaming mean IoU for ``model.fit`` / ``model.evaluate`` (Keras graph ops).

    Accumulates the confusion matrix of :func:`confusion_matrix` over batches.
    ``y_true``: sparse labels ``(B, H, W)`` or ``(B, H, W, 1)``; ``y_pred``: class
    probabilities ``(B, H, W, C)`` (argmax), or labels when ``sparse_y_pred=True``.
    Pixels labelled ``ignore_index`` (and any label outside ``[0, C)``, which a graph
    cannot report) are skipped. The result averages the classes present, like
    ``keras.metrics.MeanIoU``; :meth:`per_class` gives the IoU of each class.
    """

    def __init__(self, num_classes, ignore_index=None, sparse_y_pred=False,
                 name="mean_iou", dtype=None):
        super().__init__(name=name, dtype=dtype)
        if not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}.")
        self.num_classes = int(num_classes)
        self.ignore_index = ignore_index
        self.sparse_y_pred = bool(sparse_y_pred)
        self.confusion = self.add_variable(shape=(self.num_classes, self.num_classes),
                                           initializer="zeros", dtype="float32",
                                           name="confusion")

    def update_state(self, y_true, y_pred, sample_weight=None):
        ops = keras.ops
        c = self.num_classes
        if not self.sparse_y_pred:
            y_pred = ops.argmax(y_pred, axis=-1)
        y_true = ops.convert_to_tensor(y_true)
        if len(y_true.shape) == len(y_pred.shape) + 1:
            y_true = ops.squeeze(y_true, axis=-1)
        weights = ops.ones(ops.shape(y_true), "float32")
        if sample_weight is not None:
            # One weight per sample (B,) or per pixel (B, H, W).
            sample_weight = ops.cast(sample_weight, "float32")
            while len(sample_weight.shape) < len(y_true.shape):
                sample_weight = ops.expand_dims(sample_weight, -1)
            weights = weights * sample_weight
        y_true = ops.reshape(ops.cast(y_true, "int32"), (-1,))
        y_pred = ops.reshape(ops.cast(y_pred, "int32"), (-1,))
        valid = (y_true >= 0) & (y_true < c) & (y_pred >= 0) & (y_pred < c)
        if self.ignore_index is not None:
            valid &= y_true != self.ignore_index
        weights = ops.where(valid, ops.reshape(weights, (-1,)), 0.0)
        index = ops.where(valid, y_true * c + y_pred, 0)
        counts = ops.bincount(index, weights=weights, minlength=c * c)
        self.confusion.assign_add(ops.reshape(ops.cast(counts, "float32"), (c, c)))

    def per_class(self):
        """IoU of each class (0 where a class has no pixels on either side)."""
        ops = keras.ops
        tp = ops.diagonal(self.confusion)
        union = ops.sum(self.confusion, 0) + ops.sum(self.confusion, 1) - tp
        return ops.divide_no_nan(tp, union)

    def result(self):
        ops = keras.ops
        tp = ops.diagonal(self.confusion)
        union = ops.sum(self.confusion, 0) + ops.sum(self.confusion, 1) - tp
        present = ops.sum(ops.cast(union > 0, "float32"))
        return ops.divide_no_nan(ops.sum(ops.divide_no_nan(tp, union)), present)

    def reset_state(self):
        self.confusion.assign(keras.ops.zeros((self.num_classes, self.num_classes)))

    def get_config(self):
        return {"num_classes": self.num_classes, "ignore_index": self.ignore_index,
                "sparse_y_pred": self.sparse_y_pred, "name": self.name,
                "dtype": self.dtype}
