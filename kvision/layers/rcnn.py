"""The layers of the two-stage detectors (Faster R-CNN, Mask R-CNN): region proposals
from the RPN's outputs, RoI features from a feature pyramid, and the second stage's
class-specific boxes. Each is registered and serializable; together with
:mod:`kvision.layers.roi` they build from TFLite builtin operations only."""

from __future__ import annotations

import math

import keras
import numpy as np

from kvision.ops import rcnn as rcnn_ops

# torchvision's BoxCoder weights of the box head (the RPN's are 1, 1, 1, 1).
BOX_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
BOX_CLIP = math.log(1000.0 / 16)


def _pairs(value):
    return tuple(tuple(float(s) for s in level) for level in value)


def level_anchors(feature_sizes, strides, sizes, ratios):
    """Every level's anchors, concatenated in the RPN's output order: ``(A, 4)`` xyxy
    pixels and each anchor's level index ``(A,)``."""
    anchors, levels = [], []
    for index, (size, stride, level_sizes) in enumerate(zip(feature_sizes, strides, sizes)):
        base = rcnn_ops.anchor_shapes(level_sizes, ratios)
        grid = np.asarray(rcnn_ops.grid_anchors(tuple(size), stride, base), "float32")
        anchors.append(grid)
        levels.append(np.full(len(grid), index, "int32"))
    return np.concatenate(anchors), np.concatenate(levels)


@keras.saving.register_keras_serializable(package="kvision")
class RegionProposals(keras.layers.Layer):
    """The RPN's proposals (Ren et al., 2015): objectness logits ``(B, A)`` and box
    deltas ``(B, A, 4)`` of every anchor -> ``{"proposals" (B, P, 4) xyxy pixels,
    "scores" (B, P), "valid" (B, P)}``.

    Decoded against the anchors, clipped to the image, tiny boxes dropped, the
    ``pre_nms_top_n`` best per level, NMS at ``nms_threshold`` within each level,
    the ``post_nms_top_n`` best kept (:func:`kvision.ops.rcnn.generate_proposals`);
    the top-N pairs are ``(training, inference)`` as torchvision's. The anchors come
    from the config: ``feature_sizes`` and ``strides`` per level, ``sizes`` (one
    tuple per level) times ``ratios`` (h/w) at every location. A head whose anchor
    count disagrees is a ``ValueError`` naming both counts.
    """

    def __init__(self, image_size, feature_sizes, strides, sizes, ratios=(0.5, 1.0, 2.0),
                 pre_nms_top_n=(2000, 1000), post_nms_top_n=(2000, 1000),
                 nms_threshold=0.7, min_size=1e-3, **kwargs):
        super().__init__(**kwargs)
        self.image_size = tuple(int(s) for s in image_size)
        self.feature_sizes = tuple(tuple(int(s) for s in f) for f in feature_sizes)
        self.strides = tuple(int(s) for s in strides)
        self.sizes = _pairs(sizes)
        self.ratios = tuple(float(r) for r in ratios)
        self.pre_nms_top_n = tuple(int(n) for n in pre_nms_top_n)
        self.post_nms_top_n = tuple(int(n) for n in post_nms_top_n)
        self.nms_threshold, self.min_size = float(nms_threshold), float(min_size)
        if not (len(self.feature_sizes) == len(self.strides) == len(self.sizes)):
            raise ValueError(f"RegionProposals: one feature size, stride and anchor-size "
                             f"tuple per level; got {len(self.feature_sizes)}, "
                             f"{len(self.strides)} and {len(self.sizes)}.")
        self.anchors, self.anchor_levels = level_anchors(
            self.feature_sizes, self.strides, self.sizes, self.ratios)

    @property
    def anchors_per_location(self):
        return len(self.sizes[0]) * len(self.ratios)

    def _check(self, objectness):
        count = objectness.shape[-1]
        if count is not None and count != len(self.anchors):
            raise ValueError(
                f"RegionProposals: the RPN head scores {count} anchors per image but "
                f"the anchor generator makes {len(self.anchors)} ("
                f"{self.anchors_per_location} per location over feature maps "
                f"{list(self.feature_sizes)}); the head's anchors per location and the "
                f"generator's sizes x ratios must agree.")

    def call(self, objectness, deltas, training=None):
        self._check(objectness)
        mode = 0 if training else 1
        proposals, scores, valid = rcnn_ops.generate_proposals(
            self.anchors, objectness, deltas, self.image_size,
            pre_nms_top_n=self.pre_nms_top_n[mode], post_nms_top_n=self.post_nms_top_n[mode],
            nms_threshold=self.nms_threshold, min_size=self.min_size,
            levels=self.anchor_levels if len(self.strides) > 1 else None)
        return {"proposals": proposals, "scores": scores, "valid": valid}

    def compute_output_spec(self, objectness, deltas, training=None):
        self._check(objectness)
        # The inference count: what the exported graph and the profile see (in
        # training the same outputs hold the training count).
        batch, count = objectness.shape[0], self.post_nms_top_n[1]
        return {"proposals": keras.KerasTensor((batch, count, 4), "float32"),
                "scores": keras.KerasTensor((batch, count), "float32"),
                "valid": keras.KerasTensor((batch, count), "bool")}

    def get_config(self):
        return {**super().get_config(), "image_size": self.image_size,
                "feature_sizes": self.feature_sizes, "strides": self.strides,
                "sizes": self.sizes, "ratios": self.ratios,
                "pre_nms_top_n": self.pre_nms_top_n, "post_nms_top_n": self.post_nms_top_n,
                "nms_threshold": self.nms_threshold, "min_size": self.min_size}


@keras.saving.register_keras_serializable(package="kvision")
class InferenceOnly(keras.layers.Layer):
    """``x`` at inference, none of its rows (``x[:, :0]``) in training.

    In training the second stage runs on RoIs sampled against the ground truth
    (:meth:`TwoStageDetector.compute_loss`), so the forward pass skips it on the
    proposals instead of computing what no loss reads."""

    def call(self, x, training=None):
        return x[:, :0] if training else x

    def compute_output_spec(self, x, training=None):
        return keras.KerasTensor(x.shape, x.dtype)  # the inference shape


@keras.saving.register_keras_serializable(package="kvision")
class PyramidRoIAlign(keras.layers.Layer):
    """torchvision's ``MultiScaleRoIAlign``: each RoI pooled from one pyramid level,
    ``k = floor(4 + log2(sqrt(area) / 224))`` clipped to the levels (Lin et al.,
    2017, eq. 1). Called as ``layer([rois, *features])`` with rois ``(B, R, 4)``
    xyxy image pixels and one map per entry of ``strides`` -> ``(B, R, out, out, C)``.
    Every level pools every RoI and a mask keeps the RoI's own (static shapes; the
    pooled maps are small), so it stays builtin operations only."""

    def __init__(self, output_size=7, strides=(4, 8, 16, 32), sampling_ratio=2,
                 canonical_size=224, canonical_level=4, **kwargs):
        super().__init__(**kwargs)
        from kvision.layers.roi import RoIAlign

        self.output_size = int(output_size)
        self.strides = tuple(int(s) for s in strides)
        self.sampling_ratio = int(sampling_ratio)
        self.canonical_size, self.canonical_level = int(canonical_size), int(canonical_level)
        self.poolers = [RoIAlign(self.output_size, spatial_scale=1.0 / s,
                                 sampling_ratio=self.sampling_ratio, aligned=False,
                                 name=f"{self.name}_level{i}")
                        for i, s in enumerate(self.strides)]

    def build(self, input_shape):
        rois, *maps = input_shape
        for pooler, features in zip(self.poolers, maps):
            pooler.build([features, rois])
        self.built = True

    def levels(self, rois):
        """Each RoI's index into ``strides``."""
        ops = keras.ops
        area = ops.maximum((rois[..., 2] - rois[..., 0]) * (rois[..., 3] - rois[..., 1]),
                           0.0)
        k = ops.floor(self.canonical_level + ops.log2(ops.sqrt(area) / self.canonical_size
                                                      + 1e-6))
        first = int(round(math.log2(self.strides[0])))
        return ops.cast(ops.clip(k, first, first + len(self.strides) - 1) - first, "int32")

    def call(self, inputs):
        rois, *maps = inputs
        if len(maps) != len(self.strides):
            raise ValueError(f"PyramidRoIAlign: {len(self.strides)} feature maps "
                             f"(strides {self.strides}) expected, got {len(maps)}.")
        if len(maps) == 1:
            return self.poolers[0]([maps[0], rois])
        level = self.levels(rois)
        pooled = 0.0
        for index, (pooler, features) in enumerate(zip(self.poolers, maps)):
            keep = keras.ops.cast(level == index, features.dtype)[..., None, None, None]
            pooled = pooled + pooler([features, rois]) * keep
        return pooled

    def compute_output_spec(self, inputs):
        rois, first = inputs[0], inputs[1]
        return keras.KerasTensor((rois.shape[0], rois.shape[1], self.output_size,
                                  self.output_size, first.shape[-1]), first.dtype)

    def get_config(self):
        return {**super().get_config(), "output_size": self.output_size,
                "strides": self.strides, "sampling_ratio": self.sampling_ratio,
                "canonical_size": self.canonical_size,
                "canonical_level": self.canonical_level}


@keras.saving.register_keras_serializable(package="kvision")
class BoxHeadDecode(keras.layers.Layer):
    """The second stage's answers as candidate detections: class logits
    ``(B, R, K+1)`` (0 background), class-specific deltas ``(B, R, 4(K+1))``, the
    RoIs ``(B, R, 4)`` and their validity ``(B, R)`` -> boxes ``(B, R*K, 4)``
    decoded per class (weights 10, 10, 5, 5) and clipped to the image, softmax
    scores ``(B, R*K)`` (0 for invalid RoIs and boxes under ``min_size``) and
    classes ``(B, R*K)`` (0-based object classes), for per-class NMS
    (torchvision's ``RoIHeads.postprocess_detections``)."""

    def __init__(self, image_size, min_size=1e-2, **kwargs):
        super().__init__(**kwargs)
        self.image_size = tuple(int(s) for s in image_size)
        self.min_size = float(min_size)

    def call(self, class_logits, box_deltas, rois, valid):
        ops = keras.ops
        classes = class_logits.shape[-1] - 1
        scores = ops.softmax(class_logits, axis=-1)[..., 1:]          # (B, R, K)
        deltas = ops.reshape(box_deltas, (-1, ops.shape(rois)[1], classes + 1, 4))[:, :, 1:]
        anchors = ops.broadcast_to(rois[:, :, None, :], ops.shape(deltas))
        boxes = rcnn_ops.decode_deltas(deltas, anchors, weights=BOX_WEIGHTS, clip=BOX_CLIP)
        height, width = self.image_size
        boxes = ops.stack([ops.clip(boxes[..., 0], 0, width), ops.clip(boxes[..., 1], 0, height),
                           ops.clip(boxes[..., 2], 0, width), ops.clip(boxes[..., 3], 0, height)],
                          axis=-1)
        big = ops.logical_and(boxes[..., 2] - boxes[..., 0] >= self.min_size,
                              boxes[..., 3] - boxes[..., 1] >= self.min_size)
        keep = ops.logical_and(big, ops.cast(valid, "bool")[:, :, None])
        scores = ops.where(keep, scores, ops.zeros_like(scores))
        labels = ops.broadcast_to(ops.arange(classes, dtype="int32"), ops.shape(scores))
        flat = (-1, ops.shape(rois)[1] * classes)
        return (ops.reshape(boxes, (*flat, 4)), ops.reshape(scores, flat),
                ops.reshape(labels, flat))

    def compute_output_spec(self, class_logits, box_deltas, rois, valid):
        batch, count = rois.shape[0], rois.shape[1]
        total = None if count is None else count * (class_logits.shape[-1] - 1)
        return (keras.KerasTensor((batch, total, 4), "float32"),
                keras.KerasTensor((batch, total), "float32"),
                keras.KerasTensor((batch, total), "int32"))

    def get_config(self):
        return {**super().get_config(), "image_size": self.image_size,
                "min_size": self.min_size}


@keras.saving.register_keras_serializable(package="kvision")
class ValidBoxes(keras.layers.Layer):
    """``(B, P, 4)`` xyxy boxes -> ``(B, P)`` bool: the box has an area (x2 > x1 and
    y2 > y1). Proposals given as an input are padded with zero rows."""

    def call(self, boxes):
        ops = keras.ops
        return ops.logical_and(boxes[..., 2] > boxes[..., 0], boxes[..., 3] > boxes[..., 1])

    def compute_output_spec(self, boxes):
        return keras.KerasTensor(boxes.shape[:-1], "bool")


@keras.saving.register_keras_serializable(package="kvision")
class SingleLevelRoIPooling(keras.layers.Layer):
    """:class:`kvision.layers.RoIPooling` called as the pyramid pooler is,
    ``layer([rois, features])``."""

    def __init__(self, output_size=7, spatial_scale=1 / 16, **kwargs):
        super().__init__(**kwargs)
        from kvision.layers.roi import RoIPooling

        self.pool = RoIPooling(output_size, spatial_scale=spatial_scale,
                               name=f"{self.name}_pool")
        self.output_size, self.spatial_scale = output_size, spatial_scale

    def build(self, input_shape):
        self.pool.build([input_shape[1], input_shape[0]])
        self.built = True

    def call(self, inputs):
        rois, features = inputs
        return self.pool([features, rois])

    def compute_output_spec(self, inputs):
        return self.pool.compute_output_spec([inputs[1], inputs[0]])

    def get_config(self):
        return {**super().get_config(), "output_size": self.output_size,
                "spatial_scale": self.spatial_scale}
