"""FCN: parameter count of the reference FCN-8s, the convolutionalization identity,
skip taps and bad input. (Overfitting one batch: tests/segmentation/test_unet.py.)"""

import numpy as np
import pytest

import keras
from kvision import create, get_info
from kvision.models.segmentation.fcn import convolutionalize
from kvision.testing import assert_float32_close


@pytest.fixture(scope="module")
def fcn8s():
    return create("fcn8s", classes=21, input_shape=(224, 224, 3))


def _trainable(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


def test_fcn8s_has_the_reference_parameter_count(fcn8s):
    # wkentaro/pytorch-fcn FCN8s(n_class=21) = Caffe voc-fcn8s: VGG16 convs 14,714,688
    # + fc6 102,764,544 + 4,096 + fc7 16,777,216 + 4,096 + score_fr 86,037
    # + score_pool4 10,773 + score_pool3 5,397 + upscore2/upscore_pool4 2 x 7,056
    # + upscore8 112,896 (bias-free deconvolutions).
    assert _trainable(fcn8s) == 134_489_759 == get_info("fcn8s").num_params
    assert fcn8s.output_shape == (None, 224, 224, 21)


# wkentaro/pytorch-fcn FCN32s / FCN16s (n_class=21) = Caffe voc-fcn32s / voc-fcn16s:
# VGG16 convs, fc6 (7x7x512x4096 + 4096), fc7 (4096x4096 + 4096), score_fr
# (4096x21 + 21), bias-free deconvolutions (kernel twice the stride).
_BASE = 14_714_688 + 25_088 * 4096 + 4096 + 4096 * 4096 + 4096 + 4096 * 21 + 21
REFERENCE = {"fcn32s": _BASE + 64 * 64 * 21 * 21,
             "fcn16s": _BASE + (512 * 21 + 21) + 4 * 4 * 21 * 21 + 32 * 32 * 21 * 21}


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_fcn32s_fcn16s_have_the_reference_parameter_counts(name):
    model = create(name, classes=21, input_shape=(64, 64, 3))  # counts: any size
    assert _trainable(model) == REFERENCE[name] == get_info(name).num_params
    assert model.output_shape == (None, 64, 64, 21)


def test_convolutionalized_fc6_fc7_give_the_classifier_output(fcn8s):
    """fc1/fc2 of a VGG16 classifier copied into the 7x7 fc6 / 1x1 fc7 convolutions:
    on a 7x7 pool5 map (what a 224x224 input gives) the center of fc7 is the
    classifier's fc2, and its "predictions" layer on it gives the classifier's
    output; the conv layers are the classifier's."""
    keras.utils.set_random_seed(0)
    vgg = create("vgg16", input_shape=(224, 224, 3), classes=10)
    convolutionalize(vgg, fcn8s)
    for name in ("block1_conv1", "block5_conv3"):
        np.testing.assert_array_equal(fcn8s.get_layer("backbone").get_layer(name).kernel,
                                      vgg.get_layer(name).kernel)
    pool5 = np.random.default_rng(0).uniform(0, 2, (1, 7, 7, 512)).astype("float32")
    fc7 = np.asarray(fcn8s.get_layer("fc7")(fcn8s.get_layer("fc6")(pool5)))
    assert fc7.shape == (1, 7, 7, 4096)
    head = [vgg.get_layer(name) for name in ("flatten", "fc1", "fc2")]
    fc2 = pool5
    for layer in head:
        fc2 = layer(fc2)
    fc2 = np.asarray(fc2)
    # fc6 (7x7x512 = 25,088 terms) then fc7, each summed in another order by the
    # convolutions: float32 rounding relative to the values' size.
    assert_float32_close(fc7[0, 3, 3], fc2[0], terms=7 * 7 * 512, depth=2)
    predictions = vgg.get_layer("predictions")
    probs = np.asarray(predictions(fc7[:, 3, 3]))
    logits = fc2 @ np.asarray(predictions.kernel) + np.asarray(predictions.bias)
    # fc6 (7x7x512 = 25,088 terms), fc7 and the logits in another summation order;
    # a softmax moves by at most its logits' change.
    assert_float32_close(probs, np.asarray(predictions(fc2)), terms=7 * 7 * 512, depth=3,
                         scale=np.abs(logits).max())


def test_skips_tap_pool3_and_pool4_of_vgg(fcn8s):
    backbone = fcn8s.get_layer("backbone")
    assert [tuple(t.shape[1:3]) for t in backbone.outputs] == \
        [(7, 7), (14, 14), (28, 28)]  # pool5 (stride 32), pool4 (16), pool3 (8)
    assert fcn8s.get_layer("score_pool3").input.shape[-1] == 256  # pool3's channels
    assert fcn8s.get_layer("score_pool4").input.shape[-1] == 512


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="at least 32x32 pixels"):  # every task's check
        create("fcn32s", input_shape=(16, 16, 3), fc_units=8)
    with pytest.raises(ValueError, match="classes"):
        create("fcn8s", classes=0)
    with pytest.raises(ValueError, match="backbone must be"):
        create("fcn16s", backbone=3)
