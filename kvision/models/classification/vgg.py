"""VGG (Simonyan & Zisserman, 2014, "Very Deep Convolutional Networks for
Large-Scale Image Recognition"): stacks of 3x3 convolutions, five max-pools, three FC.

VGG16/VGG19 keep keras.applications' layer layout, so its ImageNet weights load.
The ``_bn`` variants put BatchNorm after every convolution (torchvision's layout):
``weights=`` takes torchvision's ``vgg*_bn`` ``.pth`` files, or ``"imagenet"`` for
its published ones. kvision's top flattens the last map without torchvision's 7x7
adaptive pool, so with ``include_top`` those weights fit 224x224 inputs only.
"""

import keras

from kvision.models._builder import build, builder_args
from kvision.registry import ilsvrc_entry, published, register
from kvision.weights_torch import torchvision_weights

# Convolutions per block, for the configurations A (11), B (13), D (16), E (19).
DEPTHS = {11: (1, 1, 2, 2, 2), 13: (2, 2, 2, 2, 2), 16: (2, 2, 3, 3, 3),
          19: (2, 2, 4, 4, 4)}
WIDTHS = (64, 128, 256, 512, 512)
PAPER = "Very Deep Convolutional Networks for Large-Scale Image Recognition"


def vgg_body(x, depths, batch_norm=False):
    """The five conv blocks; ``(N, H, W, 3) -> (N, H/32, W/32, 512)``."""
    for block, (depth, width) in enumerate(zip(depths, WIDTHS), start=1):
        for i in range(1, depth + 1):
            name = f"block{block}_conv{i}"
            x = keras.layers.Conv2D(width, 3, padding="same",
                                    activation=None if batch_norm else "relu",
                                    name=name)(x)
            if batch_norm:
                x = keras.layers.BatchNormalization(epsilon=1e-5, name=f"{name}_bn")(x)
                x = keras.layers.ReLU(name=f"{name}_relu")(x)
        x = keras.layers.MaxPooling2D(2, strides=2, name=f"block{block}_pool")(x)
    return x


def vgg_head(x, classes, classifier_activation):
    """Flatten -> FC4096 -> FC4096 -> classes, as keras.applications' VGG16."""
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(4096, activation="relu", name="fc1")(x)
    x = keras.layers.Dense(4096, activation="relu", name="fc2")(x)
    return keras.layers.Dense(classes, activation=classifier_activation,
                              name="predictions")(x)


def _vgg(depth, batch_norm, registry_name, args):
    def body(x):
        return vgg_body(x, DEPTHS[depth], batch_norm)

    return build(registry_name, body, head=vgg_head, fixed_size=True,
                 **builder_args(args))


def _stages(depth, batch_norm):
    last = DEPTHS[depth]
    suffix = "_relu" if batch_norm else ""
    return {4: f"block3_conv{last[2]}{suffix}", 8: f"block4_conv{last[3]}{suffix}",
            16: f"block5_conv{last[4]}{suffix}", 32: "block5_pool"}


# torchvision's ImageNet checkpoints of the BatchNorm VGGs: file, acc@1, acc@5.
TORCHVISION = {"vgg11_bn": ("vgg11_bn-6002323d.pth", 70.370, 89.810),
               "vgg13_bn": ("vgg13_bn-abd245e5.pth", 71.586, 90.374),
               "vgg16_bn": ("vgg16_bn-6c64b313.pth", 73.360, 91.516),
               "vgg19_bn": ("vgg19_bn-c79401a0.pth", 74.218, 91.842)}


# Published figures of the VGGs that have neither a keras.applications counterpart
# nor a torchvision checkpoint here, and VGG's ILSVRC entry.
PUBLISHED = {
    "vgg11": dict(accuracy=published(69.020, 88.628, "torchvision VGG11_Weights."
                                     "IMAGENET1K_V1 metadata (acc@1, acc@5)")),
    "vgg13": dict(accuracy=published(69.928, 89.246, "torchvision VGG13_Weights."
                                     "IMAGENET1K_V1 metadata (acc@1, acc@5)")),
    "vgg16": dict(ilsvrc=ilsvrc_entry(2014, 7.3, "VGG, 2nd place: 7 nets",
                                      "Simonyan & Zisserman 2014, Table 7")),
}


def _register(depth, batch_norm, num_params, keras_app=None):
    name = f"vgg{depth}" + ("_bn" if batch_norm else "")
    torch = (torchvision_weights("vgg", *TORCHVISION[name]) if name in TORCHVISION
             else dict(preprocessing="caffe" if keras_app else "none"))
    source = (f"keras.applications.{keras_app}, count_params()" if keras_app
              else f"torchvision {name}, trainable parameters")
    return register(
        name, task="classification", family="vgg", year=2014, paper=PAPER,
        key_idea="depth from stacked 3x3 convs" + (" + BatchNorm" if batch_norm else ""),
        default_size=224, min_size=32, num_params=num_params,
        params_convention="keras" if keras_app else "trainable",
        params_source=source, stage_outputs=_stages(depth, batch_norm),
        keras_application=keras_app, **torch, **PUBLISHED.get(name, {}))


_DOC = """VGG-{depth}{bn} (configuration {config} of the paper).

    Input ``(224, 224, 3)`` (any size >= 32 with ``include_top=False``; the Flatten
    head fixes the size otherwise); output ``(N, classes)`` or features
    ``(N, H/32, W/32, 512)``. keras.applications' preprocessing ("caffe") is not
    inside the model.
    """


def _make(depth, batch_norm, num_params, keras_app=None):
    builder_name = f"VGG{depth}" + ("BN" if batch_norm else "")

    def builder(include_top=True, weights=None, input_tensor=None, input_shape=None,
                pooling=None, classes=1000, classifier_activation="softmax",
                name=None):
        registry_name = f"vgg{depth}" + ("_bn" if batch_norm else "")
        return _vgg(depth, batch_norm, registry_name, locals())

    builder.__name__ = builder.__qualname__ = builder_name
    builder.__doc__ = _DOC.format(depth=depth, bn=" with BatchNorm" if batch_norm else "",
                                  config={11: "A", 13: "B", 16: "D", 19: "E"}[depth])
    return _register(depth, batch_norm, num_params, keras_app)(builder)


VGG11 = _make(11, False, 132_863_336)
VGG13 = _make(13, False, 133_047_848)
VGG16 = _make(16, False, 138_357_544, "VGG16")
VGG19 = _make(19, False, 143_667_240, "VGG19")
VGG11BN = _make(11, True, 132_868_840)
VGG13BN = _make(13, True, 133_053_736)
VGG16BN = _make(16, True, 138_365_992)
VGG19BN = _make(19, True, 143_678_248)
