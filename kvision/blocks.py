"""Building blocks shared by the families: each a short function on Keras tensors.

Blocks take a ``name`` prefix and name their layers from it, so a network's layer
names are stable and meaningful (``conv2_block1_1_conv``) and its features can be
tapped by name. A block used by one family only lives in that family's file.
"""

from __future__ import annotations

import keras

from kvision.layers import LocalResponseNormalization  # noqa: F401  (re-exported)


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
    Shapes: ``(N, H, W, C) -> (N, H/s, W/s, filters)``.
    """
    conv_suffix, bn_suffix, act_suffix = suffixes
    if not isinstance(padding, str):
        x = keras.layers.ZeroPadding2D(padding, name=f"{name}_pad")(x)
        padding = "valid"
    x = keras.layers.Conv2D(filters, kernel_size, strides=strides, padding=padding,
                            groups=groups, use_bias=use_bias,
                            dilation_rate=dilation_rate,
                            name=f"{name}{conv_suffix}")(x)
    if batch_norm:
        x = keras.layers.BatchNormalization(epsilon=bn_epsilon, momentum=bn_momentum,
                                            name=f"{name}{bn_suffix}")(x)
    return activation_layer(activation, f"{name}{act_suffix}")(x)


def squeeze_excite(x, reduced_filters, *, activation="relu", gate="sigmoid", name,
                   reshape=False, suffixes=("squeeze", "reduce", "reduce_act",
                                            "expand", "excite")):
    """Squeeze-and-excitation (Hu et al., 2018, "Squeeze-and-Excitation Networks").

    Global average pool -> 1x1 conv to ``reduced_filters`` -> ``activation`` ->
    1x1 conv back to the input channels -> ``gate`` -> channel-wise rescaling.
    ``reshape=True`` pools flat then reshapes to ``(1, 1, C)`` (EfficientNet's
    layout). Shapes: ``(N, H, W, C) -> (N, H, W, C)``.
    """
    channels = x.shape[-1]
    squeeze, reduce, reduce_act, expand, excite = (f"{name}{s}" for s in suffixes)
    if reshape:
        s = keras.layers.GlobalAveragePooling2D(name=squeeze)(x)
        s = keras.layers.Reshape((1, 1, channels), name=f"{name}reshape")(s)
    else:
        s = keras.layers.GlobalAveragePooling2D(keepdims=True, name=squeeze)(x)
    s = keras.layers.Conv2D(reduced_filters, 1, padding="same", name=reduce)(s)
    s = activation_layer(activation, reduce_act)(s)
    s = keras.layers.Conv2D(channels, 1, padding="same", name=expand)(s)
    s = activation_layer(gate, f"{expand}_gate")(s)
    return keras.layers.Multiply(name=excite)([x, s])
