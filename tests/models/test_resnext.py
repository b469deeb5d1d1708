"""ResNeXt: torchvision's parameter counts from a formula, the cardinality knobs."""

import numpy as np
import pytest

import kvision
from kvision import testing
from kvision.models import get_info

DEPTHS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}


def _torchvision_bottleneck_params(depths, groups=1, width_per_group=64,
                                   classes=1000):
    """torchvision ResNet/ResNeXt trainable parameters (convs without bias, BN
    gamma+beta), its Bottleneck written out: width = planes * wpg / 64 * groups."""
    total = 3 * 64 * 49 + 2 * 64
    channels = 64
    for planes, blocks in zip((64, 128, 256, 512), depths):
        width, out = planes * width_per_group // 64 * groups, 4 * planes
        for block in range(blocks):
            total += channels * width + 9 * width * width // groups + width * out
            total += 2 * (2 * width + out)
            if block == 0:
                total += channels * out + 2 * out
            channels = out
    return total + 2048 * classes + classes


def test_formula_reproduces_torchvision_counts():
    assert _torchvision_bottleneck_params(DEPTHS[50]) == 25_557_032  # resnet50
    assert (_torchvision_bottleneck_params(DEPTHS[50], 32, 4)
            == get_info("resnext50_32x4d").num_params == 25_028_904)
    assert (_torchvision_bottleneck_params(DEPTHS[101], 32, 8)
            == get_info("resnext101_32x8d").num_params == 88_791_336)


@pytest.mark.parametrize("groups,width_per_group", [(1, 64), (64, 4), (8, 16)])
def test_cardinality_knobs_change_the_count_as_the_formula_says(groups,
                                                                width_per_group):
    model = kvision.create("resnext50_32x4d", input_shape=(32, 32, 3), groups=groups,
                           width_per_group=width_per_group)
    assert testing.counted_params(model, "trainable") == \
        _torchvision_bottleneck_params(DEPTHS[50], groups, width_per_group)
    conv = model.get_layer("conv5_block1_2_conv")
    assert conv.groups == groups
    assert conv.kernel.shape == (3, 3, width_per_group * 8, width_per_group * 8 * groups)


def test_grouped_conv_keeps_paths_separate():
    model = kvision.create("resnext50_32x4d", include_top=False, input_shape=(32, 32, 3))
    conv = model.get_layer("conv2_block1_2_conv")  # 128 channels in 32 groups of 4
    assert conv.groups == 32 and conv.strides == (1, 1)
    x = np.random.default_rng(0).normal(size=(1, 8, 8, 128)).astype("float32")
    changed = x.copy()
    changed[..., 4:8] += 1.0  # the inputs of group 1 only
    diff = np.abs(np.asarray(conv(changed)) - np.asarray(conv(x))).max(axis=(0, 1, 2))
    assert np.all(diff[4:8] > 0)
    assert np.all(diff[:4] == 0) and np.all(diff[8:] == 0)


def test_stride_in_grouped_3x3_as_torchvision():
    model = kvision.create("resnext50_32x4d", include_top=False, input_shape=(64, 64, 3))
    assert model.get_layer("conv3_block1_1_conv").strides == (1, 1)
    assert model.get_layer("conv3_block1_2_conv").strides == (2, 2)
    assert not model.get_layer("conv3_block1_2_conv").use_bias
    assert model.get_layer("conv3_block1_2_bn").epsilon == 1e-5
