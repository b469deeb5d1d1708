"""The model classes of the two-stage detectors (Faster R-CNN, Fast R-CNN, Mask R-CNN)
and R-CNN's eager pipeline: functional task models that compute their own training
losses, so that a plain ``model.fit`` trains them. The networks are built in
:mod:`kvision.models.detection.rcnn`, ``fast_rcnn``, ``mask_rcnn`` and
``rcnn_classic``; model files build networks, the classes they are instances of live
here (STYLE.md)."""

from __future__ import annotations

import dataclasses

import keras
import numpy as np

from kvision.ops import rcnn as rcnn_ops
from kvision.tasks.model import TaskModel

POOLED_LEVELS = ("P2", "P3", "P4", "P5")
LOSS_PARTS = ("rpn_objectness_loss", "rpn_box_loss", "classifier_loss", "box_loss")
HEAD_LOSSES = ("classifier_loss", "box_loss")
MASK_LOSS = "mask_loss"


@dataclasses.dataclass(frozen=True)
class Sampling:
    """The training recipe's sampling (torchvision's FasterRCNN defaults)."""

    rpn_fg_iou: float = 0.7
    rpn_bg_iou: float = 0.3
    rpn_batch_size_per_image: int = 256
    rpn_positive_fraction: float = 0.5
    box_batch_size_per_image: int = 512
    box_positive_fraction: float = 0.25
    box_fg_iou: float = 0.5
    box_bg_iou: tuple = (0.1, 0.5)


@keras.saving.register_keras_serializable(package="kvision")
class TwoStageDetector(TaskModel):
    """A functional two-stage detector (see the module docstring) that computes its
    own training losses: ``compile`` it without a loss and ``fit`` it on
    ``(images, {"boxes" (B, G, 4) xyxy pixels, "classes" (B, G) int, -1 padding})``
    (:func:`training_dataset`). The four parts of the loss are logged as metrics."""

    loss_names = LOSS_PARTS  # one tracker each; a subclass with more losses adds names

    def __init__(self, inputs, outputs, name=None, **kwargs):
        sampling = kwargs.pop("sampling", None) or {}
        super().__init__(inputs, outputs, name=name, **kwargs)
        sampling = dict(sampling)
        if "box_bg_iou" in sampling:
            sampling["box_bg_iou"] = tuple(sampling["box_bg_iou"])
        self.sampling = Sampling(**sampling)
        self.loss_trackers = [keras.metrics.Mean(name=part) for part in self.loss_names]

    def get_config(self):
        return {**super().get_config(), "sampling": dataclasses.asdict(self.sampling)}

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        sampling = config.pop("sampling", None)
        model = super().from_config(config, custom_objects=custom_objects)
        model.sampling = Sampling(**{**(sampling or {}),
                                     "box_bg_iou": tuple((sampling or {}).get(
                                         "box_bg_iou", Sampling.box_bg_iou))})
        return model

    def pooled_features(self, y_pred):
        """The feature maps the RoI pooler reads, fine to coarse (the outputs named
        after their level)."""
        return [y_pred[name] for name in POOLED_LEVELS if name in y_pred]

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        if not isinstance(y, dict) or "boxes" not in y or "classes" not in y:
            raise ValueError("TwoStageDetector trains on (images, {'boxes': (B, G, 4), "
                             "'classes': (B, G)}) batches (rcnn.training_dataset); got "
                             f"targets {type(y).__name__}.")
        parts = self.loss_parts(y, y_pred)
        for tracker, value in zip(self.loss_trackers, parts):
            tracker.update_state(value)
        return keras.ops.sum(keras.ops.stack(parts)) + (
            keras.ops.sum(self.losses) if self.losses else 0.0)

    def loss_parts(self, y, y_pred):
        """The RPN's objectness and box losses, then the box head's classification and
        box losses on RoIs sampled against ``y``, then :meth:`roi_losses`."""
        gt_boxes = keras.ops.cast(y["boxes"], "float32")
        gt_classes = keras.ops.cast(y["classes"], "int32")
        rpn = self.rpn_losses(y_pred, gt_boxes, gt_classes)
        box, (rois, roi_labels, matched) = self.head_losses(y_pred, gt_boxes, gt_classes)
        return [*rpn, *box, *self.roi_losses(y, y_pred, rois, roi_labels, matched)]

    def rpn_losses(self, y_pred, gt_boxes, gt_classes):
        """Anchors labelled at IoU 0.7 / 0.3, 256 sampled per image with up to half
        positive: ``(objectness, box)`` losses."""
        s = self.sampling
        anchors = keras.ops.convert_to_tensor(self.get_layer("proposals").anchors)
        labels, matched = rcnn_ops.label_anchors(anchors, gt_boxes, gt_classes,
                                                 high=s.rpn_fg_iou, low=s.rpn_bg_iou)
        labels = rcnn_ops.sample_anchors(labels, s.rpn_batch_size_per_image,
                                         s.rpn_positive_fraction)
        targets = rcnn_ops.encode_deltas(rcnn_ops.take_matched(gt_boxes, matched),
                                         anchors[None])
        return rcnn_ops.rpn_losses(y_pred["rpn_objectness"], y_pred["rpn_deltas"], labels,
                                   targets)

    def head_losses(self, y_pred, gt_boxes, gt_classes):
        """RoIs sampled from the proposals and the ground truth, pooled and answered by
        the box head: ``((classification, box) losses, (rois, labels, matched))``."""
        s = self.sampling
        rois, roi_labels, roi_targets, matched = rcnn_ops.sample_rois(
            y_pred["proposals"], y_pred["proposal_valid"], gt_boxes, gt_classes,
            num=s.box_batch_size_per_image, positive_fraction=s.box_positive_fraction,
            fg_iou=s.box_fg_iou, bg_iou=s.box_bg_iou)
        pooled = self.get_layer("box_roi_pool")([rois, *self.pooled_features(y_pred)])
        head = self.get_layer("box_head")(pooled)
        box = rcnn_ops.box_head_losses(head["class_logits"], head["box_deltas"], roi_labels,
                                       roi_targets)
        return box, (rois, roi_labels, matched)

    def roi_losses(self, y, y_pred, rois, labels, matched):
        """Losses of further heads on the sampled RoIs (``labels``: 0 background, class
        + 1 foreground, -1 padding; ``matched``: index into the gt), one per extra
        entry of ``loss_names``: none here (Mask R-CNN's mask loss:
        :mod:`kvision.models.detection.mask_rcnn`)."""
        del y, y_pred, rois, labels, matched
        return []


@keras.saving.register_keras_serializable(package="kvision")
class ProposalDetector(TwoStageDetector):
    """A two-stage detector whose proposals are an input (Fast R-CNN): only the box
    head's losses."""

    loss_names = HEAD_LOSSES

    def loss_parts(self, y, y_pred):
        gt_boxes = keras.ops.cast(y["boxes"], "float32")
        gt_classes = keras.ops.cast(y["classes"], "int32")
        box, (rois, labels, matched) = self.head_losses(y_pred, gt_boxes, gt_classes)
        return [*box, *self.roi_losses(y, y_pred, rois, labels, matched)]


@keras.saving.register_keras_serializable(package="kvision")
class MaskRCNNModel(TwoStageDetector):
    """A :class:`rcnn.TwoStageDetector` that also trains the mask head: ``fit`` it on
    ``(images, {"boxes" (B, G, 4), "classes" (B, G), "masks" (B, G, H, W)})``
    (:func:`training_dataset`); ``mask_loss`` is logged with the other four."""

    loss_names = (*LOSS_PARTS, MASK_LOSS)

    def roi_losses(self, y, y_pred, rois, labels, matched):
        if "masks" not in y:
            raise ValueError("Mask R-CNN trains on (images, {'boxes', 'classes', 'masks' "
                             "(B, G, H, W)}) batches (mask_rcnn.training_dataset); got "
                             f"targets {sorted(y)}.")
        # sample_rois ranks the foreground first and takes at most this many of it.
        kept = int(self.sampling.box_batch_size_per_image
                   * self.sampling.box_positive_fraction)
        rois, labels, matched = rois[:, :kept], labels[:, :kept], matched[:, :kept]
        pooled = self.get_layer("mask_roi_pool")([rois, *self.pooled_features(y_pred)])
        logits = self.get_layer("mask_head")(pooled)
        from kvision.models.detection.mask_rcnn import mask_loss, mask_targets

        targets = mask_targets(y["masks"], rois, matched, logits.shape[2])
        return [mask_loss(logits, labels, targets)]


class RCNNDetector(keras.Model):
    """R-CNN's pipeline as a callable model, ``detector(images)`` -> :func:`detect`'s
    dict. Selective search and the warps are host code: it runs eagerly only (no
    ``predict``, no export); the scorer inside is what saves."""

    def __init__(self, scorer, image_shape, settings, **kwargs):
        super().__init__(name=f"{scorer.name}_detector", **kwargs)
        self.scorer = scorer
        self.image_shape = tuple(int(d) for d in image_shape)
        self.settings = dict(settings)
        self.task = "detection"
        self.built = True

    @property
    def input_shape(self):
        """The images it was made for (it takes any size)."""
        return (None, *self.image_shape)

    @property
    def inputs(self):
        """One symbolic input of :attr:`input_shape`, as a functional model lists."""
        return [keras.KerasTensor(self.input_shape, name="images")]

    def call(self, images, training=False):
        del training
        from kvision.models.detection.rcnn_classic import detect

        return detect(self.scorer, np.asarray(images), **self.settings)
