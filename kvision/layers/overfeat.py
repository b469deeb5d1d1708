"""Decoding layers of the localizer and of OverFeat's sliding windows.

Both turn a network's raw heads (class probabilities, boxes as normalized
``(x_center, y_center, width, height)``) into candidate detections in the input's
pixels: ``boxes`` ``(B, N, 4)`` float32 xyxy, ``scores`` ``(B, N)`` (the best real
class's probability) and ``classes`` ``(B, N)`` int32, ready for
:class:`kvision.layers.NonMaxSuppression`. Pure ``keras.ops``: they run on JAX and
convert to TFLite builtin operators.
"""

import keras
from keras import ops


def _scores_classes(probabilities, background):
    """Best real class and its probability over the last axis."""
    if background:
        probabilities = probabilities[..., :-1]  # the last class is "no object"
    scores = ops.max(probabilities, axis=-1)
    # The first index holding the maximum: argmax over an integer tensor, because
    # keras.ops.argmax of floats adds a sign-bit test (BitwiseAnd) that TFLite
    # builtins lack.
    best = ops.cast(probabilities >= ops.expand_dims(scores, -1), "int32")
    classes = ops.cast(ops.argmax(best, axis=-1), "int32")
    return scores, classes


def _corners(center_xywh):
    """``(..., 4)`` center x, y, width, height -> x0, y0, x1, y1 (same units)."""
    cx, cy, w, h = ops.unstack(center_xywh, 4, axis=-1)
    return ops.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=-1)


@keras.saving.register_keras_serializable(package="kvision")
class LocalizerDecode(keras.layers.Layer):
    """A localizer's heads -> candidate detections in pixels.

    Inputs ``[classes, boxes]``: ``(B, classes)`` and ``(B, 4)`` for one object,
    ``(B, K, classes + 1)`` and ``(B, K, 4)`` for K objects (the last class of each
    slot means "no object" when ``background``). Boxes are normalized
    ``(x_center, y_center, width, height)`` in ``[0, 1]`` of the image.

    Args:
        image_size: ``(height, width)`` of the model's input in pixels.
        background: the class axis ends with a "no object" class.

    Returns ``[boxes (B, K, 4) xyxy pixels, scores (B, K), classes (B, K) int32]``
    (K = 1 for one object).
    """

    def __init__(self, image_size, background=False, **kwargs):
        super().__init__(**kwargs)
        self.image_size = tuple(int(s) for s in image_size)
        self.background = bool(background)

    def call(self, inputs):
        probabilities, boxes = inputs
        if len(boxes.shape) == 2:  # one object: a slot axis of 1
            probabilities, boxes = probabilities[:, None], boxes[:, None]
        height, width = self.image_size
        scale = ops.convert_to_tensor([width, height, width, height], boxes.dtype)
        scores, classes = _scores_classes(probabilities, self.background)
        return [_corners(boxes) * scale, scores, classes]

    def compute_output_spec(self, inputs):
        probabilities, boxes = inputs
        slots = 1 if len(boxes.shape) == 2 else boxes.shape[1]
        batch = boxes.shape[0]
        return [keras.KerasTensor((batch, slots, 4), dtype=self.compute_dtype),
                keras.KerasTensor((batch, slots), dtype=self.compute_dtype),
                keras.KerasTensor((batch, slots), dtype="int32")]

    def get_config(self):
        return {**super().get_config(), "image_size": list(self.image_size),
                "background": self.background}


@keras.saving.register_keras_serializable(package="kvision")
class WindowDecode(keras.layers.Layer):
    """OverFeat's score and box maps at one scale -> detections in input pixels.

    Inputs ``[classes, boxes]``: ``(B, h, w, classes + 1)`` window class
    probabilities (last: background) and ``(B, h, w, 4)`` each window's box as
    normalized ``(x_center, y_center, width, height)`` within the window. Cell
    ``(i, j)`` is the window of ``window`` pixels at offset ``(i * stride, j *
    stride)`` of the image resized by ``scale`` (its sides over the original's).

    Args:
        window: ``(height, width)`` of the classifier's input (the window) in pixels.
        stride: ``(y, x)`` pixels between neighbouring windows at that scale.
        scale: ``(y, x)``: the resized image's sides over the input's.

    Returns ``[boxes (B, h*w, 4) xyxy in the input's pixels, scores (B, h*w),
    classes (B, h*w) int32]``.
    """

    def __init__(self, window, stride, scale=(1.0, 1.0), **kwargs):
        super().__init__(**kwargs)
        self.window = tuple(int(s) for s in window)
        self.stride = tuple(int(s) for s in stride)
        self.scale = tuple(float(s) for s in scale)

    def call(self, inputs):
        probabilities, boxes = inputs
        rows, cols = boxes.shape[1], boxes.shape[2]
        dtype = boxes.dtype
        window_h, window_w = self.window
        ys = ops.cast(ops.arange(rows), dtype) * self.stride[0]
        xs = ops.cast(ops.arange(cols), dtype) * self.stride[1]
        offset_y, offset_x = ops.meshgrid(ys, xs, indexing="ij")  # (h, w) each
        corners = _corners(boxes) * ops.convert_to_tensor(
            [window_w, window_h, window_w, window_h], dtype)
        origin = ops.stack([offset_x, offset_y, offset_x, offset_y], axis=-1)
        unscale = ops.convert_to_tensor(
            [1 / self.scale[1], 1 / self.scale[0]] * 2, dtype)
        pixels = (corners + origin[None]) * unscale
        scores, classes = _scores_classes(probabilities, background=True)
        return [ops.reshape(pixels, (-1, rows * cols, 4)),
                ops.reshape(scores, (-1, rows * cols)),
                ops.reshape(classes, (-1, rows * cols))]

    def compute_output_spec(self, inputs):
        _, boxes = inputs
        batch, n = boxes.shape[0], boxes.shape[1] * boxes.shape[2]
        return [keras.KerasTensor((batch, n, 4), dtype=self.compute_dtype),
                keras.KerasTensor((batch, n), dtype=self.compute_dtype),
                keras.KerasTensor((batch, n), dtype="int32")]

    def get_config(self):
        return {**super().get_config(), "window": list(self.window),
                "stride": list(self.stride), "scale": list(self.scale)}
