"""Mask operations: boundaries from instance masks, connected components in the graph.

- :func:`separation_map` and :func:`boundaries`: the targets of the two-network
  instance method, computed from instance masks ``(n, H, W)``: where instances touch
  each other, or every instance's contour.
- :func:`connected_components`: component labels numbered as
  ``scipy.ndimage.label`` numbers them (raster order of each component's first
  pixel), computed with ``keras.ops`` only (iterative label propagation: max-pooling
  under the foreground mask, with pointer jumping), so it runs inside a model and
  exports (TFLite WHILE, MAX_POOL_2D, GATHER builtins).
- :func:`class_components`: components of each class of a label map, optionally
  cut by a separation mask and grown back into the cut pixels: one id per instance.
- :func:`instance_masks`: an instance id map to ``(n, H, W)`` boolean masks (numpy).

Functions take numpy arrays or tensors; those on maps take ``(H, W)`` or a batch
``(B, H, W)``.
"""

from __future__ import annotations

import numpy as np
from keras import ops

__all__ = ["boundaries", "class_components", "connected_components", "grow_labels",
           "instance_masks", "separation_map"]


def _check_connectivity(connectivity):
    if connectivity not in (4, 8):
        raise ValueError(f"connectivity must be 4 or 8, got {connectivity!r}.")


def _neighbour_max(x, connectivity):
    """Max over each pixel and its 4- or 8-neighbours; ``x`` is (B, H, W, K)."""
    if connectivity == 8:
        return ops.max_pool(x, pool_size=3, strides=1, padding="same")
    padded = ops.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    h, w = ops.shape(x)[1], ops.shape(x)[2]
    shifted = [padded[:, 1:h + 1, 1:w + 1], padded[:, :h, 1:w + 1],
               padded[:, 2:h + 2, 1:w + 1], padded[:, 1:h + 1, :w],
               padded[:, 1:h + 1, 2:w + 2]]
    out = shifted[0]
    for s in shifted[1:]:
        out = ops.maximum(out, s)
    return out


def _as_batch(mask, what):
    mask = ops.convert_to_tensor(mask)
    rank = len(mask.shape)
    if rank not in (2, 3):
        raise ValueError(f"{what} must be a map (H, W) or a batch (B, H, W), "
                         f"got shape {tuple(mask.shape)}.")
    return (mask[None] if rank == 2 else mask), rank == 2


def _components(fg, connectivity):
    """Labels of the components of each channel of ``fg`` (B, H, W, K) bool, channels
    disjoint; one numbering per image, raster order of first pixels, 0 = none."""
    shape = ops.shape(fg)
    batch, h, w, k = shape[0], shape[1], shape[2], shape[3]
    n = h * w
    # Each pixel holds n - (index of the smallest-index pixel it is known to reach):
    # max-pooling spreads it through the component; the first pixel is the root.
    index = ops.reshape(ops.arange(n, dtype="float32"), (1, h, w, 1))
    nf = ops.cast(n, "float32")
    value = ops.where(fg, nf - index, 0.0)

    def body(v, _):
        new = ops.where(fg, _neighbour_max(v, connectivity), 0.0)
        # Pointer jumping: take what the current root already knows.
        flat = ops.reshape(new, (batch, n, k))
        root = ops.cast(ops.clip(nf - flat, 0.0, nf - 1.0), "int32")
        flat = ops.where(flat > 0, ops.maximum(flat, ops.take_along_axis(flat, root, 1)),
                         0.0)
        new = ops.reshape(flat, (batch, h, w, k))
        return new, ops.any(ops.not_equal(new, v))

    value, _ = ops.while_loop(lambda v, changed: changed, body,
                              (value, ops.convert_to_tensor(True)))
    value = ops.max(value, axis=-1)  # channels are disjoint
    is_root = ops.logical_and(value > 0, ops.equal(value, nf - index[..., 0]))
    rank = ops.cumsum(ops.reshape(ops.cast(is_root, "int32"), (batch, n)), axis=1)
    root = ops.cast(ops.clip(nf - ops.reshape(value, (batch, n)), 0.0, nf - 1.0), "int32")
    labels = ops.where(ops.reshape(value, (batch, n)) > 0,
                       ops.take_along_axis(rank, root, 1), 0)
    return ops.reshape(labels, (batch, h, w))


def connected_components(mask, *, connectivity=8):
    """Connected components of a boolean map ``(H, W)`` or batch ``(B, H, W)``.

    Returns int32 labels of the same shape: 0 for background, 1..n per image in the
    raster order of each component's first pixel (``scipy.ndimage.label``'s
    numbering; its default structure is ``connectivity=4``, a 3x3 one is 8).
    """
    _check_connectivity(connectivity)
    mask, single = _as_batch(mask, "mask")
    labels = _components(ops.cast(mask, "bool")[..., None], connectivity)
    return labels[0] if single else labels


def grow_labels(labels, allowed, iterations, *, connectivity=8):
    """Extend labels into unlabelled ``allowed`` pixels, one ring per iteration.

    ``labels`` (B, H, W, K) int (0 = none) and ``allowed`` (B, H, W, K) bool, one
    channel per class so that labels grow only into pixels of their own class; where
    two labels meet, the larger id wins.
    """
    labels = ops.cast(labels, "float32")
    for _ in range(int(iterations)):
        grown = _neighbour_max(labels, connectivity)
        labels = ops.where(ops.logical_and(allowed, labels == 0), grown, labels)
    return ops.cast(labels, "int32")


def class_components(class_map, num_classes, *, cut=None, grow=0, connectivity=8,
                     background=0):
    """One id per instance: connected components of each class of a label map.

    ``class_map`` (H, W) or (B, H, W) int labels in ``[0, num_classes)``; pixels of
    ``background`` get no instance. ``cut`` (same shape, bool): pixels removed before
    labelling (the separation map that splits touching objects of one class); they
    are given back to the neighbouring instance of their class over ``grow`` rings.
    Returns int32 ids (0 = none) numbered in raster order of first pixels.
    """
    _check_connectivity(connectivity)
    class_map, single = _as_batch(class_map, "class_map")
    fg = ops.cast(ops.one_hot(ops.cast(class_map, "int32"), num_classes), "bool")
    if background is not None:
        keep = [c for c in range(num_classes) if c != background]
        fg = ops.take(fg, keep, axis=-1)
    core = fg
    if cut is not None:
        cut, _ = _as_batch(cut, "cut")
        core = ops.logical_and(fg, ops.logical_not(ops.cast(cut, "bool"))[..., None])
    labels = _components(core, connectivity)
    if grow:
        per_class = ops.where(core, labels[..., None], 0)
        labels = ops.max(grow_labels(per_class, fg, grow, connectivity=connectivity), -1)
    return labels[0] if single else labels


def _dilate(masks, width):
    """Binary dilation of (n, H, W) masks by a (2 width + 1) square."""
    x = ops.cast(ops.convert_to_tensor(masks), "float32")[..., None]
    size = 2 * int(width) + 1
    return ops.max_pool(x, pool_size=size, strides=1, padding="same")[..., 0] > 0


def _check_masks(masks):
    masks = ops.convert_to_tensor(masks)
    if len(masks.shape) != 3:
        raise ValueError(f"Instance masks must be (n, H, W), got shape "
                         f"{tuple(masks.shape)}.")
    return ops.cast(masks, "bool")


def separation_map(instance_masks, *, width=1):
    """Pixels of an instance within ``width`` pixels (chessboard) of another instance.

    ``instance_masks`` (n, H, W) bool -> (H, W) bool: where objects touch, what the
    separation network learns to find. Background is never marked.
    """
    masks = _check_masks(instance_masks)
    if masks.shape[0] == 0:
        return ops.zeros(masks.shape[1:], "bool")
    near = ops.sum(ops.cast(_dilate(masks, width), "int32"), axis=0)
    return ops.logical_and(ops.any(masks, axis=0), near >= 2)


def boundaries(instance_masks, *, width=1):
    """Every instance's inner contour: its pixels within ``width`` of a pixel that is
    not its own (background or another instance). (n, H, W) -> (H, W) bool."""
    masks = _check_masks(instance_masks)
    if masks.shape[0] == 0:
        return ops.zeros(masks.shape[1:], "bool")
    outside = ops.logical_not(masks)
    # "same" max-pooling ignores the padding: the image border is no contour.
    near_outside = _dilate(outside, width)
    return ops.any(ops.logical_and(masks, near_outside), axis=0)


def instance_masks(instance_map, num_instances=None):
    """``(H, W)`` ids (0 = none) -> ``(n, H, W)`` bool masks, mask i for id i + 1."""
    ids = np.asarray(ops.convert_to_numpy(instance_map))
    if ids.ndim != 2:
        raise ValueError(f"instance_map must be (H, W), got shape {ids.shape}.")
    if num_instances is None:
        num_instances = int(ids.max(initial=0))
    return ids[None] == np.arange(1, num_instances + 1)[:, None, None]
