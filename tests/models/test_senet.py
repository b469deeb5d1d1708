"""SE-Net: counts derived from the SE block, the se_ratio knob, SE placement."""

import keras
import numpy as np
import pytest

import kvision
from kvision import testing
from kvision.models import get_info

TORCHVISION_RESNET50 = 25_557_032
TORCHVISION_RESNEXT50_32X4D = 25_028_904
# Output channels C of the 16 bottlenecks of ResNet-50 (3-4-6-3 blocks).
BLOCK_CHANNELS = [256] * 3 + [512] * 4 + [1024] * 6 + [2048] * 3


def _se_increase(ratio=16):
    """Parameters the SE blocks add: two 1x1 convs with bias, C -> C/r -> C."""
    return sum(2 * c * c // ratio + c // ratio + c for c in BLOCK_CHANNELS)


def test_counts_derive_from_the_base_networks():
    assert _se_increase() == 2_530_992  # the paper's "~2.5 million" for SE-ResNet-50
    assert TORCHVISION_RESNET50 + _se_increase() == get_info("se_resnet50").num_params
    assert (TORCHVISION_RESNEXT50_32X4D + _se_increase()
            == get_info("se_resnext50_32x4d").num_params)


@pytest.mark.parametrize("se_ratio,expected", [
    (None, TORCHVISION_RESNET50),
    (1 / 8, TORCHVISION_RESNET50 + _se_increase(8)),
])
def test_se_ratio_knob(se_ratio, expected):
    model = kvision.create("se_resnet50", input_shape=(32, 32, 3), se_ratio=se_ratio)
    assert testing.counted_params(model, "trainable") == expected
    names = {layer.name for layer in model.layers}
    assert ("conv5_block3_se_excite" in names) == (se_ratio is not None)


def test_se_rescales_the_residual_branch_before_the_addition():
    model = kvision.create("se_resnext50_32x4d", include_top=False,
                           input_shape=(32, 32, 3))
    add = model.get_layer("conv2_block1_add")
    sources = [t._keras_history.operation.name for t in add.input]
    assert sources == ["conv2_block1_0_bn", "conv2_block1_se_excite"]
    assert model.get_layer("conv2_block1_se_reduce").filters == 256 // 16
    squeeze = model.get_layer("conv2_block1_se_squeeze")
    assert squeeze.input._keras_history.operation.name == "conv2_block1_3_bn"
    # A closed gate (sigmoid of -1e4 = 0) removes the branch: out = ReLU(shortcut).
    expand = model.get_layer("conv2_block1_se_expand")
    expand.bias.assign(np.full(expand.bias.shape, -1e4, "float32"))
    taps = keras.Model(model.input, [model.get_layer("conv2_block1_0_bn").output,
                                      model.get_layer("conv2_block1_out").output])
    x = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    shortcut, out = (np.asarray(t) for t in taps(x))
    np.testing.assert_allclose(out, np.maximum(shortcut, 0.0), atol=1e-6)
    assert np.abs(out).max() > 0
