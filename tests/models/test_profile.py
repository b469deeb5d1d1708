"""profile(): parameters, multiply-accumulates and size, against hand counts and the
GFLOPs torchvision publishes for the same architectures (MACs at 224x224)."""

import keras
import pytest

import kvision
from kvision import testing
from kvision.models import get_info, list_models, profile
from kvision.models.profile import layer_macs


def _single(layer, shape):
    inputs = keras.Input(shape)
    return keras.Model(inputs, layer(inputs))


@pytest.mark.parametrize("layer, shape, macs", [
    (keras.layers.Conv2D(8, 3, padding="same"), (10, 10, 4), 10 * 10 * 8 * 9 * 4),
    (keras.layers.Conv2D(8, 3, strides=2, padding="valid"), (11, 11, 4), 5 * 5 * 8 * 9 * 4),
    (keras.layers.Conv2D(8, 3, padding="same", groups=2), (6, 6, 4), 6 * 6 * 8 * 9 * 2),
    (keras.layers.DepthwiseConv2D(3, padding="same"), (6, 6, 5), 6 * 6 * 5 * 9),
    (keras.layers.SeparableConv2D(7, 3, padding="same"), (6, 6, 5), 36 * 5 * 9 + 36 * 5 * 7),
    (keras.layers.Conv2DTranspose(3, 2, strides=2), (4, 4, 6), 4 * 4 * 6 * 4 * 3),
    (keras.layers.Dense(7), (12,), 12 * 7),
    (keras.layers.MaxPooling2D(2), (8, 8, 3), 0),
])
def test_layer_macs_match_hand_counts(layer, shape, macs):
    assert profile(_single(layer, shape)).macs == macs


def test_lenet5_counts_and_size():
    p = profile(kvision.create("lenet5"))
    # c1: 28*28*6*25, c3: 10*10*16*150, fc: 400*120 + 120*84 + 84*10
    assert p.macs == 28 * 28 * 6 * 25 + 10 * 10 * 16 * 150 + 400 * 120 + 120 * 84 + 84 * 10
    assert p.total_params == p.trainable_params == 61_706
    assert p.size_mb == pytest.approx(61_706 * 4 / 1e6)


def test_batchnorm_statistics_are_counted_apart():
    p = profile(kvision.create("vgg11_bn", input_shape=(32, 32, 3), classes=10))
    bn_channels = 64 + 128 + 256 * 2 + 512 * 4
    assert p.total_params - p.trainable_params == 2 * bn_channels


def test_overfeat_counts_its_any_size_body_at_the_window_size():
    """OverFeat's body is a nested model built for any size ((None, None, 3)): its
    convolutions are counted at the shapes the 231x231 window gives them (small
    heads: the body is what is tested)."""
    model = kvision.create("overfeat", classes=9, units=(30, 40), box_units=(20, 10))
    # conv1 11x11/4 valid -> 56x56, pool -> 28, conv2 5x5 valid -> 24, pool -> 12,
    # conv3-5 3x3 same at 12x12, pool -> 6x6x1024 flattened.
    body = {"backbone/conv1": 56 * 56 * 96 * 121 * 3,
            "backbone/conv2": 24 * 24 * 256 * 25 * 96,
            "backbone/conv3": 12 * 12 * 512 * 9 * 256,
            "backbone/conv4": 12 * 12 * 1024 * 9 * 512,
            "backbone/conv5": 12 * 12 * 1024 * 9 * 1024}
    flat = 6 * 6 * 1024
    heads = {"fc1": flat * 30, "fc2": 30 * 40, "fc3": 40 * 10,
             "box_fc1": flat * 20, "box_fc2": 20 * 10, "box_fc3": 10 * 4}
    assert layer_macs(model) == {**body, **heads}
    assert profile(model).macs == sum(body.values()) + sum(heads.values())


def test_a_shared_layer_counts_every_call():
    conv = keras.layers.Conv2D(4, 3, padding="same")
    inputs = keras.Input((8, 8, 2))
    small = keras.layers.MaxPooling2D(2)(inputs)
    model = keras.Model(inputs, [conv(inputs), conv(small)])
    assert profile(model).macs == (8 * 8 + 4 * 4) * 4 * 9 * 2


def _kernel_layers(model, prefix=()):
    """Paths of the layers with a kernel, nested models entered (the test's own walk)."""
    for layer in model.layers:
        path = prefix + (layer.name,)
        if isinstance(layer, keras.Model):
            yield from _kernel_layers(layer, path)
        elif hasattr(layer, "kernel") or hasattr(layer, "depthwise_kernel"):
            yield "/".join(path)


@pytest.mark.parametrize("name", list_models())
def test_every_network_profiles_at_its_default_size(name):
    """What `kvision list` does for each row: build at the default size, profile;
    every convolution and Dense layer counted, the parameters those of the table's
    "= reference" column. A profile reads shapes only: the network is built without
    initial values (OverFeat's 301M parameters in 0.02 s, not 1.3 s)."""
    with testing.built_at_once(values=False):
        model = kvision.create(name)
    p = profile(model)
    macs = layer_macs(model)
    assert set(macs) == set(_kernel_layers(model))
    assert min(macs.values()) > 0 and p.macs == sum(macs.values())
    info = get_info(name)
    counted = p.trainable_params if info.params_convention == "trainable" else p.total_params
    assert counted == info.num_params


def test_needs_a_fixed_input_size():
    with pytest.raises(ValueError, match="fixed input size"):
        profile(kvision.create("vgg11", include_top=False))
    with pytest.raises(ValueError, match="keras.Model"):
        profile("vgg11")


# torchvision's model documentation, "GFLOPS" column (MACs of one 224x224 image; 299
# for Inception v3), rounded to two decimals there.
PUBLISHED_GFLOPS = {
    "alexnet": 0.71, "vgg11": 7.61, "vgg16": 15.47, "vgg19_bn": 19.63,
    "resnet18": 1.81, "resnet34": 3.66, "googlenet": 1.50, "inception_v3": 5.71,
    "densenet121": 2.83, "mobilenet_v2": 0.30, "squeezenet1_0": 0.82,
    "squeezenet1_1": 0.35, "shufflenet_v2_x1_0": 0.14, "efficientnet_b0": 0.39,
    "resnext50_32x4d": 4.23,
}


@pytest.mark.parametrize("name", sorted(PUBLISHED_GFLOPS))
def test_gflops_match_published_figures(name):
    expected = PUBLISHED_GFLOPS[name]
    with testing.built_at_once(values=False):  # shapes only, as above
        model = kvision.create(name)
    got = profile(model).gflops
    assert abs(got - expected) <= 0.006 + 0.01 * expected, f"{name}: {got:.3f} vs {expected}"
