"""Segmentation losses on label maps: pixel cross-entropy (class weights, ignore label),
Dice and focal; and :class:`SeparationLoss`, the class-balanced binary cross-entropy of
instance segmentation's separation map (0/1 maps ``(N, H, W, 1)``, no ignore label).

The label-map losses take ``y_true`` integer label maps ``(N, H, W)`` (or
``(N, H, W, 1)``) with values in ``[0, C)`` or the ignore label, and ``y_pred``
per-pixel probabilities ``(N, H, W, C)`` (softmax; or ``(N, H, W, 1)`` sigmoid for
binary segmentation, labels 0/1), or logits with ``from_logits=True``. Pixels
labelled ``ignore_index`` add nothing. A label map whose size differs from the
prediction's is a ``ValueError`` naming both shapes; labels outside ``[0, C)`` (other
than ``ignore_index``) are a ``ValueError`` naming the first bad sample when the tensors
are eager (data checks: :func:`check_label_maps`); inside ``model.fit``'s compiled step
(TensorFlow backend) they stop training with an ``InvalidArgumentError`` that says which
labels were out of range, rather than silently becoming all-zero targets.
"""

from __future__ import annotations

import numpy as np

import keras
from keras import ops

_EPSILON = 1e-7


def check_label_maps(labels, classes, *, ignore_index=None, images=None, channels=None,
                     what="labels"):
    """Raise ``ValueError`` naming the first sample whose label map is wrong.

    Args:
        labels: label maps ``(N, H, W)`` / ``(N, H, W, 1)``, or a list of ``(H, W)``
            maps of different sizes (numpy or tensors).
        classes: the number of classes ``C``: labels must be in ``[0, C)`` or
            ``ignore_index``.
        images: optional images (array ``(N, H, W, C)`` or a list): each map must
            have its image's height and width.
        channels: optional channel count every image must have (1 or 3, say).
    Returns:
        The label maps as a list of int arrays ``(H, W)``.
    """
    maps = [np.asarray(m) for m in labels]
    if images is not None and len(images) != len(maps):
        raise ValueError(f"{what}: {len(maps)} label maps for {len(images)} images.")
    checked = []
    for i, mask in enumerate(maps):
        if mask.ndim == 3 and mask.shape[-1] == 1:
            mask = mask[..., 0]
        if mask.ndim != 2:
            raise ValueError(f"{what}: sample {i} is not a label map (H, W): shape "
                             f"{mask.shape}.")
        if images is not None:
            image_shape = tuple(np.shape(images[i]))
            if image_shape[:2] != mask.shape:
                raise ValueError(f"{what}: sample {i} has a mask of {mask.shape} for an "
                                 f"image of {image_shape[:2]}; a mask must have its "
                                 f"image's height and width.")
            got = image_shape[2] if len(image_shape) == 3 else 1
            if channels is not None and got != channels:
                raise ValueError(f"{what}: sample {i}'s image has {got} channel(s); the "
                                 f"model takes {channels}.")
        if np.issubdtype(mask.dtype, np.floating) and np.any(mask != np.round(mask)):
            raise ValueError(f"{what}: sample {i} has non-integer labels; label maps "
                             f"hold class ids.")
        valid = (mask >= 0) & (mask < classes)
        if ignore_index is not None:
            valid |= mask == ignore_index
        if not np.all(valid):
            values = [int(v) if float(v).is_integer() else float(v)
                      for v in np.unique(mask[~valid])[:5]]
            ignore = f" or the ignore label {ignore_index}" if ignore_index is not None \
                else ""
            raise ValueError(f"{what}: sample {i} has labels {values} outside "
                             f"[0, {classes}){ignore}.")
        checked.append(mask.astype("int64"))
    return checked


def _is_eager(tensor) -> bool:
    try:
        np.asarray(tensor)
        return True
    except Exception:  # noqa: BLE001  symbolic / graph tensors cannot be read
        return False


def _assert_label_range(y_true, classes, ignore_index, name):
    """In a compiled step (TensorFlow backend): ``y_true`` behind an assertion that
    every label is in ``[0, classes)`` or ``ignore_index``; other backends unchanged
    (a jitted JAX step cannot raise)."""
    if keras.backend.backend() != "tensorflow":
        return y_true
    import tensorflow as tf

    labels = tf.cast(y_true, tf.int64)
    valid = (labels >= 0) & (labels < classes)
    if ignore_index is not None:
        valid |= tf.equal(labels, ignore_index)
    ignore = f" or the ignore label {ignore_index}" if ignore_index is not None else ""
    bad = tf.boolean_mask(labels, tf.logical_not(valid))
    check = tf.debugging.Assert(
        tf.reduce_all(valid),
        [f"{name}: label maps hold labels outside [0, {classes}){ignore}; the first "
         f"such labels are:", bad[:5], "(kvision.losses.segmentation.check_label_maps "
         "names the sample)"], summarize=5)
    with tf.control_dependencies([check]):
        return tf.identity(y_true)


class _SegmentationLoss(keras.losses.Loss):
    """Shared checks: shapes, label range, ignore mask, one-hot targets."""

    def __init__(self, *, ignore_index=None, from_logits=False, name=None,
                 reduction="sum_over_batch_size", **kwargs):
        super().__init__(name=name, reduction=reduction, **kwargs)
        if ignore_index is not None and (not isinstance(ignore_index, int)
                                         or isinstance(ignore_index, bool)):
            raise ValueError(f"ignore_index must be an int or None, got {ignore_index!r}.")
        self.ignore_index = ignore_index
        self.from_logits = bool(from_logits)

    def _prepare(self, y_true, y_pred):
        """``(one-hot targets (N, H, W, C), probabilities, valid mask (N, H, W))``."""
        pred_shape = tuple(y_pred.shape)
        true_shape = tuple(y_true.shape)
        if len(true_shape) == 4 and true_shape[-1] == 1:
            y_true = ops.squeeze(y_true, -1)
            true_shape = true_shape[:3]
        if len(pred_shape) != 4 or len(true_shape) != 3 or any(
                a is not None and b is not None and a != b
                for a, b in zip(true_shape, pred_shape[:3])):
            raise ValueError(
                f"{self.name}: label maps of shape {true_shape} do not match predictions "
                f"of shape {pred_shape}; expected labels (N, H, W) for predictions "
                f"(N, H, W, C) of the same height and width.")
        classes = pred_shape[-1]
        binary = classes == 1
        if _is_eager(y_true):
            check_label_maps(y_true, 2 if binary else classes,
                             ignore_index=self.ignore_index, what=f"{self.name} y_true")
        else:
            y_true = _assert_label_range(y_true, 2 if binary else classes,
                                         self.ignore_index, self.name)
        labels = ops.cast(y_true, "int32")
        valid = ops.ones_like(labels, dtype="bool") if self.ignore_index is None \
            else ops.not_equal(labels, self.ignore_index)
        labels = ops.where(valid, labels, ops.zeros_like(labels))
        y_pred = ops.cast(y_pred, "float32")
        if binary:
            probs = ops.sigmoid(y_pred) if self.from_logits else y_pred
            probs = ops.concatenate([1.0 - probs, probs], axis=-1)
            onehot = ops.one_hot(labels, 2, dtype="float32")
        else:
            probs = ops.softmax(y_pred, axis=-1) if self.from_logits else y_pred
            onehot = ops.one_hot(labels, classes, dtype="float32")
        return onehot, ops.clip(probs, _EPSILON, 1.0 - _EPSILON), ops.cast(valid, "float32")

    def get_config(self):
        return {**super().get_config(), "ignore_index": self.ignore_index,
                "from_logits": self.from_logits}


def _pixel_mean(values, valid):
    """Per-sample mean over the valid pixels: ``(N, H, W) -> (N,)``."""
    return ops.sum(values * valid, axis=(1, 2)) / ops.maximum(ops.sum(valid, axis=(1, 2)),
                                                              1.0)


def _class_weights(class_weights, classes):
    if class_weights is None:
        return None
    weights = np.asarray(class_weights, dtype="float32").reshape(-1)
    if len(weights) != classes or np.any(weights < 0):
        raise ValueError(f"class_weights must be {classes} non-negative numbers (one per "
                         f"class), got {len(weights)}: {weights.tolist()[:8]}.")
    return ops.convert_to_tensor(weights)


@keras.saving.register_keras_serializable(package="kvision")
class PixelCrossEntropy(_SegmentationLoss):
    """Per-pixel categorical cross-entropy on label maps.

    ``class_weights`` (one per class) weight each pixel by its true class (SegNet's
    median-frequency balancing, say); the per-image loss is the weighted sum over
    valid pixels divided by the number of valid pixels (Caffe's ``SoftmaxWithLoss``
    normalization), so ignored pixels neither count nor dilute.
    """

    def __init__(self, class_weights=None, *, ignore_index=None, from_logits=False,
                 name="pixel_cross_entropy", **kwargs):
        super().__init__(ignore_index=ignore_index, from_logits=from_logits, name=name,
                         **kwargs)
        self.class_weights = None if class_weights is None else \
            [float(w) for w in np.asarray(class_weights).reshape(-1)]

    def call(self, y_true, y_pred):
        onehot, probs, valid = self._prepare(y_true, y_pred)
        per_pixel = -ops.sum(onehot * ops.log(probs), axis=-1)
        weights = _class_weights(self.class_weights, onehot.shape[-1])
        if weights is not None:
            per_pixel = per_pixel * ops.sum(onehot * weights, axis=-1)
        return _pixel_mean(per_pixel, valid)

    def get_config(self):
        return {**super().get_config(), "class_weights": self.class_weights}


@keras.saving.register_keras_serializable(package="kvision")
class DiceLoss(_SegmentationLoss):
    """Soft Dice loss ``1 - mean_c (2 |P∩T| + s) / (|P| + |T| + s)`` per image, over
    the classes (Milletari et al., 2016, "V-Net"); ``smooth`` = s keeps classes absent
    from both at Dice 1. Ignored pixels are left out of both sums."""

    def __init__(self, smooth=1.0, *, ignore_index=None, from_logits=False,
                 name="dice_loss", **kwargs):
        super().__init__(ignore_index=ignore_index, from_logits=from_logits, name=name,
                         **kwargs)
        self.smooth = float(smooth)

    def call(self, y_true, y_pred):
        onehot, probs, valid = self._prepare(y_true, y_pred)
        mask = ops.expand_dims(valid, -1)
        intersection = ops.sum(onehot * probs * mask, axis=(1, 2))
        total = ops.sum((onehot + probs) * mask, axis=(1, 2))
        dice = (2.0 * intersection + self.smooth) / (total + self.smooth)
        return 1.0 - ops.mean(dice, axis=-1)

    def get_config(self):
        return {**super().get_config(), "smooth": self.smooth}


@keras.saving.register_keras_serializable(package="kvision")
class FocalLoss(_SegmentationLoss):
    """Per-pixel focal loss ``-alpha_t (1 - p_t)^gamma log p_t`` (Lin et al., 2017,
    "Focal Loss for Dense Object Detection"), averaged over valid pixels; ``gamma=0``
    and no ``alpha`` is the cross-entropy. ``alpha``: None, or one weight per class."""

    def __init__(self, gamma=2.0, alpha=None, *, ignore_index=None, from_logits=False,
                 name="focal_loss", **kwargs):
        super().__init__(ignore_index=ignore_index, from_logits=from_logits, name=name,
                         **kwargs)
        if gamma < 0:
            raise ValueError(f"gamma must be >= 0, got {gamma!r}.")
        self.gamma = float(gamma)
        self.alpha = None if alpha is None else \
            [float(a) for a in np.asarray(alpha).reshape(-1)]

    def call(self, y_true, y_pred):
        onehot, probs, valid = self._prepare(y_true, y_pred)
        p_true = ops.sum(onehot * probs, axis=-1)
        per_pixel = -ops.power(1.0 - p_true, self.gamma) * ops.log(p_true)
        weights = _class_weights(self.alpha, onehot.shape[-1])
        if weights is not None:
            per_pixel = per_pixel * ops.sum(onehot * weights, axis=-1)
        return _pixel_mean(per_pixel, valid)

    def get_config(self):
        return {**super().get_config(), "gamma": self.gamma, "alpha": self.alpha}


@keras.saving.register_keras_serializable(package="kvision")
class SeparationLoss(keras.losses.Loss):
    """Class-balanced binary cross-entropy of the separation map (HED, Xie & Tu, 2015).

    Touching pixels are about one in two hundred: an unweighted cross-entropy settles
    on "never". By default (``positive_weight=None``) each image's positive and
    negative pixels weigh half of its loss each (HED's balancing of sparse edges);
    a number weights the positives by that fixed factor instead.
    """

    def __init__(self, positive_weight=None, name="separation_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.positive_weight = None if positive_weight is None else float(positive_weight)

    def call(self, y_true, y_pred):
        y_true = ops.cast(y_true, y_pred.dtype)
        p = ops.clip(y_pred, 1e-7, 1.0 - 1e-7)
        positive, negative = -y_true * ops.log(p), -(1.0 - y_true) * ops.log(1.0 - p)
        axes = tuple(range(1, len(y_pred.shape)))
        if self.positive_weight is not None:
            return ops.mean(self.positive_weight * positive + negative, axis=axes)
        count = ops.sum(y_true, axis=axes)
        total = ops.cast(ops.prod(ops.shape(y_true)[1:]), y_pred.dtype)
        return 0.5 * (ops.sum(positive, axis=axes) / ops.maximum(count, 1.0)
                      + ops.sum(negative, axis=axes) / ops.maximum(total - count, 1.0))

    def get_config(self):
        return {**super().get_config(), "positive_weight": self.positive_weight}
