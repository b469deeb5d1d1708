"""Whole outputs of the segmentation networks against NumPy forwards written from their
references' own definitions (``reference/segmentation_nets.py``): pytorch-fcn's FCNs,
SegNet's Caffe prototxt, U-Net's Fig. 1, DeepLab-LargeFOV's prototxt and DeepLabv3+'s
``research/deeplab/model.py``.

Each model gets random weights (BatchNorm statistics, biases and the deconvolutions'
bilinear kernels included, so that a transposed, flipped or misplaced weight shows);
the reference runs on the same weights, moved to torch's layouts, in float64. Small
inputs with unequal sides and narrow configurations keep each test cheap.
"""

import keras
import numpy as np
import pytest

import kvision
from kvision.testing import float32_atol, randomize_weights
from reference import segmentation_nets as ref

def build(name, seed, **kwargs):
    """``kvision.create`` with seeded kernels, then ``randomize_weights`` and random
    transposed-convolution kernels (FCN's start bilinear: symmetric, so a flipped
    kernel would pass)."""
    keras.utils.set_random_seed(seed)
    model = randomize_weights(kvision.create(name, **kwargs), seed=seed)
    rng = np.random.default_rng(seed + 1000)
    for layer in model._flatten_layers():
        if isinstance(layer, keras.layers.Conv2DTranspose):
            kernel = layer.kernel
            fan_in = int(np.prod(kernel.shape)) // kernel.shape[-2]
            kernel.assign(rng.normal(0, 1 / np.sqrt(fan_in), kernel.shape).astype("float32"))
    return model


def pixels(shape, seed):
    return np.random.default_rng(seed).uniform(0, 255, shape).astype("float32")


def check(got, expected, *, terms, depth, logits=None):
    """NHWC ``got`` equals NCHW ``expected`` within float32 rounding (relative to the
    ``logits``' size for probabilities computed from them)."""
    got = np.asarray(got)
    logits = expected if logits is None else logits
    assert np.ptp(logits) > 0.1 * np.abs(logits).max() > 0  # not a degenerate case
    expected = expected.transpose(0, 2, 3, 1)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=0, atol=float32_atol(
        expected, terms=terms, depth=depth, scale=np.abs(logits).max()))


def nchw(x):
    return x.transpose(0, 3, 1, 2).astype(np.float64)


@pytest.mark.parametrize("name, skips", [("fcn32s", ()), ("fcn16s", (4,)),
                                         ("fcn8s", (4, 3))])
def test_fcn_follows_pytorch_fcn(name, skips):
    """64x96: pool5 is 2x3, so fc6's 7x7 window and the deconvolutions' overlaps are
    exercised; the fused scores of pool4/pool3 must land on their own pixels."""
    model = build(name, 51, classes=3, input_shape=(64, 96, 3), fc_units=16,
                  classifier_activation=None)
    x = pixels((2, 64, 96, 3), seed=3)
    expected = ref.fcn(ref.state_from_keras(model), nchw(x), skips)
    check(model(x, training=False), expected, terms=9 * 512, depth=18)


def test_segnet_follows_the_caffe_prototxt():
    """Width 1/8 at 36x40: pool4 sees 5x5 (odd), so Caffe's ceil-mode pooling, its
    truncated windows' mask positions and the Upsample layer's ``upsample_h/w``
    back to the odd size all count."""
    model = build("segnet", 52, classes=3, input_shape=(36, 40, 3), width=0.125,
                  classifier_activation=None)
    x = pixels((2, 36, 40, 3), seed=4)
    expected = ref.segnet(ref.state_from_keras(model), nchw(x))
    check(model(x, training=False), expected, terms=9 * 64, depth=26)


def test_unet_valid_follows_figure_1():
    """The paper's unpadded layout at its smallest input (188 -> 4), filters 4."""
    model = build("unet", 53, classes=2, input_shape=(188, 188, 1), padding="valid",
                  filters=4, classifier_activation=None)
    x = pixels((2, 188, 188, 1), seed=5)
    expected = ref.unet(ref.state_from_keras(model), nchw(x), padding=0)
    check(model(x, training=False), expected, terms=9 * 64, depth=19)


def test_two_network_instance_is_two_same_padded_unets():
    """Both outputs: the semantic U-Net's softmax and the separation U-Net's sigmoid,
    each a U-Net of kvision's 'same' variant (32x48, filters 4)."""
    model = build("two_network_instance", 54, classes=3, input_shape=(32, 48, 3),
                  filters=4)
    x = pixels((2, 32, 48, 3), seed=6)
    out = model(x, training=False)
    for key, activation in (("semantic", ref.softmax), ("separation", ref.sigmoid)):
        logits = ref.unet(ref.state_from_keras(model.get_layer(key)), nchw(x), padding=1)
        check(out[key], activation(logits), terms=9 * 64, depth=20, logits=logits)

