"""Region-of-interest pooling for two-stage detectors (Fast/Faster/Mask R-CNN).

Both layers are called as ``layer([features, boxes])``: features ``(N, H, W, C)``
(channels last), boxes ``(N, R, 4)`` ``x1, y1, x2, y2`` in *image* pixels (``R`` may be
dynamic, and 0); they answer ``(N, R, out_h, out_w, C)``. ``spatial_scale`` maps image
pixels to feature pixels (1/16 for a stride-16 map).

:class:`RoIPooling` is torchvision's ``roi_pool`` (the Fast R-CNN paper's Caffe layer)
and :class:`RoIAlign` torchvision's ``roi_align``, following their CPU kernels
(``torchvision/csrc/ops/cpu/roi_{pool,align}_kernel.cpp``) case by case: rounding,
malformed boxes, samples outside the map, empty bins. Neither uses
``tf.image.crop_and_resize``: TFLite has no builtin for it (tensorflow#44201), so a
detector built on it needs Flex operators. These are ``keras.ops`` only (they run on
JAX too) and convert to TFLite builtins (gathers, batched matmuls, arithmetic).

How, and what it costs:

- RoIAlign's bilinear sampling is separable: the mean over a bin's ``gh x gw`` samples
  is ``Wy @ F @ Wx^T`` with ``Wy`` ``(out_h, H)`` the mean bilinear weight of each row
  over the bin's ``gh`` sample rows (``Wx`` likewise). Each ``Wy`` is computed in
  closed form from the counts and sums of the samples falling between consecutive
  pixel rows, so any sampling ratio (the adaptive one too, which differs per box) costs
  the same: ``R * out_h * H * W * C`` multiply-adds and ``R * out_h * W * C`` floats
  per image. Fine for the small maps used here; a large map with many boxes wants a
  gather-based kernel instead. Measured here (2 CPU cores, ``tf.function``, 256
  channels, 7x7): a 14x14 map with 128 boxes 14 ms (``tf.image.crop_and_resize`` to
  14x14, which needs Flex in TFLite: 9 ms); 50x50 with 512 boxes 211 ms (52 ms).
- RoIPooling's max over bins of varying size uses a 2-D sparse table (the max over
  every ``2^ky x 2^kx`` window, ``log2 H * log2 W`` copies of the map, independent of
  ``R``): a bin's max is the max of four overlapping table windows, gathered. The
  gradient reaches the bin's argmax, as torchvision's backward does. The map's height
  and width must be known when the layer is traced (the table's depth depends on them).
"""

from __future__ import annotations

import numpy as np

import keras
from keras import ops

# Guards the sample count against a zero sample spacing (zero-size boxes, aligned=True):
# with it, all of a bin's samples sit at one point and are counted on one side of it.
_TINY = 1e-20


def _output_size(value):
    """``output_size`` as an ``(out_h, out_w)`` pair of positive ints."""
    pair = (value, value) if np.ndim(value) == 0 else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool)
                                 and v >= 1 for v in pair):
        raise ValueError(f"output_size must be a positive int or an (out_h, out_w) pair of "
                         f"them, got {value!r}.")
    return tuple(int(v) for v in pair)


class _RoILayer(keras.layers.Layer):
    """What both RoI layers share: arguments, input checks, output shape, config."""

    def __init__(self, output_size=(7, 7), spatial_scale=1 / 16, **kwargs):
        super().__init__(**kwargs)
        self.output_size = _output_size(output_size)
        if not isinstance(spatial_scale, (int, float)) or not spatial_scale > 0:
            raise ValueError(f"spatial_scale must be a positive number (feature pixels per "
                             f"image pixel, e.g. 1/16), got {spatial_scale!r}.")
        self.spatial_scale = float(spatial_scale)

    def _check(self, shapes):
        name = type(self).__name__
        if not isinstance(shapes, (list, tuple)) or len(shapes) != 2:
            raise ValueError(f"{name} is called on [features, boxes], got {shapes!r}.")
        features, boxes = (tuple(s) for s in shapes)
        if len(features) != 4:
            raise ValueError(f"{name}: features must be (N, H, W, C) (channels last), got "
                             f"shape {features}.")
        if len(boxes) != 3 or boxes[2] not in (None, 4):
            raise ValueError(f"{name}: boxes must be (N, R, 4) x1, y1, x2, y2 in image "
                             f"pixels, got shape {boxes}.")
        if None not in (features[0], boxes[0]) and features[0] != boxes[0]:
            raise ValueError(f"{name}: features {features} and boxes {boxes} must have the "
                             f"same batch size N.")
        return features, boxes

    def compute_output_shape(self, input_shape):
        features, boxes = self._check(input_shape)
        return (features[0], boxes[1], *self.output_size, features[3])

    def _inputs(self, inputs):
        """Checked ``features`` and float32 ``boxes`` scaled to feature pixels.

        Boxes get no gradient (torchvision's ops give them none either)."""
        features, boxes = inputs
        self._check([features.shape, boxes.shape])
        boxes = ops.stop_gradient(ops.cast(boxes, "float32"))
        return features, boxes * np.float32(self.spatial_scale)

    def get_config(self):
        return {**super().get_config(), "output_size": list(self.output_size),
                "spatial_scale": self.spatial_scale}


# --- RoIAlign -------------------------------------------------------------------------

def _interval_counts(first, step, grid, size):
    """Counts and offset sums of the samples ``first + k * step`` (``k < grid``) in the
    intervals ``[j, j + 1)`` for ``j = -1 .. size - 1`` (the last one closed at ``size``,
    as the kernel keeps samples at ``y <= size``): ``(count, offsets)``, each
    ``(..., size + 1)``."""
    edges = ops.cast(ops.arange(-1, size + 1), "float32")  # -1, 0, .., size
    delta = (edges - first) / ops.maximum(step, _TINY)
    below = ops.minimum(ops.maximum(ops.ceil(delta), 0.0), grid)  # samples below each edge
    at_most = ops.minimum(ops.maximum(ops.floor(delta[..., -1:]) + 1.0, 0.0), grid)
    below = ops.concatenate([below[..., :-1], at_most], axis=-1)
    start, stop = below[..., :-1], below[..., 1:]
    count = stop - start
    # Sum over k in [start, stop) of (first + k * step - j): the samples' offsets in
    # their interval, from the arithmetic series rather than sample by sample.
    offsets = count * (first - edges[:-1]) + step * count * (start + stop - 1.0) / 2.0
    return count, ops.minimum(ops.maximum(offsets, 0.0), count)


def _axis_weights(start, bin_size, grid, pooled, size):
    """``(..., pooled, size)``: each bin's mean, over its ``grid`` samples along one
    axis, of the bilinear weight each pixel gets (the kernel's weights: samples outside
    ``[-1, size]`` count 0, those in ``[-1, 0]`` or ``[size - 1, size]`` are clamped
    onto the border pixel). ``start``, ``bin_size``, ``grid``: ``(..., 1)``."""
    grid = ops.maximum(grid, 0.0)  # an adaptive grid <= 0 has no samples: a 0 output
    spacing = bin_size / ops.maximum(grid, 1.0)
    first = start + ops.cast(ops.arange(pooled), "float32") * bin_size + 0.5 * spacing
    last = first + (grid - 1.0) * spacing
    lowest = ops.minimum(first, last)  # a negative box length samples right to left
    count, offsets = _interval_counts(ops.expand_dims(lowest, -1),
                                      ops.expand_dims(ops.abs(spacing), -1),
                                      ops.expand_dims(grid, -1), size)
    # Interval -1 ([-1, 0)) clamps onto pixel 0, interval size - 1 onto pixel size - 1;
    # inside, a sample at offset t gives 1 - t to pixel j and t to pixel j + 1.
    j = ops.arange(-1, size)
    offsets = ops.where(j == -1, count, ops.where(j == size - 1, 0.0, offsets))
    weights = (count - offsets)[..., 1:] + offsets[..., :-1]
    return weights / ops.expand_dims(ops.maximum(grid, 1.0), -1)


@keras.saving.register_keras_serializable(package="kvision")
class RoIAlign(_RoILayer):
    """torchvision's ``roi_align`` (He et al., Mask R-CNN, 2017): ``[features (N, H, W,
    C), boxes (N, R, 4)]`` -> ``(N, R, out_h, out_w, C)``.

    Each box, scaled by ``spatial_scale`` (and moved by -0.5 with ``aligned=True``, so a
    pixel's centre is at ``x + 0.5``), is cut into ``out_h x out_w`` bins; each bin is the
    mean of bilinearly interpolated samples on a regular ``sampling_ratio`` grid inside
    it. No rounding anywhere.

    Args:
        output_size: an int or ``(out_h, out_w)`` (Mask R-CNN's mask head: 14).
        spatial_scale: feature pixels per image pixel (1/16 at stride 16).
        sampling_ratio: samples per bin along each axis; ``<= 0`` means adaptive, as in
            torchvision: ``ceil(roi_size / output_size)`` for each box.
        aligned: the -0.5 pixel shift of Detectron2 / torchvision ``aligned=True``;
            ``False`` gives the original layer, where boxes narrower than a feature
            pixel are widened to one.
    """

    def __init__(self, output_size=(7, 7), spatial_scale=1 / 16, sampling_ratio=2,
                 aligned=True, **kwargs):
        super().__init__(output_size, spatial_scale, **kwargs)
        if isinstance(sampling_ratio, bool) or not isinstance(sampling_ratio,
                                                               (int, np.integer)):
            raise ValueError(f"sampling_ratio must be an int (<= 0: adaptive), got "
                             f"{sampling_ratio!r}.")
        if not isinstance(aligned, bool):
            raise ValueError(f"aligned must be True or False, got {aligned!r}.")
        self.sampling_ratio = int(sampling_ratio)
        self.aligned = aligned

    def _weights(self, start, end, pooled, size):
        """One axis: ``(N, R, pooled, size)`` weights of boxes from ``start`` to ``end``."""
        length = end - start
        if not self.aligned:  # the original layer widens malformed boxes to 1 pixel
            length = ops.maximum(length, 1.0)
        bin_size = length / pooled
        if self.sampling_ratio > 0:
            grid = ops.full_like(length, float(self.sampling_ratio))
        else:
            grid = ops.ceil(bin_size)
        return _axis_weights(*(ops.expand_dims(t, -1) for t in (start, bin_size, grid)),
                             pooled, size)

    def call(self, inputs):
        features, boxes = self._inputs(inputs)
        if self.aligned:
            boxes = boxes - 0.5
        out_h, out_w = self.output_size
        n, height, width, channels = ops.shape(features)
        rois = ops.shape(boxes)[1]
        wy = self._weights(boxes[..., 1], boxes[..., 3], out_h, height)  # (N, R, oh, H)
        wx = self._weights(boxes[..., 0], boxes[..., 2], out_w, width)  # (N, R, ow, W)
        wy = ops.cast(wy, features.dtype)
        wx = ops.cast(wx, features.dtype)
        # Rows first: (N, R*oh, H) @ (N, H, W*C), then columns per box, as batched
        # matmuls (TFLite BATCH_MATMUL) with at most 4-D transposes.
        rows = ops.matmul(ops.reshape(wy, (n, rois * out_h, height)),
                          ops.reshape(features, (n, height, width * channels)))
        rows = ops.reshape(rows, (n * rois, out_h, width, channels))
        rows = ops.reshape(ops.transpose(rows, (0, 2, 1, 3)),
                           (n * rois, width, out_h * channels))
        out = ops.matmul(ops.reshape(wx, (n * rois, out_w, width)), rows)
        out = ops.transpose(ops.reshape(out, (n * rois, out_w, out_h, channels)), (0, 2, 1, 3))
        return ops.reshape(out, (n, rois, out_h, out_w, channels))

    def get_config(self):
        return {**super().get_config(), "sampling_ratio": self.sampling_ratio,
                "aligned": self.aligned}


# --- RoIPooling -----------------------------------------------------------------------

def _round(x):
    """C's ``round``: halves away from zero (``ops.round`` rounds them to even)."""
    return ops.sign(x) * ops.floor(ops.abs(x) + 0.5)


def _levels(size):
    """Sparse-table levels for windows of 1 .. ``size`` pixels."""
    return int(size).bit_length()


def _bins(start, end, pooled, size):
    """One axis of ``roi_pool``'s bins: ``(lo, hi)`` pixel ranges ``(N, R, pooled)``
    (int32, clipped to ``[0, size]``, empty where ``hi <= lo``), from box edges already
    in feature pixels."""
    start, end = _round(start), _round(end)
    # floor(p * s) and ceil((p + 1) * s), s = pixels / pooled, in integers: exact, as
    # roi_pool's float32 is at these sizes, in eager and in graphs alike (a graph's
    # optimizer turns the division into a product by float32 1/pooled, which put
    # ceil(7 * 3/7) at 4: issue 17).
    pixels = ops.cast(ops.maximum(end - start + 1.0, 1.0), "int32")  # malformed: 1
    p = ops.arange(pooled, dtype="int32")
    pixels, start = ops.expand_dims(pixels, -1), ops.expand_dims(start, -1)
    lo = ops.cast(ops.floor_divide(p * pixels, pooled), "float32")
    hi = ops.cast(ops.floor_divide((p + 1) * pixels + pooled - 1, pooled), "float32")
    lo = ops.clip(lo + start, 0.0, float(size))
    hi = ops.clip(hi + start, 0.0, float(size))
    return ops.cast(lo, "int32"), ops.cast(hi, "int32")


def _window(lo, hi, levels):
    """The sparse-table level ``k`` (``2^k <= hi - lo``) and window size ``2^k`` covering
    ``[lo, hi)`` with two windows: ``[lo, lo + 2^k)`` and ``[hi - 2^k, hi)``."""
    length = ops.maximum(hi - lo, 1)
    powers = ops.convert_to_tensor([2 ** j for j in range(1, levels)] or [1 << 30], "int32")
    reached = ops.cast(ops.expand_dims(length, -1) >= powers, "int32")
    level = ops.sum(reached, axis=-1)
    halves = ops.convert_to_tensor([2 ** (j - 1) for j in range(1, levels)] or [0], "int32")
    return level, 1 + ops.sum(reached * halves, axis=-1)


def _shifted_max(table, shift, axis, lowest):
    """``max(table[i], table[i + shift])`` along ``axis``, the end padded with ``lowest``
    (never read: a window of a valid bin ends inside the map)."""
    rank = len(table.shape)
    index = [slice(None)] * rank
    index[axis] = slice(shift, None)
    pad = [[0, 0]] * rank
    pad[axis] = [0, shift]
    return ops.maximum(table, ops.pad(table[tuple(index)], pad, constant_values=lowest))


def _sparse_table(features, levels_y, levels_x):
    """``(N, Ly, Lx, H, W, C)``: the max over the ``2^ky x 2^kx`` window at each pixel."""
    lowest = float(np.finfo(keras.backend.standardize_dtype(features.dtype)).min)
    columns = [features]
    for k in range(1, levels_x):
        columns.append(_shifted_max(columns[-1], 2 ** (k - 1), 2, lowest))
    rows = [ops.stack(columns, axis=1)]  # (N, Lx, H, W, C)
    for k in range(1, levels_y):
        rows.append(_shifted_max(rows[-1], 2 ** (k - 1), 2, lowest))
    return ops.stack(rows, axis=1)


@keras.saving.register_keras_serializable(package="kvision")
class RoIPooling(_RoILayer):
    """torchvision's ``roi_pool``, the Fast R-CNN paper's layer (Girshick, 2015):
    ``[features (N, H, W, C), boxes (N, R, 4)]`` -> ``(N, R, out_h, out_w, C)``.

    Each box is scaled by ``spatial_scale`` and its edges rounded to feature pixels
    (halves away from zero, as C's ``round``); a box of less than one pixel becomes one
    pixel. Bin ``p`` of ``out`` covers pixels ``[floor(p * s), ceil((p + 1) * s))`` from
    the box's first pixel, ``s = box pixels / out``, clipped to the map; it answers the
    max over them, 0 for a bin wholly outside the map.

    Args:
        output_size: an int or ``(out_h, out_w)``.
        spatial_scale: feature pixels per image pixel (1/16 at stride 16).
    """

    def call(self, inputs):
        features, boxes = self._inputs(inputs)
        height, width = features.shape[1], features.shape[2]
        if height is None or width is None:
            raise ValueError(f"RoIPooling needs the feature map's height and width when "
                             f"it is traced (its sparse table's depth depends on them), got "
                             f"features of shape {tuple(features.shape)}.")
        out_h, out_w = self.output_size
        n, _, _, channels = ops.shape(features)
        rois = ops.shape(boxes)[1]
        levels_y, levels_x = _levels(height), _levels(width)
        y_lo, y_hi = _bins(boxes[..., 1], boxes[..., 3], out_h, height)  # (N, R, oh)
        x_lo, x_hi = _bins(boxes[..., 0], boxes[..., 2], out_w, width)  # (N, R, ow)
        ky, sy = _window(y_lo, y_hi, levels_y)
        kx, sx = _window(x_lo, x_hi, levels_x)
        empty = ops.logical_or(ops.expand_dims(y_hi <= y_lo, -1),
                               ops.expand_dims(x_hi <= x_lo, -2))  # (N, R, oh, ow)
        # Flat row of table[n, ky, kx, y, x] for the four corner windows of each bin.
        batch = ops.reshape(ops.arange(n, dtype="int32"), (-1, 1, 1))
        plane = (batch * levels_y + ky) * levels_x  # (N, R, oh)
        corners = []
        for y in (y_lo, ops.maximum(y_hi - sy, 0)):
            for x in (x_lo, ops.maximum(x_hi - sx, 0)):
                row = (ops.expand_dims(plane, -1) + ops.expand_dims(kx, -2)) * height
                row = (row + ops.expand_dims(ops.minimum(y, height - 1), -1)) * width
                corners.append(row + ops.expand_dims(ops.minimum(x, width - 1), -2))
        table = ops.reshape(_sparse_table(features, levels_y, levels_x), (-1, channels))
        picked = [ops.take(table, ops.reshape(c, (-1,)), axis=0) for c in corners]
        best = ops.maximum(ops.maximum(picked[0], picked[1]),
                           ops.maximum(picked[2], picked[3]))
        best = ops.where(ops.reshape(empty, (-1, 1)), ops.zeros_like(best), best)
        return ops.reshape(best, (n, rois, out_h, out_w, channels))
