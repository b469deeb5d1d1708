"""Dense connectivity (Huang et al., 2017, "Densely Connected Convolutional Networks").

A dense block concatenates every layer's output to its input, so layer ``i`` sees
the feature maps of all earlier layers; a transition compresses the channels with a
1x1 convolution and halves the resolution between blocks. Units are pre-activation
(BatchNorm -> ReLU -> conv), with keras.applications' layer names and order, so its
DenseNet weights load.
"""

import keras

# keras.applications' DenseNet (ported from the Caffe/Torch models) uses this epsilon.
BN_EPSILON = 1.001e-5


def bn_relu(x, bn_name, relu_name, epsilon=BN_EPSILON):
    """BatchNorm -> ReLU, the pre-activation in front of every DenseNet conv."""
    x = keras.layers.BatchNormalization(epsilon=epsilon, name=bn_name)(x)
    return keras.layers.Activation("relu", name=relu_name)(x)


def dense_layer(x, growth_rate, *, bottleneck=4, name):
    """One DenseNet-B layer: BN-ReLU-conv1x1 (``bottleneck * growth_rate``) ->
    BN-ReLU-conv3x3 (``growth_rate``), concatenated to its input.

    Shapes: ``(N, H, W, C) -> (N, H, W, C + growth_rate)``.
    """
    y = bn_relu(x, f"{name}_0_bn", f"{name}_0_relu")
    y = keras.layers.Conv2D(bottleneck * growth_rate, 1, use_bias=False,
                            name=f"{name}_1_conv")(y)
    y = bn_relu(y, f"{name}_1_bn", f"{name}_1_relu")
    y = keras.layers.Conv2D(growth_rate, 3, padding="same", use_bias=False,
                            name=f"{name}_2_conv")(y)
    # Input first, new maps last: the order of keras.applications' Concatenate.
    return keras.layers.Concatenate(name=f"{name}_concat")([x, y])


def dense_block(x, num_layers, growth_rate, *, bottleneck=4, name):
    """``num_layers`` dense layers named ``{name}_block1`` … ``{name}_block{n}``.

    Shapes: ``(N, H, W, C) -> (N, H, W, C + num_layers * growth_rate)``.
    """
    for i in range(1, num_layers + 1):
        x = dense_layer(x, growth_rate, bottleneck=bottleneck, name=f"{name}_block{i}")
    return x


def transition_block(x, compression=0.5, *, name):
    """DenseNet-C transition: BN-ReLU-conv1x1 to ``int(C * compression)`` channels,
    then 2x2 average pooling.

    Shapes: ``(N, H, W, C) -> (N, H/2, W/2, int(C * compression))``.
    """
    x = bn_relu(x, f"{name}_bn", f"{name}_relu")
    x = keras.layers.Conv2D(int(x.shape[-1] * compression), 1, use_bias=False,
                            name=f"{name}_conv")(x)
    return keras.layers.AveragePooling2D(2, strides=2, name=f"{name}_pool")(x)
