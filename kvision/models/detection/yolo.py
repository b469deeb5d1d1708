"""YOLOv3 and YOLOv3-tiny (Redmon & Farhadi, 2018, "YOLOv3: An Incremental Improvement").

YOLOv3 taps Darknet-53 at strides 32, 16 and 8 (13, 26, 52 cells at 416x416) and
predicts, per cell and per anchor (3 per scale), a box ``(tx, ty, tw, th)``, an
objectness logit and ``C`` independent class logits. Coarse features are upsampled
and concatenated with finer ones (a feature pyramid). YOLOv3-tiny uses a 7-conv
backbone with max pooling and two scales (strides 32, 16), for CPUs and phones.

The model returns raw outputs, coarse to fine: one ``(B, S, S, A, 5+C)`` tensor
per scale (:class:`kvision.layers.yolo.YOLOv3Output` reshapes the last 1x1 conv's
``S x S x A*(5+C)`` and records its anchors). Training and inference:

    model = kvision.models.create("yolov3_tiny", classes=10, input_shape=(96, 96, 3))
    model.compile(optimizer="adam", loss=yolo.losses(model))
    model.fit(yolo.training_dataset(scenes, model, batch_size=8), epochs=...)
    detector = yolo.inference_model(model, score_threshold=0.5)
    detector(images)  # {"boxes", "scores", "classes", "num_detections"}

Loss: :class:`kvision.losses.detection.YOLOv3Loss`, one per scale, summed over cells,
averaged over images (:func:`losses` makes them for ``model.compile``).
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np

from kvision import features
from kvision.blocks import conv_bn_act
from kvision.layers.yolo import YOLOv3Decode, YOLOv3Output
from kvision.losses.detection import (  # noqa: F401  (their old home)
    IGNORE_THRESHOLD, MAX_BOXES, YOLOv3Loss)
from kvision.models._builder import task_input
from kvision.models.backbone import build_backbone
from kvision.models.classification.darknet import CONV
from kvision.registry import register
from kvision.tasks.model import TaskModel

PAPER = "YOLOv3: An Incremental Improvement"
# darknet's cfg/yolov3.cfg: COCO anchors (w, h) at 416x416, and which go to which
# scale (strides 32, 16, 8: the largest anchors on the coarsest grid).
COCO_ANCHORS = ((10, 13), (16, 30), (33, 23), (30, 61), (62, 45), (59, 119),
                (116, 90), (156, 198), (373, 326))
COCO_MASKS = ((6, 7, 8), (3, 4, 5), (0, 1, 2))
# cfg/yolov3-tiny.cfg: its anchors and masks (the 26x26 scale uses anchors 1, 2, 3).
TINY_ANCHORS = ((10, 14), (23, 27), (37, 58), (81, 82), (135, 169), (344, 319))
TINY_MASKS = ((3, 4, 5), (1, 2, 3))


# --- arguments ----------------------------------------------------------------------

def check_classes(classes):
    if not isinstance(classes, int) or isinstance(classes, bool) or classes < 1:
        raise ValueError(f"`classes` must be an integer >= 1, got {classes!r}.")
    return classes


def scale_anchors(anchors, default, masks):
    """Per-scale anchor groups, coarsest scale first.

    ``anchors``: None (the paper's, grouped by ``masks``); one ``(K, 2)`` array of
    (w, h) pixels, e.g. :func:`kvision.ops.boxes.kmeans_anchors`' result, split into
    ``len(masks)`` equal groups by area, the largest to the coarsest scale; or a list
    of per-scale ``(A, 2)`` arrays, coarsest first.
    """
    if anchors is None:
        return [np.asarray([default[i] for i in mask], "float32") for mask in masks]
    scales = len(masks)
    if isinstance(anchors, (list, tuple)) and len(anchors) == scales and all(
            np.ndim(group) == 2 for group in anchors):
        groups = [np.asarray(group, "float32") for group in anchors]
    else:
        flat = np.asarray(anchors, "float32")
        if flat.ndim != 2 or flat.shape[1] != 2 or len(flat) % scales:
            raise ValueError(
                f"anchors must be (K, 2) widths and heights with K a multiple of "
                f"{scales} (one group per scale), or {scales} arrays of shape (A, 2); "
                f"got shape {flat.shape}.")
        flat = flat[np.argsort(flat[:, 0] * flat[:, 1], kind="stable")]
        groups = np.split(flat, scales)[::-1]
    sizes = {len(g) for g in groups}
    if len(sizes) != 1 or any(g.ndim != 2 or g.shape[1] != 2 for g in groups):
        raise ValueError(f"Every scale needs the same number of (w, h) anchors; got "
                         f"shapes {[g.shape for g in groups]}.")
    if any(np.any(g <= 0) for g in groups):
        raise ValueError("Anchor widths and heights must be > 0.")
    return groups


# --- backbones ----------------------------------------------------------------------

def backbone_features(registry_name, backbone, input_shape, levels, *, backbone_weights,
                      trainable_backbone, paper_body):
    """``(images, [features at levels])`` of a YOLO model.

    ``backbone``: a zoo / keras.applications name or a keras.Model, as every task
    takes it (:func:`kvision.models.backbone.build_backbone`, tapped at ``levels``);
    None is the paper's body (``paper_body(x) -> [features]``, random, nested as
    ``"backbone"`` after pixels scaled to [0, 1]). The input: every task's check
    (sides multiples of the deepest level's stride).
    """
    multiple = max(features.PYRAMID_LEVELS[level] for level in levels)
    if backbone is not None:
        images, feats = build_backbone(
            backbone, levels, input_shape=input_shape, weights=backbone_weights,
            trainable=trainable_backbone, task=registry_name, multiple=multiple,
            fixed_size=True)
        return images, feats if isinstance(feats, list) else [feats]
    images = task_input(registry_name, input_shape, multiple=multiple, fixed_size=True)
    inputs = keras.Input(images.shape[1:], name="backbone_input")
    net = keras.Model(inputs, paper_body(inputs), name="backbone")
    if trainable_backbone is False:
        net.trainable = False
    elif trainable_backbone is not True:  # blocks or a regime, as for a named one
        from kvision import transfer

        regime = trainable_backbone if trainable_backbone in transfer.REGIMES else None
        transfer.set_trainable(net, None if regime else trainable_backbone, regime=regime)
    x = keras.layers.Rescaling(1 / 255, name="preprocessing")(images)
    return images, keras.tree.flatten(net(x))


def load_weights(model, weights):
    if weights is not None:
        from kvision import weights as weights_lib
        weights_lib.load_file(model, features.check_weights(weights))
    return model


# --- the networks -------------------------------------------------------------------

def _conv(x, filters, kernel_size, strides=1, *, name):
    return conv_bn_act(x, filters, kernel_size, strides, name=name, **CONV)


def _output(x, anchors, classes, *, name):
    """1x1 conv (with bias, linear) to ``A*(5+C)``, reshaped per anchor."""
    x = keras.layers.Conv2D(len(anchors) * (5 + classes), 1, name=f"{name}_conv")(x)
    return YOLOv3Output(anchors, classes, name=name)(x)


def _v3_block(x, filters, *, name):
    """Five alternating 1x1/3x3 convs: YOLOv3's detection block (its branch point)."""
    for i, (mult, k) in enumerate(((1, 1), (2, 3), (1, 1), (2, 3), (1, 1)), start=1):
        x = _conv(x, filters * mult, k, name=f"{name}_{i}")
    return x


def _upsampled(x, filters, *, name):
    x = _conv(x, filters, 1, name=f"{name}_reduce")
    return keras.layers.UpSampling2D(2, name=f"{name}_upsample")(x)


def _v3_head(feats, anchors, classes):
    """Stride-8/16/32 features -> three raw outputs, coarse to fine (qqwweee's
    ``yolo_body``: detection blocks of 512, 256, 128 filters)."""
    c3, c4, c5 = feats
    outputs, x = [], None
    for level, (feature, filters, stride) in enumerate(
            ((c5, 512, 32), (c4, 256, 16), (c3, 128, 8))):
        if x is not None:
            x = _upsampled(x, filters, name=f"head{stride}")
            feature = keras.layers.Concatenate(name=f"head{stride}_concat")([x, feature])
        x = _v3_block(feature, filters, name=f"head{stride}")
        y = _conv(x, filters * 2, 3, name=f"head{stride}_6")
        outputs.append(_output(y, anchors[level], classes, name=f"stride{stride}"))
    return outputs


def scaled_filters(filters, width):
    """``filters * width``, rounded, at least 8."""
    return max(8, int(round(filters * width)))


def tiny_darknet_body(x, width=1.0):
    """YOLOv3-tiny's backbone (cfg/yolov3-tiny.cfg layers 0-12): six 3x3 convs
    (16..512 filters) each followed by 2x2 max pooling (the last with stride 1),
    then a 3x3 conv of 1024. Returns the stride-16 and stride-32 features."""
    for i, filters in enumerate((16, 32, 64, 128, 256, 512), start=1):
        x = _conv(x, scaled_filters(filters, width), 3, name=f"tiny{i}")
        if i == 5:
            c4 = x
        x = keras.layers.MaxPooling2D(2, strides=1 if i == 6 else 2, padding="same",
                                      name=f"tiny{i}_pool")(x)
    c5 = _conv(x, scaled_filters(1024, width), 3, name="tiny7")
    return [c4, c5]


def _tiny_head(feats, anchors, classes, width):
    c4, c5 = feats
    x = _conv(c5, scaled_filters(256, width), 1, name="head32_1")
    y = _conv(x, scaled_filters(512, width), 3, name="head32_2")
    out32 = _output(y, anchors[0], classes, name="stride32")
    x = _upsampled(x, scaled_filters(128, width), name="head16")
    x = keras.layers.Concatenate(name="head16_concat")([x, c4])
    y = _conv(x, scaled_filters(256, width), 3, name="head16_1")
    return [out32, _output(y, anchors[1], classes, name="stride16")]


def _build(name, registry_name, head, strides, *, classes, input_shape, backbone,
           backbone_weights, trainable_backbone, weights, paper_body):
    check_classes(classes)
    inputs, feats = backbone_features(
        registry_name, backbone, input_shape, [f"P{s.bit_length() - 1}" for s in strides],
        backbone_weights=backbone_weights, trainable_backbone=trainable_backbone,
        paper_body=paper_body)
    model = TaskModel(inputs, head(feats), name=name or registry_name, task="detection")
    return load_weights(model, weights)


@register("yolov3", task="detection", family="yolo", year=2018, paper=PAPER,
          key_idea="Darknet-53, three scales of anchors with a feature pyramid, "
                   "independent logistic classes",
          default_size=416, min_size=32, num_params=62_001_757, default_classes=80,
          params_source="qqwweee/keras-yolo3 yolo_body, 80 classes at 416: Keras "
                        "count_params 62,001,757 (61,949,149 trainable), also the "
                        "float count of darknet's yolov3.weights")
def YOLOv3(classes=80, input_shape=None, backbone="darknet53", backbone_weights=None,
           trainable_backbone=True, anchors=None, weights=None, name=None):
    """YOLOv3 (Redmon & Farhadi, 2018) on Darknet-53 or another backbone.

    Input ``(B, H, W, 3)`` raw pixels 0..255, H and W multiples of 32 (default 416).
    Outputs, coarse to fine, ``(B, H/32, W/32, 3, 5+C)``, ``(B, H/16, W/16, 3, 5+C)``,
    ``(B, H/8, W/8, 3, 5+C)`` raw logits (13, 26, 52 cells at 416). ``backbone``: a
    kvision or keras.applications name, or a keras.Model, tapped at its stride
    8/16/32 stage outputs; ``anchors``: see :func:`scale_anchors`.
    """
    groups = scale_anchors(anchors, COCO_ANCHORS, COCO_MASKS)
    return _build(name, "yolov3", lambda f: _v3_head(f, groups, classes), (8, 16, 32),
                  classes=classes, input_shape=input_shape, backbone=backbone,
                  backbone_weights=backbone_weights,
                  trainable_backbone=trainable_backbone, weights=weights,
                  paper_body=None)


@register("yolov3_tiny", task="detection", family="yolo", year=2018, paper=PAPER,
          key_idea="7-conv max-pooling backbone and two scales: YOLOv3 for CPUs/phones",
          default_size=416, min_size=32, num_params=8_858_734, default_classes=80,
          params_source="darknet cfg/yolov3-tiny.cfg, 80 classes at 416 (Keras "
                        "count_params; = the float count of darknet's "
                        "yolov3-tiny.weights, 35,434,956 bytes)")
def YOLOv3Tiny(classes=80, input_shape=None, backbone=None, backbone_weights=None,
               trainable_backbone=True, anchors=None, weights=None, name=None,
               width=1.0):
    """YOLOv3-tiny (darknet's yolov3-tiny.cfg): two scales, 3 anchors each.

    Input ``(B, H, W, 3)`` raw pixels, H and W multiples of 32 (default 416).
    Outputs ``(B, H/32, W/32, 3, 5+C)`` and ``(B, H/16, W/16, 3, 5+C)`` raw logits.
    ``backbone=None`` is the paper's tiny Darknet (``width`` scales its filters and
    the head's); a named backbone or keras.Model is tapped at strides 16 and 32.
    """
    if not width > 0:
        raise ValueError(f"width must be > 0, got {width!r}.")
    groups = scale_anchors(anchors, TINY_ANCHORS, TINY_MASKS)
    return _build(name, "yolov3_tiny", lambda f: _tiny_head(f, groups, classes, width),
                  (16, 32), classes=classes, input_shape=input_shape, backbone=backbone,
                  backbone_weights=backbone_weights,
                  trainable_backbone=trainable_backbone, weights=weights,
                  paper_body=lambda x: tiny_darknet_body(x, width))


# --- targets ------------------------------------------------------------------------

def _check_labels(labels, classes):
    """Class ids in ``[0, classes)``: a ``ValueError`` when eager, an assertion (that
    stops a tf.data pipeline with this message) in a graph."""
    import tensorflow as tf

    message = (f"class ids must be in [0, {classes}) (the model's classes); the data "
               f"has a class the model does not know")
    if tf.executing_eagerly():
        values = labels.numpy()
        wrong = values[(values < 0) | (values >= classes)]
        if wrong.size:
            raise ValueError(f"{message}: {sorted(set(wrong.tolist()))}.")
        return labels
    with tf.control_dependencies([
            tf.debugging.assert_non_negative(labels, message=message),
            tf.debugging.assert_less(labels, classes, message=message)]):
        return tf.identity(labels)


def _ground_truth(boxes, labels, classes, image_size):
    """``(n, 4)`` float32 xyxy clipped to the image and ``(n,)`` int32 labels.

    Padding (label -1, what Keras' augmentation layers, :class:`~kvision.data.
    box_augment.DropSmallBoxes` and dense batches mark) and boxes of zero area after
    clipping (inverted, or wholly outside) are left out before the class ids are
    checked; any other id outside ``[0, classes)`` is an error.
    """
    import tensorflow as tf

    height, width = (float(s) for s in image_size)
    boxes = tf.reshape(tf.cast(boxes, tf.float32), (-1, 4))
    boxes = tf.clip_by_value(boxes, 0.0, tf.constant([width, height, width, height]))
    labels = tf.reshape(tf.cast(labels, tf.int32), (-1,))
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1]) & (labels != -1)
    labels = _check_labels(tf.boolean_mask(labels, keep), classes)
    return tf.boolean_mask(boxes, keep), labels


def encode_targets(boxes, labels, *, anchors, grid_sizes, image_size, classes):
    """One image's ground truth -> the loss's targets (tf ops: works in a
    ``tf.data`` map on ragged per-image boxes).

    Each box goes to the anchor (of all scales) whose shape fits it best (IoU of
    the sizes, centers aligned), in the cell holding its center. Boxes are first
    clipped to the image; padding (label -1) and boxes of zero area after clipping
    are left out; other class ids outside ``[0, classes)`` are an error.

    Args:
        boxes: ``(n, 4)`` xyxy pixels; labels: ``(n,)`` int class ids (n may be 0).
        anchors: per-scale ``(A, 2)`` anchor groups, coarsest first.
        grid_sizes: per-scale ``(rows, cols)``; image_size: ``(height, width)``.
    Returns:
        A tuple, coarsest scale first, of ``(rows, cols, A, 5 + classes)`` float32:
        ``(cx, cy, w, h)`` pixels, 1 where a box is assigned, its one-hot class.
    """
    import tensorflow as tf

    boxes, labels = _ground_truth(boxes, labels, classes, image_size)
    height, width = (float(s) for s in image_size)
    centers = (boxes[:, :2] + boxes[:, 2:]) / 2
    sizes = boxes[:, 2:] - boxes[:, :2]
    per_scale = len(anchors[0])
    every = tf.constant(np.concatenate(anchors), tf.float32)
    overlap = tf.reduce_prod(tf.minimum(sizes[:, None], every[None]), -1)
    union = (tf.reduce_prod(sizes, -1)[:, None] + tf.reduce_prod(every, -1)[None]
             - overlap)
    best = tf.argmax(overlap / union, axis=1, output_type=tf.int32)
    targets = []
    for level, (rows, cols) in enumerate(grid_sizes):
        here = tf.equal(best // per_scale, level)
        center = tf.boolean_mask(centers, here)
        cell = tf.cast(tf.floor(center / [width / cols, height / rows]), tf.int32)
        cell = tf.minimum(tf.maximum(cell, 0), [cols - 1, rows - 1])
        index = tf.stack([cell[:, 1], cell[:, 0],
                          tf.boolean_mask(best, here) % per_scale], axis=1)
        values = tf.concat([center, tf.boolean_mask(sizes, here),
                            tf.ones_like(center[:, :1]),
                            tf.one_hot(tf.boolean_mask(labels, here), classes)], axis=1)
        grid = tf.zeros((rows, cols, per_scale, 5 + classes), tf.float32)
        targets.append(tf.tensor_scatter_nd_update(grid, index, values))
    return tuple(targets)


def output_layers(model):
    """The model's :class:`YOLOv3Output` layers, in output order."""
    heads = [t._keras_history.operation for t in features.functional(model).outputs]
    if not heads or not all(isinstance(h, YOLOv3Output) for h in heads):
        raise ValueError(f"Model {model.name!r} is not a raw YOLOv3 model (its outputs "
                         f"must come from YOLOv3Output layers; got "
                         f"{[type(h).__name__ for h in heads]}).")
    return heads


def target_encoder(model):
    """``f(boxes, labels) -> targets`` for ``model`` (its anchors, grids, classes)."""
    heads = output_layers(model)
    grid_sizes = [tuple(int(d) for d in t.shape[1:3])
                  for t in features.functional(model).outputs]
    options = dict(anchors=[np.asarray(h.anchors, "float32") for h in heads],
                   grid_sizes=grid_sizes, image_size=model.input_shape[1:3],
                   classes=heads[0].classes)
    return lambda boxes, labels: encode_targets(boxes, labels, **options)


def training_dataset(data, model, *, batch_size=8, shuffle=True, seed=0, encoder=None,
                     augment=None):
    """A ``tf.data.Dataset`` of ``(images, targets)`` batches for ``model.fit``.

    ``data``: a :class:`kvision.data.synthetic.Scenes` (its boxes are checked first
    with :func:`kvision.ops.boxes.sanitize`: clipped, degenerate ones dropped with a
    counted warning, class ids beyond the model's classes a ``ValueError``) or an
    unbatched ``tf.data.Dataset`` in Keras' bounding-box dict format. ``augment``:
    an optional ``f(example dict) -> example dict`` (Keras augmentation layers)
    applied before encoding. ``encoder``: defaults to :func:`target_encoder`.
    """
    import tensorflow as tf

    encoder = encoder or target_encoder(model)
    dataset = box_examples(data, lambda scenes: _sanitized(scenes, model), shuffle=shuffle,
                           seed=seed, augment=augment)

    def encode(example):
        found = example["bounding_boxes"]
        return example["images"], encoder(found["boxes"], found["labels"])

    return (dataset.map(encode, num_parallel_calls=tf.data.AUTOTUNE)
            .batch(batch_size).prefetch(tf.data.AUTOTUNE))


def box_examples(data, sanitize, *, shuffle, seed, augment=None):
    """The unbatched examples (Keras' bounding-box dicts) a detector's
    ``training_dataset`` encodes: a :class:`kvision.data.synthetic.Scenes` first
    checked by ``sanitize(scenes)``, or a ``tf.data.Dataset`` as it is; shuffled, then
    ``augment`` mapped over them."""
    import tensorflow as tf

    if hasattr(data, "boxes") and hasattr(data, "as_dataset"):
        dataset = sanitize(data).as_dataset(segmentation_masks=False)
    elif isinstance(data, tf.data.Dataset):
        dataset = data
    else:
        raise ValueError(f"data must be a Scenes object or a tf.data.Dataset of "
                         f"bounding-box dicts, got {type(data).__name__}.")
    if shuffle:
        dataset = dataset.shuffle(1024, seed=seed)
    if augment is not None:
        dataset = dataset.map(augment, num_parallel_calls=tf.data.AUTOTUNE)
    return dataset


def model_classes(model):
    last = features.functional(model).outputs[0]._keras_history.operation
    return last.classes


def _sanitized(scenes, model):
    from kvision.ops import boxes as box_ops

    classes = model_classes(model)
    shape = scenes.images.shape[1:3]
    if tuple(shape) != tuple(model.input_shape[1:3]):
        raise ValueError(f"The images are {tuple(shape)} but the model takes "
                         f"{tuple(model.input_shape[1:3])}.")
    boxes, classes = box_ops.sanitize_images(scenes.boxes, scenes.classes, shape,
                                             num_classes=classes,
                                             caller="yolo.training_dataset")
    return dataclasses.replace(scenes, boxes=boxes, classes=classes)


def data_arguments(name, box_sizes, seed=0):
    """Builder arguments fitted to a dataset (the detection task asks for them):
    ``anchors``, as many as the paper's, by k-means under ``1 - IoU`` on the
    ``(N, 2)`` widths and heights of its boxes in input pixels (YOLOv2's rule)."""
    from kvision.ops.boxes import kmeans_anchors

    count = len(TINY_ANCHORS if name == "yolov3_tiny" else COCO_ANCHORS)
    return {"anchors": kmeans_anchors(np.asarray(box_sizes, "float32"), count, seed=seed)}


# --- the loss -----------------------------------------------------------------------

def losses(model, **kwargs):
    """One :class:`YOLOv3Loss` per output of ``model``, for ``model.compile``."""
    size = model.input_shape[1:3]
    return [YOLOv3Loss(h.anchors, size, name=f"{h.name}_loss", **kwargs)
            for h in output_layers(model)]


# --- inference ----------------------------------------------------------------------

def detector(model, decoded, *, score_threshold, iou_threshold, max_detections, inputs):
    """``decoded``: [(boxes, scores, classes)] per scale -> the protocol's dict model."""
    from kvision.layers.detection import NonMaxSuppression

    if len(decoded) > 1:
        parts = [keras.layers.Concatenate(axis=1, name=f"all_{what}")(
            [d[i] for d in decoded]) for i, what in enumerate(("boxes", "scores",
                                                               "classes"))]
    else:
        parts = list(decoded[0])
    nms = NonMaxSuppression(iou_threshold=iou_threshold, score_threshold=score_threshold,
                            max_detections=max_detections, name="nms")
    return TaskModel(inputs, nms(*parts), name=f"{model.name}_detector", task="detection")


def inference_model(model, *, objectness_threshold=0.5, score_threshold=0.5,
                    iou_threshold=0.5, max_detections=100):
    """Raw pixels ``(B, H, W, 3)`` -> ``{"boxes" (B, K, 4) xyxy pixels, "scores"
    (B, K), "classes" (B, K) int32 (-1 padded), "num_detections" (B,)}``.

    Every scale is decoded (:class:`kvision.layers.yolo.YOLOv3Decode`); a box is
    kept when its ``sigmoid(objectness)`` exceeds ``objectness_threshold`` and
    ``sigmoid(objectness) * sigmoid(class)`` of its best class exceeds
    ``score_threshold`` (darknet's rule, both 0.5 by default; lower
    ``score_threshold`` alone, e.g. to 0.001 for mAP, to keep the objectness
    gate), then per-class NMS at ``iou_threshold`` keeps at most ``max_detections``.
    """
    heads = output_layers(model)
    inputs = keras.Input(model.input_shape[1:], name="images")
    raw = model(inputs)
    raw = raw if isinstance(raw, (list, tuple)) else [raw]
    size = model.input_shape[1:3]
    decoded = [YOLOv3Decode(h.anchors, size, objectness_threshold=objectness_threshold,
                            name=f"decode_{h.name}")(r)
               for h, r in zip(heads, raw)]
    return detector(model, decoded, score_threshold=score_threshold,
                    iou_threshold=iou_threshold, max_detections=max_detections,
                    inputs=inputs)
