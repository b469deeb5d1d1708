"""YOLO v1 (Redmon, Divvala, Girshick & Farhadi, 2016, "You Only Look Once: Unified,
Real-Time Object Detection").

The image is divided into an S x S grid; each cell predicts B boxes ``(x, y,
sqrt(w), sqrt(h), confidence)`` and C class probabilities ``Pr(class | object)``.
The network (Figure 3) is 24 convolutions (LeakyReLU 0.1, no BatchNorm), the first
20 pretrained on ImageNet (the backbone here), then 4 more (one with stride 2: the
grid is input / 64, 7 at 448) and two fully connected layers (4096, dropout 0.5,
then ``S*S*(5B+C)`` linear). Output ``(B, S, S, 5B+C)`` (30 deep for PASCAL VOC).

Loss: :class:`kvision.losses.detection.YOLOv1Loss`, the paper's sum-squared error,
summed per image (:func:`loss` makes it for ``model.compile``).
"""

from __future__ import annotations

import keras
import tensorflow as tf

from kvision.blocks import conv_bn_act
from kvision.layers.yolo import YOLOv1Decode, YOLOv1Output
from kvision.losses.detection import (  # noqa: F401  (their old home)
    LAMBDA_COORD, LAMBDA_NOOBJ, YOLOv1Loss)
from kvision.models.classification.darknet import CONV
from kvision.models.detection import yolo
from kvision.registry import register
from kvision.tasks.model import TaskModel

PAPER = "You Only Look Once: Unified, Real-Time Object Detection"
# Figure 3's first 20 convolutions: (filters, kernel, stride), "M" a 2x2 max pool.
BACKBONE = ((64, 7, 2), "M", (192, 3, 1), "M",
            (128, 1, 1), (256, 3, 1), (256, 1, 1), (512, 3, 1), "M",
            *((256, 1, 1), (512, 3, 1)) * 4, (512, 1, 1), (1024, 3, 1), "M",
            *((512, 1, 1), (1024, 3, 1)) * 2)
HEAD = ((1024, 3, 1), (1024, 3, 2), (1024, 3, 1), (1024, 3, 1))
FC_UNITS = 4096


def _conv(x, filters, kernel, strides, *, name, batch_norm=False):
    """Conv (with bias: v1 predates BatchNorm) -> LeakyReLU(0.1); with
    ``batch_norm``, conv (no bias) -> BatchNorm -> LeakyReLU (darknet's later
    cfg/yolov1.cfg retraining). Padding is darknet's ``pad=1``: ``kernel // 2`` on
    every side, so the strided convs (conv1's 7x7/2, conv22's 3x3/2) pad 3 and 1
    before as after (Keras' "same" would pad 2 and 3, 0 and 1 on even sides)."""
    padding = "same" if strides == 1 else kernel // 2
    if batch_norm:
        return conv_bn_act(x, filters, kernel, strides, padding=padding, name=name,
                           **CONV)
    if padding != "same":
        x = keras.layers.ZeroPadding2D(padding, name=f"{name}_pad")(x)
        padding = "valid"
    x = keras.layers.Conv2D(filters, kernel, strides=strides, padding=padding,
                            name=f"{name}_conv")(x)
    return keras.layers.LeakyReLU(negative_slope=0.1, name=f"{name}_act")(x)


def darknet_v1_body(x, width=1.0, batch_norm=False):
    """The paper's first 20 convolutions and 4 max pools: ``(B, H, W, 3) ->
    (B, H/32, W/32, 1024*width)``."""
    conv = pool = 0
    for spec in BACKBONE:
        if spec == "M":
            pool += 1
            x = keras.layers.MaxPooling2D(2, padding="same", name=f"pool{pool}")(x)
        else:
            conv += 1
            filters, kernel, strides = spec
            x = _conv(x, yolo.scaled_filters(filters, width), kernel, strides,
                      name=f"conv{conv}", batch_norm=batch_norm)
    return [x]


def _head(feature, *, grid, boxes_per_cell, classes, width, dropout, batch_norm):
    x = feature
    for i, (filters, kernel, strides) in enumerate(HEAD, start=21):
        x = _conv(x, yolo.scaled_filters(filters, width), kernel, strides,
                  name=f"conv{i}", batch_norm=batch_norm)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(yolo.scaled_filters(FC_UNITS, width), name="fc1")(x)
    x = keras.layers.LeakyReLU(negative_slope=0.1, name="fc1_act")(x)
    if dropout:
        x = keras.layers.Dropout(dropout, name="fc1_dropout")(x)
    x = keras.layers.Dense(grid * grid * (5 * boxes_per_cell + classes), name="fc2")(x)
    return YOLOv1Output(grid, boxes_per_cell, classes, name="grid")(x)


@register("yolov1", task="detection", family="yolo", year=2016, paper=PAPER,
          key_idea="detection as one regression: an S x S grid of boxes and class "
                   "probabilities from one network",
          default_size=448, min_size=64, num_params=271_703_550, default_classes=20,
          params_source="the paper's Figure 3 at 448, S=7, B=2, C=20: 24 convs and 2 "
                        "FC layers with biases, no BatchNorm (counted from the figure)")
def YOLOv1(classes=20, input_shape=None, backbone=None, backbone_weights=None,
           trainable_backbone=True, grid=7, boxes_per_cell=2, weights=None, name=None,
           width=1.0, dropout=0.5, batch_norm=False):
    """YOLO v1 (Redmon et al., 2016).

    Input ``(B, H, W, 3)`` raw pixels, H and W multiples of 32, at least 64
    (default 448; the last conv map is H/64 rounded up, flattened into the FC);
    output ``(B, grid, grid, 5*boxes_per_cell + classes)`` linear (7x7x30 for
    VOC). ``backbone=None`` is the paper's 20 convolutions (``width`` scales their
    filters, the head's and the 4096-unit FC; ``dropout`` is the paper's 0.5 after
    the first FC, 0 for none; ``batch_norm=True`` puts BatchNorm after every conv,
    as darknet's later cfg/yolov1.cfg does, which trains from scratch where the
    paper's ImageNet-pretrained plain stack does not); a kvision / keras.applications name
    or a keras.Model is tapped at its stride-32 stage output.
    """
    yolo.check_classes(classes)
    for label, value in (("grid", grid), ("boxes_per_cell", boxes_per_cell)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"`{label}` must be an integer >= 1, got {value!r}.")
    if not width > 0:
        raise ValueError(f"width must be > 0, got {width!r}.")
    inputs, (feature,) = yolo.backbone_features(
        "yolov1", backbone, input_shape, ["P5"], backbone_weights=backbone_weights,
        trainable_backbone=trainable_backbone,
        paper_body=lambda x: darknet_v1_body(x, width, batch_norm))
    outputs = _head(feature, grid=grid, boxes_per_cell=boxes_per_cell, classes=classes,
                    width=width, dropout=dropout, batch_norm=batch_norm)
    return yolo.load_weights(TaskModel(inputs, outputs, name=name or "yolov1", task="detection"),
                             weights)


# --- targets ------------------------------------------------------------------------

def encode_targets(boxes, labels, *, grid, image_size, classes):
    """One image's ground truth -> ``(grid, grid, 5 + classes)`` float32 (tf ops).

    Per cell holding an object's center: ``(x, y)`` the center's offset in the
    cell (0..1), ``(w, h)`` the size relative to the image, 1, the one-hot class.
    One object per cell (the paper's limit): when two centers share a cell, one of
    them is kept. Boxes are clipped to the image; padding (label -1) and boxes of
    zero area after clipping are left out; other class ids outside ``[0, classes)``
    are an error.
    """
    boxes, labels = yolo._ground_truth(boxes, labels, classes, image_size)
    height, width = (float(s) for s in image_size)
    scale = tf.constant([width, height], tf.float32)
    center = (boxes[:, :2] + boxes[:, 2:]) / 2 / scale * grid
    cell = tf.minimum(tf.cast(tf.floor(center), tf.int32), grid - 1)
    values = tf.concat([center - tf.cast(cell, tf.float32),
                        (boxes[:, 2:] - boxes[:, :2]) / scale,
                        tf.ones_like(center[:, :1]), tf.one_hot(labels, classes)], axis=1)
    return tf.tensor_scatter_nd_update(tf.zeros((grid, grid, 5 + classes), tf.float32),
                                       tf.reverse(cell, [1]), values)


def output_layer(model):
    head = yolo.features.functional(model).outputs[0]._keras_history.operation
    if not isinstance(head, YOLOv1Output):
        raise ValueError(f"Model {model.name!r} is not a raw YOLO v1 model (its output "
                         f"must come from a YOLOv1Output layer, got "
                         f"{type(head).__name__}).")
    return head


def target_encoder(model):
    """``f(boxes, labels) -> targets`` for ``model``'s grid and classes."""
    head = output_layer(model)
    options = dict(grid=head.grid, image_size=model.input_shape[1:3],
                   classes=head.classes)
    return lambda boxes, labels: encode_targets(boxes, labels, **options)


def training_dataset(data, model, **kwargs):
    """``(images, targets)`` batches for ``model.fit`` (see
    :func:`kvision.models.detection.yolo.training_dataset`)."""
    return yolo.training_dataset(data, model, encoder=target_encoder(model), **kwargs)


# --- the loss -----------------------------------------------------------------------

def loss(model, **kwargs):
    """The :class:`YOLOv1Loss` for ``model``, for ``model.compile``."""
    return YOLOv1Loss(output_layer(model).boxes_per_cell, **kwargs)


losses = loss  # the name the detection task asks every detector module for


# --- inference ----------------------------------------------------------------------

def inference_model(model, *, score_threshold=0.5, iou_threshold=0.5,
                    max_detections=100):
    """Raw pixels -> the detection dict (``boxes``, ``scores``, ``classes``,
    ``num_detections``): :class:`kvision.layers.yolo.YOLOv1Decode` (class-specific
    confidence ``Pr(class|object) * confidence``), then per-class NMS."""
    head = output_layer(model)
    inputs = keras.Input(model.input_shape[1:], name="images")
    decoded = YOLOv1Decode(head.boxes_per_cell, model.input_shape[1:3],
                           name="decode")(model(inputs))
    return yolo.detector(model, [decoded], score_threshold=score_threshold,
                         iou_threshold=iou_threshold, max_detections=max_detections,
                         inputs=inputs)
