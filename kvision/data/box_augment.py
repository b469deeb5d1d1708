"""Augmentation that moves boxes (and label maps) with the pixels, for detection data.

Keras 3's own image layers take Keras' bounding-box dict (``{"images", "bounding_boxes":
{"boxes", "labels"}, "segmentation_masks"}``) when given ``bounding_box_format``:
:func:`box_augmentation` chains a flip, a translation, a zoom (scale), an optional
rotation and a colour jitter of those, then :class:`DropSmallBoxes` marks boxes pushed
(almost) out of the frame as padding. :class:`Mosaic` is kvision's own (keras-cv's is
frozen): it tiles four images of a batch around a random centre, as YOLOv4 does.

Boxes are ``xyxy`` pixels; in a batch they are dense, ``(B, N, 4)`` with labels
``(B, N)`` where ``-1`` marks padding (what Keras' layers produce from ragged input).
Checked here: Keras 3.15's ``RandomCrop`` moves boxes to the wrong place (its boxes
disagree with its pixels), so it is not used; ``RandomZoom`` covers scale.
"""

from __future__ import annotations

import keras
from keras import ops

FORMAT = "xyxy"


def box_augmentation(*, flip=True, translation=0.1, zoom=0.2, rotation=0.0, colour=0.2,
                     min_size=2.0, seed=None, name="box_augmentation"):
    """A ``keras.Sequential`` of Keras layers that move boxes with the pixels.

    ``flip``: random left-right mirror. ``translation``: largest shift, a fraction of
    height and width. ``zoom``: largest zoom in or out, a fraction (a scale change).
    ``rotation``: a fraction of a full turn (rotated boxes are the box of the rotated
    corners, so they grow loose; off by default). ``colour``: brightness and contrast
    jitter factor. ``min_size``: boxes narrower or lower than this many pixels after a
    move become padding (label -1). A factor of 0 leaves its layer out. Input and
    output: the bounding-box dict, batched or not, pixels in [0, 255]; only active
    when called with ``training=True``.
    """
    common = {"bounding_box_format": FORMAT, "seed": seed}
    layers = []
    if flip:
        layers.append(keras.layers.RandomFlip("horizontal", **common))
    if translation:
        layers.append(keras.layers.RandomTranslation(
            translation, translation, fill_mode="constant", **common))
    if zoom:
        layers.append(keras.layers.RandomZoom(zoom, zoom, fill_mode="constant", **common))
    if rotation:
        layers.append(keras.layers.RandomRotation(rotation, fill_mode="constant", **common))
    if colour:
        layers.append(keras.layers.RandomColorJitter(
            value_range=(0, 255), brightness_factor=colour, contrast_factor=colour,
            **common))
    if not layers:
        raise ValueError("box_augmentation needs at least one of flip, translation, zoom, "
                         "rotation, colour.")
    layers.append(DropSmallBoxes(min_size))
    return keras.Sequential(layers, name=name)


@keras.saving.register_keras_serializable(package="kvision")
class ResizeWithBoxes(keras.layers.Resizing):
    """Keras' ``Resizing`` for the box dict: images of any size to ``(height, width)``,
    boxes scaled with them and label maps resized nearest; by default the aspect ratio
    is kept and the rest padded (black, background), so boxes stay tight.

    Integer label maps are resized as float and cast back: Keras 3.15's padding path
    fails on integer tensors.
    """

    def __init__(self, height, width, pad_to_aspect_ratio=True, bounding_box_format=FORMAT,
                 **kwargs):
        super().__init__(int(height), int(width), pad_to_aspect_ratio=pad_to_aspect_ratio,
                         bounding_box_format=bounding_box_format, **kwargs)

    def call(self, data, training=True):
        if not (isinstance(data, dict) and "segmentation_masks" in data):
            return super().call(data, training=training)
        dtype = keras.backend.standardize_dtype(data["segmentation_masks"].dtype)
        data = dict(data, segmentation_masks=ops.cast(data["segmentation_masks"], "float32"))
        out = super().call(data, training=training)
        out["segmentation_masks"] = ops.cast(out["segmentation_masks"], dtype)
        return out


def _boxes_and_labels(data, layer):
    if not isinstance(data, dict) or "images" not in data or "bounding_boxes" not in data:
        raise ValueError(f"{layer} expects Keras' bounding-box dict {{'images', "
                         f"'bounding_boxes': {{'boxes', 'labels'}}}}, got "
                         f"{type(data).__name__} with keys "
                         f"{sorted(data) if isinstance(data, dict) else None}.")
    if "instance_masks" in data:
        raise ValueError(f"{layer}: Keras' augmentation layers move 'images', "
                         f"'bounding_boxes' and 'segmentation_masks' only; 'instance_masks' "
                         f"would stay where they were. Leave them out of the augmented "
                         f"data (as_dataset(instance_masks=False)).")
    return data["bounding_boxes"]["boxes"], data["bounding_boxes"]["labels"]


def _mark_padding(boxes, labels, keep):
    """Boxes where ``keep`` is false become zeros with label -1."""
    labels = ops.where(keep, labels, ops.cast(-1, labels.dtype))
    return ops.where(keep[..., None], boxes, ops.zeros_like(boxes)), labels


@keras.saving.register_keras_serializable(package="kvision")
class DropSmallBoxes(keras.layers.Layer):
    """Marks boxes narrower or lower than ``min_size`` pixels as padding (label -1),
    and casts ``"segmentation_masks"`` back to ``mask_dtype`` (None: left as they are).

    Keras' layers clip a box pushed out of the frame to a sliver but keep its label;
    this turns such boxes into padding so no target points at empty background.
    """

    def __init__(self, min_size=2.0, mask_dtype="int32", **kwargs):
        super().__init__(**kwargs)
        if float(min_size) < 0:
            raise ValueError(f"min_size must be >= 0 pixels, got {min_size}.")
        self.min_size = float(min_size)
        self.mask_dtype = mask_dtype

    def call(self, data, training=True):
        boxes, labels = _boxes_and_labels(data, "DropSmallBoxes")
        if not isinstance(labels, (list, tuple)) and not hasattr(boxes, "to_tensor"):
            boxes = ops.convert_to_tensor(boxes, "float32")
            labels = ops.cast(labels, "int32")
            keep = ((boxes[..., 2] - boxes[..., 0] >= self.min_size)
                    & (boxes[..., 3] - boxes[..., 1] >= self.min_size) & (labels >= 0))
            boxes, labels = _mark_padding(boxes, labels, keep)
        out = dict(data)
        out["bounding_boxes"] = dict(data["bounding_boxes"], boxes=boxes, labels=labels)
        if "segmentation_masks" in data and self.mask_dtype:
            # Keras' layers hand label maps back as floats
            out["segmentation_masks"] = ops.cast(ops.round(data["segmentation_masks"]),
                                                 self.mask_dtype)
        return out

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "min_size": self.min_size,
                "mask_dtype": self.mask_dtype}


@keras.saving.register_keras_serializable(package="kvision")
class Mosaic(keras.layers.Layer):
    """YOLOv4's mosaic: each output tiles four images of the batch around a random centre.

    Output ``i`` shows, around a centre drawn uniformly in the middle half of the
    frame, the bottom-right of image ``i`` (top-left quadrant), the bottom-left of
    image ``i+1`` (top-right), the top-right of ``i+2`` (bottom-left) and the top-left
    of ``i+3`` (bottom-right), indices modulo the batch. Every box is shifted with its
    image and clipped to its quadrant; one that keeps less than ``min_visible`` of its
    area, or less than a pixel of width or height, becomes padding (label -1).

    Input: a batched bounding-box dict of same-size images, boxes ``(B, N, 4)`` xyxy
    pixels and labels ``(B, N)`` (-1 padding); ``"segmentation_masks"`` move with the
    images. Output: the same with ``(B, 4N)`` boxes. Identity unless ``training``.
    """

    def __init__(self, min_visible=0.25, seed=None, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 <= float(min_visible) <= 1.0:
            raise ValueError(f"min_visible must be a fraction in [0, 1], got {min_visible}.")
        self.min_visible = float(min_visible)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, data, training=True):
        boxes, labels = _boxes_and_labels(data, "Mosaic")
        if not training:
            return data
        images = data["images"]
        if len(images.shape) != 4 or len(boxes.shape) != 3:
            raise ValueError(f"Mosaic works on batches: images (B, H, W, C) and dense "
                             f"boxes (B, N, 4), got {tuple(images.shape)} and "
                             f"{tuple(boxes.shape)} (batch the dataset, padding boxes "
                             f"with label -1, before the mosaic).")
        shape = ops.shape(images)
        batch, height, width = shape[0], shape[1], shape[2]
        centre = keras.random.uniform((2, batch), 0.25, 0.75, seed=self.seed_generator)
        cy = ops.cast(centre[0] * ops.cast(height, "float32"), "int32")
        cx = ops.cast(centre[1] * ops.cast(width, "float32"), "int32")
        rows = ops.mod(ops.arange(height)[None] - cy[:, None], height)      # (B, H)
        cols = ops.mod(ops.arange(width)[None] - cx[:, None], width)        # (B, W)
        below = ops.arange(height)[None, :, None] >= cy[:, None, None]      # (B, H, 1)
        right = ops.arange(width)[None, None, :] >= cx[:, None, None]       # (B, 1, W)
        quadrant = ops.cast(below, "int32") * 2 + ops.cast(right, "int32")  # (B, H, W)
        out = dict(data)
        for key in ("images", "segmentation_masks"):
            if key in data:
                out[key] = self._tile(data[key], rows, cols, quadrant, batch)
        boxes = ops.convert_to_tensor(boxes, "float32")
        labels = ops.cast(labels, "int32")
        size = (ops.cast(height, "float32"), ops.cast(width, "float32"))
        tiled = [self._move_boxes(ops.roll(boxes, -q, axis=0), ops.roll(labels, -q, axis=0),
                                  q, ops.cast(cy, "float32"), ops.cast(cx, "float32"), size)
                 for q in range(4)]
        out["bounding_boxes"] = dict(
            data["bounding_boxes"], boxes=ops.concatenate([t[0] for t in tiled], axis=1),
            labels=ops.concatenate([t[1] for t in tiled], axis=1))
        return out

    @staticmethod
    def _tile(x, rows, cols, quadrant, batch):
        """Output pixel ``(i, y, x)`` of quadrant ``q`` is pixel ``(rows[i, y], cols[i, x])``
        of image ``i + q``: one flat gather (``where``/``take_along_axis`` with
        broadcasting are 10-20x slower in TensorFlow)."""
        shape = ops.shape(x)
        height, width = shape[1], shape[2]
        source = ops.mod(ops.arange(batch)[:, None, None] + quadrant, batch)
        index = (source * (height * width) + rows[:, :, None] * width + cols[:, None, :])
        flat = ops.reshape(x, (-1,) + tuple(x.shape[3:]))
        return ops.reshape(ops.take(flat, ops.reshape(index, (-1,)), axis=0), shape)

    def _move_boxes(self, boxes, labels, q, cy, cx, size):
        height, width = size
        below, right = q // 2, q % 2
        dx = cx if right else cx - width
        dy = cy if below else cy - height
        shift = ops.stack([dx, dy, dx, dy], axis=-1)[:, None]               # (B, 1, 4)
        low = ops.stack([cx if right else 0 * cx, cy if below else 0 * cy], -1)
        high = ops.stack([width + 0 * cx if right else cx,
                          height + 0 * cy if below else cy], -1)
        low, high = ops.tile(low[:, None], (1, 1, 2)), ops.tile(high[:, None], (1, 1, 2))
        moved = boxes + shift
        clipped = ops.minimum(ops.maximum(moved, low), high)
        w, h = clipped[..., 2] - clipped[..., 0], clipped[..., 3] - clipped[..., 1]
        full = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
        keep = ((labels >= 0) & (w >= 1.0) & (h >= 1.0)
                & (w * h >= self.min_visible * full))
        return _mark_padding(clipped, labels, keep)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "min_visible": self.min_visible, "seed": self.seed}
