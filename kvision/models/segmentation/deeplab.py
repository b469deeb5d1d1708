"""DeepLab v1 and v3+.

- v1 (Chen et al., 2015, "Semantic Image Segmentation with Deep Convolutional Nets and
  Fully Connected CRFs"), the LargeFOV variant as its Caffe ``train.prototxt`` builds
  it: VGG16 whose max-pools are 3x3 with one pixel of padding (stride 2 for pool1-3,
  1 for pool4/pool5) and whose conv5 layers are atrous (rate 2), so features stay at
  stride 8; pool5a a 3x3 average (stride 1, the padding counted); fc6 a 3x3
  convolution at rate 12 with 1024 filters, fc7 1x1 1024, fc8 the classes; logits
  upsampled 8x bilinearly. (The CRF is post-processing, not part of the network.)
  Differences, which change no parameter: at even sides a stride-2 pool pads as TF's
  "same" (its windows start one pixel later and Caffe's extra ceil-mode window is
  not there; at sides 8k+1, the prototxt's 321, they are Caffe's), and the logits
  are resized with half-pixel centers (Caffe's Interp aligns corners). Another
  backbone is made atrous as it is (its own pools).
- v3+ (Chen et al., 2018, "Encoder-Decoder with Atrous Separable Convolution for
  Semantic Image Segmentation"): an atrous backbone at output stride 16 (8), ASPP
  (a 1x1 conv, three 3x3 atrous convs at rates 6/12/18 — doubled at stride 8 — and
  image pooling), then a decoder that upsamples 4x, concatenates the backbone's
  stride-4 features reduced to 48 channels, refines with two 3x3 convs and upsamples
  4x to the input.

Atrous backbones come from :func:`kvision.models.backbone.build_backbone` with
``output_stride`` (:func:`kvision.models.segmentation._common.dilate`): any functional
network (kvision zoo, keras.applications, a keras.Model) with its strides past the
output stride removed and later kernels dilated, weights unchanged; v3+ taps its
output and its level P2 (stride 4).
"""

from __future__ import annotations

import keras

from kvision.blocks.conv import conv_bn_act
from kvision.layers.atrous import AtrousConv2D
from kvision.layers.upsampling import ResizeLike
from kvision.models.backbone import build_backbone
from kvision.models.segmentation import _common
from kvision.registry import register

PAPER_V1 = ("Semantic Image Segmentation with Deep Convolutional Nets and Fully "
            "Connected CRFs")
PAPER_V3_PLUS = ("Encoder-Decoder with Atrous Separable Convolution for Semantic Image "
                 "Segmentation")
# The reference's (research/deeplab/model.py batch_norm_params) for ASPP and decoder.
BN_EPSILON = 1e-5


@register("deeplabv1", task="segmentation", family="deeplab", year=2015, paper=PAPER_V1,
          key_idea="atrous convolution keeps VGG16 at stride 8; bilinear upsampling",
          default_size=320, min_size=32, default_classes=21, num_params=20_505_429,
          params_convention="trainable",
          params_source="the paper's Table 2 (DeepLab-LargeFOV, 20.5M), by hand: VGG16 "
                        "convs + fc6 3x3x512x1024 + fc7 1x1 1024 + fc8 21 classes",
          preprocessing="none")
def DeepLabV1(classes=21, input_shape=None, classifier_activation="softmax", weights=None,
              backbone="vgg16", backbone_weights=None, trainable_backbone=True,
              fc_units=1024, atrous_rate=12, dropout=0.5, backbone_kwargs=None, name=None):
    """DeepLab v1 (LargeFOV) on an atrous VGG16 (output stride 8).

    Input ``(H, W, C)`` raw pixels, default ``(320, 320, 3)``; output ``(N, H, W,
    classes)`` per-pixel softmax (sigmoid for ``classes=1``). ``fc_units`` /
    ``atrous_rate``: fc6/fc7 width (1024) and fc6 rate (12). ``backbone`` any zoo /
    keras.applications name or keras.Model (made atrous at stride 8).
    """
    activation = _common.check_classes(classes, classifier_activation)
    inputs, x = build_backbone(backbone, (None,), input_shape=input_shape,
                               weights=backbone_weights, trainable=trainable_backbone,
                               task="deeplabv1", output_stride=8, **(backbone_kwargs or {}))
    if isinstance(backbone, str) and backbone.lower() == "vgg16":
        x = _largefov_pools(x)
        x = keras.layers.ZeroPadding2D(1, name="pool5a_pad")(x)
        x = keras.layers.AveragePooling2D(3, strides=1, name="pool5a")(x)
    x = AtrousConv2D(fc_units, 3, padding="same", dilation_rate=atrous_rate,
                     activation="relu", name="fc6")(x)
    x = keras.layers.Dropout(dropout, name="drop6")(x)
    x = keras.layers.Conv2D(fc_units, 1, activation="relu", name="fc7")(x)
    x = keras.layers.Dropout(dropout, name="drop7")(x)
    outputs = _common.classifier(x, classes, activation, reference=inputs)
    return _common.finish(inputs, outputs, name or "deeplabv1", weights)


def _largefov_pools(features):
    """``features`` (the atrous VGG16 backbone's output) recomputed by a copy of that
    backbone whose max-pools are DeepLab-LargeFOV's: 3x3, stride kept (2, 2, 2, 1,
    1), "same" padding (one pixel each side at odd sides and at stride 1). Same
    weights, trainable flags and call as the original."""
    history = features._keras_history
    nested = history.operation
    config = nested.get_config()
    for layer in config["layers"]:
        if layer["class_name"] == "MaxPooling2D":
            layer["config"].update(pool_size=(3, 3), padding="same")
    rebuilt = type(nested).from_config(config)
    rebuilt.set_weights(nested.get_weights())
    for old, new in zip(nested.layers, rebuilt.layers):
        new.trainable = old.trainable
    rebuilt.trainable = nested.trainable
    node = nested._inbound_nodes[history.node_index]
    return rebuilt(*node.arguments.args, **node.arguments.kwargs)


def _check_rates(atrous_rates):
    """``atrous_rates`` as a tuple of ints, or a ValueError: they must be distinct
    integers >= 1 (each names its ASPP branch)."""
    try:
        rates = tuple(atrous_rates)
        ok = len(set(rates)) == len(rates) and all(
            not isinstance(r, bool) and int(r) == r >= 1 for r in rates)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError("atrous_rates must be distinct integers >= 1, got "
                         f"{atrous_rates!r}.")
    return tuple(int(r) for r in rates)


def aspp(x, filters, rates, name="aspp"):
    """Atrous spatial pyramid pooling: 1x1, 3x3 at each rate, image pooling; concat,
    1x1. Each conv + BatchNorm + ReLU."""
    branches = [conv_bn_act(x, filters, 1, bn_epsilon=BN_EPSILON, name=f"{name}_1x1")]
    for rate in rates:
        branches.append(conv_bn_act(x, filters, 3, dilation_rate=rate,
                                    bn_epsilon=BN_EPSILON, name=f"{name}_rate{rate}"))
    pooled = keras.layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}_pool")(x)
    pooled = conv_bn_act(pooled, filters, 1, bn_epsilon=BN_EPSILON, name=f"{name}_pool_1x1")
    branches.append(ResizeLike(name=f"{name}_pool_resize")([pooled, x]))
    x = keras.layers.Concatenate(name=f"{name}_concat")(branches)
    x = conv_bn_act(x, filters, 1, bn_epsilon=BN_EPSILON, name=f"{name}_project")
    return keras.layers.Dropout(0.1, name=f"{name}_dropout")(x)


def decoder(x, low, filters, low_level_filters):
    """Upsample to the stride-4 features, concatenate their 1x1 reduction, two 3x3."""
    low = conv_bn_act(low, low_level_filters, 1, bn_epsilon=BN_EPSILON,
                      name="decoder_low_level")
    x = ResizeLike(name="decoder_upsample")([x, low])
    x = keras.layers.Concatenate(name="decoder_concat")([x, low])
    for i in (1, 2):
        x = conv_bn_act(x, filters, 3, bn_epsilon=BN_EPSILON, name=f"decoder_conv{i}")
    return x


@register("deeplabv3_plus", task="segmentation", family="deeplab", year=2018,
          paper=PAPER_V3_PLUS,
          key_idea="ASPP on an atrous backbone + decoder with a stride-4 skip",
          default_size=512, min_size=32, default_classes=21, num_params=40_436_053,
          params_convention="keras",
          params_source="built here (ResNet50 backbone, 21 classes, count_params(); "
                        "no reference with this exact head)",
          preprocessing="none")
def DeepLabV3Plus(classes=21, input_shape=None, classifier_activation="softmax",
                  weights=None, backbone="resnet50", backbone_weights=None,
                  trainable_backbone=True, output_stride=16, atrous_rates=(6, 12, 18),
                  filters=256, low_level_filters=48, backbone_kwargs=None, name=None):
    """DeepLab v3+ on an atrous backbone (ResNet50 by default; "xception",
    "mobilenet_v2", any zoo / keras.applications name or a keras.Model).

    Input ``(H, W, C)`` raw pixels, default ``(512, 512, 3)``; output ``(N, H, W,
    classes)`` per-pixel softmax (sigmoid for ``classes=1``). ``output_stride`` 16
    (rates 6/12/18) or 8 (rates doubled, as the paper); ``filters`` is the ASPP and
    decoder width (256), ``low_level_filters`` the skip's (48).
    """
    activation = _common.check_classes(classes, classifier_activation)
    if output_stride not in (8, 16):
        raise ValueError(f"output_stride must be 8 or 16, got {output_stride!r}.")
    rates = tuple(r * (16 // output_stride) for r in _check_rates(atrous_rates))
    inputs, (high, low) = build_backbone(
        backbone, (None, "P2"), input_shape=input_shape, weights=backbone_weights,
        trainable=trainable_backbone, task="deeplabv3_plus", output_stride=output_stride,
        **(backbone_kwargs or {}))
    x = decoder(aspp(high, filters, rates), low, filters, low_level_filters)
    outputs = _common.classifier(x, classes, activation, reference=inputs)
    return _common.finish(inputs, outputs, name or "deeplabv3_plus", weights)
