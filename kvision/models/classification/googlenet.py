"""GoogLeNet / Inception-v1 (Szegedy et al., 2014, "Going Deeper with Convolutions").

Nine Inception modules (parallel 1x1, 3x3, "5x5" and pool-projection branches,
concatenated) between a conv stem and a global-average-pool classifier, with two
optional auxiliary classifiers for training.

The layout is torchvision's ``googlenet``: every conv is BasicConv2d (conv without
bias -> BatchNorm eps 1e-3 -> ReLU, BatchNorm being a later addition to the paper's
network), dropout 0.2 before the classifier, and the "5x5" branch uses a **3x3**
kernel (torchvision's known deviation, pytorch/vision#906, kept so that the weights
layout and the 6,624,904 count match). Max-pools use "same" padding, which gives
torchvision's ``ceil_mode=True`` sizes (and windows) for even inputs such as 224.
"""

import keras

from kvision.blocks.inception import (basic_conv, conv_chain, inception_module,
                                      pooled, require_side)
from kvision.models._builder import build, builder_args
from kvision.registry import ilsvrc_entry, register
from kvision.weights_torch import torchvision_weights

# Module widths (1x1, 3x3 reduce, 3x3, "5x5" reduce, "5x5", pool proj): Table 1.
MODULES = {
    "inception3a": (64, 96, 128, 16, 32, 32),
    "inception3b": (128, 128, 192, 32, 96, 64),
    "inception4a": (192, 96, 208, 16, 48, 64),
    "inception4b": (160, 112, 224, 24, 64, 64),
    "inception4c": (128, 128, 256, 24, 64, 64),
    "inception4d": (112, 144, 288, 32, 64, 64),
    "inception4e": (256, 160, 320, 32, 128, 128),
    "inception5a": (256, 160, 320, 32, 128, 128),
    "inception5b": (384, 192, 384, 48, 128, 128),
}
# Max-pools (name, kernel) after these modules, and the auxiliary classifiers.
POOL_AFTER = {"inception3b": ("maxpool3", 3), "inception4e": ("maxpool4", 2)}
AUX_AFTER = {"inception4a": "aux1", "inception4d": "aux2"}
# Training loss weights of the paper (Section 6): auxiliary losses weighted by 0.3.
# Compile with one loss per output: ``loss={k: ... for k in LOSS_WEIGHTS}``.
LOSS_WEIGHTS = {"predictions": 1.0, "aux1": 0.3, "aux2": 0.3}
AUX_MIN_SIZE = 65  # inception4a (stride 16) must be >= 5x5 for the 5x5 aux pool


def googlenet_module(x, widths, name):
    """One Inception module: ``(N, H, W, C) -> (N, H, W, w1 + w3 + w5 + pool)``."""
    c1, c3r, c3, c5r, c5, pool = widths
    return inception_module(x, [
        conv_chain((c1, 1), name=f"{name}_branch1"),
        conv_chain((c3r, 1), (c3, 3), name=f"{name}_branch2"),
        conv_chain((c5r, 1), (c5, 3), name=f"{name}_branch3"),  # 3x3: torchvision
        pooled("max", (pool, 1), name=f"{name}_branch4"),
    ], name=name)


def aux_classifier(x, classes, classifier_activation, name):
    """Auxiliary head: avg-pool 5/3 -> 1x1 conv 128 -> FC 1024 -> dropout 0.7 -> FC.

    ``(N, 14, 14, C) -> (N, classes)`` at 224 input (the Flatten sees 4x4x128).
    """
    require_side(x, 5, f"GoogLeNet's auxiliary classifiers (aux_logits=True) need "
                       f"inputs of at least {AUX_MIN_SIZE}x{AUX_MIN_SIZE} pixels "
                       f"(a 5x5 average pool on the stride-16 map)")
    x = keras.layers.AveragePooling2D(5, strides=3, name=f"{name}_pool")(x)
    x = basic_conv(x, 128, 1, name=f"{name}_reduce")
    x = keras.layers.Flatten(name=f"{name}_flatten")(x)
    x = keras.layers.Dense(1024, activation="relu", name=f"{name}_fc1")(x)
    x = keras.layers.Dropout(0.7, name=f"{name}_dropout")(x)
    return keras.layers.Dense(classes, activation=classifier_activation, name=name)(x)


def googlenet_body(x, aux_head=None):
    """Stem and the nine modules: ``(N, H, W, 3) -> (N, H/32, W/32, 1024)``.

    ``aux_head(features, name)`` makes the auxiliary outputs after inception4a and
    4d; with it, returns ``(features, [aux1, aux2])``.
    """
    x = basic_conv(x, 64, 7, 2, padding=3, name="conv1")  # torchvision's padding=3
    x = keras.layers.MaxPooling2D(3, strides=2, padding="same", name="maxpool1")(x)
    x = basic_conv(x, 64, 1, name="conv2")
    x = basic_conv(x, 192, 3, name="conv3")
    x = keras.layers.MaxPooling2D(3, strides=2, padding="same", name="maxpool2")(x)
    aux = []
    for name, widths in MODULES.items():
        x = googlenet_module(x, widths, name)
        if aux_head is not None and name in AUX_AFTER:
            aux.append(aux_head(x, AUX_AFTER[name]))
        if name in POOL_AFTER:
            pool_name, size = POOL_AFTER[name]
            x = keras.layers.MaxPooling2D(size, strides=2, padding="same",
                                          name=pool_name)(x)
    return (x, aux) if aux_head is not None else x


def inference_model(model):
    """The same network (same weights, shared) with its main output only.

    For a model trained with auxiliary classifiers: ``inference_model(model)``
    predicts with ``predictions`` alone. A single-output model comes back as is.
    """
    if len(model.outputs) == 1:
        return model
    return keras.Model(model.inputs, model.outputs[0], name=f"{model.name}_inference")


@register("googlenet", task="classification", family="inception", year=2014,
          paper="Going Deeper with Convolutions",
          key_idea="Inception modules: parallel multi-scale branches",
          ilsvrc=ilsvrc_entry(2014, 6.67, "GoogLeNet, winner: 7 models, 144 crops",
                              "Szegedy et al. 2014, Tables 2-3"),
          default_size=224, min_size=32, num_params=6_624_904,
          params_convention="trainable",
          params_source="torchvision googlenet(aux_logits=False), trainable "
                        "parameters (13,004,888 with aux_logits=True)",
          stage_outputs={4: "conv3_act", 8: "inception3b", 16: "inception4e",
                         32: "inception5b"},
          # torchvision runs its published weights with transform_input=True, which
          # turns its ImageNet normalization into x / 127.5 - 1: keras' "tf" mode.
          **dict(torchvision_weights("googlenet", "googlenet-1378be20.pth", 69.778,
                                     89.530), preprocessing="tf"))
def GoogLeNet(include_top=True, weights=None, input_tensor=None, input_shape=None,
              pooling=None, classes=1000, classifier_activation="softmax", name=None,
              aux_logits=False):
    """GoogLeNet (Szegedy et al., 2014, "Going Deeper with Convolutions").

    Input ``(224, 224, 3)`` by default (any size >= 32); output ``(N, classes)`` or
    features ``(N, H/32, W/32, 1024)``. torchvision's layout: BatchNorm after every
    conv, and its 3x3 (not 5x5) kernel in the "5x5" branch (6,624,904 trainable
    parameters).

    With ``aux_logits=True`` and ``include_top`` the model has three outputs,
    ``predictions``, ``aux1`` and ``aux2`` (auxiliary classifiers after inception4a
    and 4d; 13,004,888 parameters at 224); train with
    ``loss_weights=LOSS_WEIGHTS`` and predict with :func:`inference_model`. Their
    Flatten needs a fixed input size of at least 65x65.
    """
    def aux_head(x, aux_name):
        return aux_classifier(x, classes, classifier_activation, aux_name)

    def body(x):
        return googlenet_body(x, aux_head if aux_logits and include_top else None)

    return build("googlenet", body, dropout=0.2, fixed_size=aux_logits,
                 **builder_args(locals()))
