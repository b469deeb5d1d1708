"""AlexNet: torchvision's count from its layer list, feature sizes, the LRN knob."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import kvision
from kvision.layers import LocalResponseNormalization
from kvision.models import get_info
from kvision.models.classification.alexnet import alexnet_body

# torchvision's AlexNet: (kernel, in, out) convolutions, (in, out) linear layers.
CONVS = ((11, 3, 64), (5, 64, 192), (3, 192, 384), (3, 384, 256), (3, 256, 256))
LINEARS = ((256 * 6 * 6, 4096), (4096, 4096), (4096, 1000))


def test_count_from_torchvision_layer_list():
    count = sum(k * k * cin * cout + cout for k, cin, cout in CONVS)
    count += sum(cin * cout + cout for cin, cout in LINEARS)
    assert count == 61_100_840 == get_info("alexnet").num_params


def test_feature_sizes_at_224():
    model = kvision.models.AlexNet(include_top=False, input_shape=(224, 224, 3))
    sizes = {n: model.get_layer(n).output.shape[1:3] for n in
             ("conv1", "pool1", "conv2", "pool2", "conv5", "pool5")}
    assert sizes == {"conv1": (55, 55), "pool1": (27, 27), "conv2": (27, 27),
                     "pool2": (13, 13), "conv5": (13, 13), "pool5": (6, 6)}


def test_minimum_size_is_tight():
    alexnet_body(keras.Input((63, 63, 3)))  # pool5 is 1x1
    with pytest.raises(ValueError):
        alexnet_body(keras.Input((62, 62, 3)))


def test_adaptive_pool_keeps_the_classifier_at_other_sizes():
    """The 6x6 adaptive pool: weights of a 224 model load into a 63 model (1x1 map)."""
    big = kvision.models.AlexNet(input_shape=(224, 224, 3), classes=5)
    small = kvision.models.AlexNet(input_shape=(63, 63, 3), classes=5)
    assert small.get_layer("pool5").output.shape[1:] == (1, 1, 256)
    assert small.get_layer("avgpool").output.shape[1:] == (6, 6, 256)
    small.set_weights(big.get_weights())


def test_local_response_norm_knob():
    shape = (67, 67, 3)
    plain = kvision.models.AlexNet(include_top=False, input_shape=shape)
    lrn = kvision.models.AlexNet(include_top=False, input_shape=shape,
                                 local_response_norm=True)
    assert lrn.count_params() == plain.count_params()
    lrn.set_weights(plain.get_weights())
    names = [layer.name for layer in lrn.layers]
    assert [n for n in names if isinstance(lrn.get_layer(n),
                                           LocalResponseNormalization)] == ["lrn1", "lrn2"]
    # After each ReLU'd conv and before its pool, as in the paper's Section 3.3.
    for i in (1, 2):
        assert names.index(f"conv{i}") + 1 == names.index(f"lrn{i}")
        assert names.index(f"lrn{i}") + 1 == names.index(f"pool{i}")
    x = np.random.default_rng(0).uniform(0, 255, (2, *shape)).astype("float32")
    taps = keras.Model(lrn.input, [lrn.get_layer("conv1").output,
                                    lrn.get_layer("lrn1").output])
    conv1, lrn1 = (np.asarray(t) for t in taps(x))
    expected = tf.nn.local_response_normalization(conv1, depth_radius=2, bias=2.0,
                                                  alpha=1e-4, beta=0.75)
    np.testing.assert_allclose(lrn1, expected.numpy(), rtol=1e-5, atol=1e-5)
    assert not np.allclose(np.asarray(lrn(x)), np.asarray(plain(x)))
