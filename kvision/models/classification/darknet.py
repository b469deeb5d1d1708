"""Darknet-53 (Redmon & Farhadi, 2018, "YOLOv3: An Incremental Improvement",
Table 1): YOLOv3's backbone, 52 convolutions + 1 FC.

A 3x3 conv (32), then five stages: a stride-2 3x3 conv (64, 128, 256, 512, 1024)
and 1, 2, 8, 8, 4 residual units (1x1 halving the channels, 3x3 restoring them).
Every conv is bias-free, followed by BatchNorm and LeakyReLU(0.1). Stage ``n`` works
at stride ``2**n``; YOLOv3 taps ``stage3``/``stage4``/``stage5`` by their names.
"""

import keras

from kvision.blocks import conv_bn_act
from kvision.models._builder import build, builder_args
from kvision.registry import published, register

PAPER = "YOLOv3: An Incremental Improvement"

STEM_FILTERS = 32
# (filters, residual units) per stage, Table 1.
STAGES = ((64, 1), (128, 2), (256, 8), (512, 8), (1024, 4))
# darknet/timm BatchNorm (PyTorch defaults: momentum 0.1 there is 0.9 here).
CONV = dict(activation="leaky_relu", bn_epsilon=1e-5, bn_momentum=0.9,
            suffixes=("_conv", "_bn", "_act"))


def _darknet_conv(x, filters, kernel_size, strides=1, *, name):
    """Conv (no bias) -> BN -> LeakyReLU(0.1); 3x3 convs pad 1 on every side (darknet)."""
    padding = "valid" if kernel_size == 1 else ("same" if strides == 1 else 1)
    return conv_bn_act(x, filters, kernel_size, strides, padding=padding, name=name,
                       **CONV)


def darknet_residual(x, *, name):
    """1x1 conv to C/2 -> 3x3 conv to C, added to the input (no activation after).

    Shapes: ``(N, H, W, C) -> (N, H, W, C)``; the sum is ``{name}_out``.
    """
    channels = x.shape[-1]
    y = _darknet_conv(x, channels // 2, 1, name=f"{name}_1")
    y = _darknet_conv(y, channels, 3, name=f"{name}_2")
    return keras.layers.Add(name=f"{name}_out")([x, y])


def darknet53_body(x):
    """Stem and five stages; ``(N, H, W, 3) -> (N, H/32, W/32, 1024)``.

    The last unit of stage ``n`` is ``stage{n}_block{units}_out`` (stride ``2**n``).
    """
    x = _darknet_conv(x, STEM_FILTERS, 3, name="stem")
    for stage, (filters, units) in enumerate(STAGES, start=1):
        x = _darknet_conv(x, filters, 3, 2, name=f"stage{stage}_down")
        for unit in range(1, units + 1):
            x = darknet_residual(x, name=f"stage{stage}_block{unit}")
    return x


def _stage_outputs():
    return {2 ** n: f"stage{n}_block{units}_out"
            for n, (_, units) in enumerate(STAGES, start=1) if n >= 2}


@register("darknet53", task="classification", family="darknet", year=2018, paper=PAPER,
          key_idea="YOLOv3 backbone: residual 1x1/3x3 units, LeakyReLU",
          default_size=256, min_size=32, num_params=41_609_928,
          params_convention="trainable",
          params_source="YOLOv3 Table 1 layout: conv weights + BatchNorm gamma/beta + "
                        "FC (darknet's count; timm darknet53: 41.6M)",
          stage_outputs=_stage_outputs(),
          accuracy=published(77.2, 93.8, "Redmon & Farhadi 2018 (YOLOv3), Table 2, "
                             "at 256x256"))
def Darknet53(include_top=True, weights=None, input_tensor=None, input_shape=None,
              pooling=None, classes=1000, classifier_activation="softmax", name=None):
    """Darknet-53 (41.6M parameters), the classifier of YOLOv3's Table 1.

    Input ``(256, 256, 3)`` (Table 1's size) or any size >= 32; output
    ``(N, classes)`` (global average pool -> FC) or features ``(N, H/32, W/32, 1024)``.
    Multi-scale features: ``stage3_block8_out`` (stride 8, 256 channels),
    ``stage4_block8_out`` (16, 512), ``stage5_block4_out`` (32, 1024).
    """
    return build("darknet53", darknet53_body, **builder_args(locals()))
