"""kvision.layers against independent references, and their serialization."""

import os
import tempfile

import keras
import numpy as np
import pytest
import tensorflow as tf

from kvision.layers import ChannelShuffle, ChannelSplit, LocalResponseNormalization


def _round_trip(layer, x):
    """A model of ``layer`` saved as .keras and loaded with safe_mode: same outputs."""
    inputs = keras.Input(x.shape[1:])
    outputs = layer(inputs)
    model = keras.Model(inputs, outputs)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "layer.keras")
        model.save(path)
        loaded = keras.saving.load_model(path, safe_mode=True)
    expected, got = model(x), loaded(x)
    for a, b in zip(keras.tree.flatten(expected), keras.tree.flatten(got)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    return loaded


@pytest.mark.parametrize("depth_radius, bias, alpha, beta",
                         [(2, 2.0, 1e-4, 0.75), (1, 1.0, 0.5, 0.5), (0, 0.5, 1.0, 1.0),
                          (3, 1.0, 1e-2, 0.75)])
def test_lrn_matches_tensorflow(depth_radius, bias, alpha, beta):
    x = np.random.default_rng(0).normal(0, 3, (2, 5, 4, 11)).astype("float32")
    got = LocalResponseNormalization(depth_radius, bias, alpha, beta)(x)
    expected = tf.nn.local_response_normalization(x, depth_radius=depth_radius,
                                                  bias=bias, alpha=alpha, beta=beta)
    np.testing.assert_allclose(np.asarray(got), expected.numpy(), rtol=1e-5, atol=1e-6)


def test_lrn_serializes():
    layer = LocalResponseNormalization(depth_radius=3, bias=1.5, alpha=2e-4, beta=0.5)
    clone = LocalResponseNormalization.from_config(layer.get_config())
    assert (clone.depth_radius, clone.bias, clone.alpha, clone.beta) == (3, 1.5, 2e-4, 0.5)
    x = np.random.default_rng(1).normal(0, 5, (2, 3, 3, 8)).astype("float32")
    loaded = _round_trip(layer, x)
    assert isinstance(loaded.layers[-1], LocalResponseNormalization)
    assert loaded.layers[-1].depth_radius == 3
    with pytest.raises(ValueError, match="depth_radius"):
        LocalResponseNormalization(depth_radius=-1)


def _numpy_shuffle(x, groups):
    """torchvision's channel_shuffle, written for NCHW, applied to NHWC in numpy."""
    nchw = np.transpose(x, (0, 3, 1, 2))
    n, c, h, w = nchw.shape
    shuffled = nchw.reshape(n, groups, c // groups, h, w).transpose(0, 2, 1, 3, 4)
    return np.transpose(shuffled.reshape(n, c, h, w), (0, 2, 3, 1))


@pytest.mark.parametrize("groups, channels", [(2, 8), (3, 12), (4, 8), (2, 116)])
def test_channel_shuffle_matches_numpy_reference(groups, channels):
    x = np.random.default_rng(2).normal(size=(2, 3, 5, channels)).astype("float32")
    got = np.asarray(ChannelShuffle(groups)(x))
    np.testing.assert_array_equal(got, _numpy_shuffle(x, groups))
    assert not np.array_equal(got, x)  # a real permutation, not the identity


def test_channel_shuffle_interleaves_two_groups_and_takes_unknown_sizes():
    inputs = keras.Input((None, None, 6))
    model = keras.Model(inputs, ChannelShuffle(2)(inputs))
    x = np.broadcast_to(np.arange(6, dtype="float32"), (1, 3, 7, 6))
    np.testing.assert_array_equal(np.asarray(model(x))[0, 2, 6], [0, 3, 1, 4, 2, 5])
    with pytest.raises(ValueError, match="divisible by 4"):
        ChannelShuffle(4)(keras.Input((4, 4, 6)))


def test_channel_shuffle_serializes():
    x = np.random.default_rng(3).normal(size=(2, 4, 4, 12)).astype("float32")
    loaded = _round_trip(ChannelShuffle(3), x)
    assert loaded.layers[-1].get_config()["groups"] == 3


def test_channel_split_halves_and_serializes():
    x = np.random.default_rng(4).normal(size=(2, 3, 3, 10)).astype("float32")
    parts = ChannelSplit(2)(x)
    np.testing.assert_array_equal(np.asarray(parts[0]), x[..., :5])
    np.testing.assert_array_equal(np.asarray(parts[1]), x[..., 5:])
    loaded = _round_trip(ChannelSplit(2), x)
    assert loaded.layers[-1].get_config()["num_splits"] == 2
    with pytest.raises(ValueError, match="divisible by 3"):
        ChannelSplit(3)(keras.Input((4, 4, 10)))
