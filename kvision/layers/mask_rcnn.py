"""The layers of Mask R-CNN's mask branch (He, Gkioxari, Dollár & Girshick, 2017):
RoIs folded into the batch for the convolutions and unfolded after, and the masks of
the detections pasted back into the image as an instance map. Each is registered and
serializable; the paste is gathers-free arithmetic and batched matmuls, so the
inference model converts to TFLite with builtin operations only."""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="kvision")
class FoldRoIs(keras.layers.Layer):
    """``(B, R, ...)`` -> ``(B * R, ...)``: pooled RoIs as a batch of images, which
    ``Conv2D`` needs (it takes 4-D input; ``R`` may be unknown, and 0 in training)."""

    def call(self, x):
        return ops.reshape(x, (-1, *x.shape[2:]))

    def compute_output_spec(self, x):
        batch, rois = x.shape[:2]
        folded = None if batch is None or rois is None else batch * rois
        return keras.KerasTensor((folded, *x.shape[2:]), x.dtype)


@keras.saving.register_keras_serializable(package="kvision")
class UnfoldRoIs(keras.layers.Layer):
    """``[x (B * R, ...), reference (B, R, ...)]`` -> ``(B, R, ...)``: undoes
    :class:`FoldRoIs`, ``B`` and ``R`` read off ``reference``."""

    def call(self, inputs):
        x, reference = inputs
        shape = ops.shape(reference)
        return ops.reshape(x, (shape[0], shape[1], *x.shape[1:]))

    def compute_output_spec(self, inputs):
        x, reference = inputs
        return keras.KerasTensor((*reference.shape[:2], *x.shape[1:]), x.dtype)


@keras.saving.register_keras_serializable(package="kvision")
class DetectedBoxes(keras.layers.Layer):
    """The boxes Faster R-CNN detects, for the mask head of the network itself:
    ``(class_logits, box_deltas, proposals, proposal_valid)`` -> ``(B, D, 4)``, the
    box head's answers decoded (:class:`kvision.layers.rcnn.BoxHeadDecode`) and
    suppressed per class (:class:`kvision.layers.NonMaxSuppression`) at
    torchvision's defaults. In training, where the box head answers no rows and the
    mask loss pools the sampled RoIs instead, one zero box per image: not none, as
    TensorFlow's CPU Conv2D answers an empty batch with the input's channel count
    (then the bias does not broadcast)."""

    def __init__(self, image_size, score_threshold=0.05, iou_threshold=0.5,
                 max_detections=100, **kwargs):
        super().__init__(**kwargs)
        from kvision.layers.detection import NonMaxSuppression
        from kvision.layers.rcnn import BoxHeadDecode

        self.image_size = tuple(int(s) for s in image_size)
        self.decode = BoxHeadDecode(self.image_size, name=f"{self.name}_decode")
        self.nms = NonMaxSuppression(iou_threshold=iou_threshold,
                                     score_threshold=score_threshold,
                                     max_detections=max_detections, name=f"{self.name}_nms")

    def build(self, *input_shapes):
        self.built = True  # the decode and the NMS hold no weights

    def call(self, class_logits, box_deltas, proposals, proposal_valid, training=None):
        if training:
            return ops.zeros_like(proposals[:, :1])
        return self.nms(*self.decode(class_logits, box_deltas, proposals,
                                     proposal_valid))["boxes"]

    def compute_output_spec(self, class_logits, box_deltas, proposals, proposal_valid,
                            training=None):
        return keras.KerasTensor((proposals.shape[0], self.nms.max_detections, 4),
                                 "float32")

    def get_config(self):
        return {**super().get_config(), "image_size": self.image_size,
                "score_threshold": self.nms.score_threshold,
                "iou_threshold": self.nms.iou_threshold,
                "max_detections": self.nms.max_detections}


def paste_weights(low, high, size, resolution):
    """``(..., size, resolution)``: bilinear weights that resample a mask of
    ``resolution`` cells spanning ``[low, high)`` (``(...,)`` box edges in image
    pixels) onto the image's ``size`` pixels along one axis; 0 outside the box.

    Pixel ``i`` sits at coordinate ``i`` and cell ``j``'s centre at ``low + (j + 0.5)
    (high - low) / resolution``, as in ``RoIAlign(aligned=False)``, which made the
    training targets; cells past the mask's edge clamp to the edge cell."""
    low, high = ops.expand_dims(low, -1), ops.expand_dims(high, -1)
    pixel = ops.cast(ops.arange(size), "float32")
    cell = (pixel - low) / ops.maximum(high - low, 1e-6) * resolution - 0.5
    cell = ops.clip(cell, 0.0, resolution - 1.0)
    weights = ops.relu(1.0 - ops.abs(ops.expand_dims(cell, -1)
                                     - ops.cast(ops.arange(resolution), "float32")))
    inside = ops.logical_and(pixel >= low, pixel < high)
    return weights * ops.expand_dims(ops.cast(inside, "float32"), -1)


@keras.saving.register_keras_serializable(package="kvision")
class PasteMasks(keras.layers.Layer):
    """The detections' masks as one instance map: ``(mask_logits (B, D, M, M, K+1),
    boxes (B, D, 4) xyxy pixels, classes (B, D) (0-based, -1 padding), scores (B, D),
    num_detections (B,))`` -> ``instance_map (B, H, W)`` int32, 0 for background and
    ``d + 1`` where detection ``d`` claims the pixel.

    Each detection's own class channel, through a sigmoid, is resampled bilinearly
    onto the image inside its box (:func:`paste_weights`); a pixel at or above
    ``mask_threshold`` is claimed, and a pixel claimed by several detections goes to
    the highest-scoring one."""

    def __init__(self, image_size, mask_threshold=0.5, **kwargs):
        super().__init__(**kwargs)
        self.image_size = tuple(int(s) for s in image_size)
        if not 0.0 < float(mask_threshold) < 1.0:
            raise ValueError(f"mask_threshold must be in (0, 1) (a mask probability), got "
                             f"{mask_threshold!r}.")
        self.mask_threshold = float(mask_threshold)

    def probabilities(self, mask_logits, boxes, classes):
        """``(B, D, H, W)``: each detection's mask probability in the image."""
        channels, resolution = mask_logits.shape[-1], mask_logits.shape[-2]
        height, width = self.image_size
        own = ops.one_hot(ops.cast(classes, "int32") + 1, channels, dtype=mask_logits.dtype)
        masks = ops.sigmoid(ops.sum(mask_logits * own[:, :, None, None, :], axis=-1))
        wy = paste_weights(boxes[..., 1], boxes[..., 3], height, resolution)  # (B,D,H,M)
        wx = paste_weights(boxes[..., 0], boxes[..., 2], width, resolution)   # (B,D,W,M)
        batch, count = ops.shape(boxes)[0], ops.shape(boxes)[1]
        flat = batch * count  # 3-D matmuls: TFLite's BATCH_MATMUL at its plainest
        rows = ops.matmul(ops.reshape(wy, (flat, height, resolution)),
                          ops.reshape(masks, (flat, resolution, resolution)))
        pasted = ops.matmul(rows, ops.transpose(ops.reshape(wx, (flat, width, resolution)),
                                                (0, 2, 1)))
        return ops.reshape(pasted, (batch, count, height, width))

    def call(self, mask_logits, boxes, classes, scores, num_detections):
        import tensorflow as tf  # tf.argmax: keras' needs BitwiseAnd, no TFLite builtin

        probabilities = self.probabilities(mask_logits, boxes, classes)
        count = ops.shape(boxes)[1]
        real = ops.arange(count)[None, :] < ops.cast(num_detections, "int32")[:, None]
        claimed = ops.logical_and(probabilities >= self.mask_threshold,
                                  real[:, :, None, None])
        key = ops.where(claimed, ops.cast(scores, "float32")[:, :, None, None], -1.0)
        owner = tf.argmax(key, axis=1, output_type=tf.int32)
        return ops.where(ops.max(key, axis=1) >= 0.0, owner + 1, 0)

    def compute_output_spec(self, mask_logits, boxes, classes, scores, num_detections):
        return keras.KerasTensor((boxes.shape[0], *self.image_size), "int32")

    def get_config(self):
        return {**super().get_config(), "image_size": self.image_size,
                "mask_threshold": self.mask_threshold}
