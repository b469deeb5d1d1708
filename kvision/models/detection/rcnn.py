"""Faster R-CNN (Ren, He, Girshick & Sun, 2015) and its feature-pyramid form (Lin et
al., 2017), trained end to end with ``model.fit``.

One backbone pass; a region proposal network (RPN) slides a 3x3 conv over the
features and scores, at every location, ``A`` anchors (objectness logit and 4 box
deltas); the best proposals after NMS are pooled onto a fixed grid
(:class:`kvision.layers.RoIAlign`, or :class:`kvision.layers.RoIPooling`, Fast
R-CNN's max pooling) and a box head (two fully connected layers) answers a class
(background included) and class-specific box deltas per RoI::

    images (B, H, W, 3) raw pixels
      -> backbone at P2..P5 (FPN: + top-down pathway, P6 by max pooling) or at P4
      -> RPN: objectness (B, A_total), deltas (B, A_total, 4)
      -> RegionProposals: proposals (B, P, 4) xyxy pixels, valid (B, P)
      -> RoI pooling (B, P, 7, 7, C) -> fc6, fc7 -> class_logits (B, P, K+1),
                                                     box_deltas (B, P, 4(K+1))

Two forms, as the issue and the papers give them:

- ``fpn=True`` (torchvision's ``fasterrcnn_resnet50_fpn``): a 256-channel feature
  pyramid, one anchor size per level (32 ... 512 on P2 ... P6) x 3 ratios, RoIAlign
  7x7 from the level the RoI's size picks, a 1024-wide box head. With a ResNet-50
  body and 91 outputs (90 classes and background) the layers after the body hold
  18,300,374 parameters, torchvision's count (tests/detection/test_rcnn.py).
- ``fpn=False`` (the paper's): one level at stride 16, 9 anchors (128, 256, 512 x
  1:2, 1:1, 2:1), RoIPooling 7x7 at spatial scale 1/16.

Training (:class:`TwoStageDetector.compute_loss`, torchvision's recipe): RPN anchors
labelled at IoU 0.7 / 0.3, 256 sampled per image with up to half positive; box-head
RoIs sampled from the proposals plus the ground truth, 25% foreground at IoU >= 0.5,
background in [0.1, 0.5); cross-entropy + smooth-L1 for both stages (lambda = 1).
Proposals carry no gradient (approximate joint training)::

    model = kvision.models.create("faster_rcnn", classes=10, backbone="resnet18",
                                  input_shape=(96, 96, 3), fpn_channels=64)
    model.compile(optimizer="adam")                  # the model computes its losses
    model.fit(rcnn.training_dataset(scenes, model, batch_size=8), epochs=...)
    detector = rcnn.inference_model(model)
    detector(images)  # {"boxes", "scores", "classes", "num_detections"}
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np

from kvision.layers.detection import NonMaxSuppression
from kvision.layers.rcnn import (BoxHeadDecode, InferenceOnly, PyramidRoIAlign,
                                 RegionProposals, SingleLevelRoIPooling)
from kvision.models.detection.yolo import backbone_features, check_classes, load_weights
from kvision.registry import register
from kvision.tasks.model import TaskModel
from kvision.tasks.two_stage import (  # noqa: F401  (the model classes live there)
    LOSS_PARTS, POOLED_LEVELS, Sampling, TwoStageDetector)

PAPER = "Faster R-CNN: Towards Real-Time Object Detection with Region Proposal Networks"
FPN_PAPER = "Feature Pyramid Networks for Object Detection"
RATIOS = (0.5, 1.0, 2.0)
PAPER_SIZES = ((128.0, 256.0, 512.0),)           # one level, stride 16: 9 anchors
PYRAMID_SIZES = ((32.0,), (64.0,), (128.0,), (256.0,), (512.0,))  # P2..P6
# torchvision's defaults (FasterRCNN.__init__), (training, inference) pairs.
RPN_PRE_NMS_TOP_N = (2000, 1000)
RPN_POST_NMS_TOP_N = (2000, 1000)


# --- the network --------------------------------------------------------------------

def _fpn(feats, channels):
    """torchvision's FeaturePyramidNetwork with LastLevelMaxPool: 1x1 laterals, a
    nearest-upsampled top-down sum, 3x3 outputs P2..P5, and P6 = P5 subsampled."""
    inner = [keras.layers.Conv2D(channels, 1, name=f"fpn_inner{i}")(f)
             for i, f in enumerate(feats)]
    last = inner[-1]
    outputs = [keras.layers.Conv2D(channels, 3, padding="same",
                                   name=f"fpn_layer{len(feats) - 1}")(last)]
    for i in range(len(feats) - 2, -1, -1):
        top_down = keras.layers.UpSampling2D(2, interpolation="nearest",
                                             name=f"fpn_upsample{i}")(last)
        last = keras.layers.Add(name=f"fpn_add{i}")([inner[i], top_down])
        outputs.insert(0, keras.layers.Conv2D(channels, 3, padding="same",
                                              name=f"fpn_layer{i}")(last))
    outputs.append(keras.layers.MaxPooling2D(1, strides=2, name="fpn_pool")(outputs[-1]))
    return outputs


def _rpn(maps, anchors_per_location):
    """torchvision's RPNHead, shared by every level: a 3x3 conv + ReLU, then 1x1
    convs to ``A`` objectness logits and ``4A`` deltas per location; flattened in
    (location, anchor) order and concatenated over the levels."""
    channels = maps[0].shape[-1]
    conv = keras.layers.Conv2D(channels, 3, padding="same", activation="relu",
                               name="rpn_conv")
    score = keras.layers.Conv2D(anchors_per_location, 1, name="rpn_cls_logits")
    delta = keras.layers.Conv2D(4 * anchors_per_location, 1, name="rpn_bbox_pred")
    objectness, deltas = [], []
    for i, features in enumerate(maps):
        t = conv(features)
        objectness.append(keras.layers.Reshape((-1,), name=f"rpn_objectness{i}")(score(t)))
        deltas.append(keras.layers.Reshape((-1, 4), name=f"rpn_deltas{i}")(delta(t)))
    if len(maps) == 1:
        return objectness[0], deltas[0]
    return (keras.layers.Concatenate(axis=1, name="rpn_objectness")(objectness),
            keras.layers.Concatenate(axis=1, name="rpn_deltas")(deltas))


def box_head(channels, pool_size, representation, classes, name="box_head"):
    """torchvision's TwoMLPHead + FastRCNNPredictor as one nested model: pooled RoIs
    ``(B, R, s, s, C)`` -> ``{"class_logits" (B, R, K+1), "box_deltas" (B, R,
    4(K+1))}``."""
    pooled = keras.Input((None, pool_size, pool_size, channels), name="pooled_rois")
    x = keras.layers.Reshape((-1, pool_size * pool_size * channels), name="flatten")(pooled)
    x = keras.layers.Dense(representation, activation="relu", name="fc6")(x)
    x = keras.layers.Dense(representation, activation="relu", name="fc7")(x)
    return keras.Model(pooled, {
        "class_logits": keras.layers.Dense(classes + 1, name="cls_score")(x),
        "box_deltas": keras.layers.Dense(4 * (classes + 1), name="bbox_pred")(x)},
        name=name)


def _pooler(fpn, pooling):
    if pooling not in ("align", "max"):
        raise ValueError(f"pooling must be 'align' (RoIAlign) or 'max' (Fast R-CNN's "
                         f"RoIPooling), got {pooling!r}.")
    strides = (4, 8, 16, 32) if fpn else (16,)
    if pooling == "max":
        if fpn:
            raise ValueError("pooling='max' is the single-level (fpn=False) Fast R-CNN "
                             "pooler; the feature pyramid pools with RoIAlign.")
        return SingleLevelRoIPooling(output_size=7, spatial_scale=1 / 16, name="box_roi_pool")
    return PyramidRoIAlign(7, strides=strides, sampling_ratio=2, name="box_roi_pool")


def _build(name, registry_name, *, classes, input_shape, backbone, backbone_weights,
           trainable_backbone, fpn, fpn_channels, representation, anchor_sizes,
           anchor_ratios, pooling, rpn_pre_nms_top_n, rpn_post_nms_top_n,
           rpn_nms_threshold, sampling, weights, task="detection", model_class=None,
           extend=None):
    """The network; ``extend(outputs, images) -> more outputs`` adds a head on the
    pyramid (Mask R-CNN's), built as ``model_class`` (a :class:`TwoStageDetector`)."""
    check_classes(classes)
    levels = ("P2", "P3", "P4", "P5") if fpn else ("P4",)
    images, feats = backbone_features(
        registry_name, backbone, input_shape, levels, backbone_weights=backbone_weights,
        trainable_backbone=trainable_backbone, paper_body=None)
    if fpn:
        maps = _fpn(feats, fpn_channels)
        strides, names = (4, 8, 16, 32, 64), ("P2", "P3", "P4", "P5")
    else:
        maps, strides, names = feats, (16,), ("P4",)
    sizes = _anchor_sizes(anchor_sizes, fpn)
    if len(sizes) != len(maps):
        raise ValueError(f"anchor_sizes: one tuple of sizes per level ({len(maps)} levels: "
                         f"{'P2..P6' if fpn else 'P4'}), got {len(sizes)}.")
    per_location = len(sizes[0]) * len(anchor_ratios)
    objectness, deltas = _rpn(maps, per_location)
    found = RegionProposals(
        images.shape[1:3], [m.shape[1:3] for m in maps], strides, sizes, anchor_ratios,
        pre_nms_top_n=rpn_pre_nms_top_n, post_nms_top_n=rpn_post_nms_top_n,
        nms_threshold=rpn_nms_threshold, name="proposals")(objectness, deltas)
    rois = InferenceOnly(name="head_rois")(found["proposals"])
    pooler = _pooler(fpn, pooling or ("align" if fpn else "max"))
    head = box_head(maps[0].shape[-1], 7, representation, classes)
    answers = head(pooler([rois, *maps[:len(names)]]))
    outputs = {"rpn_objectness": objectness, "rpn_deltas": deltas,
               "proposals": found["proposals"], "proposal_valid": found["valid"],
               "class_logits": answers["class_logits"], "box_deltas": answers["box_deltas"],
               **dict(zip(names, maps))}
    if extend is not None:
        outputs.update(extend(outputs, images))
    model = (model_class or TwoStageDetector)(
        images, outputs, name=name or registry_name, task=task,
        sampling=dataclasses.asdict(Sampling(**(sampling or {}))))
    return load_weights(model, weights)


def _anchor_sizes(anchor_sizes, fpn):
    sizes = anchor_sizes if anchor_sizes is not None else (
        PYRAMID_SIZES if fpn else PAPER_SIZES)
    sizes = tuple(tuple(float(s) for s in np.atleast_1d(level)) for level in sizes)
    if not sizes or any(not level or min(level) <= 0 for level in sizes) or len(
            {len(level) for level in sizes}) != 1:
        raise ValueError(f"anchor_sizes: positive sizes, the same number on every level, "
                         f"got {anchor_sizes!r}.")
    return sizes


@register("faster_rcnn", task="detection", family="rcnn", year=2015, paper=PAPER,
          key_idea="a region proposal network shares the backbone's features: "
                   "proposals learnt end to end, then RoI pooling and a box head",
          default_size=512, min_size=64, num_params=41_888_086, default_classes=90,
          params_source="kvision's ResNet-50 body (23,587,712) + torchvision "
                        "fasterrcnn_resnet50_fpn's FPN, RPN and box head for 91 outputs "
                        "(18,300,374; tests/detection/test_rcnn.py)")
def FasterRCNN(classes=90, input_shape=None, backbone="resnet50", backbone_weights=None,
               trainable_backbone=True, fpn=True, fpn_channels=256, representation=1024,
               anchor_sizes=None, anchor_ratios=RATIOS, pooling=None,
               rpn_pre_nms_top_n=RPN_PRE_NMS_TOP_N, rpn_post_nms_top_n=RPN_POST_NMS_TOP_N,
               rpn_nms_threshold=0.7, sampling=None, weights=None, name=None):
    """Faster R-CNN (see the module docstring).

    Input ``(B, H, W, 3)`` raw pixels, sides multiples of 32 (default 512). Outputs
    (a dict): ``rpn_objectness (B, A)``, ``rpn_deltas (B, A, 4)``, ``proposals
    (B, P, 4)`` xyxy pixels with ``proposal_valid (B, P)``, ``class_logits (B, P,
    classes+1)`` (0 the background), ``box_deltas (B, P, 4(classes+1))`` and the
    pooled feature maps (``P2``..``P5`` or ``P4``). ``classes``: object classes,
    background excluded. ``anchor_sizes``: one tuple per level (``fpn``: 5, P2..P6;
    otherwise 1); ``pooling``: ``"align"`` or ``"max"`` (default align with ``fpn``,
    max without); ``rpn_*_top_n``: (training, inference); ``sampling``: overrides of
    :class:`Sampling`. :func:`inference_model` makes the detector.
    """
    return _build(name, "faster_rcnn", classes=classes, input_shape=input_shape,
                  backbone=backbone, backbone_weights=backbone_weights,
                  trainable_backbone=trainable_backbone, fpn=fpn, fpn_channels=fpn_channels,
                  representation=representation, anchor_sizes=anchor_sizes,
                  anchor_ratios=tuple(anchor_ratios), pooling=pooling,
                  rpn_pre_nms_top_n=tuple(rpn_pre_nms_top_n),
                  rpn_post_nms_top_n=tuple(rpn_post_nms_top_n),
                  rpn_nms_threshold=rpn_nms_threshold, sampling=sampling, weights=weights)


# --- data ---------------------------------------------------------------------------

def model_classes(model):
    """Object classes of a two-stage detector (background excluded)."""
    return int(model.output["class_logits"].shape[-1]) - 1


def training_dataset(data, model, *, batch_size=8, shuffle=True, seed=0, max_boxes=100,
                     augment=None):
    """``(images, {"boxes" (B, max_boxes, 4), "classes" (B, max_boxes)})`` batches for
    ``model.fit``, boxes xyxy in the model's input pixels, -1 classes on padding rows.

    ``data``: a :class:`kvision.data.synthetic.Scenes` (checked first with
    :func:`kvision.ops.boxes.sanitize`) or an unbatched ``tf.data.Dataset`` of
    Keras' bounding-box dicts. An image with more than ``max_boxes`` objects keeps
    its first ``max_boxes`` (the IoU matrices are ``anchors x max_boxes``).
    """
    import tensorflow as tf

    from kvision.models.detection.yolo import box_examples

    dataset = box_examples(data, lambda scenes: _sanitized_scenes(scenes, model),
                           shuffle=shuffle, seed=seed, augment=augment)

    def targets(example):
        found = example["bounding_boxes"]
        boxes = tf.reshape(tf.cast(found["boxes"], tf.float32), (-1, 4))[:max_boxes]
        labels = tf.reshape(tf.cast(found["labels"], tf.int32), (-1,))[:max_boxes]
        pad = max_boxes - tf.shape(labels)[0]
        return (tf.cast(example["images"], tf.float32),
                {"boxes": tf.pad(boxes, [[0, pad], [0, 0]]),
                 "classes": tf.pad(labels, [[0, pad]], constant_values=-1)})

    return (dataset.map(targets, num_parallel_calls=tf.data.AUTOTUNE)
            .batch(batch_size).prefetch(tf.data.AUTOTUNE))


def _sanitized_scenes(scenes, model):
    from kvision.ops import boxes as box_ops

    shape = scenes.images.shape[1:3]
    takes = tuple(model.inputs[0].shape[1:3])  # the images (Fast R-CNN: and proposals)
    if tuple(shape) != takes:
        raise ValueError(f"The images are {tuple(shape)} but the model takes {takes}.")
    boxes, classes = box_ops.sanitize_images(scenes.boxes, scenes.classes, shape,
                                             num_classes=model_classes(model),
                                             caller="rcnn.training_dataset")
    return dataclasses.replace(scenes, boxes=boxes, classes=classes)


def data_arguments(name, box_sizes, seed=0):
    """Anchor sizes fitted to a dataset's boxes (``box_sizes`` ``(n, 2)`` w, h in
    input pixels), keeping the paper's doubling from one size to the next: the
    smallest is the 5th percentile of ``sqrt(w h)``; five sizes for the pyramid's
    P2..P6 (the detection task passes them to the builder; ``--model-arg`` wins)."""
    del name, seed
    sides = np.sqrt(np.prod(np.asarray(box_sizes, "float64").reshape(-1, 2), axis=1))
    if not sides.size:
        return {}
    smallest = max(4.0, float(np.round(np.percentile(sides, 5))))
    return {"anchor_sizes": tuple((smallest * 2 ** i,) for i in range(5))}


def losses(model, **kwargs):
    """None: a :class:`TwoStageDetector` computes its own losses in ``compute_loss``
    (``model.compile(optimizer)`` without a loss)."""
    del model, kwargs
    return None


# --- inference ----------------------------------------------------------------------

def inference_model(model, *, score_threshold=0.05, iou_threshold=0.5, max_detections=100):
    """Raw pixels ``(B, H, W, 3)`` -> ``{"boxes" (B, K, 4) xyxy pixels, "scores"
    (B, K), "classes" (B, K) int32 (-1 padded), "num_detections" (B,)}``.

    Every proposal's class-specific boxes are decoded and clipped
    (:class:`kvision.layers.rcnn.BoxHeadDecode`), scored by softmax, kept above
    ``score_threshold`` (torchvision's 0.05), then per-class NMS at
    ``iou_threshold`` keeps at most ``max_detections`` (torchvision's
    ``box_detections_per_img`` 100).
    """
    inputs = keras.Input(model.input_shape[1:], name="images")
    raw = model(inputs)
    decoded = BoxHeadDecode(model.input_shape[1:3], name="decode")(
        raw["class_logits"], raw["box_deltas"], raw["proposals"], raw["proposal_valid"])
    nms = NonMaxSuppression(iou_threshold=iou_threshold, score_threshold=score_threshold,
                            max_detections=max_detections, name="nms")
    return TaskModel(inputs, nms(*decoded), name=f"{model.name}_detector", task="detection")
