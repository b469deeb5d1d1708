"""SegNet (Badrinarayanan, Kendall & Cipolla, 2017, "SegNet: A Deep Convolutional
Encoder-Decoder Architecture for Image Segmentation").

Encoder: VGG16's 13 convolutions (each conv + BatchNorm + ReLU) with 2x2 max-pools that
keep the position of every maximum. Decoder: the mirror image, each block upsampling
with :class:`~kvision.layers.MaxUnpooling2D` at the stored positions (no learned
upsampling, no skip features: only indices cross over), then convolutions; the last
one scores the classes. Layout and widths follow the authors' Caffe model
(``segnet_train.prototxt`` of SegNet-Tutorial).
"""

from __future__ import annotations

import keras

from kvision.blocks.conv import conv_bn_act
from kvision.layers.upsampling import MaxPoolingWithArgmax2D, MaxUnpooling2D
from kvision.models._builder import task_input
from kvision.models.classification.vgg import DEPTHS, WIDTHS
from kvision.models.segmentation import _common
from kvision.registry import register

PAPER = "SegNet: A Deep Convolutional Encoder-Decoder Architecture for Image Segmentation"


def _conv(x, filters, name):
    return conv_bn_act(x, filters, 3, use_bias=True, bn_epsilon=1e-5, name=name,
                       suffixes=("", "_bn", "_relu"))


def encoder(x, widths):
    """VGG16's five blocks with argmax pooling; returns the pooled map and, per block,
    ``(indices, pre-pool tensor)``."""
    memory = []
    for block, (depth, width) in enumerate(zip(DEPTHS[16], widths), start=1):
        for i in range(1, depth + 1):
            x = _conv(x, width, f"conv{block}_{i}")
        pre_pool = x
        x, indices = MaxPoolingWithArgmax2D(2, name=f"pool{block}")(x)
        memory.append((indices, pre_pool))
    return x, memory


def decoder(x, memory, widths, classes):
    """The mirrored blocks: unpool, then the block's convolutions in reverse; the
    last of a block narrows to the previous block's width, the very last (no
    BatchNorm, no ReLU) scores the classes."""
    for block in range(5, 0, -1):
        indices, pre_pool = memory[block - 1]
        x = MaxUnpooling2D(2, name=f"upsample{block}")([x, indices, pre_pool])
        depth = DEPTHS[16][block - 1]
        for i in range(depth, 0, -1):
            if i > 1:
                x = _conv(x, widths[block - 1], f"conv{block}_{i}_D")
            elif block > 1:
                x = _conv(x, widths[block - 2], f"conv{block}_{i}_D")
            else:
                x = keras.layers.Conv2D(classes, 3, padding="same",
                                        name=f"conv{block}_{i}_D")(x)
    return x


@register("segnet", task="segmentation", family="segnet", year=2015, paper=PAPER,
          key_idea="decoder upsamples with the encoder's max-pooling indices",
          default_size=352, min_size=32, default_classes=11,
          num_params=29_449_355, params_convention="trainable",
          params_source="the authors' Caffe model (alexgkendall/SegNet-Tutorial, "
                        "Models/segnet_train.prototxt), CamVid 11 classes, "
                        "trainable (conv + BN scale/shift)",
          preprocessing="none")
def SegNet(classes=11, input_shape=None, classifier_activation="softmax", weights=None,
           width=1.0, name=None):
    """SegNet (Badrinarayanan et al., 2015/2017) with the VGG16 encoder.

    Input ``(H, W, C)`` raw pixels in ``[0, 255]`` (scaled to ``[0, 1]`` inside),
    default ``(352, 480, 3)`` (CamVid's 360x480 cropped to multiples of 32; odd
    sides also work: pooling pads, unpooling crops back); output ``(N, H, W,
    classes)`` per-pixel softmax (sigmoid for ``classes=1``). ``width`` scales every
    layer's filters (1.0 = the paper's 64..512).
    """
    activation = _common.check_classes(classes, classifier_activation)
    if not width > 0:
        raise ValueError(f"width must be > 0, got {width!r}.")
    if input_shape is None:
        input_shape = (352, 480, 3)
    inputs = task_input("segnet", input_shape)
    widths = [max(1, int(round(w * width))) for w in WIDTHS]
    x = keras.layers.Rescaling(1 / 255, name="rescaling")(inputs)
    x, memory = encoder(x, widths)
    x = decoder(x, memory, widths, classes)
    outputs = keras.layers.Activation(activation, dtype="float32", name="predictions")(x)
    return _common.finish(inputs, outputs, name or "segnet", weights)
