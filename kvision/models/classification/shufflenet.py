"""ShuffleNet V2 (Ma et al., 2018, "ShuffleNet V2: Practical Guidelines for Efficient
CNN Architecture Design"): units that split the channels in two, transform one half
with 1x1 -> depthwise 3x3 -> 1x1, concatenate and shuffle the channels.

torchvision's layout: conv1 3x3/2 24 -> max-pool 3x3/2 -> stages of 4, 8, 4 units
(the first of each with stride 2 and two branches) -> conv5 1x1 -> pool -> FC.
Strided convs and the max-pool pad one pixel on every side, as PyTorch does.
"""

import keras

from kvision.blocks import conv_bn_act
from kvision.layers import ChannelShuffle, ChannelSplit
from kvision.models._builder import build, builder_args
from kvision.registry import register
from kvision.weights_torch import torchvision_weights

PAPER = "ShuffleNet V2: Practical Guidelines for Efficient CNN Architecture Design"

REPEATS = (4, 8, 4)
# Output channels of stage2, stage3, stage4 and conv5 per width (torchvision).
WIDTHS = {0.5: (48, 96, 192, 1024), 1.0: (116, 232, 464, 1024),
          1.5: (176, 352, 704, 1024), 2.0: (244, 488, 976, 2048)}
STEM_FILTERS = 24
# PyTorch's BatchNorm defaults (momentum 0.1 there is 0.9 here).
BN = dict(bn_epsilon=1e-5, bn_momentum=0.9, suffixes=("_conv", "_bn", "_relu"))


def _conv(x, filters, *, name, activation="relu"):
    """1x1 conv (no bias) -> BatchNorm -> optional ReLU."""
    return conv_bn_act(x, filters, 1, padding="valid", activation=activation,
                       name=name, **BN)


def _depthwise(x, strides, *, name):
    """Depthwise 3x3 (no bias) -> BatchNorm, no activation (the paper's unit)."""
    if strides > 1:
        x = keras.layers.ZeroPadding2D(1, name=f"{name}_pad")(x)
    x = keras.layers.DepthwiseConv2D(3, strides=strides,
                                     padding="valid" if strides > 1 else "same",
                                     use_bias=False, name=f"{name}_dwconv")(x)
    return keras.layers.BatchNormalization(epsilon=BN["bn_epsilon"],
                                           momentum=BN["bn_momentum"],
                                           name=f"{name}_dwbn")(x)


def shuffle_unit(x, filters, strides=1, *, name):
    """One ShuffleNet V2 unit; ``(N, H, W, C) -> (N, H/strides, W/strides, filters)``.

    Stride 1: the first half of the channels passes unchanged, the second goes
    through branch2 (1x1 -> dw3x3 -> 1x1). Stride 2: all channels go through both
    branch1 (dw3x3/2 -> 1x1) and branch2 (with a dw3x3/2). Concatenation
    [branch1 or passthrough, branch2] is then shuffled across 2 groups.
    """
    half = filters // 2
    if strides == 1:
        left, right = ChannelSplit(2, name=f"{name}_split")(x)
    else:
        left = _depthwise(x, strides, name=f"{name}_branch1")
        left = _conv(left, half, name=f"{name}_branch1_1")
        right = x
    right = _conv(right, half, name=f"{name}_branch2_1")
    right = _depthwise(right, strides, name=f"{name}_branch2")
    right = _conv(right, half, name=f"{name}_branch2_2")
    x = keras.layers.Concatenate(name=f"{name}_concat")([left, right])
    return ChannelShuffle(2, name=f"{name}_shuffle")(x)


def shufflenet_v2_body(x, width_multiplier=1.0):
    """Stem, three stages and conv5; ``(N, H, W, 3) -> (N, H/32, W/32, 1024)``."""
    if width_multiplier not in WIDTHS:
        raise ValueError(f"width_multiplier must be one of {sorted(WIDTHS)}, got "
                         f"{width_multiplier!r}.")
    *stage_filters, last = WIDTHS[width_multiplier]
    x = conv_bn_act(x, STEM_FILTERS, 3, 2, padding=1, name="conv1", **BN)
    # PyTorch pads the pool with -inf; zero is the same after a ReLU.
    x = keras.layers.ZeroPadding2D(1, name="maxpool_pad")(x)
    x = keras.layers.MaxPooling2D(3, strides=2, name="maxpool")(x)
    for stage, (filters, repeats) in enumerate(zip(stage_filters, REPEATS), start=2):
        for block in range(1, repeats + 1):
            x = shuffle_unit(x, filters, 2 if block == 1 else 1,
                             name=f"stage{stage}_block{block}")
    return _conv(x, last, name="conv5")


def _width_tag(width_multiplier):
    return f"{width_multiplier:.1f}".replace(".", "_")


@register("shufflenet_v2_x1_0", task="classification", family="shufflenet", year=2018,
          paper=PAPER, key_idea="channel split + channel shuffle, cheap memory access",
          default_size=224, min_size=32, num_params=2_278_604,
          params_convention="trainable",
          params_source="torchvision shufflenet_v2_x1_0 "
                        "(ShuffleNet_V2_X1_0_Weights num_params)",
          stage_outputs={4: "maxpool", 8: "stage2_block4_shuffle",
                         16: "stage3_block8_shuffle", 32: "conv5_relu"},
          **torchvision_weights("shufflenet", "shufflenetv2_x1-5666bf0f80.pth",
                                69.362, 88.316))
def ShuffleNetV2(include_top=True, weights=None, input_tensor=None, input_shape=None,
                 pooling=None, classes=1000, classifier_activation="softmax",
                 name=None, width_multiplier=1.0):
    """ShuffleNet V2 (2.28M parameters at ``width_multiplier=1.0``).

    ``width_multiplier`` 0.5, 1.0, 1.5 or 2.0 picks torchvision's stage widths
    (x0_5 … x2_0; the model is then named ``shufflenet_v2_x0_5`` …). Input
    ``(224, 224, 3)`` or any size >= 32; output ``(N, classes)`` or features
    ``(N, H/32, W/32, 1024)`` (2048 at 2.0).
    """

    def body(x):
        return shufflenet_v2_body(x, width_multiplier)

    args = builder_args(locals())
    if args["name"] is None and width_multiplier in WIDTHS:
        args["name"] = f"shufflenet_v2_x{_width_tag(width_multiplier)}"
    return build("shufflenet_v2_x1_0", body, **args)
