"""Detection losses: per-box regression (L2, smooth-L1, the IoU family: GIoU, DIoU,
CIoU) and the detectors' own losses (:class:`BoxRegressionLoss` of the localizer and
OverFeat, :class:`YOLOv1Loss`, :class:`YOLOv3Loss`).

Each per-box loss takes ``y_true`` and ``y_pred`` of shape ``(..., N, 4)`` and gives
one loss per box ``(..., N)``, which Keras then weights and reduces: pass
``sample_weight`` ``(..., N)`` (1 for boxes matched to an object, 0 for the rest) to
train only the positives, and ``reduction="mean_with_sample_weight"`` to divide by their
number rather than by all boxes (Faster R-CNN's and SSD's normalisation). The coordinate
losses (:class:`L2Loss`, :class:`SmoothL1Loss`) fit encoded deltas
(:func:`kvision.ops.boxes.encode`); the IoU losses compare boxes themselves, in any
:data:`kvision.ops.boxes.FORMATS` format.
"""

import keras
import numpy as np
from keras import ops

from kvision.layers.yolo import grid_geometry
from kvision.ops import boxes as box_ops

BOX_LOSSES = ("l2", "smooth_l1", "giou")  # BoxRegressionLoss's kinds
IGNORE_THRESHOLD = 0.5  # YOLOv3: IoU above which a prediction is not taught "no object"
MAX_BOXES = 100  # YOLOv3: ground-truth boxes per image the ignore mask compares with
LAMBDA_COORD = 5.0  # YOLO v1's weight of the box terms
LAMBDA_NOOBJ = 0.5  # YOLO v1's weight of the confidence of cells without an object


@keras.saving.register_keras_serializable(package="kvision")
class L2Loss(keras.losses.Loss):
    """Sum of squared coordinate errors per box (YOLOv1's box term, Redmon et al. 2016)."""

    def call(self, y_true, y_pred):
        y_true, y_pred = _pair(y_true, y_pred)
        return ops.sum(ops.square(y_pred - y_true), axis=-1)


@keras.saving.register_keras_serializable(package="kvision")
class SmoothL1Loss(keras.losses.Loss):
    """Fast R-CNN's smooth-L1 summed over the four coordinates (Girshick, 2015, eq. 3).

    ``0.5 x^2 / beta`` where ``|x| < beta``, else ``|x| - 0.5 beta``; ``beta=1`` is the
    paper's (torchvision's ``smooth_l1_loss``). Quadratic near 0, so small errors do
    not pull as hard as outliers would under L2.
    """

    def __init__(self, beta=1.0, name="smooth_l1_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        if float(beta) <= 0:
            raise ValueError(f"beta must be > 0, got {beta}.")
        self.beta = float(beta)

    def call(self, y_true, y_pred):
        y_true, y_pred = _pair(y_true, y_pred)
        error = ops.abs(y_pred - y_true)
        per_coordinate = ops.where(error < self.beta, 0.5 * ops.square(error) / self.beta,
                                   error - 0.5 * self.beta)
        return ops.sum(per_coordinate, axis=-1)

    def get_config(self):
        return {**super().get_config(), "beta": self.beta}


@keras.saving.register_keras_serializable(package="kvision")
class IoULoss(keras.losses.Loss):
    """``1 - IoU`` per box pair, for ``mode`` in ``"iou"``, ``"giou"`` (Rezatofighi et
    al., 2019), ``"diou"`` or ``"ciou"`` (Zheng et al., 2020).

    Plain IoU has no gradient when boxes do not overlap; GIoU adds the empty part of
    the enclosing box, DIoU the centre distance, CIoU also the aspect ratio.
    """

    def __init__(self, mode="giou", format="xyxy", name=None, **kwargs):
        if mode not in box_ops.IOU_MODES:
            raise ValueError(f"mode must be one of {box_ops.IOU_MODES}, got {mode!r}.")
        if format not in box_ops.FORMATS:
            raise ValueError(f"format must be one of {box_ops.FORMATS}, got {format!r}.")
        super().__init__(name=name or f"{mode}_loss", **kwargs)
        self.mode = mode
        self.format = format

    def call(self, y_true, y_pred):
        y_true, y_pred = _pair(y_true, y_pred)
        return 1.0 - box_ops.aligned_iou(y_true, y_pred, format=self.format, mode=self.mode)

    def get_config(self):
        return {**super().get_config(), "mode": self.mode, "format": self.format}


@keras.saving.register_keras_serializable(package="kvision")
class GIoULoss(IoULoss):
    """``1 - GIoU`` (Rezatofighi et al., 2019, "Generalized Intersection over Union")."""

    def __init__(self, format="xyxy", name="giou_loss", **kwargs):
        kwargs.pop("mode", None)
        super().__init__(mode="giou", format=format, name=name, **kwargs)


@keras.saving.register_keras_serializable(package="kvision")
class CIoULoss(IoULoss):
    """``1 - CIoU`` (Zheng et al., 2020, "Distance-IoU Loss"), as YOLOv4/v5 use it."""

    def __init__(self, format="xyxy", name="ciou_loss", **kwargs):
        kwargs.pop("mode", None)
        super().__init__(mode="ciou", format=format, name=name, **kwargs)


def _pair(y_true, y_pred):
    y_pred = ops.convert_to_tensor(y_pred)
    y_true = ops.cast(ops.convert_to_tensor(y_true), y_pred.dtype)
    if y_pred.shape[-1] != 4 or y_true.shape[-1] != 4:
        raise ValueError(f"Box losses take y_true and y_pred of shape (..., 4), got "
                         f"{tuple(y_true.shape)} and {tuple(y_pred.shape)}.")
    return y_true, y_pred


# --- the detectors' losses ------------------------------------------------------------

@keras.saving.register_keras_serializable(package="kvision")
class BoxRegressionLoss(keras.losses.Loss):
    """Box regression of normalized center ``(x, y, w, h)`` boxes, empty slots skipped.

    ``kind``: ``"l2"`` (squared error summed over the 4 numbers, the slides' L2
    distance), ``"smooth_l1"`` (Fast R-CNN's, quadratic below ``beta``; 0.05 suits
    coordinates in ``[0, 1]``) or ``"giou"`` (``1 - GIoU``, scale-invariant): the
    per-box losses above. Boxes whose target width is 0 (empty slots of the localizer's
    K-object variant, background windows of OverFeat) add nothing, and the mean is over
    real boxes, so no ``sample_weight`` is needed.
    """

    def __init__(self, kind="l2", beta=0.05, name=None, **kwargs):
        if kind not in BOX_LOSSES:
            raise ValueError(f"Box loss kind must be one of {BOX_LOSSES}, got {kind!r}.")
        super().__init__(name=name or f"box_{kind}", **kwargs)
        self.kind = kind
        self.beta = float(beta)
        self._per_box = {"l2": lambda: L2Loss(),
                         "smooth_l1": lambda: SmoothL1Loss(beta=self.beta),
                         "giou": lambda: GIoULoss(format="yolo")}[kind]()

    def call(self, y_true, y_pred):
        y_true = ops.cast(y_true, y_pred.dtype)
        per_box = self._per_box.call(y_true, y_pred)
        real = ops.cast(y_true[..., 2] > 0, per_box.dtype)
        per_box = per_box * real
        axes = tuple(range(1, len(per_box.shape)))
        if not axes:
            return per_box
        # Scaled so that Keras' mean over the batch is the mean over real boxes.
        total = ops.sum(per_box, axis=axes)
        count = ops.sum(real, axis=axes)
        share = ops.sum(count) / ops.cast(ops.shape(count)[0], count.dtype)
        return total / ops.maximum(share, 1.0)

    def get_config(self):
        return {**super().get_config(), "kind": self.kind, "beta": self.beta}


def _bce(target, logits):
    return ops.binary_crossentropy(target, logits, from_logits=True)


def _corners(center, size):
    """Centers and sizes ``(..., 2)`` -> corners ``(..., 4)``."""
    return ops.concatenate([center - size / 2, center + size / 2], axis=-1)


@keras.saving.register_keras_serializable(package="kvision")
class YOLOv1Loss(keras.losses.Loss):
    """YOLO v1's sum-squared error (Redmon et al., 2016, eq. 3), summed per image::

        l_coord * sum 1obj_ij [(x - x^)^2 + (y - y^)^2]
      + l_coord * sum 1obj_ij [(sqrt w - sqrt w^)^2 + (sqrt h - sqrt h^)^2]
      +           sum 1obj_ij (C - C^)^2 + l_noobj * sum 1noobj_ij (C - C^)^2
      +           sum_i 1obj_i sum_c (p(c) - p^(c))^2

    with l_coord = 5, l_noobj = 0.5; the predictor ``j`` responsible for a cell's
    object is the one whose box has the highest IoU with it, and its target confidence
    is that IoU (confidence = Pr(object) * IoU); 1noobj_ij = 1 - 1obj_ij.

    ``y_true``: :func:`kvision.models.detection.yolo_v1.encode_targets`'
    ``(B, S, S, 5+C)``; ``y_pred``: the raw ``(B, S, S, 5B+C)`` output.
    """

    def __init__(self, boxes_per_cell=2, lambda_coord=LAMBDA_COORD,
                 lambda_noobj=LAMBDA_NOOBJ, name="yolov1_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.boxes_per_cell = int(boxes_per_cell)
        self.lambda_coord = float(lambda_coord)
        self.lambda_noobj = float(lambda_noobj)

    def call(self, y_true, y_pred):
        y_true = ops.cast(y_true, "float32")
        y_pred = ops.cast(y_pred, "float32")
        b = self.boxes_per_cell
        shape = ops.shape(y_pred)
        pred = ops.reshape(y_pred[..., :5 * b], (shape[0], shape[1], shape[2], b, 5))
        grid = ops.cast(shape[1], "float32")
        found = y_true[..., 4]
        truth = ops.expand_dims(y_true[..., :4], 3)  # (B, S, S, 1, 4)
        # IoU of each predictor's box with the cell's object, in image units.
        overlap = box_ops.aligned_iou(
            _corners(pred[..., 0:2] / grid, ops.square(pred[..., 2:4])),
            ops.broadcast_to(_corners(truth[..., 0:2] / grid, truth[..., 2:4]),
                             ops.shape(pred[..., :4])))
        overlap = ops.stop_gradient(overlap)
        responsible = ops.one_hot(ops.argmax(overlap, axis=-1), b) * found[..., None]
        xy = ops.sum(ops.square(pred[..., 0:2] - truth[..., 0:2]), axis=-1)
        wh = ops.sum(ops.square(pred[..., 2:4] - ops.sqrt(truth[..., 2:4])), axis=-1)
        confidence = pred[..., 4]
        total = (self.lambda_coord * ops.sum(responsible * (xy + wh), axis=-1)
                 + ops.sum(responsible * ops.square(confidence - overlap), axis=-1)
                 + self.lambda_noobj * ops.sum((1.0 - responsible)
                                               * ops.square(confidence), axis=-1)
                 + found * ops.sum(ops.square(y_pred[..., 5 * b:] - y_true[..., 5:]),
                                   axis=-1))
        return ops.sum(ops.reshape(total, (shape[0], -1)), axis=-1)

    def get_config(self):
        return {**super().get_config(), "boxes_per_cell": self.boxes_per_cell,
                "lambda_coord": self.lambda_coord, "lambda_noobj": self.lambda_noobj}


@keras.saving.register_keras_serializable(package="kvision")
class YOLOv3Loss(keras.losses.Loss):
    """YOLOv3's loss for one scale (Redmon & Farhadi, 2018), summed per image.

    The usual one of the reference Keras implementation (qqwweee/keras-yolo3): binary
    cross-entropy on the ``sigmoid`` center offsets and squared error on the log-space
    sizes ``log(w / anchor_w)``, both weighted by ``2 - w*h/(W*H)`` (small boxes count
    more); objectness BCE, where predictions that overlap a ground-truth box by IoU >
    ``ignore_threshold`` without being assigned to it are not pushed to 0; class BCE.

    ``y_true``: :func:`kvision.models.detection.yolo.encode_targets`'
    ``(B, S, S, A, 5+C)``; ``y_pred``: the raw output of the same shape. ``anchors``:
    this scale's ``(A, 2)`` pixels; ``image_size``: the input ``(height, width)``.
    """

    def __init__(self, anchors, image_size, ignore_threshold=IGNORE_THRESHOLD,
                 max_boxes=MAX_BOXES, name="yolov3_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.anchors = [[float(w), float(h)] for w, h in anchors]
        self.image_size = [int(s) for s in image_size]
        self.ignore_threshold = float(ignore_threshold)
        self.max_boxes = int(max_boxes)

    def call(self, y_true, y_pred):
        y_true = ops.cast(y_true, "float32")
        y_pred = ops.cast(y_pred, "float32")
        shape = ops.shape(y_pred)
        height, width = self.image_size
        stride, anchors, offsets = grid_geometry(y_pred, self.image_size, self.anchors)
        found = y_true[..., 4]
        true_wh = y_true[..., 2:4]
        weight = found * (2.0 - true_wh[..., 0] * true_wh[..., 1] / (height * width))
        true_xy = y_true[..., 0:2] / stride - offsets
        true_twh = ops.log(ops.maximum(true_wh, 1e-9) / anchors) * found[..., None]
        xy_loss = weight * ops.sum(_bce(true_xy, y_pred[..., 0:2]), axis=-1)
        wh_loss = weight * 0.5 * ops.sum(ops.square(true_twh - y_pred[..., 2:4]), -1)
        ignore = self._ignore(y_true, y_pred, offsets, stride, anchors)
        obj_logit = y_pred[..., 4]
        obj_loss = (found * _bce(ops.ones_like(found), obj_logit)
                    + (1.0 - found) * ignore * _bce(ops.zeros_like(found), obj_logit))
        class_loss = found * ops.sum(_bce(y_true[..., 5:], y_pred[..., 5:]), axis=-1)
        total = xy_loss + wh_loss + obj_loss + class_loss
        return ops.sum(ops.reshape(total, (shape[0], -1)), axis=-1)

    def _ignore(self, y_true, y_pred, offsets, stride, anchors):
        """1 where a cell's prediction overlaps no ground-truth box by more than the
        threshold (it is taught 'no object'); up to ``max_boxes`` boxes an image."""
        batch = ops.shape(y_pred)[0]
        pred = _corners((ops.sigmoid(y_pred[..., 0:2]) + offsets) * stride,
                        anchors * ops.exp(ops.minimum(y_pred[..., 2:4], 10.0)))
        pred = ops.reshape(pred, (batch, -1, 4))
        truth = ops.reshape(_corners(y_true[..., 0:2], y_true[..., 2:4]), (batch, -1, 4))
        flags = ops.reshape(y_true[..., 4], (batch, -1))
        k = min(self.max_boxes, int(np.prod(y_pred.shape[1:4])))
        flags, index = ops.top_k(flags, k)
        truth = ops.take_along_axis(truth, ops.expand_dims(index, -1), axis=1)
        overlap = box_ops.iou(pred, truth) * ops.expand_dims(flags, 1)
        best = ops.max(overlap, axis=-1)
        ignore = ops.cast(best < self.ignore_threshold, "float32")
        return ops.stop_gradient(ops.reshape(ignore, ops.shape(y_pred)[:4]))

    def get_config(self):
        return {**super().get_config(), "anchors": self.anchors,
                "image_size": self.image_size, "ignore_threshold": self.ignore_threshold,
                "max_boxes": self.max_boxes}
