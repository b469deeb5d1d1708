"""ResNeXt (Xie et al., 2016, "Aggregated Residual Transformations for Deep Neural
Networks"): ResNet bottlenecks whose 3x3 convolution is split into ``groups``
parallel paths ("cardinality") of ``width_per_group`` channels each — more paths
beat more depth or width at the same cost.

torchvision's layout (ResNet-50/101 "v1.5": stride in the grouped 3x3, no conv
bias, BatchNorm epsilon 1e-5); the grouped conv is one ``Conv2D(groups=...)``.
"""

from kvision.models.classification.resnet import resnet, stage_outputs
from kvision.registry import register
from kvision.weights_torch import torchvision_weights

PAPER = "Aggregated Residual Transformations for Deep Neural Networks"


# torchvision's ImageNet checkpoints (IMAGENET1K_V1): file, acc@1, acc@5.
TORCHVISION = {"resnext50_32x4d": ("resnext50_32x4d-7cdf4587.pth", 77.618, 93.698),
               "resnext101_32x8d": ("resnext101_32x8d-8ba56ff5.pth", 79.312, 94.526)}


def _register(name, depth, num_params):
    return register(
        name, task="classification", family="resnext", year=2016, paper=PAPER,
        key_idea="grouped-conv bottlenecks (cardinality)", default_size=224,
        min_size=32, num_params=num_params, params_convention="trainable",
        params_source=f"torchvision {name}, trainable parameters",
        stage_outputs=stage_outputs(depth), keras_application=None,
        **torchvision_weights("resnet", *TORCHVISION[name]))


def resnext(registry_name, depth, args):
    """A ResNeXt from its builder's ``locals()`` (``groups``, ``width_per_group``)."""
    return resnet(registry_name, depth, "torchvision", args, groups=args["groups"],
                  width_per_group=args["width_per_group"])


@_register("resnext50_32x4d", 50, 25_028_904)
def ResNeXt50_32x4d(include_top=True, weights=None, input_tensor=None,
                    input_shape=None, pooling=None, classes=1000,
                    classifier_activation="softmax", name=None, groups=32,
                    width_per_group=4):
    """ResNeXt-50 32x4d (Xie et al., 2016): ResNet-50 with 32-group 3x3 convs.

    Input ``(224, 224, 3)`` by default (any size >= 32); output ``(N, classes)`` or
    features ``(N, H/32, W/32, 2048)``. ``groups`` (cardinality) and
    ``width_per_group`` set the 3x3 width, ``groups * width_per_group`` at the
    first stage (``groups=1, width_per_group=64`` is torchvision's ResNet-50).
    """
    return resnext("resnext50_32x4d", 50, locals())


@_register("resnext101_32x8d", 101, 88_791_336)
def ResNeXt101_32x8d(include_top=True, weights=None, input_tensor=None,
                     input_shape=None, pooling=None, classes=1000,
                     classifier_activation="softmax", name=None, groups=32,
                     width_per_group=8):
    """ResNeXt-101 32x8d (Xie et al., 2016): ResNet-101 with 32-group 3x3 convs
    of 8 channels per group.

    Input ``(224, 224, 3)`` by default (any size >= 32); output ``(N, classes)`` or
    features ``(N, H/32, W/32, 2048)``. ``groups`` (cardinality) and
    ``width_per_group`` as in :func:`ResNeXt50_32x4d`.
    """
    return resnext("resnext101_32x8d", 101, locals())
