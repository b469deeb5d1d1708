"""Mask R-CNN (He, Gkioxari, Dollár & Girshick, 2017): Faster R-CNN
(:mod:`kvision.models.detection.rcnn`) with a mask head per RoI, in torchvision's
``maskrcnn_resnet50_fpn`` form::

    Faster R-CNN's pyramid P2..P5, RoIs (B, R, 4)
      -> MultiScaleRoIAlign 14x14, sampling 2 (PyramidRoIAlign) (B, R, 14, 14, C)
      -> MaskRCNNHeads: 4 x (conv 3x3, 256, ReLU)
      -> MaskRCNNPredictor: ConvTranspose 2x2 / 2, 256, ReLU; conv 1x1 to K+1
      -> mask_logits (B, R, 28, 28, K+1)

With 91 outputs and 256 channels the mask head adds 2,646,107 parameters to Faster
R-CNN (torchvision's count; tests/detection/test_mask_rcnn.py). The network itself
runs the mask head on its detections at torchvision's defaults (score 0.05, NMS 0.5,
100 per image: ``mask_boxes``, ``mask_logits``), as torchvision's model does in
evaluation; :func:`inference_model` decodes with thresholds of one's choosing. The
RoIs reach the convolutions folded into the batch axis, which
:func:`kvision.models.profile` counts per sample: it counts the mask head once per
image (0.53 GMACs at 256 channels), where 100 detections cost 100 times that.

Training (:class:`MaskRCNNModel`): Faster R-CNN's four losses plus torchvision's
``maskrcnn_loss``: the matched gt mask of each foreground sampled RoI, cropped to the
RoI by RoIAlign (aligned=False, adaptive sampling: ``project_masks_on_boxes``) at
28x28, against the true class's mask logits by per-pixel binary cross-entropy,
averaged over the foreground RoIs (0, not NaN, with none)::

    model = kvision.create("mask_rcnn", classes=10, backbone="resnet18",
                           input_shape=(96, 96, 3), fpn_channels=64, mask_channels=64)
    model.compile(optimizer="adam")                  # the model computes its losses
    model.fit(mask_rcnn.training_dataset(scenes, model, batch_size=8), epochs=...)
    segmenter = mask_rcnn.inference_model(model)
    segmenter(images)  # {"instance_map", "boxes", "scores", "classes", "num_detections"}
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
from keras import ops

from kvision.layers.detection import NonMaxSuppression
from kvision.layers.mask_rcnn import DetectedBoxes, FoldRoIs, PasteMasks, UnfoldRoIs
from kvision.layers.rcnn import BoxHeadDecode, PyramidRoIAlign
from kvision.layers.roi import RoIAlign
from kvision.models.detection import rcnn
from kvision.ops import rcnn as rcnn_ops
from kvision.registry import register
from kvision.tasks.model import TaskModel
from kvision.tasks.two_stage import MASK_LOSS, MaskRCNNModel  # noqa: F401

PAPER = "Mask R-CNN"
POOL_SIZE = 14     # MultiScaleRoIAlign output of the mask branch
MASK_SIZE = 28     # the predictor's 2x upsampled masks
# torchvision's RoIHeads defaults: the detections the network's own mask branch sees.
DETECTIONS = {"score_threshold": 0.05, "iou_threshold": 0.5, "max_detections": 100}
RAW = ("class_logits", "box_deltas", "proposals", "proposal_valid")


# --- losses ---------------------------------------------------------------------------

def mask_targets(masks, rois, matched, size=MASK_SIZE):
    """torchvision's ``project_masks_on_boxes``: ``(B, R, size, size)`` float32, the
    gt mask ``matched (B, R)`` indexes in ``masks (B, G, H, W)`` cropped to each RoI
    ``(B, R, 4)`` xyxy pixels by ``roi_align`` (spatial scale 1, adaptive sampling,
    ``aligned=False``)."""
    masks = ops.cast(masks, "float32")
    height, width = masks.shape[2], masks.shape[3]
    picked = rcnn_ops.take_matched(masks, matched)                 # (B, R, H, W)
    batch, count = ops.shape(rois)[0], ops.shape(rois)[1]
    crops = RoIAlign(size, spatial_scale=1.0, sampling_ratio=0, aligned=False)(
        [ops.reshape(picked, (-1, height, width, 1)), ops.reshape(rois, (-1, 1, 4))])
    return ops.reshape(crops, (batch, count, size, size))


def mask_loss(mask_logits, labels, targets):
    """torchvision's ``maskrcnn_loss``: binary cross-entropy of the true class's mask
    logits ``(B, R, M, M, K+1)`` against ``targets (B, R, M, M)``, averaged over the
    pixels of the foreground RoIs (``labels`` > 0); 0 when there is none."""
    labels = ops.cast(labels, "int32")
    logits = ops.cast(mask_logits, "float32")
    own = ops.one_hot(ops.maximum(labels, 0), logits.shape[-1])
    logits = ops.sum(logits * own[:, :, None, None, :], axis=-1)
    truth = ops.cast(targets, "float32")
    cross_entropy = (ops.maximum(logits, 0.0) - logits * truth
                     + ops.log1p(ops.exp(-ops.abs(logits))))
    foreground = (labels > 0)[:, :, None, None]
    total = ops.sum(ops.where(foreground, cross_entropy, 0.0))
    pixels = ops.sum(ops.cast(labels > 0, "float32")) * float(
        logits.shape[-1] * logits.shape[-2])
    return total / ops.maximum(pixels, 1.0)


def losses(model=None, **kwargs):
    """None: a :class:`MaskRCNNModel` computes its own losses (``compile`` without one)."""
    del model, kwargs
    return None


# --- the network ------------------------------------------------------------------------

def mask_head(channels, classes, width=256, pool_size=POOL_SIZE, name="mask_head"):
    """torchvision's MaskRCNNHeads + MaskRCNNPredictor as one nested model: pooled RoIs
    ``(B, R, s, s, channels)`` -> mask logits ``(B, R, 2s, 2s, classes + 1)``."""
    init = keras.initializers.VarianceScaling(2.0, "fan_out", "untruncated_normal")
    pooled = keras.Input((None, pool_size, pool_size, channels), name="pooled_rois")
    x = FoldRoIs(name="fold")(pooled)
    for i in range(1, 5):
        x = keras.layers.Conv2D(width, 3, padding="same", activation="relu",
                                kernel_initializer=init, name=f"mask_fcn{i}")(x)
    x = keras.layers.Conv2DTranspose(width, 2, strides=2, activation="relu",
                                     kernel_initializer=init, name="conv5_mask")(x)
    x = keras.layers.Conv2D(classes + 1, 1, kernel_initializer=init,
                            name="mask_fcn_logits")(x)
    return keras.Model(pooled, UnfoldRoIs(name="unfold")([x, pooled]), name=name)


def _levels(outputs):
    return [outputs[name] for name in rcnn.POOLED_LEVELS if name in outputs]


def _mask_branch(classes, width):
    """``extend`` of :func:`rcnn._build`: the mask head on the network's own
    detections at :data:`DETECTIONS` (none in training, where the loss pools the
    sampled RoIs instead)."""

    def extend(outputs, images):
        maps = _levels(outputs)
        boxes = DetectedBoxes(images.shape[1:3], **DETECTIONS, name="mask_rois")(
            *(outputs[k] for k in RAW))
        strides = tuple(int(images.shape[1]) // int(m.shape[1]) for m in maps)
        pooled = PyramidRoIAlign(POOL_SIZE, strides=strides, sampling_ratio=2,
                                 name="mask_roi_pool")([boxes, *maps])
        head = mask_head(maps[0].shape[-1], classes, width)
        return {"mask_boxes": boxes, "mask_logits": head(pooled)}

    return extend


def _detections(raw, image_size, *, score_threshold, iou_threshold, max_detections,
                name="nms"):
    """Faster R-CNN's detections (rcnn.inference_model's layers) from the raw outputs."""
    decoded = BoxHeadDecode(image_size, name=f"{name}_decode")(
        raw["class_logits"], raw["box_deltas"], raw["proposals"], raw["proposal_valid"])
    return NonMaxSuppression(iou_threshold=iou_threshold, score_threshold=score_threshold,
                             max_detections=max_detections, name=name)(*decoded)


@register("mask_rcnn", task="instance_segmentation", family="rcnn", year=2017,
          paper=PAPER,
          key_idea="Faster R-CNN plus a small FCN per RoI: a 28x28 mask of each class, "
                   "RoIAlign instead of RoIPooling's rounding",
          default_size=512, min_size=64, num_params=44_534_193, default_classes=90,
          params_source="faster_rcnn's 41,888,086 + torchvision maskrcnn_resnet50_fpn's "
                        "mask head for 91 outputs (2,646,107; "
                        "tests/detection/test_mask_rcnn.py)")
def MaskRCNN(classes=90, input_shape=None, backbone="resnet50", backbone_weights=None,
             trainable_backbone=True, fpn=True, fpn_channels=256, representation=1024,
             mask_channels=256, anchor_sizes=None, anchor_ratios=rcnn.RATIOS, pooling=None,
             rpn_pre_nms_top_n=rcnn.RPN_PRE_NMS_TOP_N,
             rpn_post_nms_top_n=rcnn.RPN_POST_NMS_TOP_N, rpn_nms_threshold=0.7,
             sampling=None, weights=None, name=None):
    """Mask R-CNN (see the module docstring): :func:`rcnn.FasterRCNN`'s arguments and
    outputs, plus ``mask_channels`` (the mask head's width, torchvision's 256) and the
    outputs ``mask_boxes (B, 100, 4)`` and ``mask_logits (B, 100, 28, 28,
    classes + 1)`` (the network's own detections and their masks). Train with
    :func:`training_dataset`, run with :func:`inference_model`."""
    return rcnn._build(
        name, "mask_rcnn", classes=classes, input_shape=input_shape, backbone=backbone,
        backbone_weights=backbone_weights, trainable_backbone=trainable_backbone, fpn=fpn,
        fpn_channels=fpn_channels, representation=representation,
        anchor_sizes=anchor_sizes, anchor_ratios=tuple(anchor_ratios), pooling=pooling,
        rpn_pre_nms_top_n=tuple(rpn_pre_nms_top_n),
        rpn_post_nms_top_n=tuple(rpn_post_nms_top_n), rpn_nms_threshold=rpn_nms_threshold,
        sampling=sampling, weights=weights, task="instance_segmentation",
        model_class=MaskRCNNModel, extend=_mask_branch(classes, mask_channels))


# --- data -----------------------------------------------------------------------------

model_classes = rcnn.model_classes
data_arguments = rcnn.data_arguments


def training_dataset(scenes, model, *, batch_size=8, shuffle=True, seed=0, max_boxes=100):
    """:func:`rcnn.training_dataset`'s batches with each object's mask: ``(images,
    {"boxes" (B, max_boxes, 4), "classes" (B, max_boxes) (-1 padding), "masks" (B,
    max_boxes, H, W) uint8})``.

    ``scenes``: a :class:`kvision.data.synthetic.Scenes` (its ``masks``, one per box),
    checked as rcnn's are; a box dropped there (degenerate after clipping) drops its
    mask too.
    """
    import tensorflow as tf

    if not (hasattr(scenes, "masks") and hasattr(scenes, "as_dataset")):
        raise ValueError(f"mask_rcnn.training_dataset takes a Scenes object (boxes, "
                         f"classes and masks), got {type(scenes).__name__}.")
    scenes = _sanitized(scenes, model)
    dataset = scenes.as_dataset(segmentation_masks=False, instance_masks=True)
    if shuffle:
        dataset = dataset.shuffle(1024, seed=seed)

    def targets(example):
        found = example["bounding_boxes"]
        boxes = tf.reshape(tf.cast(found["boxes"], tf.float32), (-1, 4))[:max_boxes]
        labels = tf.reshape(tf.cast(found["labels"], tf.int32), (-1,))[:max_boxes]
        masks = tf.cast(example["instance_masks"], tf.uint8)[:max_boxes]
        pad = max_boxes - tf.shape(labels)[0]
        return (tf.cast(example["images"], tf.float32),
                {"boxes": tf.pad(boxes, [[0, pad], [0, 0]]),
                 "classes": tf.pad(labels, [[0, pad]], constant_values=-1),
                 "masks": tf.pad(masks, [[0, pad], [0, 0], [0, 0]])})

    return (dataset.map(targets, num_parallel_calls=tf.data.AUTOTUNE)
            .batch(batch_size).prefetch(tf.data.AUTOTUNE))


def _sanitized(scenes, model):
    """rcnn's checks and cleaning, the masks kept in step with the boxes kept."""
    if any(np.shape(m)[0] != np.shape(b)[0] for m, b in zip(scenes.masks, scenes.boxes)):
        raise ValueError("Every box needs its mask: a scene's masks (n, H, W) and boxes "
                         "(n, 4) differ in n.")
    clean = rcnn._sanitized_scenes(scenes, model)
    height, width = scenes.images.shape[1:3]
    masks = []
    for boxes, image_masks in zip(scenes.boxes, scenes.masks):
        boxes = np.clip(np.asarray(boxes, "float64").reshape(-1, 4), 0,
                        [width, height, width, height])
        keep = ((boxes[:, 2] - boxes[:, 0]) >= 1.0) & ((boxes[:, 3] - boxes[:, 1]) >= 1.0)
        masks.append(np.asarray(image_masks, bool)[keep])
    return dataclasses.replace(clean, masks=masks)


# --- inference --------------------------------------------------------------------------

def inference_model(model, *, score_threshold=0.05, iou_threshold=0.5, max_detections=100,
                    mask_threshold=0.5):
    """Raw pixels ``(B, H, W, 3)`` -> the instance-segmentation protocol of
    :mod:`kvision.models.segmentation.instance`: ``{"instance_map" (B, H, W) int32 (0
    or the detection's number), "boxes", "scores", "classes", "num_detections"}``.

    Faster R-CNN's detections (:func:`rcnn.inference_model`'s decoding and per-class
    NMS, with these thresholds), the mask head on their boxes, each detection's class
    channel pasted into the image at its box (:class:`PasteMasks`): pixels at or
    above ``mask_threshold``, those claimed twice to the higher score.
    """
    levels = [name for name in rcnn.POOLED_LEVELS if name in model.output]
    # The network up to the box head: its own mask branch (default detections) is
    # left out of this graph rather than computed and thrown away.
    core = keras.Model(model.input, {k: model.output[k] for k in (*RAW, *levels)},
                       name=f"{model.name}_core")
    inputs = keras.Input(model.input_shape[1:], name="images")
    raw = core(inputs)
    found = _detections(raw, model.input_shape[1:3], score_threshold=score_threshold,
                        iou_threshold=iou_threshold, max_detections=max_detections)
    pooled = model.get_layer("mask_roi_pool")([found["boxes"], *(raw[k] for k in levels)])
    logits = model.get_layer("mask_head")(pooled)
    instance_map = PasteMasks(model.input_shape[1:3], mask_threshold, name="paste")(
        logits, found["boxes"], found["classes"], found["scores"], found["num_detections"])
    return TaskModel(inputs, {"instance_map": instance_map, **found},
                     name=f"{model.name}_segmenter", task="instance_segmentation")
