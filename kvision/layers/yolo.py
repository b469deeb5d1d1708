"""YOLO's grid layers: the output reshapes that carry a head's anchors, and decoders.

A YOLO model's raw outputs end in :class:`YOLOv3Output` / :class:`YOLOv1Output`,
which reshape the last convolution (or FC) into one vector per grid cell and
predictor and record what decoding needs (the anchors, the class count) in their
config, so a model loaded from a ``.keras`` file carries them. The decoders turn
raw outputs into boxes in input pixels, one score and one class per box, with
``keras.ops`` only (sigmoid, exp, argmax: builtin TFLite ops).
"""

from __future__ import annotations

import keras
from keras import ops


def _anchor_list(anchors):
    return [[float(w), float(h)] for w, h in anchors]


@keras.saving.register_keras_serializable(package="kvision")
class YOLOv3Output(keras.layers.Layer):
    """``(B, S, S, A*(5+C)) -> (B, S, S, A, 5+C)``: one raw vector per anchor.

    The vector is ``(tx, ty, tw, th, objectness, class_1..C)`` logits (YOLOv3,
    Redmon & Farhadi 2018). ``anchors`` (``(A, 2)`` widths/heights in input
    pixels) are this scale's priors; the loss and :class:`YOLOv3Decode` read them
    from here.
    """

    def __init__(self, anchors, classes, **kwargs):
        super().__init__(**kwargs)
        self.anchors = _anchor_list(anchors)
        self.classes = int(classes)

    def call(self, inputs):
        shape = ops.shape(inputs)
        return ops.reshape(inputs, (shape[0], shape[1], shape[2], len(self.anchors),
                                    5 + self.classes))

    def compute_output_shape(self, input_shape):
        return (*input_shape[:3], len(self.anchors), 5 + self.classes)

    def get_config(self):
        return {**super().get_config(), "anchors": self.anchors, "classes": self.classes}


@keras.saving.register_keras_serializable(package="kvision")
class YOLOv1Output(keras.layers.Layer):
    """``(B, S*S*(5B+C)) -> (B, S, S, 5B+C)``: YOLO v1's FC output as its grid.

    Per cell: ``B`` boxes ``(x, y, sqrt(w), sqrt(h), confidence)`` (x, y offsets in
    the cell, w, h relative to the image), then ``C`` class probabilities
    (Redmon et al. 2016), all linear.
    """

    def __init__(self, grid, boxes_per_cell, classes, **kwargs):
        super().__init__(**kwargs)
        self.grid = int(grid)
        self.boxes_per_cell = int(boxes_per_cell)
        self.classes = int(classes)

    @property
    def depth(self):
        return 5 * self.boxes_per_cell + self.classes

    def call(self, inputs):
        return ops.reshape(inputs, (-1, self.grid, self.grid, self.depth))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.grid, self.grid, self.depth)

    def get_config(self):
        return {**super().get_config(), "grid": self.grid,
                "boxes_per_cell": self.boxes_per_cell, "classes": self.classes}


def cell_offsets(height, width, dtype):
    """``(H, W, 1, 2)`` of each cell's ``(column, row)``."""
    cols = ops.cast(ops.arange(width), dtype)
    rows = ops.cast(ops.arange(height), dtype)
    cx = ops.broadcast_to(ops.reshape(cols, (1, width)), (height, width))
    cy = ops.broadcast_to(ops.reshape(rows, (height, 1)), (height, width))
    return ops.expand_dims(ops.stack([cx, cy], axis=-1), 2)


def grid_geometry(raw, image_size, anchors):
    """``(stride (2,), anchors (A, 2), offsets (H, W, 1, 2))`` of a YOLOv3 output
    ``raw`` ``(B, H, W, A, 5 + C)`` on an ``image_size`` ``(height, width)`` input:
    what turns a cell's raw ``(tx, ty, tw, th)`` into pixels (the decoder and the
    loss both)."""
    shape = ops.shape(raw)
    rows, cols = shape[1], shape[2]
    height, width = image_size
    stride = ops.convert_to_tensor([width, height], "float32") / ops.cast(
        ops.stack([cols, rows]), "float32")
    return (stride, ops.convert_to_tensor(anchors, "float32"),
            cell_offsets(rows, cols, "float32"))


def _best_class(scores):
    """``(B, N, C)`` -> best score ``(B, N)`` and its class ``(B, N)`` int32 (the
    first of ties). Written with max/equal/where/min: TensorFlow's lowering of
    ``ops.argmax`` holds a BitwiseAnd that TFLite has no builtin for."""
    best = ops.max(scores, axis=-1)
    count = ops.shape(scores)[-1]
    index = ops.cast(ops.arange(count), "float32")
    first = ops.min(ops.where(ops.equal(scores, ops.expand_dims(best, -1)), index,
                              ops.cast(count, "float32")), axis=-1)
    return best, ops.cast(first, "int32")


def _clip_xyxy(x1, y1, x2, y2, image_size):
    height, width = image_size
    return ops.stack([ops.clip(x1, 0.0, width), ops.clip(y1, 0.0, height),
                      ops.clip(x2, 0.0, width), ops.clip(y2, 0.0, height)], axis=-1)


@keras.saving.register_keras_serializable(package="kvision")
class YOLOv3Decode(keras.layers.Layer):
    """Raw ``(B, S, S, A, 5+C)`` -> ``boxes (B, S*S*A, 4)``, ``scores``, ``classes``.

    YOLOv3's decoding: center ``((sigmoid(tx) + col) * stride_x, (sigmoid(ty) +
    row) * stride_y)``, size ``(anchor_w * exp(tw), anchor_h * exp(th))``; boxes
    are xyxy input pixels clipped to the image. A box's score is
    ``sigmoid(objectness) * sigmoid(class logit)`` of its best class (the
    "class-specific confidence" darknet thresholds), its class that argmax; a box
    whose ``sigmoid(objectness)`` is not above ``objectness_threshold`` scores 0
    (darknet's ``objectness <= thresh`` skip; 0 keeps every box).
    """

    def __init__(self, anchors, image_size, objectness_threshold=0.0, **kwargs):
        super().__init__(**kwargs)
        self.anchors = _anchor_list(anchors)
        self.image_size = [int(s) for s in image_size]
        self.objectness_threshold = float(objectness_threshold)
        if not 0.0 <= self.objectness_threshold < 1.0:
            raise ValueError(f"objectness_threshold must be in [0, 1), got "
                             f"{objectness_threshold!r}.")

    def call(self, raw):
        raw = ops.cast(raw, "float32")
        shape = ops.shape(raw)
        rows, cols = shape[1], shape[2]
        stride, anchors, offsets = grid_geometry(raw, self.image_size, self.anchors)
        center = (ops.sigmoid(raw[..., 0:2]) + offsets) * stride
        size = anchors * ops.exp(raw[..., 2:4])
        corner1, corner2 = center - size / 2, center + size / 2
        boxes = _clip_xyxy(corner1[..., 0], corner1[..., 1], corner2[..., 0],
                           corner2[..., 1], self.image_size)
        objectness = ops.sigmoid(raw[..., 4:5])
        scores = objectness * ops.sigmoid(raw[..., 5:])
        if self.objectness_threshold > 0:
            scores = ops.where(objectness > self.objectness_threshold, scores, 0.0)
        count = rows * cols * len(self.anchors)
        boxes = ops.reshape(boxes, (shape[0], count, 4))
        best, classes = _best_class(ops.reshape(scores, (shape[0], count, shape[4] - 5)))
        return boxes, best, classes

    def compute_output_spec(self, raw):
        count = None
        if None not in raw.shape[1:4]:
            count = raw.shape[1] * raw.shape[2] * raw.shape[3]
        batch = raw.shape[0]
        return (keras.KerasTensor((batch, count, 4), "float32"),
                keras.KerasTensor((batch, count), "float32"),
                keras.KerasTensor((batch, count), "int32"))

    def get_config(self):
        return {**super().get_config(), "anchors": self.anchors,
                "image_size": self.image_size,
                "objectness_threshold": self.objectness_threshold}


@keras.saving.register_keras_serializable(package="kvision")
class YOLOv1Decode(keras.layers.Layer):
    """Raw ``(B, S, S, 5B+C)`` -> ``boxes (B, S*S*B, 4)``, ``scores``, ``classes``.

    YOLO v1's test-time rule: the class-specific confidence is ``Pr(class | object)
    * confidence`` (confidence = ``Pr(object) * IoU``); each box takes its cell's
    best class. Centers are ``(col + x, row + y) / S`` of the image, sizes the
    squares of the predicted square roots; boxes are xyxy input pixels clipped to
    the image. Linear outputs are clipped to ``[0, 1]`` before they multiply, so
    scores are probabilities.
    """

    def __init__(self, boxes_per_cell, image_size, **kwargs):
        super().__init__(**kwargs)
        self.boxes_per_cell = int(boxes_per_cell)
        self.image_size = [int(s) for s in image_size]

    def call(self, raw):
        raw = ops.cast(raw, "float32")
        shape = ops.shape(raw)
        grid = shape[1]
        b = self.boxes_per_cell
        boxes = ops.reshape(raw[..., :5 * b], (shape[0], grid, grid, b, 5))
        probabilities = ops.clip(raw[..., 5 * b:], 0.0, 1.0)
        height, width = self.image_size
        scale = ops.convert_to_tensor([width, height], "float32")
        offsets = cell_offsets(grid, grid, "float32")
        center = (boxes[..., 0:2] + offsets) / ops.cast(grid, "float32") * scale
        size = ops.square(boxes[..., 2:4]) * scale
        corner1, corner2 = center - size / 2, center + size / 2
        xyxy = _clip_xyxy(corner1[..., 0], corner1[..., 1], corner2[..., 0],
                          corner2[..., 1], self.image_size)
        confidence = ops.clip(boxes[..., 4:5], 0.0, 1.0)
        scores = confidence * ops.expand_dims(probabilities, 3)
        count = grid * grid * b
        xyxy = ops.reshape(xyxy, (shape[0], count, 4))
        best, classes = _best_class(ops.reshape(scores, (shape[0], count, -1)))
        return xyxy, best, classes

    def compute_output_spec(self, raw):
        count = None
        if None not in raw.shape[1:3]:
            count = raw.shape[1] * raw.shape[2] * self.boxes_per_cell
        batch = raw.shape[0]
        return (keras.KerasTensor((batch, count, 4), "float32"),
                keras.KerasTensor((batch, count), "float32"),
                keras.KerasTensor((batch, count), "int32"))

    def get_config(self):
        return {**super().get_config(), "boxes_per_cell": self.boxes_per_cell,
                "image_size": self.image_size}
