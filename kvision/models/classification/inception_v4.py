"""Inception-v4 and Inception-ResNet-v2 (Szegedy et al., 2016, "Inception-v4,
Inception-ResNet and the Impact of Residual Connections on Learning").

- Inception-v4: a deeper, uniform pure-Inception network; timm's ``inception_v4``
  layout (conv without bias -> BatchNorm eps 1e-3 -> ReLU; stem with Mixed_3a/4a/5a,
  4x Inception-A, Reduction-A, 7x Inception-B, Reduction-B, 3x Inception-C).
  Layer names follow TF-slim (``mixed_5b`` … ``mixed_7d``).
- Inception-ResNet-v2: Inception modules as residual branches, scaled down before
  the addition (0.17, 0.1, 0.2) to keep training stable; keras.applications'
  ``InceptionResNetV2`` layout exactly (its ImageNet weights load), keras' names.
"""

import keras

from kvision.blocks.conv import conv_bn_act
from kvision.blocks.inception import (basic_conv, chain, conv_chain,
                                      inception_module, keras_inception_stem, pooled,
                                      split_1x3_3x1)
from kvision.layers import ScaledResidual
from kvision.models._builder import build, builder_args
from kvision.registry import published, register
from kvision.weights_torch import timm_weights

PAPER = ("Inception-v4, Inception-ResNet and the Impact of Residual Connections "
         "on Learning")


# --- Inception-v4 ------------------------------------------------------------------

def _valid(filters, kernel=3, strides=1):
    return (filters, kernel, strides, "valid")


def v4_stem(x):
    """``(N, 299, 299, 3) -> (N, 35, 35, 384)``: three convs, Mixed_3a/4a/5a."""
    x = basic_conv(x, *_valid(32, 3, 2), name="conv2d_1a")
    x = basic_conv(x, *_valid(32), name="conv2d_2a")
    x = basic_conv(x, 64, 3, name="conv2d_2b")
    x = inception_module(x, [
        pooled("max", strides=2, padding="valid", name="mixed_3a_branch0"),
        conv_chain(_valid(96, 3, 2), name="mixed_3a_branch1"),
    ], name="mixed_3a")
    x = inception_module(x, [
        conv_chain((64, 1), _valid(96), name="mixed_4a_branch0"),
        conv_chain((64, 1), (64, (1, 7)), (64, (7, 1)), _valid(96),
                   name="mixed_4a_branch1"),
    ], name="mixed_4a")
    return inception_module(x, [
        conv_chain(_valid(192, 3, 2), name="mixed_5a_branch0"),
        pooled("max", strides=2, padding="valid", name="mixed_5a_branch1"),
    ], name="mixed_5a")


def inception_a(x, name):
    """35x35, 384 -> 384: 1x1 | 1x1-3x3 | 1x1-3x3-3x3 | avg-pool-1x1."""
    return inception_module(x, [
        conv_chain((96, 1), name=f"{name}_branch0"),
        conv_chain((64, 1), (96, 3), name=f"{name}_branch1"),
        conv_chain((64, 1), (96, 3), (96, 3), name=f"{name}_branch2"),
        pooled("avg", (96, 1), name=f"{name}_branch3"),
    ], name=name)


def reduction_a(x, name="mixed_6a"):
    """35 -> 17, 384 -> 1024: 3x3/2 | 1x1-3x3-3x3/2 | max-pool/2."""
    return inception_module(x, [
        conv_chain(_valid(384, 3, 2), name=f"{name}_branch0"),
        conv_chain((192, 1), (224, 3), _valid(256, 3, 2), name=f"{name}_branch1"),
        pooled("max", strides=2, padding="valid", name=f"{name}_branch2"),
    ], name=name)


def inception_b(x, name):
    """17x17, 1024 -> 1024, 7x7 convolutions factorized into 1x7 and 7x1."""
    return inception_module(x, [
        conv_chain((384, 1), name=f"{name}_branch0"),
        conv_chain((192, 1), (224, (1, 7)), (256, (7, 1)), name=f"{name}_branch1"),
        conv_chain((192, 1), (192, (7, 1)), (224, (1, 7)), (224, (7, 1)),
                   (256, (1, 7)), name=f"{name}_branch2"),
        pooled("avg", (128, 1), name=f"{name}_branch3"),
    ], name=name)


def reduction_b(x, name="mixed_7a"):
    """17 -> 8, 1024 -> 1536: 1x1-3x3/2 | 1x1-1x7-7x1-3x3/2 | max-pool/2."""
    return inception_module(x, [
        conv_chain((192, 1), _valid(192, 3, 2), name=f"{name}_branch0"),
        conv_chain((256, 1), (256, (1, 7)), (320, (7, 1)), _valid(320, 3, 2),
                   name=f"{name}_branch1"),
        pooled("max", strides=2, padding="valid", name=f"{name}_branch2"),
    ], name=name)


def inception_c(x, name):
    """8x8, 1536 -> 1536, with expanded (1x3 | 3x1) filter banks."""
    return inception_module(x, [
        conv_chain((256, 1), name=f"{name}_branch0"),
        chain(conv_chain((384, 1), name=f"{name}_branch1_0"),
              split_1x3_3x1(256, name=f"{name}_branch1_1")),
        chain(conv_chain((384, 1), (448, (3, 1)), (512, (1, 3)),
                         name=f"{name}_branch2"),
              split_1x3_3x1(256, name=f"{name}_branch2_3")),
        pooled("avg", (256, 1), name=f"{name}_branch3"),
    ], name=name)


def inception_v4_body(x):
    """``(N, 299, 299, 3) -> (N, 8, 8, 1536)``."""
    x = v4_stem(x)
    for block in "bcde":
        x = inception_a(x, f"mixed_5{block}")
    x = reduction_a(x)
    for block in "bcdefgh":
        x = inception_b(x, f"mixed_6{block}")
    x = reduction_b(x)
    for block in "bcd":
        x = inception_c(x, f"mixed_7{block}")
    return x


@register("inception_v4", task="classification", family="inception", year=2016,
          paper=PAPER, key_idea="uniform, deeper pure-Inception network",
          default_size=299, min_size=75, num_params=42_679_816,
          params_convention="trainable",
          params_source="timm inception_v4, trainable parameters",
          stage_outputs={4: "mixed_4a", 8: "mixed_5e", 16: "mixed_6h", 32: "mixed_7d"},
          paper_accuracy=published(80.0, 95.0, "Szegedy et al. 2016, Table 2: single "
                                   "crop, val error 20.0 / 5.0"),
          # timm's inception_v4.tf_in1k (Cadene's port of TF-slim's weights): its
          # classifier has TF-slim's background class first (timm's label_offset 1).
          # timm dropped this file's url for a hub copy without that class in
          # 960a8825 (2023-05); its accuracy is the csv row of when the cfg still
          # loaded it (the hub copy's row reads 80.144 / 94.982).
          **timm_weights("inception_v4", "https://github.com/rwightman/pytorch-image-"
                         "models/releases/download/v0.1-cadene/inceptionv4-8e4777a0.pth",
                         80.168, 94.968, tag="inception_v4.tf_in1k",
                         row="row inception_v4 at 299, timm 960f5f92 (2022-12), when "
                             "the cfg's url was this file",
                         preprocessing="tf", label_offset=1))
def InceptionV4(include_top=True, weights=None, input_tensor=None, input_shape=None,
                pooling=None, classes=1000, classifier_activation="softmax",
                name=None):
    """Inception-v4 (Szegedy et al., 2016, "Inception-v4, Inception-ResNet and the
    Impact of Residual Connections on Learning"), timm's layout.

    Input ``(299, 299, 3)`` by default (any size >= 75), scaled to ``[-1, 1]`` for
    timm's ImageNet weights (not inside the model); output ``(N, classes)`` or
    features ``(N, H', W', 1536)`` (8x8 at 299).
    """
    return build("inception_v4", inception_v4_body, **builder_args(locals()))


# --- Inception-ResNet-v2 -----------------------------------------------------------

def _convs(*specs, name):
    # keras.applications' Inception-ResNet-v2 BatchNorms have no gamma (scale=False).
    return conv_chain(*specs, name=name, scale=False)


# Residual branches of the three block types (keras' "block35", "block17", "block8").
RESIDUAL_BRANCHES = {
    "block35": (((32, 1),), ((32, 1), (32, 3)), ((32, 1), (48, 3), (64, 3))),
    "block17": (((192, 1),), ((128, 1), (160, (1, 7)), (192, (7, 1)))),
    "block8": (((192, 1),), ((192, 1), (224, (1, 3)), (256, (3, 1)))),
}


def inception_resnet_block(x, block_type, index, scale, activation="relu"):
    """``x + scale * conv1x1(concat(branches(x)))``, then ReLU; shape unchanged."""
    name = f"{block_type}_{index}"
    mixed = inception_module(x, [
        _convs(*specs, name=f"{name}_branch{i}")
        for i, specs in enumerate(RESIDUAL_BRANCHES[block_type])
    ], name=f"{name}_mixed")
    # The projection back to the input width: biased, no BatchNorm, no activation.
    up = conv_bn_act(mixed, x.shape[-1], 1, use_bias=True, batch_norm=False,
                     activation=None, name=name, suffixes=("_conv", "", ""))
    x = ScaledResidual(scale, name=name)([x, up])
    if activation is None:
        return x
    return keras.layers.Activation(activation, name=f"{name}_ac")(x)


def inception_resnet_v2_body(x):
    """``(N, 299, 299, 3) -> (N, 8, 8, 1536)``, keras.applications' layout."""
    x = keras_inception_stem(x)
    x = inception_module(x, [
        _convs((96, 1), name="mixed_5b_branch0"),
        _convs((48, 1), (64, 5), name="mixed_5b_branch1"),
        _convs((64, 1), (96, 3), (96, 3), name="mixed_5b_branch2"),
        pooled("avg", (64, 1), name="mixed_5b_branch_pool", scale=False),
    ], name="mixed_5b")
    for i in range(1, 11):
        x = inception_resnet_block(x, "block35", i, scale=0.17)
    x = inception_module(x, [
        _convs(_valid(384, 3, 2), name="mixed_6a_branch0"),
        _convs((256, 1), (256, 3), _valid(384, 3, 2), name="mixed_6a_branch1"),
        pooled("max", strides=2, padding="valid", name="mixed_6a_branch_pool"),
    ], name="mixed_6a")
    for i in range(1, 21):
        x = inception_resnet_block(x, "block17", i, scale=0.1)
    x = inception_module(x, [
        _convs((256, 1), _valid(384, 3, 2), name="mixed_7a_branch0"),
        _convs((256, 1), _valid(288, 3, 2), name="mixed_7a_branch1"),
        _convs((256, 1), (288, 3), _valid(320, 3, 2), name="mixed_7a_branch2"),
        pooled("max", strides=2, padding="valid", name="mixed_7a_branch_pool"),
    ], name="mixed_7a")
    for i in range(1, 11):
        # The last block has no ReLU: conv_7b follows directly.
        x = inception_resnet_block(x, "block8", i, scale=0.2 if i < 10 else 1.0,
                                   activation="relu" if i < 10 else None)
    return basic_conv(x, 1536, 1, scale=False, name="conv_7b",
                      suffixes=("", "_bn", "_ac"))


@register("inception_resnet_v2", task="classification", family="inception",
          year=2016, paper=PAPER,
          key_idea="Inception modules as scaled residual branches",
          default_size=299, min_size=75, num_params=55_873_736,
          params_convention="keras",
          params_source="keras.applications.InceptionResNetV2, count_params()",
          stage_outputs={4: "conv2d_4a_act", 8: "block35_10_ac", 16: "block17_20_ac",
                         32: "conv_7b_ac"},
          keras_application="InceptionResNetV2", preprocessing="tf")
def InceptionResNetV2(include_top=True, weights=None, input_tensor=None,
                      input_shape=None, pooling=None, classes=1000,
                      classifier_activation="softmax", name=None):
    """Inception-ResNet-v2 (Szegedy et al., 2016, "Inception-v4, Inception-ResNet
    and the Impact of Residual Connections on Learning"), keras.applications' layout
    and weights.

    Input ``(299, 299, 3)`` by default (any size >= 75), scaled to ``[-1, 1]``
    (keras' ``inception_resnet_v2.preprocess_input``, not inside the model); output
    ``(N, classes)`` or features ``(N, H', W', 1536)`` (8x8 at 299).
    """
    return build("inception_resnet_v2", inception_resnet_v2_body,
                 **builder_args(locals()))
