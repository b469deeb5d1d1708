"""Inception modules: parallel branches on one input, concatenated along channels.

GoogLeNet, Inception-v3, Inception-v4 and Inception-ResNet-v2 are all built from
the same pieces, written here once:

- :func:`basic_conv`: conv (no bias) -> BatchNorm (eps 1e-3) -> ReLU, the unit of
  every Inception network (``scale=False`` drops BatchNorm's gamma, as
  keras.applications' Inception-v3 and Inception-ResNet-v2 do).
- :func:`conv_chain`, :func:`pooled`, :func:`fork`, :func:`chain`,
  :func:`split_1x3_3x1`: branches as functions of the module input, from short
  specs.
- :func:`inception_module`: a branch list -> concatenation.
- :func:`keras_inception_stem`: the stem that keras.applications' Inception-v3
  and Inception-ResNet-v2 share.

A conv spec is ``(filters, kernel)`` or ``(filters, kernel, strides, padding)``;
``kernel`` is an int or a ``(height, width)`` pair for the factorized 1x7/7x1
convolutions. Concatenation order is branch order, which keeps the channel layout
(and the weights order) of the reference implementations.
"""

from __future__ import annotations

from typing import Callable, Sequence

import keras

from kvision.blocks.conv import activation_layer, conv_bn_act

Branch = Callable[[keras.KerasTensor], keras.KerasTensor]


def basic_conv(x, filters, kernel_size, strides=1, padding="same", *, scale=True,
               name, suffixes=("_conv", "_bn", "_act")):
    """Conv2D without bias -> BatchNorm(epsilon=1e-3) -> ReLU.

    ``padding`` is "same", "valid" or explicit zero padding (int/tuple), as in
    :func:`~kvision.blocks.conv.conv_bn_act`. Shapes:
    ``(N, H, W, C) -> (N, H', W', filters)``.
    """
    conv_suffix, bn_suffix, act_suffix = suffixes
    # conv_bn_act makes the convolution (and any explicit padding); BatchNorm is
    # added here because keras.applications' Inception BatchNorms have no gamma.
    x = conv_bn_act(x, filters, kernel_size, strides, padding=padding, use_bias=False,
                    batch_norm=False, activation=None, name=name,
                    suffixes=(conv_suffix, "", ""))
    x = keras.layers.BatchNormalization(epsilon=1e-3, scale=scale,
                                        name=f"{name}{bn_suffix}")(x)
    return activation_layer("relu", f"{name}{act_suffix}")(x)


def conv_chain(*specs, name, scale=True) -> Branch:
    """A branch of :func:`basic_conv` units, one per spec.

    One unit is named ``name``; several are ``name_1``, ``name_2``…
    """
    def apply(x):
        for i, spec in enumerate(specs, start=1):
            x = basic_conv(x, *spec, scale=scale,
                           name=name if len(specs) == 1 else f"{name}_{i}")
        return x

    return apply


def pooled(kind, *specs, pool_size=3, strides=1, padding="same", name,
           scale=True) -> Branch:
    """A pooling branch: ``kind`` ("avg"/"max") pooling, then the conv ``specs``.

    Keras' "same" average pooling leaves the padding out of the mean, as
    torchvision/timm's ``count_include_pad=False``.
    """
    layer = {"avg": keras.layers.AveragePooling2D,
             "max": keras.layers.MaxPooling2D}[kind]

    def apply(x):
        x = layer(pool_size, strides=strides, padding=padding,
                  name=f"{name}_pool" if specs else name)(x)
        return conv_chain(*specs, name=name, scale=scale)(x) if specs else x

    return apply


def fork(*branches: Branch, name) -> Branch:
    """Branches on one input, concatenated: a module usable as a branch."""
    def apply(x):
        return keras.layers.Concatenate(name=name)([branch(x) for branch in branches])

    return apply


def chain(*steps: Branch) -> Branch:
    """Steps applied one after the other (a conv chain that ends in a fork)."""
    def apply(x):
        for step in steps:
            x = step(x)
        return x

    return apply


def split_1x3_3x1(filters, *, name, scale=True) -> Branch:
    """1x3 and 3x1 convs side by side on one input, concatenated (``name``).

    The expanded filter bank of Inception-v3's and -v4's 8x8 modules; the convs
    are ``name + "a"`` and ``name + "b"``.
    """
    return fork(conv_chain((filters, (1, 3)), name=f"{name}a", scale=scale),
                conv_chain((filters, (3, 1)), name=f"{name}b", scale=scale),
                name=name)


def inception_module(x, branches: Sequence[Branch], *, name):
    """The Inception module: every branch on ``x``, concatenated (layer ``name``).

    Shapes: ``(N, H, W, C) -> (N, H', W', sum of the branch widths)``.
    """
    return fork(*branches, name=name)(x)


def keras_inception_stem(x, *, scale=False):
    """keras.applications' Inception-v3 / Inception-ResNet-v2 stem (TF-slim names).

    Three 3x3 convs, max-pool, 1x1 and 3x3 convs, max-pool, all "valid" but the
    third conv: ``(N, 299, 299, 3) -> (N, 35, 35, 192)``, stride 8.
    """
    x = basic_conv(x, 32, 3, 2, "valid", scale=scale, name="conv2d_1a")
    x = basic_conv(x, 32, 3, 1, "valid", scale=scale, name="conv2d_2a")
    x = basic_conv(x, 64, 3, scale=scale, name="conv2d_2b")
    x = keras.layers.MaxPooling2D(3, strides=2, name="maxpool_3a")(x)
    x = basic_conv(x, 80, 1, 1, "valid", scale=scale, name="conv2d_3b")
    x = basic_conv(x, 192, 3, 1, "valid", scale=scale, name="conv2d_4a")
    return keras.layers.MaxPooling2D(3, strides=2, name="maxpool_5a")(x)


def require_side(x, minimum, what):
    """Raise ``ValueError`` when ``x``'s known spatial side is below ``minimum``."""
    sides = [s for s in x.shape[1:3] if s is not None]
    if sides and min(sides) < minimum:
        raise ValueError(f"{what}; the input gives a {x.shape[1]}x{x.shape[2]} map.")
