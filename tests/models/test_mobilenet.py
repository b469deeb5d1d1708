"""MobileNet V1/V2/V3: keras.applications parity and the family's knobs."""

import keras
import numpy as np
import pytest

import kvision
from kvision import testing

SMALL = (32, 32, 3)


@pytest.mark.parametrize("name, keras_builder", [
    ("mobilenet_v1", keras.applications.MobileNet),
    ("mobilenet_v2", keras.applications.MobileNetV2),
    ("mobilenet_v3_small", keras.applications.MobileNetV3Small),
    ("mobilenet_v3_large", keras.applications.MobileNetV3Large),
])
def test_keras_weights_load_and_give_the_same_outputs(name, keras_builder):
    assert testing.assert_keras_parity(name, keras_builder, SMALL) <= 1e-5


@pytest.mark.parametrize("name, keras_builder, kwargs", [
    ("mobilenet_v1", keras.applications.MobileNet,
     dict(alpha=0.5, depth_multiplier=2)),
    ("mobilenet_v2", keras.applications.MobileNetV2, dict(alpha=1.4)),
    ("mobilenet_v3_small", keras.applications.MobileNetV3Small, dict(alpha=0.75)),
    ("mobilenet_v3_large", keras.applications.MobileNetV3Large,
     dict(minimalistic=True)),
])
def test_width_knobs_change_the_count_as_keras_does(name, keras_builder, kwargs):
    model = kvision.create(name, input_shape=SMALL, **kwargs)
    reference = keras_builder(input_shape=SMALL, weights=None, **kwargs)
    assert model.count_params() == reference.count_params()
    assert model.count_params() != kvision.models.get_info(name).num_params
    assert ([v.shape for v in model.weights] == [v.shape for v in reference.weights])


def test_v1_dropout_and_depth_multiplier_are_used():
    model = kvision.models.MobileNet(input_shape=SMALL, depth_multiplier=2, dropout=0.3)
    assert model.get_layer("dropout").rate == 0.3
    # Depthwise convs double their channels; the pointwise ones bring them back.
    assert model.get_layer("conv_dw_1").output.shape[-1] == 64
    assert model.get_layer("conv_pw_1").output.shape[-1] == 64


def test_v2_last_conv_widens_only_above_alpha_one():
    narrow = kvision.models.MobileNetV2(include_top=False, input_shape=SMALL, alpha=0.5)
    wide = kvision.models.MobileNetV2(include_top=False, input_shape=SMALL, alpha=1.3)
    assert narrow.output_shape[-1] == 1280
    assert wide.output_shape[-1] == 1664  # make_divisible(1280 * 1.3, 8)
    assert narrow.get_layer("block_16_project").output.shape[-1] == 160


def test_v3_minimalistic_has_no_se_no_hard_swish_and_3x3_kernels():
    model = kvision.models.MobileNetV3Small(input_shape=SMALL, minimalistic=True)
    layers = model.layers
    assert not any(isinstance(layer, keras.layers.Multiply) for layer in layers)
    assert not any(isinstance(layer, keras.layers.Activation)
                   and "hard" in str(layer.get_config()["activation"]) for layer in layers)
    kernels = {layer.kernel_size for layer in layers
               if isinstance(layer, keras.layers.DepthwiseConv2D)}
    assert kernels == {(3, 3)}
    full = kvision.models.MobileNetV3Small(input_shape=SMALL)
    assert sum(isinstance(layer, keras.layers.Multiply) for layer in full.layers) == 9


def test_v3_preprocessing_maps_pixels_to_minus_one_one():
    def stem(**kwargs):
        model = kvision.models.MobileNetV3Small(include_top=False, input_shape=SMALL,
                                                **kwargs)
        return keras.Model(model.input, model.get_layer("conv").output), model

    with_pre, full = stem()
    without, _ = stem(include_preprocessing=False)
    assert isinstance(full.layers[1], keras.layers.Rescaling)
    without.set_weights(with_pre.get_weights())
    x = np.random.default_rng(0).uniform(0, 255, (2, *SMALL)).astype("float32")
    np.testing.assert_allclose(np.asarray(with_pre(x)),
                               np.asarray(without(x / 127.5 - 1.0)), atol=1e-4)
    assert not np.allclose(np.asarray(with_pre(x)), np.asarray(without(x)), atol=1e-2)


@pytest.mark.parametrize("builder, kwargs", [
    (kvision.models.MobileNet, dict(alpha=0.6)),
    (kvision.models.MobileNet, dict(depth_multiplier=2)),
    (kvision.models.MobileNetV2, dict(alpha=0.6)),
    (kvision.models.MobileNetV3Small, dict(alpha=0.75, minimalistic=True)),
    (kvision.models.MobileNetV3Large, dict(alpha=0.5)),
])
def test_imagenet_weights_refuse_widths_keras_has_no_file_for(builder, kwargs):
    with pytest.raises(ValueError, match="weights='imagenet'"):
        builder(weights="imagenet", **kwargs)
