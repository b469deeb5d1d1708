"""Pose layers: heatmaps decoded to keypoints, and the horizontal flip of test-time
flip averaging, inside a model's graph.

Heatmaps are ``(B, h, w, K)``, one map per joint, at ``strides`` (the input's pixels
per heatmap pixel: 4 for the stacked hourglass). Heatmap pixel ``(i, j)`` covers input
pixels ``[j * sx, (j + 1) * sx) x [i * sy, (i + 1) * sy)``: its centre is ``((j + 0.5) *
sx, (i + 0.5) * sy)`` in kvision's keypoint convention (x right, y down, the pixel
grid's corner at 0). Pure ``keras.ops``, converting to TFLite builtin operators only.
"""

from __future__ import annotations

import keras
from keras import ops

# bearpaw/pytorch-pose (pose/utils/evaluation.py, final_preds): the arg-max moves this
# far, in heatmap pixels, toward the higher of its two neighbours on each axis.
SHIFT = 0.25


def _pair(value, what):
    """``value`` as a ``(y, x)`` pair of positive floats (a number: both)."""
    pair = (value, value) if isinstance(value, (int, float)) else tuple(value)
    if len(pair) != 2 or not all(float(v) > 0 for v in pair):
        raise ValueError(f"{what} must be a positive number or a (y, x) pair of them, "
                         f"got {value!r}.")
    return tuple(float(v) for v in pair)


def _toward_higher(difference):
    """+SHIFT where the difference of the two neighbours is positive, -SHIFT where
    negative, 0 on a tie (``sign``, written with comparisons: TFLite's SIGN is recent)."""
    up = ops.cast(difference > 0, difference.dtype)
    down = ops.cast(difference < 0, difference.dtype)
    return SHIFT * (up - down)


@keras.saving.register_keras_serializable(package="kvision")
class HeatmapDecode(keras.layers.Layer):
    """Heatmaps ``(B, h, w, K)`` -> ``{"keypoints": (B, K, 2) x, y in input pixels,
    "scores": (B, K)}``.

    Per joint: the arg-max pixel (the first, in row-major order, where several tie),
    moved a quarter pixel toward the higher neighbour on each axis (none at the map's
    border or on a tie; Newell et al.'s decoding, as bearpaw/pytorch-pose's
    ``final_preds``), then to input pixels through the pixel's centre. The score is
    the joint's maximum heatmap value.

    Args:
        strides: input pixels per heatmap pixel, a number or ``(y, x)`` (the
            stacked hourglass: 4).
    """

    def __init__(self, strides=4, **kwargs):
        kwargs.setdefault("dtype", "float32")  # arg-max and ties in float32 always
        super().__init__(**kwargs)
        self.strides = _pair(strides, "strides")

    def call(self, heatmaps):
        heatmaps = ops.cast(heatmaps, "float32")
        joints = heatmaps.shape[3]
        if joints is None:
            raise ValueError(f"HeatmapDecode needs a known number of heatmaps (joints), "
                             f"got shape {tuple(heatmaps.shape)}.")
        _, height, width, _ = ops.shape(heatmaps)  # tensors where the size is free
        # Neighbour differences at every pixel (0 on the border): read at the arg-max.
        dx = ops.pad(heatmaps[:, :, 2:] - heatmaps[:, :, :-2],
                     ((0, 0), (0, 0), (1, 1), (0, 0)))
        dy = ops.pad(heatmaps[:, 2:] - heatmaps[:, :-2], ((0, 0), (1, 1), (0, 0), (0, 0)))
        flat = [ops.reshape(ops.transpose(m, (0, 3, 1, 2)), (-1, joints, height * width))
                for m in (heatmaps, dx, dy)]
        scores = ops.max(flat[0], axis=-1)
        # The first index holding the maximum, by arg-max over integers: a float
        # arg-max adds a sign-bit test (BitwiseAnd) that TFLite builtins lack.
        at_max = ops.cast(flat[0] >= ops.expand_dims(scores, -1), "int32")
        index = ops.cast(ops.argmax(at_max, axis=-1), "int32")
        pick = ops.one_hot(index, height * width, dtype="float32")
        shift_x, shift_y = (_toward_higher(ops.sum(m * pick, axis=-1)) for m in flat[1:])
        col = ops.cast(index % width, "float32")
        row = ops.cast(index // width, "float32")
        stride_y, stride_x = self.strides
        keypoints = ops.stack([(col + 0.5 + shift_x) * stride_x,
                               (row + 0.5 + shift_y) * stride_y], axis=-1)
        return {"keypoints": keypoints, "scores": scores}

    def compute_output_spec(self, heatmaps):
        batch, joints = heatmaps.shape[0], heatmaps.shape[3]
        return {"keypoints": keras.KerasTensor((batch, joints, 2), "float32"),
                "scores": keras.KerasTensor((batch, joints), "float32")}

    def get_config(self):
        return {**super().get_config(), "strides": list(self.strides)}


@keras.saving.register_keras_serializable(package="kvision")
class HorizontalFlip(keras.layers.Layer):
    """``(B, H, W, C)`` mirrored left to right, and its channels reordered by
    ``permutation`` when given: channel ``c`` of the output is channel
    ``permutation[c]`` of the mirrored input.

    An image is flipped with no permutation; a flipped image's heatmaps are flipped
    back with the left/right joint swap (:meth:`kvision.data.pose_layouts.Layout.
    flip_permutation`), so that they line up with the original image's joints.
    A pixel's centre ``x`` goes to ``W - x``: heatmap columns reverse exactly when the
    input side is a multiple of the stride.
    """

    def __init__(self, permutation=None, **kwargs):
        super().__init__(**kwargs)
        self.permutation = None if permutation is None else [int(p) for p in permutation]
        if self.permutation is not None and \
                sorted(self.permutation) != list(range(len(self.permutation))):
            raise ValueError(f"permutation must reorder 0..{len(self.permutation) - 1}, "
                             f"each once; got {self.permutation}.")

    def build(self, input_shape):
        channels = input_shape[-1]
        if self.permutation is not None and channels != len(self.permutation):
            raise ValueError(f"HorizontalFlip's permutation has {len(self.permutation)} "
                             f"entries for inputs of {channels} channels.")
        super().build(input_shape)

    def call(self, inputs):
        flipped = ops.flip(inputs, axis=2)
        if self.permutation is None:
            return flipped
        return ops.take(flipped, ops.convert_to_tensor(self.permutation, "int32"), axis=-1)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "permutation": self.permutation}
