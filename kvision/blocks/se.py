"""The squeeze-and-excitation block, shared by SE-Net, MobileNetV3 and EfficientNet."""

import keras

from kvision.blocks.conv import activation_layer


def squeeze_excite(x, reduced_filters, *, activation="relu", gate="sigmoid", name,
                   reshape=False, suffixes=("squeeze", "reduce", "reduce_act",
                                            "expand", "excite"),
                   kernel_initializer="glorot_uniform"):
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
    s = keras.layers.Conv2D(reduced_filters, 1, padding="same", name=reduce,
                            kernel_initializer=kernel_initializer)(s)
    s = activation_layer(activation, reduce_act)(s)
    s = keras.layers.Conv2D(channels, 1, padding="same", name=expand,
                            kernel_initializer=kernel_initializer)(s)
    s = activation_layer(gate, f"{expand}_gate")(s)
    return keras.layers.Multiply(name=excite)([x, s])
