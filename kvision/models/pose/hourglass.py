"""Stacked hourglass networks (Newell, Yang & Deng, 2016, "Stacked Hourglass Networks
for Human Pose Estimation"), in bearpaw/pytorch-pose's layout (``pose/models/
hourglass.py``, the ``hg`` that most ports and papers count):

- the stem: 7x7/2 convolution (``features / 4``) + BatchNorm + ReLU, a residual to
  ``features / 2``, 2x2 max-pool, a residual, a residual to ``features``: a map at a
  quarter of the input's resolution;
- per stack: an hourglass of ``depth`` levels (at each level a residual on the skip
  branch; 2x2 max-pool, a residual, the next level or, at the bottom, a residual, a
  residual, nearest 2x upsampling, added to the skip), a residual, a 1x1 convolution +
  BatchNorm + ReLU, and the heatmap head, a 1x1 convolution to one map per joint;
- between stacks, the predictions remapped into the feature stream: 1x1 convolutions
  of the stack's features and of its heatmaps, added to the stack's input.

Every "residual" is ``blocks`` pre-activation bottlenecks (BN-ReLU-1x1 to half the
channels, BN-ReLU-3x3, BN-ReLU-1x1 back, biased convolutions; a biased 1x1 projection
of the input where the channel count changes). kvision's
:func:`~kvision.blocks.preact_bottleneck_block` is ResNet v2's (4x expansion, unbiased
inner convolutions, the projection taken after the shared pre-activation), so this
file builds its units from :func:`~kvision.blocks.conv_bn_act` instead.

Every stack's heatmaps are an output and each gets the loss (intermediate
supervision); the last stack's are the prediction. Training and inference::

    model = kvision.models.create("stacked_hourglass", stacks=2, features=64,
                                  input_shape=(128, 128, 3))
    model.compile(keras.optimizers.RMSprop(2.5e-4), loss=hourglass.losses(model))
    model.fit(hourglass.training_dataset(data, model, batch_size=16), epochs=...)
    estimator = hourglass.inference_model(model)    # flip averaging, decoding in the graph
    estimator(images)  # {"keypoints": (B, K, 2) x, y input pixels, "scores": (B, K)}
"""

from __future__ import annotations

import keras

from kvision import features as features_lib
from kvision.blocks import conv_bn_act
from kvision.layers.pose import HeatmapDecode, HorizontalFlip
from kvision.models._builder import task_input
from kvision.registry import register
from kvision.tasks.model import TaskModel

PAPER = "Stacked Hourglass Networks for Human Pose Estimation"
STRIDE = 4  # input pixels per heatmap pixel: the stem's 7x7/2 conv and its max-pool
SUFFIXES = ("_conv", "_bn", "_relu")
# PyTorch's BatchNorm2d (bearpaw's): epsilon 1e-5, moving averages at momentum 0.1.
BN = dict(bn_epsilon=1e-5, bn_momentum=0.9)


def _positive_int(value, what, least=1):
    if not isinstance(value, int) or isinstance(value, bool) or value < least:
        raise ValueError(f"`{what}` must be an integer >= {least}, got {value!r}.")
    return value


# --- the network ----------------------------------------------------------------------

def residual(x, filters, *, name):
    """bearpaw's pre-activation bottleneck: ``(N, H, W, C) -> (N, H, W, filters)``,
    the inner width ``filters / 2``."""
    shortcut = x
    if x.shape[-1] != filters:
        shortcut = keras.layers.Conv2D(filters, 1, name=f"{name}_0_conv")(x)
    y = keras.layers.BatchNormalization(epsilon=BN["bn_epsilon"],
                                        momentum=BN["bn_momentum"],
                                        name=f"{name}_preact_bn")(x)
    y = keras.layers.Activation("relu", name=f"{name}_preact_relu")(y)
    common = dict(use_bias=True, suffixes=SUFFIXES, **BN)
    y = conv_bn_act(y, filters // 2, 1, padding="valid", name=f"{name}_1", **common)
    y = conv_bn_act(y, filters // 2, 3, padding="same", name=f"{name}_2", **common)
    y = keras.layers.Conv2D(filters, 1, name=f"{name}_3_conv")(y)
    return keras.layers.Add(name=f"{name}_add")([shortcut, y])


def stage(x, filters, blocks, *, name):
    """``blocks`` residuals named ``{name}_block{i}``."""
    for i in range(1, blocks + 1):
        x = residual(x, filters, name=f"{name}_block{i}")
    return x


def hourglass(x, depth, filters, blocks, *, name):
    """One hourglass of ``depth`` levels on ``x`` (its sides divisible by
    ``2 ** depth``); ``(N, H, W, filters) -> (N, H, W, filters)``."""
    level = f"{name}{depth}"
    skip = stage(x, filters, blocks, name=f"{level}_skip")
    low = keras.layers.MaxPooling2D(2, name=f"{level}_pool")(x)
    low = stage(low, filters, blocks, name=f"{level}_down")
    if depth > 1:
        low = hourglass(low, depth - 1, filters, blocks, name=name)
    else:
        low = stage(low, filters, blocks, name=f"{level}_bottom")
    low = stage(low, filters, blocks, name=f"{level}_up")
    low = keras.layers.UpSampling2D(2, interpolation="nearest",
                                    name=f"{level}_upsample")(low)
    return keras.layers.Add(name=f"{level}_add")([skip, low])


def stem(x, filters):
    """Raw pixels -> the quarter-resolution map of ``filters`` channels."""
    x = keras.layers.Rescaling(1 / 255, name="rescaling")(x)
    # PyTorch's symmetric 3-pixel padding (Keras' "same" would pad 2 and 3 at stride 2).
    x = conv_bn_act(x, filters // 4, 7, 2, padding=3, use_bias=True, name="stem",
                    suffixes=SUFFIXES, **BN)
    x = residual(x, filters // 2, name="stem_res1")
    x = keras.layers.MaxPooling2D(2, name="stem_pool")(x)
    x = residual(x, filters // 2, name="stem_res2")
    return residual(x, filters, name="stem_res3")


def stacks_of(x, keypoints, stacks, filters, depth, blocks):
    """The stacks on the stem's map: the list of their heatmaps ``heatmaps_1`` ...
    ``heatmaps_{stacks}`` (float32 under mixed precision too: the loss reads them)."""
    outputs = []
    for s in range(1, stacks + 1):
        y = hourglass(x, depth, filters, blocks, name=f"stack{s}_hg")
        y = stage(y, filters, blocks, name=f"stack{s}_res")
        y = conv_bn_act(y, filters, 1, padding="valid", use_bias=True,
                        name=f"stack{s}_fc", suffixes=SUFFIXES, **BN)
        heatmaps = keras.layers.Conv2D(keypoints, 1, dtype="float32",
                                       name=f"heatmaps_{s}")(y)
        outputs.append(heatmaps)
        if s < stacks:
            remapped = [keras.layers.Conv2D(filters, 1, name=f"stack{s}_remap_{what}")(t)
                        for what, t in (("features", y), ("heatmaps", heatmaps))]
            x = keras.layers.Add(name=f"stack{s}_remap")([x, *remapped])
    return outputs


@register("stacked_hourglass", task="pose", family="hourglass", year=2016, paper=PAPER,
          key_idea="repeated bottom-up, top-down hourglasses with intermediate "
                   "supervision on every stack's heatmaps",
          default_size=256, min_size=64, default_classes=16,
          num_params=25_434_112, params_convention="trainable",
          params_source="bearpaw/pytorch-pose hg (8 stacks, 1 block, 256 channels, 16 "
                        "joints), trainable parameters; derived module by module in "
                        "tests/models/test_hourglass.py")
def StackedHourglass(keypoints=16, input_shape=None, stacks=8, features=256, depth=4,
                     blocks=1, weights=None, name=None):
    """Stacked hourglass network (Newell et al., 2016) for ``keypoints`` joints.

    Input ``(B, H, W, 3)`` raw pixels in ``[0, 255]`` (scaled to ``[0, 1]`` inside),
    H and W multiples of ``4 * 2 ** depth`` (64 by default; default 256x256).
    Outputs the list of every stack's heatmaps, ``(B, H/4, W/4, keypoints)`` each,
    named ``heatmaps_1`` ... ``heatmaps_{stacks}``; the last is the prediction
    (:func:`inference_model` decodes it to keypoints). ``features``: the channels of
    the hourglasses (256 in the paper; a multiple of 4), ``depth``: the hourglass
    levels (4), ``blocks``: residuals per stage (1). ``weights``: None or a
    ``.weights.h5`` file of the same configuration.
    """
    _positive_int(keypoints, "keypoints")
    _positive_int(stacks, "stacks")
    _positive_int(depth, "depth")
    _positive_int(blocks, "blocks")
    if _positive_int(features, "features", 4) % 4:
        raise ValueError(f"`features` must be a multiple of 4 (the stem's first "
                         f"convolution has features / 4 channels), got {features}.")
    if features_lib.check_weights(weights) == "imagenet":
        raise ValueError("stacked_hourglass has no ImageNet weights; pass weights=None "
                         "or a .weights.h5 file.")
    inputs = task_input("stacked_hourglass", input_shape, multiple=STRIDE * 2 ** depth)
    outputs = stacks_of(stem(inputs, features), keypoints, stacks, features, depth,
                        blocks)
    model = TaskModel(inputs, outputs, name=name or "stacked_hourglass", task="pose")
    if weights is not None:
        from kvision import weights as weights_lib

        weights_lib.load_file(model, weights)
    return model


# --- targets --------------------------------------------------------------------------

def encode_targets(keypoints, *, image_size, heatmap_size, sigma=1.0):
    """One image's keypoints -> its target heatmaps (tf ops: runs in a ``tf.data`` map).

    Args:
        keypoints: ``(K, 3)`` x, y, v in image pixels (v: COCO's visibility).
        image_size: ``(height, width)`` of the image; heatmap_size: ``(rows, cols)``.
        sigma: the Gaussian's standard deviation in heatmap pixels (1 in the paper).
    Returns:
        ``(rows, cols, K)`` float32: at each heatmap pixel, ``exp(-d**2 / (2 *
        sigma**2))`` of the distance ``d`` in heatmap pixels from its centre to the
        joint (1 at the joint); all zeros for a joint with ``v == 0`` or outside the
        image (``x`` outside ``[0, width)`` or ``y`` outside ``[0, height)``).
    """
    import tensorflow as tf

    if not sigma > 0:
        raise ValueError(f"sigma must be > 0 (heatmap pixels), got {sigma!r}.")
    keypoints = tf.convert_to_tensor(keypoints, tf.float32)
    if keypoints.shape.rank != 2 or keypoints.shape[-1] != 3:
        raise ValueError(f"keypoints must be (K, 3) x, y, visibility, got shape "
                         f"{tuple(keypoints.shape)}.")
    height, width = (float(s) for s in image_size)
    rows, cols = (int(s) for s in heatmap_size)
    x, y, v = tf.unstack(keypoints, 3, axis=-1)
    inside = (v > 0) & (x >= 0) & (x < width) & (y >= 0) & (y < height)
    # In heatmap pixels, whose centres are at i + 0.5. A joint left out (NaN
    # coordinates of an unlabelled one too) is parked at 0, then zeroed.
    cx = tf.where(inside, x * (cols / width), 0.0)
    cy = tf.where(inside, y * (rows / height), 0.0)
    along_x = tf.exp(-tf.square(tf.range(cols, dtype=tf.float32)[:, None] + 0.5 - cx)
                     / (2 * sigma ** 2))  # (cols, K): the Gaussian is separable
    along_y = tf.exp(-tf.square(tf.range(rows, dtype=tf.float32)[:, None] + 0.5 - cy)
                     / (2 * sigma ** 2))
    return along_y[:, None] * along_x[None] * tf.cast(inside, tf.float32)


def heatmap_outputs(model):
    """``model``'s heatmap outputs (``(B, h, w, K)`` each, first stack first), or a
    ValueError saying the model is not a heatmap (training) model."""
    outputs = list(getattr(model, "outputs", None) or [])
    if not outputs or any(len(o.shape) != 4 for o in outputs):
        raise ValueError(f"{getattr(model, 'name', model)!r} is not a stacked hourglass "
                         f"training model: its outputs should be heatmaps (B, h, w, K), "
                         f"got {[tuple(o.shape) for o in outputs]}.")
    return outputs


def _geometry(model):
    """``(image_size, heatmap_size, joints, stacks)`` of a model of fixed input size."""
    outputs = heatmap_outputs(model)
    image_size = tuple(model.input_shape[1:3])
    if None in image_size:
        raise ValueError(f"{model.name!r} takes images of any size; training targets "
                         f"need a model built for a fixed input_shape.")
    return image_size, tuple(outputs[-1].shape[1:3]), int(outputs[-1].shape[-1]), \
        len(outputs)


def _check_spec(spec, image_size, joints):
    """The data's static shapes against the model's: a ValueError naming both."""
    if not isinstance(spec, dict) or not {"images", "keypoints"} <= set(spec):
        raise ValueError(f"data must be an unbatched tf.data.Dataset of {{'images': (H, "
                         f"W, 3), 'keypoints': (K, 3)}} examples, got {spec}.")
    images, keypoints = spec["images"].shape, spec["keypoints"].shape
    if images.rank != 3 or keypoints.rank != 2 or keypoints[-1] not in (None, 3):
        raise ValueError(f"data must be unbatched examples of images (H, W, C) and "
                         f"keypoints (K, 3); got images {images}, keypoints {keypoints}.")
    if None not in images[:2] and tuple(images[:2]) != image_size:
        raise ValueError(f"The images are {tuple(images[:2])} but the model takes "
                         f"{image_size}: resize them (moving the keypoints with them).")
    if keypoints[0] is not None and keypoints[0] != joints:
        raise ValueError(f"The data has {keypoints[0]} keypoints per image but the model "
                         f"predicts {joints}.")


def _checked(index, example, image_size, joints):
    """An example's images and keypoints, with graph assertions naming the example
    where the static shapes did not say (a dataset of any image size)."""
    import tensorflow as tf

    images, keypoints = example["images"], example["keypoints"]
    checks = [tf.debugging.Assert(tf.reduce_all(tf.equal(shape, expected)), [
        "example", index, f"has {what}", shape, f"but the model takes {expected}"])
        for what, shape, expected in (("images of size", tf.shape(images)[:2], image_size),
                                      ("keypoints of shape", tf.shape(keypoints),
                                       (joints, 3)))]
    with tf.control_dependencies(checks):
        return tf.cast(images, tf.float32), tf.cast(keypoints, tf.float32)  # numpy: float64


def training_dataset(data, model, *, batch_size=16, shuffle=True, seed=0, sigma=1.0):
    """``(images, targets)`` batches for ``model.fit``: the targets are
    :func:`encode_targets` heatmaps, the same for every stack (a tuple of ``stacks``).

    ``data``: an unbatched ``tf.data.Dataset`` of ``{"images": (H, W, 3) float32 raw
    pixels, "keypoints": (K, 3) x, y, v}`` at the model's input size with the model's
    K joints; other sizes or joint counts are a ValueError (an assertion naming the
    example's index where the dataset's shapes are not static).
    """
    import tensorflow as tf

    if not isinstance(data, tf.data.Dataset):
        raise ValueError(f"data must be a tf.data.Dataset of {{'images', 'keypoints'}} "
                         f"examples, got {type(data).__name__}.")
    image_size, heatmap_size, joints, stacks = _geometry(model)
    _check_spec(data.element_spec, image_size, joints)
    data = data.enumerate()
    if shuffle:
        data = data.shuffle(1024, seed=seed)

    def encode(index, example):
        images, keypoints = _checked(index, example, image_size, joints)
        target = encode_targets(keypoints, image_size=image_size,
                                heatmap_size=heatmap_size, sigma=sigma)
        return images, (target,) * stacks

    return (data.map(encode, num_parallel_calls=tf.data.AUTOTUNE)
            .batch(batch_size).prefetch(tf.data.AUTOTUNE))


# --- the loss -------------------------------------------------------------------------

def losses(model):
    """One mean squared error per stack's heatmaps (the paper's loss, every joint's
    map included: an invisible joint's target is zeros), for ``model.compile``."""
    heatmap_outputs(model)
    return [keras.losses.MeanSquaredError(name=f"{name}_mse")
            for name in model.output_names]


# --- inference ------------------------------------------------------------------------

def flip_permutation(joints, flip_pairs=None):
    """The joint order of a mirrored image (joint ``j`` of the mirror is joint
    ``result[j]`` of the original): ``flip_pairs`` (left, right) index pairs, or
    the pairs of kvision's layout with ``joints`` joints (MPII's 16, COCO's 17)."""
    from kvision.data import pose_layouts

    if flip_pairs is None:
        known = [layout for layout in pose_layouts.LAYOUTS.values()
                 if layout.num_keypoints == joints]
        if not known:
            raise ValueError(f"No kvision keypoint layout has {joints} joints (MPII 16, "
                             f"COCO 17): pass flip_pairs, the (left, right) joints a "
                             f"horizontal flip swaps, or flip=False.")
        return known[0].flip_permutation()
    pairs = [tuple(pair) for pair in flip_pairs]
    used = [j for p in pairs for j in p]
    if any(len(p) != 2 for p in pairs) or len(set(used)) != len(used) or not all(
            float(j).is_integer() and 0 <= j < joints for j in used):
        raise ValueError(f"flip_pairs must be (left, right) pairs of distinct joint "
                         f"indices in [0, {joints}), each joint in one pair at most; got "
                         f"{list(flip_pairs)}.")
    names = tuple(str(j) for j in range(joints))
    pairs = tuple((int(a), int(b)) for a, b in pairs)
    return pose_layouts.Layout("flip_pairs", names, (), pairs).flip_permutation()


def _last(outputs):
    """The last stack's heatmaps (the prediction) among a call's outputs."""
    return keras.tree.flatten(outputs)[-1]


def inference_model(model, *, flip=True, flip_pairs=None):
    """Raw pixels ``(B, H, W, 3)`` -> ``{"keypoints": (B, K, 2) x, y in input pixels,
    "scores": (B, K)}``, decoded in the graph (:class:`kvision.layers.HeatmapDecode`:
    arg-max, a quarter pixel toward the higher neighbour, the maximum as the score).

    With ``flip`` (the paper's test-time flip averaging), the network also sees the
    mirrored image; its last heatmaps, mirrored back with the left/right joints
    swapped (``flip_pairs``: (left, right) joint index pairs, by default MPII's for
    16 joints and COCO's for 17), are averaged with the image's own before decoding.
    Builtin TFLite operators only.
    """
    outputs = heatmap_outputs(model)
    joints = int(outputs[-1].shape[-1])
    inputs = keras.Input(model.input_shape[1:], name="images")
    heatmaps = _last(model(inputs))
    if flip:
        permutation = flip_permutation(joints, flip_pairs)
        mirrored = _last(model(HorizontalFlip(name="flip_images")(inputs)))
        back = HorizontalFlip(permutation, name="flip_back")(mirrored)
        heatmaps = keras.layers.Average(name="flip_average")([heatmaps, back])
    sides = zip(model.input_shape[1:3], outputs[-1].shape[1:3])
    strides = [STRIDE if None in pair else pair[0] / pair[1] for pair in sides]
    decoded = HeatmapDecode(strides, name="decode")(heatmaps)
    return TaskModel(inputs, decoded, name=f"{model.name}_keypoints", task="pose")
