"""Convolution units: a named activation, and conv -> BatchNorm -> activation."""

from __future__ import annotations

import keras

from kvision.layers.atrous import AtrousConv2D


def activation_layer(activation, name):
    """A named activation layer; ``None`` means identity."""
    if activation is None:
        return lambda x: x
    if activation == "relu6":
        return keras.layers.ReLU(6.0, name=name)
    if activation == "leaky_relu":
        return keras.layers.LeakyReLU(negative_slope=0.1, name=name)
    return keras.layers.Activation(activation, name=name)


def conv_bn_act(x, filters, kernel_size, strides=1, *, padding="same", groups=1,
                use_bias=False, activation="relu", bn_epsilon=1e-3,
                bn_momentum=0.99, batch_norm=True, dilation_rate=1, name,
                suffixes=("_conv", "_bn", "_act")):
    """Conv2D -> BatchNorm -> activation, the unit of most post-2015 networks.

    ``suffixes`` names the three layers ``name + suffix``; a family passes its own
    to keep the layer names of its reference implementation. ``padding`` is "same",
    "valid", or an int/tuple of explicit zero padding applied before a valid conv.
    A dilated convolution is an :class:`~kvision.layers.atrous.AtrousConv2D` (a
    ``Conv2D`` that skips taps lying wholly in the padding of small maps).
    Shapes: ``(N, H, W, C) -> (N, H/s, W/s, filters)``.
    """
    conv_suffix, bn_suffix, act_suffix = suffixes
    if not isinstance(padding, str):
        x = keras.layers.ZeroPadding2D(padding, name=f"{name}_pad")(x)
        padding = "valid"
    conv = keras.layers.Conv2D if dilation_rate in (1, (1, 1)) else AtrousConv2D
    x = conv(filters, kernel_size, strides=strides, padding=padding, groups=groups,
             use_bias=use_bias, dilation_rate=dilation_rate,
             name=f"{name}{conv_suffix}")(x)
    if batch_norm:
        x = keras.layers.BatchNormalization(epsilon=bn_epsilon, momentum=bn_momentum,
                                            name=f"{name}{bn_suffix}")(x)
    return activation_layer(activation, f"{name}{act_suffix}")(x)
