"""Selective search inside a detector's graph, so that Fast R-CNN's saved detector
takes images alone (``kvision evaluate`` / ``predict`` run it as any detector).

:class:`SelectiveSearchProposals` calls OpenCV's selective search
(:func:`kvision.data.proposals.selective_search`, Uijlings et al., 2013) on the host
through ``tf.numpy_function``: it runs in ``predict`` and ``fit``, saves and loads
(``safe_mode=True``), but the call is Python, so neither TensorFlow Serving nor TFLite
can run a graph holding it. :func:`host_layers` names such layers; ``kvision train``
skips the export, and ``kvision export`` cuts this one out, the proposals becoming an
input (:mod:`kvision.export.proposals`).
"""

from __future__ import annotations

import keras
import numpy as np


@keras.saving.register_keras_serializable(package="kvision")
class SelectiveSearchProposals(keras.layers.Layer):
    """Images ``(B, H, W, C)`` raw pixels in [0, 255] -> proposals ``(B,
    max_proposals, 4)`` float32 xyxy pixels, selective search's ranking, zero rows
    after the last (Fast R-CNN's padding). ``mode``: ``"fast"`` or ``"quality"``."""

    host_code = True  # a Python call inside the graph (see host_layers)

    def __init__(self, max_proposals=2000, mode="fast", **kwargs):
        from kvision.data.proposals import _check_arguments

        super().__init__(**kwargs)
        self.max_proposals = _check_arguments(mode, max_proposals)
        self.mode = mode
        self.trainable = False

    def _search(self, images):
        from kvision.data.proposals import selective_search

        out = np.zeros((len(images), self.max_proposals, 4), np.float32)
        for i, image in enumerate(images):
            boxes = selective_search(np.clip(image, 0, 255), self.mode, self.max_proposals)
            out[i, :len(boxes)] = boxes
        return out

    def call(self, images):
        import tensorflow as tf

        found = tf.numpy_function(self._search, [images], tf.float32, stateful=False,
                                  name="selective_search")
        return tf.reshape(found, (-1, self.max_proposals, 4))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.max_proposals, 4)

    def get_config(self):
        return {**super().get_config(), "max_proposals": self.max_proposals,
                "mode": self.mode}


def host_layers(model) -> list:
    """Names of the layers of ``model`` (nested models included) that run Python on
    the host (``host_code``): a graph holding one cannot be exported."""
    found = []
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if getattr(layer, "host_code", False):
            found.append(layer.name)
    return found


@keras.saving.register_keras_serializable(package="kvision")
class WarpedRegions(keras.layers.Layer):
    """R-CNN's warp in the graph: ``[images (B, H, W, C), boxes (B, P, 4) xyxy
    pixels]`` -> ``(B, P, size, size, C)``, each box enlarged by ``context`` pixels
    at the warped size and resampled bilinearly, half-pixel centres, the image's mean
    pixel outside it: :func:`kvision.models.detection.rcnn_classic.warp_regions`
    (Appendix A of Girshick et al., 2014), batched."""

    def __init__(self, size, context=16, **kwargs):
        super().__init__(**kwargs)
        self.size, self.context = int(size), int(context)
        if self.size <= 2 * self.context:
            raise ValueError(f"The warped size {self.size} leaves no room for the box "
                             f"inside {self.context} pixels of context on each side.")

    def call(self, inputs):
        import tensorflow as tf

        images, boxes = inputs
        images = tf.cast(images, tf.float32)
        shape = tf.shape(images)
        height, width = tf.cast(shape[1], tf.float32), tf.cast(shape[2], tf.float32)
        count = tf.shape(boxes)[1]
        boxes = tf.reshape(tf.cast(boxes, tf.float32), (-1, 4))
        grow = self.size / (self.size - 2 * self.context)
        centre = (boxes[:, :2] + boxes[:, 2:]) / 2
        half = (boxes[:, 2:] - boxes[:, :2]) / 2 * grow
        low = centre - half
        step = 2 * half / self.size
        first = low + 0.5 * step - 0.5          # the first and last sample (x, y)
        last = low + (self.size - 0.5) * step - 0.5
        scale = tf.stack([tf.maximum(width - 1, 1.0), tf.maximum(height - 1, 1.0)])
        first, last = first / scale, last / scale
        normalized = tf.stack([first[:, 1], first[:, 0], last[:, 1], last[:, 0]], axis=1)
        mean = tf.reduce_mean(images, axis=(1, 2))                      # (B, C)
        index = tf.repeat(tf.range(shape[0]), count)
        crops = tf.image.crop_and_resize(images - mean[:, None, None, :], normalized,
                                         index, (self.size, self.size),
                                         extrapolation_value=0.0)
        crops = crops + tf.gather(mean, index)[:, None, None, :]
        return tf.reshape(crops, (shape[0], count, self.size, self.size, shape[3]))

    def compute_output_shape(self, input_shape):
        images, boxes = input_shape
        return (images[0], boxes[1], self.size, self.size, images[-1])

    def get_config(self):
        return {**super().get_config(), "size": self.size, "context": self.context}


@keras.saving.register_keras_serializable(package="kvision")
class SVMDecode(keras.layers.Layer):
    """R-CNN's answers as candidate detections: SVM margins ``(B, P, K)``,
    class-specific regressions ``(B, P, 4K)`` (Appendix C's deltas, weights 1) and
    the proposals ``(B, P, 4)`` -> boxes ``(B, P*K, 4)`` moved and clipped to the
    image, scores ``sigmoid(margin)`` ``(B, P*K)`` (0 for padding proposals) and
    classes ``(B, P*K)``, for per-class NMS."""

    def __init__(self, image_size, **kwargs):
        super().__init__(**kwargs)
        self.image_size = tuple(int(s) for s in image_size)

    def call(self, margins, deltas, proposals):
        from keras import ops

        from kvision.ops.rcnn import decode_deltas

        classes = margins.shape[-1]
        count = ops.shape(proposals)[1]
        deltas = ops.reshape(deltas, (-1, count, classes, 4))
        anchors = ops.broadcast_to(proposals[:, :, None, :], ops.shape(deltas))
        boxes = decode_deltas(deltas, anchors, weights=(1.0, 1.0, 1.0, 1.0))
        height, width = self.image_size
        boxes = ops.stack([ops.clip(boxes[..., 0], 0, width), ops.clip(boxes[..., 1], 0, height),
                           ops.clip(boxes[..., 2], 0, width), ops.clip(boxes[..., 3], 0, height)],
                          axis=-1)
        valid = ops.logical_and(proposals[..., 2] > proposals[..., 0],
                                proposals[..., 3] > proposals[..., 1])
        scores = ops.where(valid[..., None], ops.sigmoid(margins), 0.0)
        labels = ops.broadcast_to(ops.arange(classes, dtype="int32"), ops.shape(scores))
        flat = (-1, count * classes)
        return (ops.reshape(boxes, (*flat, 4)), ops.reshape(scores, flat),
                ops.reshape(labels, flat))

    def compute_output_spec(self, margins, deltas, proposals):
        batch, count = proposals.shape[0], proposals.shape[1]
        total = None if count is None else count * margins.shape[-1]
        return (keras.KerasTensor((batch, total, 4), "float32"),
                keras.KerasTensor((batch, total), "float32"),
                keras.KerasTensor((batch, total), "int32"))

    def get_config(self):
        return {**super().get_config(), "image_size": self.image_size}
