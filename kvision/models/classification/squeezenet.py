"""SqueezeNet (Iandola et al., 2016, "SqueezeNet: AlexNet-level accuracy with 50x
fewer parameters and <0.5MB model size"): fire modules (a 1x1 squeeze feeding
parallel 1x1 and 3x3 expands) and a convolutional classifier, no FC layer.

Versions 1.0 (the paper) and 1.1 (3x3 first conv, earlier pools: 2.4x less
computation) in torchvision's layout; the max-pools round up (``ceil_mode``).
"""

import keras

from kvision.models._builder import build, builder_args
from kvision.blocks.pooling import max_pool_ceil
from kvision.registry import register
from kvision.weights_torch import torchvision_weights

PAPER = ("SqueezeNet: AlexNet-level accuracy with 50x fewer parameters and <0.5MB "
         "model size")

# Per version: first conv (filters, kernel), then the fire modules fire2..fire9 as
# (squeeze, expand) with expand filters on each of the 1x1 and 3x3 paths, and the
# fire modules after which a max-pool follows (besides the one after conv1).
VERSIONS = {
    "1_0": dict(conv1=(96, 7), pools_after=(4, 8)),
    "1_1": dict(conv1=(64, 3), pools_after=(3, 5)),
}
FIRES = ((16, 64), (16, 64), (32, 128), (32, 128), (48, 192), (48, 192), (64, 256),
         (64, 256))


def fire_module(x, squeeze, expand, *, name):
    """Squeeze 1x1 -> [expand 1x1, expand 3x3] concatenated, ReLU after each conv.

    Shapes: ``(N, H, W, C) -> (N, H, W, 2 * expand)``.
    """
    s = keras.layers.Conv2D(squeeze, 1, activation="relu", name=f"{name}_squeeze")(x)
    e1 = keras.layers.Conv2D(expand, 1, activation="relu", name=f"{name}_expand1x1")(s)
    e3 = keras.layers.Conv2D(expand, 3, padding="same", activation="relu",
                             name=f"{name}_expand3x3")(s)
    return keras.layers.Concatenate(name=f"{name}_concat")([e1, e3])


def squeezenet_body(x, version):
    """conv1 (stride 2), pools and fire2..fire9; ``-> (N, ~H/16, ~W/16, 512)``."""
    config = VERSIONS[version]
    filters, kernel = config["conv1"]
    x = keras.layers.Conv2D(filters, kernel, strides=2, activation="relu",
                            name="conv1")(x)
    x = max_pool_ceil(x, name="pool1")
    for i, (squeeze, expand) in enumerate(FIRES, start=2):
        x = fire_module(x, squeeze, expand, name=f"fire{i}")
        if i in config["pools_after"]:
            x = max_pool_ceil(x, name=f"pool{i}")
    return x


def squeezenet_head(x, classes, classifier_activation):
    """Dropout -> 1x1 conv to classes -> ReLU -> global average pool -> activation."""
    x = keras.layers.Dropout(0.5, name="dropout")(x)
    # torchvision initializes only this conv with N(0, 0.01): a small start keeps
    # the ReLU'd class maps from saturating the softmax.
    x = keras.layers.Conv2D(classes, 1, activation="relu", name="conv10",
                            kernel_initializer=keras.initializers.RandomNormal(
                                stddev=0.01))(x)
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    return keras.layers.Activation(classifier_activation, name="predictions")(x)


def _squeezenet(version, args):
    def body(x):
        return squeezenet_body(x, version)

    return build(f"squeezenet{version}", body, head=squeezenet_head,
                 **builder_args(args))


# torchvision's ImageNet checkpoints (IMAGENET1K_V1): file, acc@1, acc@5.
TORCHVISION = {"1_0": ("squeezenet1_0-b66bff10.pth", 58.092, 80.420),
               "1_1": ("squeezenet1_1-b8a52dc0.pth", 58.178, 80.624)}


def _register(version, num_params, min_size, stages):
    return register(
        f"squeezenet{version}", task="classification", family="squeezenet", year=2016,
        paper=PAPER, key_idea="fire modules: 1x1 squeeze, 1x1+3x3 expand",
        default_size=224, min_size=min_size, num_params=num_params,
        params_convention="trainable",
        params_source=f"torchvision squeezenet{version} (SqueezeNet{version.upper()}"
                      "_Weights num_params); no BatchNorm, so all parameters",
        stage_outputs=stages,
        **torchvision_weights("squeezenet", *TORCHVISION[version]))


@_register("1_0", 1_248_424, 21, {4: "fire4_concat", 8: "fire8_concat",
                                  16: "fire9_concat"})
def SqueezeNet1_0(include_top=True, weights=None, input_tensor=None, input_shape=None,
                  pooling=None, classes=1000, classifier_activation="softmax",
                  name=None):
    """SqueezeNet 1.0, the paper's network (1.25M parameters).

    Input ``(224, 224, 3)`` or any size >= 21; output ``(N, classes)`` or features
    ``(N, 13, 13, 512)`` at 224 (stride 16: the network has no stride-32 stage).
    """
    return _squeezenet("1_0", locals())


@_register("1_1", 1_235_496, 17, {4: "fire3_concat", 8: "fire5_concat",
                                  16: "fire9_concat"})
def SqueezeNet1_1(include_top=True, weights=None, input_tensor=None, input_shape=None,
                  pooling=None, classes=1000, classifier_activation="softmax",
                  name=None):
    """SqueezeNet 1.1: 3x3/2 64-filter conv1, pools after fire3 and fire5 (1.24M).

    Input ``(224, 224, 3)`` or any size >= 17; output ``(N, classes)`` or features
    ``(N, 13, 13, 512)`` at 224 (stride 16).
    """
    return _squeezenet("1_1", locals())
