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
from reference import ops, segmentation_nets as ref

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


def test_deeplabv1_follows_the_largefov_prototxt():
    """73x89, sides 8k+1 as the prototxt's 321 (stride-8 map 10x12), where Caffe's
    ceil-mode pools of pad 1 and kvision's "same" ones are the same windows; fc6 at
    rate 4 so its taps land inside the map."""
    model = build("deeplabv1", 55, classes=3, input_shape=(73, 89, 3), fc_units=16,
                  atrous_rate=4, classifier_activation=None)
    x = pixels((2, 73, 89, 3), seed=7)
    expected = ref.deeplab_largefov(ref.state_from_keras(model), nchw(x), rate=4)
    check(model(x, training=False), expected, terms=9 * 512, depth=17)


def _small_backbone():
    """A functional backbone with strides 2, 4 (twice: P2 is the second), 8, 16; the
    stride-2 convolutions pad as TF's "same" does (nothing before, one after)."""
    inputs = keras.Input((64, 80, 3))
    x = inputs
    for name, width, stride in (("c1", 4, 2), ("c2", 6, 2), ("c2b", 6, 1), ("c3", 8, 2),
                                ("c4", 8, 2), ("c5", 8, 1)):
        x = keras.layers.Conv2D(width, 3, strides=stride, padding="same", activation="relu",
                                name=name)(x)
    return keras.Model(inputs, x)


def _small_backbone_atrous(state, x):
    """DeepLab's atrous version at output stride 8 (research/deeplab's
    resnet_utils.stack_blocks_dense rule): the convolution that would reach stride 16
    (c4) runs at stride 1, those after it (c5) at rate 2; returns (output, P2)."""
    def tf_same(name, h, stride=1, rate=1):
        if stride == 2:  # TF "same" at even sides: the extra row/column after
            h = np.pad(h, ((0, 0), (0, 0), (0, 1), (0, 1)))
            return ops.relu(ref.conv(state, name, h, stride=2))
        return ops.relu(ref.conv(state, name, h, padding=rate, dilation=rate))

    h = tf_same("c1", x, 2)
    low = h = tf_same("c2b", tf_same("c2", h, 2))
    h = tf_same("c3", h, 2)
    h = tf_same("c4", h)
    return tf_same("c5", h, rate=2), low


def test_deeplabv3_plus_follows_research_deeplab():
    """ASPP and decoder as model.py builds them (no separable convolutions) on a small
    backbone made atrous at output stride 8 (rates 1/2/3 doubled to 2/4/6 on an
    8x10 map); the projection's input channels are moved to the reference's
    concatenation order (image pooling first)."""
    keras.utils.set_random_seed(56)
    model = randomize_weights(kvision.create(
        "deeplabv3_plus", classes=3, input_shape=(64, 80, 3), backbone=_small_backbone(),
        output_stride=8, atrous_rates=(1, 2, 3), filters=8, low_level_filters=4,
        classifier_activation=None), seed=56)
    rates = (2, 4, 6)
    state = ref.state_from_keras(model)
    kernel = state["aspp_project_conv.weight"]  # (out, [1x1, rates..., pool] x 8, 1, 1)
    blocks = np.split(kernel, 2 + len(rates), axis=1)
    state["aspp_project_conv.weight"] = np.concatenate(blocks[-1:] + blocks[:-1], axis=1)
    names = {"image_pooling": "aspp_pool_1x1", "aspp0": "aspp_1x1",
             **{f"aspp{i}": f"aspp_rate{r}" for i, r in enumerate(rates, start=1)},
             "concat_projection": "aspp_project", "feature_projection0": "decoder_low_level",
             "decoder_conv0_0": "decoder_conv1", "decoder_conv0_1": "decoder_conv2"}
    names = {k: (f"{v}_conv", f"{v}_bn") for k, v in names.items()} | {"logits": "logits"}
    x = pixels((2, 64, 80, 3), seed=8)
    high, low = _small_backbone_atrous(state, nchw(x))
    expected = ref.deeplabv3_plus_head(state, high, low, (64, 80), rates, names)
    check(model(x, training=False), expected, terms=9 * 32, depth=12)
