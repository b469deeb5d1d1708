"""Box regression losses: L2, smooth-L1 and the IoU family (GIoU, DIoU, CIoU).

Each takes ``y_true`` and ``y_pred`` of shape ``(..., N, 4)`` and gives one loss per box
``(..., N)``, which Keras then weights and reduces: pass ``sample_weight`` ``(..., N)``
(1 for boxes matched to an object, 0 for the rest) to train only the positives, and
``reduction="mean_with_sample_weight"`` to divide by their number rather than by all
boxes (Faster R-CNN's and SSD's normalisation). The coordinate losses (:class:`L2Loss`,
:class:`SmoothL1Loss`) fit encoded deltas (:func:`kvision.ops.boxes.encode`); the IoU
losses compare boxes themselves, in any :data:`kvision.ops.boxes.FORMATS` format.
"""

import keras
from keras import ops

from kvision.ops import boxes as box_ops


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
