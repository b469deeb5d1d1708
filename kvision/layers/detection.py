"""Detection layers: per-class non-max suppression inside a model's graph."""

import keras

from kvision.ops import boxes as box_ops


@keras.saving.register_keras_serializable(package="kvision")
class NonMaxSuppression(keras.layers.Layer):
    """Per-class NMS of a batch of detections (:func:`kvision.ops.boxes.batched_nms`).

    Called as ``layer(boxes, scores, classes)`` with boxes ``(B, N, 4)`` xyxy, scores
    ``(B, N)`` and integer classes ``(B, N)``; or ``layer(boxes, class_scores)`` with
    ``(B, N, C)`` per-class scores, where each box takes its best class. Returns the
    dict ``{"boxes" (B, K, 4), "scores" (B, K), "classes" (B, K) int32 (-1 padded),
    "num_detections" (B,) int32}``, ``K = max_detections``. Builds on ``tf.image``'s
    padded NMS, a TFLite builtin; it needs the TensorFlow backend.
    """

    def __init__(self, iou_threshold=0.5, score_threshold=0.0, max_detections=100,
                 **kwargs):
        super().__init__(**kwargs)
        self.iou_threshold, self.score_threshold, self.max_detections = (
            box_ops._check_nms_arguments(iou_threshold, score_threshold, max_detections))

    def call(self, boxes, scores, classes=None):
        import tensorflow as tf

        if classes is None:
            if len(scores.shape) != 3:
                raise ValueError(f"NonMaxSuppression without classes takes per-class "
                                 f"scores (B, N, C), got shape {tuple(scores.shape)}.")
            # tf.argmax, not keras.ops.argmax: the latter's -0.0 handling needs the
            # BitwiseAnd op, which TFLite lacks as a builtin.
            classes = tf.argmax(scores, axis=-1, output_type=tf.int32)
            scores = tf.reduce_max(scores, axis=-1)
        return box_ops.batched_nms(boxes, scores, classes,
                                   iou_threshold=self.iou_threshold,
                                   score_threshold=self.score_threshold,
                                   max_detections=self.max_detections)

    def compute_output_spec(self, boxes, scores, classes=None):
        batch, k = boxes.shape[0], self.max_detections
        return {"boxes": keras.KerasTensor((batch, k, 4), "float32"),
                "scores": keras.KerasTensor((batch, k), "float32"),
                "classes": keras.KerasTensor((batch, k), "int32"),
                "num_detections": keras.KerasTensor((batch,), "int32")}

    def get_config(self):
        return {**super().get_config(), "iou_threshold": self.iou_threshold,
                "score_threshold": self.score_threshold,
                "max_detections": self.max_detections}
