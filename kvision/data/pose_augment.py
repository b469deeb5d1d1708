"""Augmentation that moves keypoints with the pixels, for pose training data.

Each example's image is rotated by an angle drawn uniformly in ``±rotation`` degrees,
scaled by a factor drawn uniformly in ``scale`` (above 1 the figure grows) about the
image's centre and, with probability one half, mirrored left to right; its keypoints
move by the same affine map, a mirrored example's joints are swapped
(:meth:`kvision.data.pose_layouts.Layout.flip_permutation`) and a labelled joint the
move pushes out of the image gets ``v = 0`` (its coordinates kept, as
:mod:`kvision.data.figures` keeps them). Keypoints follow kvision's convention: x, y in
pixels, the pixel grid's corner at 0, so the centre is ``(W / 2, H / 2)`` and a mirror
sends ``x`` to ``W - x``, as :class:`kvision.layers.HorizontalFlip` does.

Why tf.data map functions rather than a Keras layer: Keras' ``RandomRotation``,
``RandomZoom`` and ``RandomFlip`` move images and boxes but not keypoints, and this
runs only in the input pipeline, never in a saved model. Written with stateless random
ops, each example's draw depends on the seed and its position in the stream alone, so
a parallel ``map`` gives the same examples as a serial one, and every epoch draws anew
(:func:`augment_dataset`). The image is resampled by
``tf.raw_ops.ImageProjectiveTransformV3`` (bilinear, black outside).
"""

from __future__ import annotations

import math

ROTATION = 30.0          # degrees either way (Newell et al.'s ±30°)
SCALE = (0.75, 1.25)     # Newell et al.'s 0.75-1.25


def _check_ranges(rotation, scale):
    if not (isinstance(rotation, (int, float)) and 0 <= rotation <= 180):
        raise ValueError(f"rotation must be a number of degrees in [0, 180], got "
                         f"{rotation!r}.")
    low, high = (float(s) for s in scale)
    if not 0 < low <= high:
        raise ValueError(f"scale must be (low, high) factors with 0 < low <= high, got "
                         f"{scale!r}.")
    return float(rotation), (low, high)


def _permutation(flip, joints, layout, flip_permutation):
    """The joint order of a mirrored example (identity without ``flip``), checked
    against the data's joint count."""
    if not flip:
        return list(range(joints))
    if flip_permutation is None:
        if layout is None:
            from kvision.models.pose.hourglass import flip_permutation as by_count

            return by_count(joints)  # MPII's for 16 joints, COCO's for 17, else an error
        if layout.num_keypoints != joints:
            raise ValueError(f"The layout {layout.name!r} has {layout.num_keypoints} "
                             f"joints but the data has {joints} per example.")
        flip_permutation = layout.flip_permutation()
    order = [int(j) for j in flip_permutation]
    if sorted(order) != list(range(joints)):
        raise ValueError(f"The flip permutation {order} does not reorder the data's "
                         f"{joints} joints (0..{joints - 1}, each once).")
    return order


def transform(example, angles, scales, flips, permutation):
    """``example`` moved by given parameters (TF ops; batched or one example).

    Args:
        example: ``{"images": (B, H, W, C), "keypoints": (B, K, 3) x, y, v}`` or one
            example without the batch axis; other keys are left out (they would no
            longer describe the moved pixels).
        angles: ``(B,)`` radians; scales: ``(B,)`` factors; flips: ``(B,)`` bool.
        permutation: ``(K,)`` joint order of a mirrored example.
    Returns:
        ``{"images", "keypoints"}`` of the input's shapes and image dtype.
    """
    import tensorflow as tf

    images = tf.convert_to_tensor(example["images"])
    keypoints = tf.cast(example["keypoints"], tf.float32)
    single = images.shape.rank == 3
    if single:
        images, keypoints = images[None], keypoints[None]
        angles, scales, flips = (tf.reshape(t, (1,)) for t in (angles, scales, flips))
    shape = tf.shape(images)
    height, width = tf.cast(shape[1], tf.float32), tf.cast(shape[2], tf.float32)
    cos, sin = tf.cos(angles), tf.sin(angles)
    mirror = tf.where(flips, -1.0, 1.0)
    moved = _move_points(keypoints, cos, sin, scales, mirror, width, height)
    moved = tf.where(flips[:, None, None], tf.gather(moved, permutation, axis=1), moved)
    resampled = _resample(images, cos, sin, scales, mirror, width, height)
    if single:
        resampled, moved = resampled[0], moved[0]
    return {"images": resampled, "keypoints": moved}


def _move_points(keypoints, cos, sin, scales, mirror, width, height):
    """Forward map ``p -> c + s R (F (p - c))`` (``F`` the mirror); a labelled joint
    that lands outside ``[0, W) x [0, H)`` becomes ``v = 0``."""
    import tensorflow as tf

    x, y, v = tf.unstack(keypoints, 3, axis=-1)
    dx = (x - width / 2) * mirror[:, None]
    dy = y - height / 2
    s, c, n = scales[:, None], cos[:, None], sin[:, None]
    new_x = width / 2 + s * (c * dx - n * dy)
    new_y = height / 2 + s * (n * dx + c * dy)
    inside = (new_x >= 0) & (new_x < width) & (new_y >= 0) & (new_y < height)
    return tf.stack([new_x, new_y, tf.where(inside, v, 0.0)], axis=-1)


def _resample(images, cos, sin, scales, mirror, width, height):
    """Each output pixel reads the input at the inverse map ``F R^-1 (q - c) / s + c``.
    The op works in pixel-index coordinates (centres at integers), where the centre is
    ``((W - 1) / 2, (H - 1) / 2)``: the same affine map, since both shift by a half."""
    import tensorflow as tf

    cx, cy = (width - 1) / 2, (height - 1) / 2
    a0, a1 = mirror * cos / scales, mirror * sin / scales     # row 1 of F R(-a) / s
    b0, b1 = -sin / scales, cos / scales                      # row 2
    zeros = tf.zeros_like(a0)
    matrix = tf.stack([a0, a1, cx - a0 * cx - a1 * cy,
                       b0, b1, cy - b0 * cx - b1 * cy, zeros, zeros], axis=1)
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=tf.cast(images, tf.float32), transforms=matrix,
        output_shape=tf.shape(images)[1:3], fill_value=0.0, interpolation="BILINEAR",
        fill_mode="CONSTANT")
    out = tf.ensure_shape(out, images.shape)
    if images.dtype.is_integer:
        out = tf.cast(tf.clip_by_value(tf.round(out), images.dtype.min,
                                       images.dtype.max), images.dtype)
    return out


def random_parameters(seed, batch, *, rotation=ROTATION, scale=SCALE, flip=True):
    """``(angles radians, scales, flips)``, each ``(batch,)``, drawn from a stateless
    ``seed`` (a ``(2,)`` integer tensor): uniform in ``±rotation`` degrees and in
    ``scale``; a mirror with probability one half when ``flip``."""
    import tensorflow as tf

    rotation, (low, high) = _check_ranges(rotation, scale)
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 3)
    limit = math.radians(rotation)
    angles = tf.random.stateless_uniform((batch,), seeds[0], -limit, limit)
    scales = tf.random.stateless_uniform((batch,), seeds[1], low, high)
    flips = tf.random.stateless_uniform((batch,), seeds[2]) < (0.5 if flip else 0.0)
    return angles, scales, flips


def augment(example, seed, *, rotation=ROTATION, scale=SCALE, flip=True, layout=None,
            flip_permutation=None):
    """One example or a batch (see :func:`transform`) moved at random from a stateless
    ``seed`` (``(2,)`` integers): the same seed gives the same result.

    ``layout``: the keypoints' :class:`~kvision.data.pose_layouts.Layout`, whose
    ``flip_permutation()`` swaps left and right joints; or ``flip_permutation``
    itself; neither: MPII's for 16 joints, COCO's for 17 (anything else is a
    ValueError, or pass ``flip=False``).
    """
    import tensorflow as tf

    keypoints = tf.cast(example["keypoints"], tf.float32)
    example = {"images": example["images"], "keypoints": keypoints}
    joints = keypoints.shape[-2]
    if keypoints.shape.rank not in (2, 3) or joints is None or keypoints.shape[-1] != 3:
        raise ValueError(f"keypoints must be (K, 3) or (B, K, 3) x, y, v with K known, got "
                         f"shape {tuple(keypoints.shape)}.")
    permutation = _permutation(flip, joints, layout, flip_permutation)
    batch = 1 if keypoints.shape.rank == 2 else tf.shape(keypoints)[0]
    angles, scales, flips = random_parameters(seed, batch, rotation=rotation,
                                              scale=scale, flip=flip)
    if keypoints.shape.rank == 2:
        angles, scales, flips = angles[0], scales[0], flips[0]
    return transform(example, angles, scales, flips, permutation)


def augment_dataset(data, *, seed=0, **kwargs):
    """``data`` (a ``tf.data.Dataset`` of ``{"images", "keypoints"}``, batched or not)
    with every element moved by :func:`augment` (its keyword arguments).

    Element ``i`` of an epoch draws from the ``i``-th value of
    ``tf.data.Dataset.random(seed)``, which draws anew each epoch: the same ``seed``
    gives the same stream of examples, epoch after epoch, serial or parallel.
    """
    import tensorflow as tf

    if not isinstance(data, tf.data.Dataset):
        raise ValueError(f"data must be a tf.data.Dataset of {{'images', 'keypoints'}} "
                         f"examples, got {type(data).__name__}.")
    spec = data.element_spec
    if not isinstance(spec, dict) or not {"images", "keypoints"} <= set(spec):
        raise ValueError(f"data must be a tf.data.Dataset of {{'images': (H, W, C), "
                         f"'keypoints': (K, 3)}} examples, got {spec}.")
    # Fail here, not inside the map: the joint count and the flip permutation.
    _check_ranges(kwargs.get("rotation", ROTATION), kwargs.get("scale", SCALE))
    keypoints = spec["keypoints"].shape
    if keypoints.rank in (2, 3) and keypoints[-2] is not None:
        _permutation(kwargs.get("flip", True), keypoints[-2], kwargs.get("layout"),
                     kwargs.get("flip_permutation"))
    draws = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)

    def move(example, draw):
        return augment(example, tf.stack([tf.cast(seed, tf.int64), draw]), **kwargs)

    return tf.data.Dataset.zip(data, draws).map(move, num_parallel_calls=tf.data.AUTOTUNE)
