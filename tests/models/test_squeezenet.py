"""SqueezeNet: torchvision's counts from the fire table, ceil-mode sizes, the head."""

import keras
import numpy as np
import pytest

import kvision
from kvision.models import get_info
from kvision.models.classification.squeezenet import squeezenet_body

# torchvision: first conv (kernel, filters), fire modules (squeeze, expand), in order.
FIRES = ((16, 64), (16, 64), (32, 128), (32, 128), (48, 192), (48, 192), (64, 256),
         (64, 256))
FIRST = {"1_0": (7, 96), "1_1": (3, 64)}


def _count(version, classes=1000):
    kernel, channels = FIRST[version]
    count = kernel * kernel * 3 * channels + channels
    for squeeze, expand in FIRES:
        count += channels * squeeze + squeeze            # squeeze 1x1
        count += squeeze * expand + expand               # expand 1x1
        count += 9 * squeeze * expand + expand           # expand 3x3
        channels = 2 * expand
    return count + channels * classes + classes          # conv10


@pytest.mark.parametrize("version, expected", [("1_0", 1_248_424), ("1_1", 1_235_496)])
def test_count_from_the_fire_table(version, expected):
    assert _count(version) == expected == get_info(f"squeezenet{version}").num_params


def _torch_size(size, version):
    """Feature side by PyTorch's formulas: conv1 stride 2, ceil-mode 3x3/2 pools."""
    kernel = FIRST[version][0]
    size = (size - kernel) // 2 + 1
    for _ in range(3):
        size = -(-(size - 3) // 2) + 1
    return size


@pytest.mark.parametrize("version", ["1_0", "1_1"])
def test_feature_sizes_follow_ceil_mode(version):
    builder = getattr(kvision.models, f"SqueezeNet{version}")
    model = builder(include_top=False, input_shape=(None, None, 3))
    for size in (224, 227, 100, 61):
        out = model(np.zeros((1, size, size, 3), "float32"))
        assert out.shape == (1, _torch_size(size, version), _torch_size(size, version),
                             512), size
    assert _torch_size(224, version) == 13


@pytest.mark.parametrize("version, minimum", [("1_0", 21), ("1_1", 17)])
def test_minimum_size_is_tight(version, minimum):
    assert squeezenet_body(keras.Input((minimum, minimum, 3)), version).shape[1] == 1
    with pytest.raises(ValueError):
        squeezenet_body(keras.Input((minimum - 1, minimum - 1, 3)), version)


def test_convolutional_head_is_relu_then_average():
    model = kvision.models.SqueezeNet1_1(input_shape=(64, 64, 3), classes=6,
                                         classifier_activation=None)
    assert not any(isinstance(layer, keras.layers.Dense) for layer in model.layers)
    x = np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    class_maps = keras.Model(model.input, model.get_layer("conv10").output)(x)
    logits = np.asarray(model(x))
    np.testing.assert_allclose(logits, np.asarray(class_maps).mean(axis=(1, 2)),
                               rtol=1e-5, atol=1e-6)
    assert np.all(logits >= 0) and np.any(logits > 0)
