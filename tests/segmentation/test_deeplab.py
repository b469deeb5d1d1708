"""DeepLab: v1's parameter count (the paper's 20.5M), atrous backbones against the
original network ("à trous" identity), v3+ taps and bad arguments. (Overfitting one
batch: tests/segmentation/test_unet.py.)"""

import numpy as np
import pytest

import keras
from kvision import create, get_info
from kvision.models.segmentation._common import dilate
from kvision.testing import tiny_encoder


def test_deeplabv1_largefov_parameter_count():
    # Table 2 of the paper: DeepLab-LargeFOV 20.5M. VGG16 convs 14,714,688 + fc6
    # (3x3x512x1024 + 1024) + fc7 (1024x1024 + 1024) + fc8 (1024x21 + 21).
    model = create("deeplabv1", classes=21, input_shape=(320, 320, 3))
    assert model.count_params() == 20_505_429 == get_info("deeplabv1").num_params
    assert model.output_shape == (None, 320, 320, 21)
    backbone = model.get_layer("backbone")
    assert tuple(backbone.outputs[0].shape[1:3]) == (40, 40)  # output stride 8
    assert backbone.get_layer("block5_conv1").dilation_rate == (2, 2)


def test_atrous_resnet50_is_the_original_on_every_other_pixel():
    """Atrous convolution's defining identity: ResNet50 with its stride-32 stage made
    atrous (output stride 16) computes the original network's features at the even
    positions, and the in-between ones besides."""
    keras.utils.set_random_seed(0)
    original = keras.applications.ResNet50(include_top=False, weights=None,
                                           input_shape=(64, 64, 3))
    atrous = dilate(original, 16)
    assert atrous.get_layer("conv5_block1_1_conv").strides == (1, 1)
    assert atrous.get_layer("conv5_block2_2_conv").dilation_rate == (2, 2)
    x = np.random.default_rng(0).uniform(-1, 1, (1, 64, 64, 3)).astype("float32")
    dense = np.asarray(atrous(x))
    assert dense.shape == (1, 4, 4, 2048)
    np.testing.assert_allclose(dense[:, ::2, ::2], np.asarray(original(x)), rtol=1e-4,
                               atol=1e-4)


@pytest.mark.parametrize("output_stride,rates", [(16, [6, 12, 18]), (8, [12, 24, 36])])
def test_deeplabv3_plus_taps_and_atrous_rates(output_stride, rates):
    model = create("deeplabv3_plus", classes=5, input_shape=(64, 64, 3),
                   backbone=tiny_encoder(), filters=8, low_level_filters=4,
                   output_stride=output_stride)
    assert model.output_shape == (None, 64, 64, 5)
    high, low = (tuple(t.shape[1:3]) for t in model.get_layer("backbone").outputs)
    assert high == (64 // output_stride,) * 2 and low == (16, 16)
    found = sorted(layer.dilation_rate[0] for layer in model.layers
                   if layer.name.startswith("aspp_rate")
                   and isinstance(layer, keras.layers.Conv2D))
    assert found == rates
    assert model.get_layer("decoder_low_level_conv").filters == 4


@pytest.mark.parametrize("backbone,size", [("resnet50", 64), ("xception", 96),
                                           ("mobilenet_v2", 64)])
def test_deeplabv3_plus_on_the_papers_backbones(backbone, size):
    """The registry's ResNet50, Xception and MobileNetV2 as atrous backbones: stride-16
    features (the stride-32 stage dilated, not strided), the stride-4 skip, and
    per-pixel probabilities at the input size."""
    model = create("deeplabv3_plus", classes=3, input_shape=(size, size, 3),
                   backbone=backbone, filters=8, low_level_filters=4)
    assert model.output_shape == (None, size, size, 3)
    net = model.get_layer("backbone")
    high, low = (tuple(t.shape[1:3]) for t in net.outputs)
    assert high == (size // 16,) * 2
    assert all(abs(side - size // 4) <= 1 for side in low)  # Xception pads "valid"
    assert any(getattr(layer, "dilation_rate", (1, 1)) == (2, 2) for layer in net.layers)
    x = np.random.default_rng(0).uniform(0, 255, (1, size, size, 3)).astype("float32")
    np.testing.assert_allclose(np.asarray(model(x)).sum(-1), 1.0, rtol=1e-5)


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="output_stride must be 8 or 16"):
        create("deeplabv3_plus", output_stride=32)
    for rates in ((6, 6, 12), 6, (6, None), (0, 6), (6.5,)):
        with pytest.raises(ValueError, match="distinct integers"):
            create("deeplabv3_plus", atrous_rates=rates)
    with pytest.raises(ValueError, match="input_shape"):
        create("deeplabv1", input_shape=(64, 64))
