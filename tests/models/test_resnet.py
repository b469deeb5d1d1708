"""ResNet v1/v2: keras.applications parity, layer names, torchvision layout."""

import keras
import numpy as np
import pytest

import kvision
from kvision import testing
from kvision.models import get_info

# Odd, non-square inputs: every padding choice shows in the outputs.
SMALL = (35, 45, 3)
KERAS = {"resnet50": "ResNet50", "resnet101": "ResNet101", "resnet152": "ResNet152",
         "resnet50_v2": "ResNet50V2", "resnet101_v2": "ResNet101V2",
         "resnet152_v2": "ResNet152V2"}


def _slow_if_deep(name):
    # ResNet-101/152 parity builds, saves and loads 45-60M parameters twice.
    return pytest.param(name, marks=pytest.mark.slow) if "50" not in name else name


@pytest.mark.parametrize("name", [_slow_if_deep(n) for n in sorted(KERAS)])
def test_keras_applications_weights_load_with_same_outputs(name):
    assert get_info(name).keras_application == KERAS[name]
    # The deep variants check the full network only: their top-less file goes
    # through the loader the 50-layer ones already check.
    tops = (True, False) if "50" in name else (True,)
    diff = testing.assert_keras_parity(name, getattr(keras.applications, KERAS[name]),
                                       SMALL, include_tops=tops)
    assert diff <= 1e-5


@pytest.mark.parametrize("name", ["resnet50", "resnet50_v2"])
def test_layer_names_and_stage_widths_match_keras_applications(name):
    reference = getattr(keras.applications, KERAS[name])(
        weights=None, include_top=False, input_shape=(64, 64, 3))
    model = kvision.create(name, include_top=False, input_shape=(64, 64, 3))
    ours = [layer.name for layer in model.layers[1:]]
    theirs = [layer.name for layer in reference.layers[1:]]
    # keras.applications leaves v2's subsampling shortcut unnamed (max_pooling2d*).
    differ = [(a, b) for a, b in zip(ours, theirs) if a != b]
    assert len(ours) == len(theirs)
    assert all(a.endswith("_0_pool") and b.startswith("max_pooling2d") for a, b in differ)
    assert len(differ) == (3 if name.endswith("v2") else 0)
    widths = [model.get_layer(n).output.shape[-1]
              for n in get_info(name).stage_outputs.values()]
    assert widths == [256, 512, 1024, 2048]


def _basic_resnet_params(depths, classes=1000):
    """torchvision ResNet-18/34 trainable parameters from the paper's Table 1."""
    bn = 2  # gamma, beta per channel
    total = 3 * 64 * 49 + bn * 64  # 7x7 stem without bias
    channels = 64
    for stage, (width, blocks) in enumerate(zip((64, 128, 256, 512), depths)):
        for block in range(blocks):
            in_channels = channels if block == 0 else width
            total += 9 * in_channels * width + 9 * width * width + 2 * bn * width
            if block == 0 and stage > 0:  # 1x1/2 projection shortcut + BN
                total += in_channels * width + bn * width
        channels = width
    return total + 512 * classes + classes


@pytest.mark.parametrize("name,depths", [("resnet18", (2, 2, 2, 2)),
                                         ("resnet34", (3, 4, 6, 3))])
def test_basic_block_counts_follow_from_the_paper_table(name, depths):
    assert _basic_resnet_params(depths) == get_info(name).num_params
    model = kvision.create(name, include_top=False, input_shape=(32, 32, 3))
    no_top = testing.counted_params(model, "trainable")
    assert no_top == _basic_resnet_params(depths) - (512 * 1000 + 1000)


def test_stride_placement_and_padding_per_layout():
    keras_v1 = kvision.create("resnet50", include_top=False, input_shape=(64, 64, 3))
    torch_v1 = kvision.create("resnet18", include_top=False, input_shape=(64, 64, 3))
    # keras.applications (the paper's Caffe model): stride in the first 1x1, biases.
    assert keras_v1.get_layer("conv3_block1_1_conv").strides == (2, 2)
    assert keras_v1.get_layer("conv3_block1_2_conv").strides == (1, 1)
    assert keras_v1.get_layer("conv3_block1_1_conv").use_bias
    # torchvision: strided 3x3 with symmetric 1-pixel padding, no conv bias.
    conv = torch_v1.get_layer("conv3_block1_1_conv")
    assert conv.strides == (2, 2) and conv.padding == "valid" and not conv.use_bias
    assert torch_v1.get_layer("conv3_block1_1_pad").padding == ((1, 1), (1, 1))
    assert torch_v1.get_layer("conv1_bn").epsilon == 1e-5
    assert keras_v1.get_layer("conv1_bn").epsilon == 1.001e-5
    # ResNet-18's first stage keeps 64 channels at stride 1: identity shortcut.
    names = {layer.name for layer in torch_v1.layers}
    assert "conv2_block1_0_conv" not in names and "conv3_block1_0_conv" in names


def test_symmetric_padding_sees_the_top_left_border():
    """A strided 3x3 conv padded like PyTorch centres its first window on pixel
    (0, 0); Keras' "same" would centre it on (1, 1)."""
    model = kvision.create("resnet18", include_top=False, input_shape=(32, 32, 3))
    tap = keras.Model(model.input, model.get_layer("conv3_block1_1_pad").output)
    conv = model.get_layer("conv3_block1_1_conv")
    kernel = np.zeros(conv.kernel.shape, "float32")
    kernel[0, 0, 0, 0] = 1.0  # output (i, j) reads padded input (2i, 2j)
    conv.kernel.assign(kernel)
    padded = np.asarray(tap(np.ones((1, 32, 32, 3), "float32")))
    out = np.asarray(conv(padded))[0, :, :, 0]
    assert padded.shape[1:3] == (10, 10) and out.shape == (4, 4)
    np.testing.assert_array_equal(out[0, :], 0.0)  # the top row reads padding
    assert np.all(out[1:, 1:] == padded[0, 2:8:2, 2:8:2, 0])
