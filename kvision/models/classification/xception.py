"""Xception (Chollet, 2017, "Xception: Deep Learning with Depthwise Separable
Convolutions"): Inception modules taken to the limit, i.e. depthwise separable
convolutions, in residual blocks.

An entry flow (two convs, three downsampling blocks), a middle flow (eight identity
blocks of three separable convs at 728 channels) and an exit flow (a downsampling
block, two separable convs): 36 convolutions in all, plus the 1x1 shortcuts. The
layout is keras.applications' Xception, so its ImageNet weights load.
"""

import keras

from kvision.blocks.conv import conv_bn_act
from kvision.models._builder import build, builder_args
from kvision.registry import register

PAPER = "Xception: Deep Learning with Depthwise Separable Convolutions"
MIDDLE_BLOCKS = 8


def sepconv_bn(x, filters, name, pre_activation=True):
    """[ReLU ->] 3x3 separable conv -> BatchNorm, Xception's unit.

    Inside residual blocks the ReLU comes first (named ``{name}_act``, as in
    keras.applications), so each block's sum is left un-activated.
    """
    if pre_activation:
        x = keras.layers.Activation("relu", name=f"{name}_act")(x)
    x = keras.layers.SeparableConv2D(filters, 3, padding="same", use_bias=False,
                                     name=name)(x)
    return keras.layers.BatchNormalization(name=f"{name}_bn")(x)


def xception_block(x, filters, name, *, downsample, first_activation=True):
    """A residual block of separable convs, one per entry of ``filters``.

    ``downsample``: a strided 3x3 max-pool ends the branch and a 1x1 stride-2
    conv + BN projects the shortcut; otherwise the shortcut is the identity.
    Shapes: ``(N, H, W, C) -> (N, H/s, W/s, filters[-1])`` with s = 2 or 1.
    """
    shortcut = x
    if downsample:
        # Built before the branch, as keras.applications does (weights order).
        shortcut = conv_bn_act(x, filters[-1], 1, 2, activation=None,
                               name=f"{name}_residual", suffixes=("_conv", "_bn", ""))
    for i, width in enumerate(filters, start=1):
        x = sepconv_bn(x, width, f"{name}_sepconv{i}",
                       pre_activation=first_activation or i > 1)
    if downsample:
        x = keras.layers.MaxPooling2D(3, strides=2, padding="same",
                                      name=f"{name}_pool")(x)
    return keras.layers.Add(name=f"{name}_add")([x, shortcut])


def xception_body(x, middle_blocks=MIDDLE_BLOCKS):
    """Entry, middle and exit flows: ``(N, H, W, 3) -> (N, ~H/32, ~W/32, 2048)``."""
    # Entry flow: two unpadded convs, then three downsampling blocks.
    for i, width in enumerate((32, 64), start=1):
        x = conv_bn_act(x, width, 3, 2 if i == 1 else 1, padding="valid",
                        name=f"block1_conv{i}", suffixes=("", "_bn", "_act"))
    # The stem just applied ReLU, so block 2 starts with its convolution.
    x = xception_block(x, (128, 128), "block2", downsample=True, first_activation=False)
    x = xception_block(x, (256, 256), "block3", downsample=True)
    x = xception_block(x, (728, 728), "block4", downsample=True)
    # Middle flow.
    for i in range(5, 5 + middle_blocks):
        x = xception_block(x, (728, 728, 728), f"block{i}", downsample=False)
    # Exit flow; its last two separable convs are post-activated.
    block = 5 + middle_blocks
    x = xception_block(x, (728, 1024), f"block{block}", downsample=True)
    for i, width in enumerate((1536, 2048), start=1):
        name = f"block{block + 1}_sepconv{i}"
        x = sepconv_bn(x, width, name, pre_activation=False)
        x = keras.layers.Activation("relu", name=f"{name}_act")(x)
    return x


@register("xception", task="classification", family="xception", year=2017,
          paper=PAPER, key_idea="depthwise separable convolutions + residuals",
          default_size=299, min_size=71, num_params=22_910_480,
          params_convention="keras",
          params_source="keras.applications.Xception, count_params()",
          stage_outputs={4: "block2_add", 8: "block3_add",
                         16: f"block{4 + MIDDLE_BLOCKS}_add", 32: "block14_sepconv2_act"},
          keras_application="Xception", preprocessing="tf")
def Xception(include_top=True, weights=None, input_tensor=None, input_shape=None,
             pooling=None, classes=1000, classifier_activation="softmax", name=None):
    """Xception.

    Input ``(299, 299, 3)`` by default (any size >= 71); output ``(N, classes)`` or
    features ``(N, h, w, 2048)``, about 1/32 of the input (two unpadded stem convs:
    10x10 at 299, 3x3 at 71). keras.applications' preprocessing ("tf", pixels to
    [-1, 1]) is not inside the model.
    """

    def body(x):
        return xception_body(x)

    return build("xception", body, **builder_args(locals()))
