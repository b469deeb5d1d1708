"""SE-Net (Hu et al., 2017, "Squeeze-and-Excitation Networks"): a squeeze-and-
excitation block reweights the channels of every residual branch before the
addition, from globally pooled context (reduction 16, SE convs with bias).

SE-ResNet-50 and SE-ResNeXt-50 32x4d on torchvision's ResNet-50/ResNeXt-50 layout,
as timm's ``seresnet50``/``seresnext50_32x4d`` (SE width rounded to a multiple of 8).
"""

from kvision.models.classification.resnet import resnet, stage_outputs
from kvision.registry import ilsvrc_entry, published, register
from kvision.weights_torch import timm_weights

PAPER = "Squeeze-and-Excitation Networks"


# The paper's single-crop validation figures (Table 2), kept as paper_accuracy: the
# accuracy the registry lists is the timm checkpoint's, which weights="imagenet" loads.
# And SENet's ILSVRC entry: the paper's abstract gives 2.251 % top-5 test error for
# the winning classification submission; the team name is the authors' README's
# (github.com/hujie-frank/SENet: "we won the 1st place (Team name: WMW)").
PUBLISHED = {
    "se_resnet50": dict(
        paper_accuracy=published(76.71, 93.38, "Hu et al. 2017, Table 2: SE-ResNet-50, "
                                 "val error 23.29 / 6.62"),
        ilsvrc=ilsvrc_entry(2017, 2.251, "SENet, winner (team WMW): an ensemble of SE "
                            "networks, SENet-154 the largest",
                            "Hu et al. 2017, abstract (2.251 %); team name WMW: the "
                            "authors' README, github.com/hujie-frank/SENet")),
    "se_resnext50_32x4d": dict(
        paper_accuracy=published(78.90, 94.51, "Hu et al. 2017, Table 2: SE-ResNeXt-50, "
                                 "val error 21.10 / 5.49")),
}


# timm's pretrained cfgs (timm/models/resnet.py): tag, checkpoint (the cfg's url),
# top-1/top-5 at 224 in timm's results/results-imagenet.csv (rows seresnet50.ra2_in1k
# and seresnext50_32x4d.racm_in1k at img_size 224, timm commit 4e5207c7, 2025-10).
_RELEASES = "https://github.com/rwightman/pytorch-image-models/releases/download/v0.1-weights"
_ROW = "row {tag} at 224, timm 4e5207c7 (2025-10), whose cfg url is this file"
TIMM = {"se_resnet50": ("seresnet50.ra2_in1k", "seresnet50_ra_224-8efdb4bb.pth",
                        80.260, 95.068),
        "se_resnext50_32x4d": ("seresnext50_32x4d.racm_in1k",
                               "seresnext50_32x4d_racm-a304a460.pth", 81.268, 95.624)}


def _register(name, depth, num_params, timm_name):
    tag, filename, top1, top5 = TIMM[name]
    return register(
        name, task="classification", family="senet", year=2017, paper=PAPER,
        key_idea="channel attention (squeeze-and-excitation)", default_size=224,
        min_size=32, num_params=num_params, params_convention="trainable",
        params_source=f"timm {timm_name}, trainable parameters",
        stage_outputs=stage_outputs(depth), keras_application=None, **PUBLISHED[name],
        **timm_weights("seresnet", f"{_RELEASES}/{filename}", top1, top5, tag=tag,
                       row=_ROW.format(tag=tag)))


def senet(registry_name, depth, args, **body_kwargs):
    """An SE network from its builder's ``locals()``; ``se_ratio=None`` drops SE."""
    return resnet(registry_name, depth, "torchvision", args, se_ratio=args["se_ratio"],
                  **body_kwargs)


@_register("se_resnet50", 50, 28_088_024, "seresnet50")
def SEResNet50(include_top=True, weights=None, input_tensor=None, input_shape=None,
               pooling=None, classes=1000, classifier_activation="softmax", name=None,
               se_ratio=1 / 16):
    """SE-ResNet-50 (Hu et al., 2017): ResNet-50 with an SE block in every
    bottleneck.

    Input ``(224, 224, 3)`` by default (any size >= 32); output ``(N, classes)`` or
    features ``(N, H/32, W/32, 2048)``. ``se_ratio``: SE width over block width
    (1/16, the paper's reduction 16); ``None`` gives torchvision's ResNet-50.
    """
    return senet("se_resnet50", 50, locals())


@_register("se_resnext50_32x4d", 50, 27_559_896, "seresnext50_32x4d")
def SEResNeXt50_32x4d(include_top=True, weights=None, input_tensor=None,
                      input_shape=None, pooling=None, classes=1000,
                      classifier_activation="softmax", name=None, se_ratio=1 / 16,
                      groups=32, width_per_group=4):
    """SE-ResNeXt-50 32x4d (Hu et al., 2017): ResNeXt-50 32x4d with an SE block in
    every bottleneck.

    Input ``(224, 224, 3)`` by default (any size >= 32); output ``(N, classes)`` or
    features ``(N, H/32, W/32, 2048)``. ``se_ratio`` as in :func:`SEResNet50`;
    ``groups``/``width_per_group`` as in ResNeXt.
    """
    return senet("se_resnext50_32x4d", 50, locals(), groups=groups,
                 width_per_group=width_per_group)
