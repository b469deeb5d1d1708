"""EfficientNet (Tan & Le, 2019, "EfficientNet: Rethinking Model Scaling for
Convolutional Neural Networks"): one MBConv baseline (B0, found by architecture
search) scaled in width, depth and resolution together by compound coefficients.

B0…B7 keep keras.applications' layer layout (its Rescaling + Normalization
preprocessing inside the model included), so its ImageNet weights load. One generic
function, :func:`efficientnet`, builds every variant from its coefficients; the
block arguments (SE ratio, activation) stay parameters so that variants without SE
or with other activations reuse it.
"""

import math

import keras

from kvision.blocks.conv import activation_layer
from kvision.blocks.mobile import (EFFICIENTNET_NAMES, conv_bn, correct_pad,
                                   inverted_residual, make_divisible)
from kvision.models._builder import build, builder_args
from kvision.registry import register

PAPER = "EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks"

# The B0 baseline (paper Table 1), one row per stage: kernel, repeats, input and
# output filters, expansion ratio, first stride, SE ratio.
BLOCKS = tuple(
    dict(kernel_size=k, repeats=r, filters_in=i, filters_out=o, expand_ratio=e,
         strides=s, se_ratio=0.25)
    for k, r, i, o, e, s in ((3, 1, 32, 16, 1, 1), (3, 2, 16, 24, 6, 2),
                             (5, 2, 24, 40, 6, 2), (3, 3, 40, 80, 6, 2),
                             (5, 3, 80, 112, 6, 1), (5, 4, 112, 192, 6, 2),
                             (3, 1, 192, 320, 6, 1)))

# (width, depth, resolution, dropout) of B0…B7 (paper §4; keras.applications).
COEFFICIENTS = {0: (1.0, 1.0, 224, 0.2), 1: (1.0, 1.1, 240, 0.2), 2: (1.1, 1.2, 260, 0.3),
                3: (1.2, 1.4, 300, 0.3), 4: (1.4, 1.8, 380, 0.4), 5: (1.6, 2.2, 456, 0.4),
                6: (1.8, 2.6, 528, 0.5), 7: (2.0, 3.1, 600, 0.5)}

# keras.applications' initializers: He-like fan-out for convolutions, a uniform
# fan-out one for the classifier. Configs, not instances, so that every layer gets
# its own (differently seeded) initializer.
CONV_INITIALIZER = {"class_name": "VarianceScaling",
                    "config": {"scale": 2.0, "mode": "fan_out",
                               "distribution": "truncated_normal"}}
DENSE_INITIALIZER = {"class_name": "VarianceScaling",
                     "config": {"scale": 1.0 / 3.0, "mode": "fan_out",
                                "distribution": "uniform"}}
IMAGENET_STDDEV_RGB = (0.229, 0.224, 0.225)


def round_filters(filters, width, divisor=8):
    """Channels scaled by ``width``, rounded to a multiple of ``divisor``."""
    return make_divisible(filters * width, divisor)


def round_repeats(repeats, depth):
    """Blocks per stage scaled by ``depth``, rounded up."""
    return int(math.ceil(depth * repeats))


def preprocessing(x, imagenet):
    """[0, 255] pixels -> ImageNet-standardized, inside the model as in keras.

    The Normalization statistics come with the weights; keras' ImageNet files hold
    the standard deviations where variances belong, so with ImageNet weights one
    more Rescaling divides by their square roots (keras.applications' own fix).
    """
    x = keras.layers.Rescaling(1.0 / 255.0, name="rescaling")(x)
    x = keras.layers.Normalization(axis=-1, name="normalization")(x)
    if imagenet:
        x = keras.layers.Rescaling([1.0 / math.sqrt(s) for s in IMAGENET_STDDEV_RGB],
                                   name="imagenet_std_rescaling")(x)
    return x


def efficientnet_body(x, width, depth, *, imagenet=False, blocks=BLOCKS,
                      activation="swish", drop_connect_rate=0.2):
    """Stem, the MBConv stages scaled by ``width``/``depth``, 1x1 head conv.

    ``(N, H, W, 3) -> (N, H/32, W/32, round_filters(1280))``. Drop-connect grows
    linearly from 0 to ``drop_connect_rate`` over the blocks.
    """
    x = preprocessing(x, imagenet)
    x = keras.layers.ZeroPadding2D(correct_pad(x, 3), name="stem_conv_pad")(x)
    x = conv_bn(x, round_filters(32, width), 3, 2, padding="valid",
                initializer=CONV_INITIALIZER, name="stem_conv", bn_name="stem_bn")
    x = activation_layer(activation, "stem_activation")(x)
    total = sum(round_repeats(args["repeats"], depth) for args in blocks)
    index = 0
    for stage, args in enumerate(blocks, start=1):
        filters = round_filters(args["filters_out"], width)
        for j in range(round_repeats(args["repeats"], depth)):
            x = mbconv(x, filters, args, strides=args["strides"] if j == 0 else 1,
                       activation=activation,
                       drop_rate=drop_connect_rate * index / total,
                       name=f"block{stage}{chr(ord('a') + j)}_")
            index += 1
    x = conv_bn(x, round_filters(1280, width), 1, initializer=CONV_INITIALIZER,
                name="top_conv", bn_name="top_bn")
    return activation_layer(activation, "top_activation")(x)


def mbconv(x, filters, args, *, strides, activation, drop_rate, name):
    """One MBConv block: the shared inverted residual with EfficientNet's options.

    The SE width is a fraction of the block's *input* channels (not the expanded
    ones, unlike MobileNetV3); ``se_ratio`` 0 means no SE.
    """
    filters_in = x.shape[-1]
    expand, se_ratio = args["expand_ratio"], args["se_ratio"]
    return inverted_residual(
        x, filters, expanded_filters=filters_in * expand if expand != 1 else None,
        kernel_size=args["kernel_size"], strides=strides, activation=activation,
        se_filters=max(1, int(filters_in * se_ratio)) if 0 < se_ratio <= 1 else 0,
        se_activation=activation, se_gate="sigmoid", se_reshape=True,
        drop_rate=drop_rate, id_skip=args.get("id_skip", True), shortcut_first=False,
        initializer=CONV_INITIALIZER, names=EFFICIENTNET_NAMES, name=name)


def efficientnet_head(dropout):
    """Average pool -> dropout -> Dense, with keras' classifier initializer."""
    def head(x, classes, classifier_activation):
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
        if dropout > 0:
            x = keras.layers.Dropout(dropout, name="top_dropout")(x)
        return keras.layers.Dense(classes, activation=classifier_activation,
                                  kernel_initializer=DENSE_INITIALIZER,
                                  name="predictions")(x)
    return head


def efficientnet(width, depth, dropout, registry_name, args, **body_kwargs):
    """Any EfficientNet from its compound coefficients (the resolution is the
    registry's ``default_size``); ``body_kwargs`` go to :func:`efficientnet_body`."""
    imagenet = args["weights"] == "imagenet"

    def body(x):
        return efficientnet_body(x, width, depth, imagenet=imagenet, **body_kwargs)

    return build(registry_name, body, head=efficientnet_head(dropout),
                 **builder_args(args))


def _stage_outputs(depth):
    """Last layer per stride: stages 2, 3, 5 end at strides 4, 8, 16 (each with a
    residual sum, having >= 2 blocks), the head conv's activation at 32."""
    def last(stage):
        repeats = round_repeats(BLOCKS[stage - 1]["repeats"], depth)
        return f"block{stage}{chr(ord('a') + repeats - 1)}_add"
    return {4: last(2), 8: last(3), 16: last(5), 32: "top_activation"}


_DOC = """EfficientNet-B{b}, Tan & Le 2019 ("EfficientNet: Rethinking Model Scaling
    for Convolutional Neural Networks"): width x{width}, depth x{depth}.

    Input ``({size}, {size}, 3)`` by default (any size >= 32), raw pixels in
    ``[0, 255]`` (Rescaling + Normalization are inside the model). Output
    ``(N, classes)`` after dropout {dropout}, or features ``(N, H/32, W/32,
    {features})``.
    """


def _make(b, num_params):
    width, depth, size, dropout = COEFFICIENTS[b]
    registry_name = f"efficientnet_b{b}"

    def builder(include_top=True, weights=None, input_tensor=None, input_shape=None,
                pooling=None, classes=1000, classifier_activation="softmax", name=None):
        return efficientnet(width, depth, dropout, registry_name, locals())

    builder.__name__ = builder.__qualname__ = f"EfficientNetB{b}"
    builder.__doc__ = _DOC.format(b=b, width=width, depth=depth, size=size,
                                  dropout=dropout, features=round_filters(1280, width))
    return register(
        registry_name, task="classification", family="efficientnet", year=2019,
        paper=PAPER, key_idea="compound scaling of width, depth and resolution",
        default_size=size, min_size=32, num_params=num_params, params_convention="keras",
        params_source=f"keras.applications.EfficientNetB{b}, count_params() "
                      "(Normalization statistics included)",
        stage_outputs=_stage_outputs(depth),
        keras_application=f"EfficientNetB{b}", preprocessing="none")(builder)


EfficientNetB0 = _make(0, 5_330_571)
EfficientNetB1 = _make(1, 7_856_239)
EfficientNetB2 = _make(2, 9_177_569)
EfficientNetB3 = _make(3, 12_320_535)
EfficientNetB4 = _make(4, 19_466_823)
EfficientNetB5 = _make(5, 30_562_527)
EfficientNetB6 = _make(6, 43_265_143)
EfficientNetB7 = _make(7, 66_658_687)
