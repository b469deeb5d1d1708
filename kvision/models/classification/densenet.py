"""DenseNet (Huang et al., 2017, "Densely Connected Convolutional Networks").

Inside a dense block every layer receives the feature maps of all earlier layers
(concatenated) and adds ``growth_rate`` new ones; transitions between the four
blocks compress the channels (DenseNet-BC: 1x1 bottlenecks, compression 0.5) and
halve the resolution. DenseNet121/169/201 keep keras.applications' layer layout, so
its ImageNet weights load.
"""

import keras

from kvision.blocks.conv import conv_bn_act
from kvision.blocks.dense import BN_EPSILON, bn_relu, dense_block, transition_block
from kvision.models._builder import build, builder_args
from kvision.registry import register

PAPER = "Densely Connected Convolutional Networks"
# Dense layers per block (Table 1 of the paper), by depth.
BLOCKS = {121: (6, 12, 24, 16), 169: (6, 12, 32, 32), 201: (6, 12, 48, 32)}


def densenet_body(x, blocks, growth_rate=32, compression=0.5):
    """Stem, four dense blocks with transitions, final BN-ReLU.

    ``(N, H, W, 3) -> (N, H/32, W/32, C)``; C is 1024 / 1664 / 1920 for
    DenseNet-121 / 169 / 201 with the defaults.
    """
    # The paper's stem has 2k filters: 64 for k = 32, keras.applications' value.
    x = conv_bn_act(x, 2 * growth_rate, 7, 2, padding=3, bn_epsilon=BN_EPSILON,
                    name="conv1", suffixes=("_conv", "_bn", "_relu"))
    x = keras.layers.ZeroPadding2D(1, name="pool1_pad")(x)
    x = keras.layers.MaxPooling2D(3, strides=2, name="pool1")(x)
    for stage, num_layers in enumerate(blocks, start=2):
        x = dense_block(x, num_layers, growth_rate, name=f"conv{stage}")
        if stage < len(blocks) + 1:
            x = transition_block(x, compression, name=f"pool{stage}")
    return bn_relu(x, "bn", "relu")


def _densenet(depth, args):
    growth_rate, compression = args["growth_rate"], args["compression"]
    if args["weights"] == "imagenet" and (growth_rate, compression) != (32, 0.5):
        raise ValueError(
            f"weights='imagenet' needs growth_rate=32 and compression=0.5 (the "
            f"trained DenseNet-{depth}); got {growth_rate} and {compression}."
        )

    def body(x):
        return densenet_body(x, BLOCKS[depth], growth_rate, compression)

    return build(f"densenet{depth}", body, **builder_args(args))


def _register(depth, num_params):
    return register(
        f"densenet{depth}", task="classification", family="densenet", year=2017,
        paper=PAPER, key_idea="dense connectivity (each layer sees all earlier maps)",
        default_size=224, min_size=32, num_params=num_params, params_convention="keras",
        params_source=f"keras.applications.DenseNet{depth}, count_params()",
        # The transition's 1x1 conv is the last cut point before its pooling halves
        # the map (kvision.features.stage_outputs), after the dense block's concat.
        stage_outputs={4: "pool2_conv", 8: "pool3_conv", 16: "pool4_conv", 32: "relu"},
        keras_application=f"DenseNet{depth}", preprocessing="torch")


@_register(121, 8_062_504)
def DenseNet121(include_top=True, weights=None, input_tensor=None, input_shape=None,
                pooling=None, classes=1000, classifier_activation="softmax", name=None,
                growth_rate=32, compression=0.5):
    """DenseNet-121 (blocks 6-12-24-16, growth rate 32).

    Input ``(224, 224, 3)`` by default (any size >= 32); output ``(N, classes)`` or
    features ``(N, H/32, W/32, 1024)``. ``growth_rate`` (k) and ``compression`` (θ)
    are the paper's knobs. keras.applications' preprocessing ("torch") is not
    inside the model.
    """
    return _densenet(121, locals())


@_register(169, 14_307_880)
def DenseNet169(include_top=True, weights=None, input_tensor=None, input_shape=None,
                pooling=None, classes=1000, classifier_activation="softmax", name=None,
                growth_rate=32, compression=0.5):
    """DenseNet-169 (blocks 6-12-32-32, growth rate 32).

    Input ``(224, 224, 3)`` by default (any size >= 32); output ``(N, classes)`` or
    features ``(N, H/32, W/32, 1664)``. ``growth_rate`` (k) and ``compression`` (θ)
    are the paper's knobs. keras.applications' preprocessing ("torch") is not
    inside the model.
    """
    return _densenet(169, locals())


@_register(201, 20_242_984)
def DenseNet201(include_top=True, weights=None, input_tensor=None, input_shape=None,
                pooling=None, classes=1000, classifier_activation="softmax", name=None,
                growth_rate=32, compression=0.5):
    """DenseNet-201 (blocks 6-12-48-32, growth rate 32).

    Input ``(224, 224, 3)`` by default (any size >= 32); output ``(N, classes)`` or
    features ``(N, H/32, W/32, 1920)``. ``growth_rate`` (k) and ``compression`` (θ)
    are the paper's knobs. keras.applications' preprocessing ("torch") is not
    inside the model.
    """
    return _densenet(201, locals())
