"""Inception-v3 (Szegedy et al., 2016, "Rethinking the Inception Architecture for
Computer Vision"): factorized convolutions (5x5 -> two 3x3, nxn -> 1xn + nx1),
grid reductions by parallel stride-2 branches, an auxiliary classifier.

The layout is keras.applications' ``InceptionV3`` exactly (BatchNorm without gamma,
the same branch and concatenation order), so its ImageNet weights load. Layer names
follow TF-slim/torchvision (``mixed0_branch5x5_2_conv``); the module outputs keep
keras' names ``mixed0`` … ``mixed10``.
"""

import keras

from kvision.blocks.inception import (basic_conv, chain, conv_chain,
                                      inception_module, keras_inception_stem, pooled,
                                      require_side, split_1x3_3x1)
from kvision.models._builder import build, builder_args
from kvision.models.classification.googlenet import inference_model  # noqa: F401
from kvision.registry import register

# TF-slim's training weights the auxiliary loss by 0.4.
LOSS_WEIGHTS = {"predictions": 1.0, "aux": 0.4}
AUX_MIN_SIZE = 299  # mixed7 (17x17 at 299) must be >= 17 for pool 5/3 + 5x5 conv


def _convs(*specs, name):
    # keras.applications' Inception-v3 BatchNorms have no gamma (scale=False).
    return conv_chain(*specs, name=name, scale=False)


def _pool(kind, *specs, name, **kwargs):
    return pooled(kind, *specs, name=name, scale=False, **kwargs)


def module_35(x, pool_filters, name):
    """mixed0-2 at 35x35: 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avg-pool-1x1."""
    return inception_module(x, [
        _convs((64, 1), name=f"{name}_branch1x1"),
        _convs((48, 1), (64, 5), name=f"{name}_branch5x5"),
        _convs((64, 1), (96, 3), (96, 3), name=f"{name}_branch3x3dbl"),
        _pool("avg", (pool_filters, 1), name=f"{name}_branch_pool"),
    ], name=name)


def reduction_35(x, name="mixed3"):
    """mixed3, 35 -> 17: 3x3/2 | 1x1-3x3-3x3/2 | max-pool/2."""
    return inception_module(x, [
        _convs((384, 3, 2, "valid"), name=f"{name}_branch3x3"),
        _convs((64, 1), (96, 3), (96, 3, 2, "valid"), name=f"{name}_branch3x3dbl"),
        _pool("max", strides=2, padding="valid", name=f"{name}_branch_pool"),
    ], name=name)


def module_17(x, width, name):
    """mixed4-7 at 17x17, 7x7 convolutions factorized into 1x7 and 7x1."""
    return inception_module(x, [
        _convs((192, 1), name=f"{name}_branch1x1"),
        _convs((width, 1), (width, (1, 7)), (192, (7, 1)), name=f"{name}_branch7x7"),
        _convs((width, 1), (width, (7, 1)), (width, (1, 7)), (width, (7, 1)),
               (192, (1, 7)), name=f"{name}_branch7x7dbl"),
        _pool("avg", (192, 1), name=f"{name}_branch_pool"),
    ], name=name)


def reduction_17(x, name="mixed8"):
    """mixed8, 17 -> 8: 1x1-3x3/2 | 1x1-1x7-7x1-3x3/2 | max-pool/2."""
    return inception_module(x, [
        _convs((192, 1), (320, 3, 2, "valid"), name=f"{name}_branch3x3"),
        _convs((192, 1), (192, (1, 7)), (192, (7, 1)), (192, 3, 2, "valid"),
               name=f"{name}_branch7x7x3"),
        _pool("max", strides=2, padding="valid", name=f"{name}_branch_pool"),
    ], name=name)


def module_8(x, name):
    """mixed9-10 at 8x8, with expanded (1x3 | 3x1) filter banks."""
    return inception_module(x, [
        _convs((320, 1), name=f"{name}_branch1x1"),
        chain(_convs((384, 1), name=f"{name}_branch3x3_1"),
              split_1x3_3x1(384, name=f"{name}_branch3x3_2", scale=False)),
        chain(_convs((448, 1), (384, 3), name=f"{name}_branch3x3dbl"),
              split_1x3_3x1(384, name=f"{name}_branch3x3dbl_3",
                            scale=False)),
        _pool("avg", (192, 1), name=f"{name}_branch_pool"),
    ], name=name)


def aux_classifier(x, classes, classifier_activation, name="aux"):
    """torchvision's InceptionAux on mixed7: avg-pool 5/3, 1x1 conv 128, 5x5 conv 768,
    global pool, FC. ``(N, 17, 17, 768) -> (N, classes)``."""
    require_side(x, 17, f"The Inception-v3 auxiliary classifier (aux_logits=True) "
                        f"needs inputs of at least {AUX_MIN_SIZE}x{AUX_MIN_SIZE} "
                        f"pixels (a 17x17 mixed7 map)")
    x = keras.layers.AveragePooling2D(5, strides=3, name=f"{name}_pool")(x)
    x = basic_conv(x, 128, 1, scale=False, name=f"{name}_conv0")
    x = basic_conv(x, 768, 5, padding="valid", scale=False, name=f"{name}_conv1")
    x = keras.layers.GlobalAveragePooling2D(name=f"{name}_avg_pool")(x)
    return keras.layers.Dense(classes, activation=classifier_activation, name=name)(x)


def inception_v3_body(x, aux_head=None):
    """``(N, H, W, 3) -> (N, 8, 8, 2048)`` at 299; with ``aux_head(mixed7)``,
    returns ``(features, [aux])``."""
    x = keras_inception_stem(x)
    for i, pool_filters in enumerate((32, 64, 64)):
        x = module_35(x, pool_filters, f"mixed{i}")
    x = reduction_35(x)
    for i, width in enumerate((128, 160, 160, 192), start=4):
        x = module_17(x, width, f"mixed{i}")
    aux = [aux_head(x)] if aux_head is not None else []
    x = reduction_17(x)
    for i in (9, 10):
        x = module_8(x, f"mixed{i}")
    return (x, aux) if aux_head is not None else x


def _load_main_weights(model, args):
    """Weights of the aux-free network (keras layout) into an aux model, by name."""
    args = dict(args, aux_logits=False, input_tensor=None, name=None,
                input_shape=model.input_shape[1:])
    main = InceptionV3(**args)
    for layer in main.layers:
        if layer.weights:
            model.get_layer(layer.name).set_weights(layer.get_weights())
    return model


@register("inception_v3", task="classification", family="inception", year=2016,
          paper="Rethinking the Inception Architecture for Computer Vision",
          key_idea="factorized convolutions, efficient grid reduction",
          default_size=299, min_size=75, num_params=23_851_784,
          params_convention="keras",
          params_source="keras.applications.InceptionV3, count_params()",
          stage_outputs={4: "conv2d_4a_act", 8: "mixed2", 16: "mixed7", 32: "mixed10"},
          keras_application="InceptionV3", preprocessing="tf")
def InceptionV3(include_top=True, weights=None, input_tensor=None, input_shape=None,
                pooling=None, classes=1000, classifier_activation="softmax",
                name=None, aux_logits=False):
    """Inception-v3 (Szegedy et al., 2016, "Rethinking the Inception Architecture
    for Computer Vision"), keras.applications' layout and weights.

    Input ``(299, 299, 3)`` by default (any size >= 75), scaled to ``[-1, 1]``
    (keras' ``inception_v3.preprocess_input``, not inside the model); output
    ``(N, classes)`` or features ``(N, H', W', 2048)`` (8x8 at 299).

    ``aux_logits=True`` (with ``include_top``, inputs >= 299) adds torchvision's
    auxiliary classifier on mixed7 as a second output ``aux``; train with
    ``loss_weights=LOSS_WEIGHTS`` and predict with :func:`inference_model`.
    ``weights`` then load into the main network; the auxiliary head starts random
    (keras.applications has none).
    """
    args = dict(builder_args(locals()), aux_logits=aux_logits)
    if aux_logits and include_top and weights is not None:
        return _load_main_weights(InceptionV3(**dict(args, weights=None)), args)

    def aux_head(features):
        return aux_classifier(features, classes, classifier_activation)

    def body(x):
        return inception_v3_body(x, aux_head if aux_logits and include_top else None)

    return build("inception_v3", body, **builder_args(args))
