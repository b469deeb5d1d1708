"""Instance labeling: a semantic network's class probabilities (and a separation map)
turned into instances -- label map, boxes, scores, classes -- with graph ops only, so
the decoding travels inside a saved or exported model (TFLite builtins included).

:class:`InstanceLabeling` is the decoder of
:func:`kvision.models.segmentation.instance.TwoNetworkInstance`; its connected
components come from :func:`kvision.ops.masks.class_components`.
"""

from __future__ import annotations

import keras
from keras import ops

from kvision.ops import masks as mask_ops


@keras.saving.register_keras_serializable(package="kvision")
class InstanceLabeling(keras.layers.Layer):
    """Semantic probabilities (+ a separation map) -> instances, with graph ops only.

    Inputs: ``probabilities`` (B, H, W, C) softmax of the semantic network (class
    ``background`` is no object) and ``separation`` (B, H, W, 1) in [0, 1], or None
    (plain connected components of the class map). Pixels with separation
    ``>= separation_threshold`` are cut; each class's components are grown back over
    ``grow`` rings into the cut pixels of that class. Components smaller than
    ``min_area`` pixels or scoring below ``score_threshold`` are dropped; the best
    ``max_detections`` by score are kept.

    Outputs (a dict): ``instance_map`` (B, H, W) int32, 0 = no instance, ``k + 1`` =
    the k-th instance; ``boxes`` (B, K, 4) float32 ``xyxy`` pixels (right/bottom
    exclusive, COCO's convention); ``scores`` (B, K) mean class probability;
    ``classes`` (B, K) int32 object classes (the semantic classes without the
    background, numbered from 0), -1 padded; ``num_detections`` (B,) int32.
    Instances are sorted by decreasing score.
    """

    def __init__(self, separation_threshold=0.5, score_threshold=0.0, min_area=4, grow=2,
                 max_detections=32, connectivity=8, background=0, **kwargs):
        super().__init__(**kwargs)
        mask_ops._check_connectivity(connectivity)
        if int(max_detections) < 1:
            raise ValueError(f"max_detections must be >= 1, got {max_detections!r}.")
        self.separation_threshold = float(separation_threshold)
        self.score_threshold = float(score_threshold)
        self.min_area = int(min_area)
        self.grow = int(grow)
        self.max_detections = int(max_detections)
        self.connectivity = int(connectivity)
        self.background = None if background is None else int(background)

    def call(self, probabilities, separation=None):
        if len(probabilities.shape) != 4:
            raise ValueError(f"InstanceLabeling takes probabilities (B, H, W, classes), "
                             f"got shape {tuple(probabilities.shape)}.")
        if separation is not None and (len(separation.shape) != 4
                                       or separation.shape[-1] != 1):
            raise ValueError(f"The separation map must be (B, H, W, 1) beside "
                             f"probabilities {tuple(probabilities.shape)}, got "
                             f"{tuple(separation.shape)}.")
        num_classes = probabilities.shape[-1]
        confidence = ops.max(probabilities, axis=-1)
        # argmax as the first class reaching the max: keras.ops.argmax on floats
        # tests the sign bit (tf.BitwiseAnd), which TFLite has no builtin for.
        classes = ops.arange(num_classes, dtype="int32")
        class_map = ops.min(ops.where(probabilities >= confidence[..., None], classes,
                                      num_classes), axis=-1)
        cut = None
        if separation is not None:
            cut = separation[..., 0] >= self.separation_threshold
        labels = mask_ops.class_components(class_map, num_classes, cut=cut, grow=self.grow,
                                           connectivity=self.connectivity,
                                           background=self.background)
        shape = ops.shape(labels)
        batch, h, w = shape[0], shape[1], shape[2]
        n = h * w
        flat = ops.reshape(labels, (batch, n))
        # Per-component sums over the whole batch: segment ids offset per image.
        offset = ops.arange(batch, dtype="int32")[:, None] * (n + 1)
        segments = ops.reshape(flat + offset, (-1,))
        count = batch * (n + 1)
        area = ops.reshape(ops.segment_sum(ops.ones_like(segments, "float32"), segments,
                                           count), (batch, n + 1))
        total = ops.reshape(ops.segment_sum(ops.reshape(confidence, (-1,)), segments,
                                            count), (batch, n + 1))
        score = total / ops.maximum(area, 1.0)
        is_object = ops.arange(n + 1) > 0
        valid = ops.logical_and(ops.logical_and(area >= self.min_area, is_object),
                                score >= self.score_threshold)
        k = self.max_detections
        best, ids = ops.top_k(ops.where(valid, score, -1.0), k)
        keep = best >= 0.0
        # New id (rank + 1) of every kept component, 0 for the others.
        rank = ops.where(keep, ops.arange(1, k + 1, dtype="int32")[None], 0)
        table = ops.segment_max(ops.reshape(rank, (-1,)),
                                ops.reshape(ids + offset, (-1,)), count)
        table = ops.maximum(ops.reshape(table, (batch, n + 1)), 0)
        new = ops.take_along_axis(table, flat, axis=1)
        return {"instance_map": ops.reshape(new, (batch, h, w)),
                "boxes": self._boxes(new, batch, h, w),
                "scores": ops.where(keep, best, 0.0),
                "classes": self._classes(new, class_map, keep, batch),
                "num_detections": ops.sum(ops.cast(keep, "int32"), axis=1)}

    def _per_instance_max(self, new, values, batch):
        k = self.max_detections + 1
        segments = ops.reshape(new + ops.arange(batch, dtype="int32")[:, None] * k, (-1,))
        out = ops.segment_max(ops.reshape(values, (-1,)), segments, batch * k)
        return ops.reshape(out, (batch, k))[:, 1:]

    def _classes(self, new, class_map, keep, batch):
        semantic = ops.reshape(class_map, ops.shape(new))
        cls = self._per_instance_max(new, semantic, batch)
        if self.background is not None:
            cls = cls - ops.cast(cls > self.background, "int32")
        return ops.where(keep, cls, -1)

    def _boxes(self, new, batch, h, w):
        ys = ops.repeat(ops.arange(h, dtype="float32"), w)
        xs = ops.tile(ops.arange(w, dtype="float32"), [h])
        ys = ops.broadcast_to(ys[None], ops.shape(new))
        xs = ops.broadcast_to(xs[None], ops.shape(new))
        x1 = -self._per_instance_max(new, -xs, batch)
        y1 = -self._per_instance_max(new, -ys, batch)
        x2 = self._per_instance_max(new, xs, batch) + 1.0
        y2 = self._per_instance_max(new, ys, batch) + 1.0
        boxes = ops.stack([x1, y1, x2, y2], axis=-1)
        # Empty segments come back as the lowest float: no box.
        return ops.where(ops.abs(boxes) < 1e30, boxes, 0.0)

    def compute_output_spec(self, probabilities, separation=None):
        b, h, w = probabilities.shape[:3]
        k = self.max_detections
        spec = keras.KerasTensor
        return {"instance_map": spec((b, h, w), "int32"), "boxes": spec((b, k, 4), "float32"),
                "scores": spec((b, k), "float32"), "classes": spec((b, k), "int32"),
                "num_detections": spec((b,), "int32")}

    def get_config(self):
        return {**super().get_config(), "separation_threshold": self.separation_threshold,
                "score_threshold": self.score_threshold, "min_area": self.min_area,
                "grow": self.grow, "max_detections": self.max_detections,
                "connectivity": self.connectivity, "background": self.background}
