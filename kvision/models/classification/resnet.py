"""ResNet (He et al., 2015, "Deep Residual Learning for Image Recognition") and
ResNet v2 (He et al., 2016, "Identity Mappings in Deep Residual Networks").

Residual blocks learn ``F(x)`` and output ``x + F(x)``, so very deep stacks train.
Three layouts:

- ``"keras"``: keras.applications' ResNet50/101/152 (the paper's Caffe models):
  stride in the first 1x1, convs with bias, BatchNorm epsilon 1.001e-5; its
  ImageNet weights load.
- ``"torchvision"``: torchvision's (timm's) ResNet: stride in the 3x3 ("v1.5"), no
  conv bias, epsilon 1e-5; ResNet-18/34 (basic blocks), and the base of ResNeXt
  and SE-Net. ResNet-18/34 and ResNeXt take torchvision's ``.pth`` files as
  ``weights=``, and ``"imagenet"`` for its published ones (``torch`` preprocessing).
- ``"keras_v2"``: keras.applications' ResNet50V2/101V2/152V2, pre-activation
  blocks; its ImageNet weights load.

Layer names are keras.applications' (``conv1_conv``, ``conv2_block3_out``…) in
every layout.
"""

import keras

from kvision.blocks.conv import conv_bn_act
from kvision.blocks.residual import (SUFFIXES, basic_block, bottleneck_block,
                                     preact_residual_stage, residual_stage)
from kvision.models._builder import build, builder_args
from kvision.registry import ilsvrc_entry, register
from kvision.weights_torch import torchvision_weights

PAPER = "Deep Residual Learning for Image Recognition"
PAPER_V2 = "Identity Mappings in Deep Residual Networks"
# Blocks per stage (conv2..conv5), Table 1 of the paper.
DEPTHS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3),
          152: (3, 8, 36, 3)}
FILTERS = (64, 128, 256, 512)
LAYOUTS = {
    "keras": dict(use_bias=True, bn_epsilon=1.001e-5, stride_in_1x1=True),
    "torchvision": dict(use_bias=False, bn_epsilon=1e-5, stride_in_1x1=False),
    "keras_v2": dict(use_bias=True, bn_epsilon=1.001e-5),
}


def resnet_stem(x, *, use_bias, bn_epsilon, preact=False):
    """7x7/2 conv (-> BN -> ReLU unless ``preact``) -> 3x3/2 max-pool: stride 4."""
    x = conv_bn_act(x, 64, 7, 2, padding=3, use_bias=use_bias, bn_epsilon=bn_epsilon,
                    batch_norm=not preact, activation=None if preact else "relu",
                    name="conv1", suffixes=SUFFIXES)
    # Zero padding is -inf padding here: the input is ReLU'd (v1) or the same
    # zeros keras.applications pads (v2).
    x = keras.layers.ZeroPadding2D(1, name="pool1_pad")(x)
    return keras.layers.MaxPooling2D(3, strides=2, name="pool1_pool")(x)


def resnet_body(x, depth, *, layout="torchvision", groups=1, width_per_group=64,
                se_ratio=None):
    """Stem and the four stages conv2..conv5; ``(N, H, W, 3) -> (N, H/32, W/32, C)``.

    ``C`` is 512 for ResNet-18/34 (basic blocks), 2048 otherwise. ``groups`` and
    ``width_per_group`` make the bottlenecks ResNeXt's; ``se_ratio`` adds SE
    blocks (both for the "torchvision" layout).
    """
    settings = LAYOUTS[layout]
    preact = layout == "keras_v2"
    x = resnet_stem(x, use_bias=settings["use_bias"],
                    bn_epsilon=settings["bn_epsilon"], preact=preact)
    if preact:
        for stage, (filters, blocks) in enumerate(zip(FILTERS, DEPTHS[depth]), start=2):
            # v2 strides in each stage's last block; conv5 keeps stride 32.
            x = preact_residual_stage(x, filters, blocks, 1 if stage == 5 else 2,
                                      name=f"conv{stage}")
        x = keras.layers.BatchNormalization(epsilon=settings["bn_epsilon"],
                                            name="post_bn")(x)
        return keras.layers.Activation("relu", name="post_relu")(x)
    block, kwargs = _block(depth, settings, groups, width_per_group, se_ratio)
    for stage, (filters, blocks) in enumerate(zip(FILTERS, DEPTHS[depth]), start=2):
        x = residual_stage(x, block, filters, blocks, 1 if stage == 2 else 2,
                           name=f"conv{stage}", **kwargs)
    return x


def _block(depth, settings, groups, width_per_group, se_ratio):
    kwargs = dict(use_bias=settings["use_bias"], bn_epsilon=settings["bn_epsilon"],
                  se_ratio=se_ratio)
    if depth < 50:
        if (groups, width_per_group) != (1, 64):
            raise ValueError(f"ResNet-{depth} has basic blocks: no groups/width knobs.")
        return basic_block, kwargs
    return bottleneck_block, dict(kwargs, groups=groups, base_width=width_per_group,
                                  stride_in_1x1=settings["stride_in_1x1"])


def stage_outputs(depth, layout="torchvision"):
    """Stride -> name of the last layer at that stride.

    v1: each stage's last ``…_out``. v2 strides in a stage's last block, whose
    shortcut max-pools the block's input (bypassing its pre-activation), so the
    stage's last cut point is the previous block's ``…_out``; ``post_relu`` at 32.
    """
    blocks = DEPTHS[depth]
    if layout == "keras_v2":
        names = [f"conv{s}_block{n - 1}_out" for s, n in zip((2, 3, 4), blocks)]
        names.append("post_relu")
    else:
        names = [f"conv{s}_block{n}_out" for s, n in zip((2, 3, 4, 5), blocks)]
    return dict(zip((4, 8, 16, 32), names))


def resnet(registry_name, depth, layout, args, **body_kwargs):
    """Build a registered ResNet-like network from its builder's ``locals()``."""
    def body(x):
        return resnet_body(x, depth, layout=layout, **body_kwargs)

    return build(registry_name, body, **builder_args(args))


# torchvision's ImageNet checkpoints of the networks of its layout: file, acc@1, acc@5.
TORCHVISION = {"resnet18": ("resnet18-f37072fd.pth", 69.758, 89.078),
               "resnet34": ("resnet34-b627a593.pth", 73.314, 91.420)}


# ResNet's ILSVRC entry (the ensemble held networks up to 152 layers).
ILSVRC = {"resnet152": ilsvrc_entry(2015, 3.57, "MSRA, winner: an ensemble of 6 ResNets "
                                    "(two of 152 layers)", "He et al. 2015, Table 5")}


def _register(name, depth, layout, num_params):
    keras_app = {"keras": f"ResNet{depth}", "keras_v2": f"ResNet{depth}V2"}.get(layout)
    source = (f"keras.applications.{keras_app}, count_params()" if keras_app
              else f"torchvision {name}, trainable parameters")
    v2 = layout == "keras_v2"
    torch = (torchvision_weights("resnet", *TORCHVISION[name]) if name in TORCHVISION
             else dict(preprocessing={"keras": "caffe", "keras_v2": "tf"}.get(layout, "none")))
    return register(
        name, task="classification", family="resnet", year=2016 if v2 else 2015,
        paper=PAPER_V2 if v2 else PAPER,
        key_idea="pre-activation residual units" if v2 else "residual connections",
        default_size=224, min_size=32, num_params=num_params,
        params_convention="keras" if keras_app else "trainable", params_source=source,
        stage_outputs=stage_outputs(depth, layout), keras_application=keras_app,
        ilsvrc=ILSVRC.get(name), **torch)


@_register("resnet18", 18, "torchvision", 11_689_512)
def ResNet18(include_top=True, weights=None, input_tensor=None, input_shape=None,
             pooling=None, classes=1000, classifier_activation="softmax", name=None):
    """ResNet-18 (He et al., 2015; basic blocks 2-2-2-2), torchvision's layout.

    Input ``(224, 224, 3)`` by default (any size >= 32); output ``(N, classes)`` or
    features ``(N, H/32, W/32, 512)``. Preprocessing (torchvision's "torch"
    normalization) is not inside the model.
    """
    return resnet("resnet18", 18, "torchvision", locals())


@_register("resnet34", 34, "torchvision", 21_797_672)
def ResNet34(include_top=True, weights=None, input_tensor=None, input_shape=None,
             pooling=None, classes=1000, classifier_activation="softmax", name=None):
    """ResNet-34 (He et al., 2015; basic blocks 3-4-6-3), torchvision's layout.

    Input ``(224, 224, 3)`` by default (any size >= 32); output ``(N, classes)`` or
    features ``(N, H/32, W/32, 512)``. Preprocessing (torchvision's "torch"
    normalization) is not inside the model.
    """
    return resnet("resnet34", 34, "torchvision", locals())


@_register("resnet50", 50, "keras", 25_636_712)
def ResNet50(include_top=True, weights=None, input_tensor=None, input_shape=None,
             pooling=None, classes=1000, classifier_activation="softmax", name=None):
    """ResNet-50 (He et al., 2015; bottlenecks 3-4-6-3), keras.applications'
    layout and weights.

    Input ``(224, 224, 3)`` by default (any size >= 32); output ``(N, classes)`` or
    features ``(N, H/32, W/32, 2048)``. keras.applications' preprocessing ("caffe")
    is not inside the model.
    """
    return resnet("resnet50", 50, "keras", locals())


@_register("resnet101", 101, "keras", 44_707_176)
def ResNet101(include_top=True, weights=None, input_tensor=None, input_shape=None,
              pooling=None, classes=1000, classifier_activation="softmax", name=None):
    """ResNet-101 (He et al., 2015; bottlenecks 3-4-23-3), keras.applications'
    layout and weights.

    Input ``(224, 224, 3)`` by default (any size >= 32); output ``(N, classes)`` or
    features ``(N, H/32, W/32, 2048)``. keras.applications' preprocessing ("caffe")
    is not inside the model.
    """
    return resnet("resnet101", 101, "keras", locals())


@_register("resnet152", 152, "keras", 60_419_944)
def ResNet152(include_top=True, weights=None, input_tensor=None, input_shape=None,
              pooling=None, classes=1000, classifier_activation="softmax", name=None):
    """ResNet-152 (He et al., 2015; bottlenecks 3-8-36-3), keras.applications'
    layout and weights.

    Input ``(224, 224, 3)`` by default (any size >= 32); output ``(N, classes)`` or
    features ``(N, H/32, W/32, 2048)``. keras.applications' preprocessing ("caffe")
    is not inside the model.
    """
    return resnet("resnet152", 152, "keras", locals())


@_register("resnet50_v2", 50, "keras_v2", 25_613_800)
def ResNet50V2(include_top=True, weights=None, input_tensor=None, input_shape=None,
               pooling=None, classes=1000, classifier_activation="softmax", name=None):
    """ResNet-50 v2 (He et al., 2016; pre-activation bottlenecks 3-4-6-3),
    keras.applications' layout and weights.

    Input ``(224, 224, 3)`` by default (any size >= 32); output ``(N, classes)`` or
    features ``(N, H/32, W/32, 2048)``. keras.applications' preprocessing ("tf",
    to [-1, 1]) is not inside the model.
    """
    return resnet("resnet50_v2", 50, "keras_v2", locals())


@_register("resnet101_v2", 101, "keras_v2", 44_675_560)
def ResNet101V2(include_top=True, weights=None, input_tensor=None, input_shape=None,
                pooling=None, classes=1000, classifier_activation="softmax", name=None):
    """ResNet-101 v2 (He et al., 2016; pre-activation bottlenecks 3-4-23-3),
    keras.applications' layout and weights.

    Input ``(224, 224, 3)`` by default (any size >= 32); output ``(N, classes)`` or
    features ``(N, H/32, W/32, 2048)``. keras.applications' preprocessing ("tf",
    to [-1, 1]) is not inside the model.
    """
    return resnet("resnet101_v2", 101, "keras_v2", locals())


@_register("resnet152_v2", 152, "keras_v2", 60_380_648)
def ResNet152V2(include_top=True, weights=None, input_tensor=None, input_shape=None,
                pooling=None, classes=1000, classifier_activation="softmax", name=None):
    """ResNet-152 v2 (He et al., 2016; pre-activation bottlenecks 3-8-36-3),
    keras.applications' layout and weights.

    Input ``(224, 224, 3)`` by default (any size >= 32); output ``(N, classes)`` or
    features ``(N, H/32, W/32, 2048)``. keras.applications' preprocessing ("tf",
    to [-1, 1]) is not inside the model.
    """
    return resnet("resnet152_v2", 152, "keras_v2", locals())
