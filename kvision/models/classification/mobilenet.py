"""MobileNets: V1 (Howard et al., 2017, "MobileNets: Efficient Convolutional Neural
Networks for Mobile Vision Applications"), V2 (Sandler et al., 2018, "MobileNetV2:
Inverted Residuals and Linear Bottlenecks") and V3 (Howard et al., 2019, "Searching
for MobileNetV3").

V1 stacks depthwise-separable convolutions; V2 inverted residuals with linear
bottlenecks; V3 adds squeeze-and-excitation and hard-swish to V2's block. All four
keep keras.applications' layer layout, so its ImageNet weights load; ``alpha`` (the
width multiplier) is passed on to keras so ``weights="imagenet"`` picks its file.
"""

import keras

from kvision.blocks.conv import activation_layer, conv_bn_act
from kvision.blocks.mobile import (V2_NAMES, V3_NAMES, conv_bn, depthwise_separable,
                                   inverted_residual, make_divisible)
from kvision.models._builder import build, builder_args
from kvision.registry import register

V1_PAPER = ("MobileNets: Efficient Convolutional Neural Networks for Mobile Vision "
            "Applications")
V2_PAPER = "MobileNetV2: Inverted Residuals and Linear Bottlenecks"
V3_PAPER = "Searching for MobileNetV3"

# V1 (paper Table 1): (pointwise filters, stride) of the 13 depthwise-separable blocks.
V1_BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1),
             (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1))

# V2 (paper Table 2): (expansion t, filters c, repeats n, first stride s) per stage.
V2_STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
             (6, 160, 3, 2), (6, 320, 1, 1))

# V3 (paper Tables 1 and 2): (expansion, filters, kernel, stride, SE, hard-swish).
# "minimalistic" turns every 5x5 kernel into 3x3, drops SE and uses ReLU throughout.
V3_SMALL = ((1, 16, 3, 2, True, False), (72 / 16, 24, 3, 2, False, False),
            (88 / 24, 24, 3, 1, False, False), (4, 40, 5, 2, True, True),
            (6, 40, 5, 1, True, True), (6, 40, 5, 1, True, True), (3, 48, 5, 1, True, True),
            (3, 48, 5, 1, True, True), (6, 96, 5, 2, True, True), (6, 96, 5, 1, True, True),
            (6, 96, 5, 1, True, True))
V3_LARGE = ((1, 16, 3, 1, False, False), (4, 24, 3, 2, False, False),
            (3, 24, 3, 1, False, False), (3, 40, 5, 2, True, False),
            (3, 40, 5, 1, True, False), (3, 40, 5, 1, True, False),
            (6, 80, 3, 2, False, True), (2.5, 80, 3, 1, False, True),
            (2.3, 80, 3, 1, False, True), (2.3, 80, 3, 1, False, True),
            (6, 112, 3, 1, True, True), (6, 112, 3, 1, True, True),
            (6, 160, 5, 2, True, True), (6, 160, 5, 1, True, True),
            (6, 160, 5, 1, True, True))
V3_LAST_POINT = {"small": 1024, "large": 1280}


def _check_imagenet(weights, ok, message):
    # keras.applications has ImageNet files for a few widths only; say so up front.
    if weights == "imagenet" and not ok:
        raise ValueError(f"weights='imagenet' {message}")


# --- V1 -------------------------------------------------------------------------


def mobilenet_v1_body(x, alpha=1.0, depth_multiplier=1):
    """Stem conv + 13 depthwise-separable blocks; ``-> (N, H/32, W/32, 1024·alpha)``."""
    x = conv_bn_act(x, int(32 * alpha), 3, 2, activation="relu6", name="conv1",
                    suffixes=("", "_bn", "_relu"))
    for block_id, (filters, strides) in enumerate(V1_BLOCKS, start=1):
        x = depthwise_separable(x, int(filters * alpha), strides,
                                depth_multiplier=depth_multiplier, block_id=block_id)
    return x


def mobilenet_v1_head(dropout):
    """Pool -> dropout -> 1x1 conv classifier -> reshape, as keras.applications."""
    def head(x, classes, classifier_activation):
        x = keras.layers.GlobalAveragePooling2D(keepdims=True, name="avg_pool")(x)
        x = keras.layers.Dropout(dropout, name="dropout")(x)
        x = keras.layers.Conv2D(classes, 1, padding="same", name="conv_preds")(x)
        x = keras.layers.Reshape((classes,), name="reshape_2")(x)
        return keras.layers.Activation(classifier_activation, name="predictions")(x)
    return head


@register("mobilenet_v1", task="classification", family="mobilenet", year=2017,
          paper=V1_PAPER, key_idea="depthwise-separable convolutions",
          default_size=224, min_size=32, num_params=4_253_864, params_convention="keras",
          params_source="keras.applications.MobileNet (alpha=1), count_params()",
          stage_outputs={4: "conv_pw_3_relu", 8: "conv_pw_5_relu",
                         16: "conv_pw_11_relu", 32: "conv_pw_13_relu"},
          keras_application="MobileNet", preprocessing="tf")
def MobileNet(include_top=True, weights=None, input_tensor=None, input_shape=None,
              pooling=None, classes=1000, classifier_activation="softmax", name=None,
              alpha=1.0, depth_multiplier=1, dropout=1e-3):
    """MobileNet (V1), Howard et al. 2017, "MobileNets: Efficient Convolutional Neural
    Networks for Mobile Vision Applications".

    Input ``(H, W, 3)``, H, W >= 32 (224 by default; ImageNet weights exist for
    128/160/192/224 and alpha 0.25/0.5/0.75/1), pixels scaled to ``[-1, 1]``
    outside the model (``mode="tf"``). Output ``(N, classes)`` or features
    ``(N, H/32, W/32, 1024·alpha)``. ``alpha`` scales every width,
    ``depth_multiplier`` the depthwise convolutions' channels, ``dropout`` comes
    before the classifier.
    """
    _check_imagenet(weights, depth_multiplier == 1 and alpha in (0.25, 0.5, 0.75, 1.0),
                    "needs depth_multiplier=1 and alpha in 0.25, 0.5, 0.75, 1.0.")
    return build("mobilenet_v1",
                 lambda x: mobilenet_v1_body(x, alpha, depth_multiplier),
                 head=mobilenet_v1_head(dropout),
                 keras_kwargs=dict(alpha=alpha, depth_multiplier=depth_multiplier),
                 **builder_args(locals()))


# --- V2 -------------------------------------------------------------------------


def mobilenet_v2_body(x, alpha=1.0):
    """Stem + 17 inverted residuals + 1x1 conv; ``-> (N, H/32, W/32, 1280)``."""
    x = conv_bn(x, make_divisible(32 * alpha, 8), 3, 2, bn_momentum=0.999, name="Conv1",
                bn_name="bn_Conv1")
    x = activation_layer("relu6", "Conv1_relu")(x)
    block_id = 0
    for expansion, filters, repeats, first_stride in V2_STAGES:
        for i in range(repeats):
            x = inverted_residual(
                x, make_divisible(int(filters * alpha), 8),
                # Block 0 (expansion 1) has no expansion conv in keras' layout.
                expanded_filters=expansion * x.shape[-1] if block_id else None,
                strides=first_stride if i == 0 else 1, activation="relu6",
                bn_momentum=0.999, names=V2_NAMES,
                name=f"block_{block_id}_" if block_id else "expanded_conv_")
            block_id += 1
    # The last conv widens with alpha > 1 only (keras' rule).
    last = make_divisible(1280 * alpha, 8) if alpha > 1.0 else 1280
    x = conv_bn(x, last, 1, bn_momentum=0.999, name="Conv_1")
    return activation_layer("relu6", "out_relu")(x)


@register("mobilenet_v2", task="classification", family="mobilenet", year=2018,
          paper=V2_PAPER, key_idea="inverted residuals with linear bottlenecks",
          default_size=224, min_size=32, num_params=3_538_984, params_convention="keras",
          params_source="keras.applications.MobileNetV2 (alpha=1), count_params()",
          stage_outputs={4: "block_3_expand_relu", 8: "block_6_expand_relu",
                         16: "block_13_expand_relu", 32: "out_relu"},
          keras_application="MobileNetV2", preprocessing="tf")
def MobileNetV2(include_top=True, weights=None, input_tensor=None, input_shape=None,
                pooling=None, classes=1000, classifier_activation="softmax", name=None,
                alpha=1.0):
    """MobileNetV2, Sandler et al. 2018, "MobileNetV2: Inverted Residuals and Linear
    Bottlenecks".

    Input ``(H, W, 3)``, H, W >= 32 (224 by default; ImageNet weights exist for
    96/128/160/192/224 and alpha 0.35/0.5/0.75/1/1.3/1.4), pixels scaled to
    ``[-1, 1]`` outside the model. Output ``(N, classes)`` or features
    ``(N, H/32, W/32, 1280)`` (``1280·alpha`` for alpha > 1).
    """
    _check_imagenet(weights, alpha in (0.35, 0.5, 0.75, 1.0, 1.3, 1.4),
                    "needs alpha in 0.35, 0.5, 0.75, 1.0, 1.3, 1.4.")
    return build("mobilenet_v2", lambda x: mobilenet_v2_body(x, alpha),
                 keras_kwargs=dict(alpha=alpha), **builder_args(locals()))


# --- V3 -------------------------------------------------------------------------


def mobilenet_v3_body(x, blocks, alpha=1.0, minimalistic=False,
                      include_preprocessing=True):
    """Stem + inverted residuals (SE, hard-swish) + 1x1 conv to 6x the last width."""
    swish = "relu" if minimalistic else "hard_swish"
    if include_preprocessing:
        x = keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="rescaling")(x)
    x = conv_bn(x, 16, 3, 2, bn_momentum=0.999, name="conv")
    x = activation_layer(swish, "conv_act")(x)
    for block_id, (expansion, filters, kernel, stride, se, hard) in enumerate(blocks):
        in_filters = x.shape[-1]
        expanded = make_divisible(in_filters * expansion)
        x = inverted_residual(
            x, make_divisible(filters * alpha),
            expanded_filters=expanded if block_id else None,
            kernel_size=3 if minimalistic else kernel, strides=stride,
            activation=swish if hard else "relu",
            se_filters=make_divisible(expanded * 0.25) if se and not minimalistic else 0,
            se_gate="hard_sigmoid", bn_momentum=0.999, names=V3_NAMES,
            name=f"expanded_conv_{block_id}_" if block_id else "expanded_conv_")
    x = conv_bn(x, make_divisible(x.shape[-1] * 6), 1, bn_momentum=0.999, name="conv_1")
    return activation_layer(swish, "conv_1_act")(x)


def mobilenet_v3_head(last_point, activation, dropout_rate):
    """Pool -> 1x1 conv (bias) -> act -> dropout -> 1x1 conv logits -> flatten."""
    def head(x, classes, classifier_activation):
        x = keras.layers.GlobalAveragePooling2D(keepdims=True, name="avg_pool")(x)
        x = keras.layers.Conv2D(last_point, 1, padding="same", name="conv_2")(x)
        x = activation_layer(activation, "conv_2_act")(x)
        if dropout_rate > 0:
            x = keras.layers.Dropout(dropout_rate, name="dropout")(x)
        x = keras.layers.Conv2D(classes, 1, padding="same", name="logits")(x)
        x = keras.layers.Flatten(name="flatten")(x)
        return keras.layers.Activation(classifier_activation, name="predictions")(x)
    return head


def _mobilenet_v3(size, args):
    alpha, minimalistic = args["alpha"], args["minimalistic"]
    _check_imagenet(args["weights"], alpha == 1.0 or (alpha == 0.75 and not minimalistic),
                    "needs alpha 0.75 or 1.0 (1.0 only when minimalistic).")
    last_point = V3_LAST_POINT[size]
    if alpha > 1.0:
        last_point = make_divisible(last_point * alpha)
    blocks = V3_SMALL if size == "small" else V3_LARGE

    def body(x):
        return mobilenet_v3_body(x, blocks, alpha, minimalistic,
                                 args["include_preprocessing"])

    head = mobilenet_v3_head(last_point, "relu" if minimalistic else "hard_swish",
                             args["dropout_rate"])
    return build(f"mobilenet_v3_{size}", body, head=head,
                 keras_kwargs=dict(alpha=alpha, minimalistic=minimalistic),
                 **builder_args(args))


def _register_v3(size, num_params, stages):
    return register(
        f"mobilenet_v3_{size}", task="classification", family="mobilenet", year=2019,
        paper=V3_PAPER, key_idea="NAS-found inverted residuals + SE + hard-swish",
        default_size=224, min_size=32, num_params=num_params, params_convention="keras",
        params_source=f"keras.applications.MobileNetV3{size.title()} (alpha=1), "
                      "count_params()",
        stage_outputs=stages, keras_application=f"MobileNetV3{size.title()}",
        preprocessing="none")


_V3_DOC = """MobileNetV3-{size}, Howard et al. 2019, "Searching for MobileNetV3".

    Input ``(H, W, 3)``, H, W >= 32 (224 by default), raw pixels in ``[0, 255]``
    (rescaled to ``[-1, 1]`` inside when ``include_preprocessing``). Output
    ``(N, classes)`` or features ``(N, H/32, W/32, {features})``. ``alpha`` scales
    the block widths (ImageNet weights: 0.75 or 1.0); ``minimalistic`` uses 3x3
    kernels, ReLU and no SE; ``dropout_rate`` comes before the logits.
    """


@_register_v3("small", 2_554_968, {4: "expanded_conv_1_expand_act",
                                   8: "expanded_conv_3_expand_act",
                                   16: "expanded_conv_8_expand_act", 32: "conv_1_act"})
def MobileNetV3Small(include_top=True, weights=None, input_tensor=None, input_shape=None,
                     pooling=None, classes=1000, classifier_activation="softmax",
                     name=None, alpha=1.0, minimalistic=False, include_preprocessing=True,
                     dropout_rate=0.2):
    return _mobilenet_v3("small", locals())


@_register_v3("large", 5_507_432, {4: "expanded_conv_3_expand_act",
                                   8: "expanded_conv_6_expand_act",
                                   16: "expanded_conv_12_expand_act", 32: "conv_1_act"})
def MobileNetV3Large(include_top=True, weights=None, input_tensor=None, input_shape=None,
                     pooling=None, classes=1000, classifier_activation="softmax",
                     name=None, alpha=1.0, minimalistic=False, include_preprocessing=True,
                     dropout_rate=0.2):
    return _mobilenet_v3("large", locals())


MobileNetV3Small.__doc__ = _V3_DOC.format(size="Small", features=576)
MobileNetV3Large.__doc__ = _V3_DOC.format(size="Large", features=960)
