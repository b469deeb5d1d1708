"""ImagePreprocessing against keras.applications' own preprocess_input functions."""

import importlib
import os
import tempfile

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras.applications import imagenet_utils

from kvision import registry
from kvision.layers import ImagePreprocessing


def _pixels(shape=(2, 5, 4, 3), seed=0):
    return np.random.default_rng(seed).uniform(0, 255, shape).astype("float32")


@pytest.mark.parametrize("mode", ["caffe", "tf", "torch"])
def test_matches_keras_preprocess_input(mode):
    x = _pixels()
    expected = imagenet_utils.preprocess_input(x.copy(), mode=mode)  # numpy path
    expected_tensor = imagenet_utils.preprocess_input(tf.constant(x), mode=mode)
    got = np.asarray(ImagePreprocessing(mode)(x))
    np.testing.assert_allclose(got, expected, rtol=0, atol=2e-5)
    np.testing.assert_allclose(got, np.asarray(expected_tensor), rtol=0, atol=2e-5)
    assert not np.allclose(got, x)  # it did something


def test_none_is_identity_and_casts_integer_pixels():
    x = _pixels().round()
    got = ImagePreprocessing("none")(x.astype("uint8"))
    assert got.dtype == "float32"
    np.testing.assert_array_equal(np.asarray(got), x)
    np.testing.assert_allclose(np.asarray(ImagePreprocessing("tf")(x.astype("uint8"))),
                               x / 127.5 - 1.0, atol=1e-6)


def test_registry_modes_match_their_keras_modules():
    """Each network with ImageNet weights: its ModelInfo.preprocessing gives what
    keras.applications.<module>.preprocess_input of its counterpart gives."""
    x = _pixels(seed=1)
    checked = 0
    for name in registry.list_models():
        info = registry.get_info(name)
        if info.checkpoint is not None:  # torchvision's and timm's: ImageNet mean and std
            # (GoogLeNet's transform_input, and timm's mean = std = 0.5 for the
            # TF-slim Inception-v4 weights, make them x / 127.5 - 1)
            tf_mode = name in ("googlenet", "inception_v4")
            assert info.preprocessing == ("tf" if tf_mode else "torch"), name
            continue
        if info.keras_application is None:
            assert info.preprocessing == "none", name  # trained on raw pixels here
            continue
        builder = getattr(keras.applications, info.keras_application)
        module = importlib.import_module(builder.__module__)
        expected = np.asarray(module.preprocess_input(x.copy()))
        got = np.asarray(ImagePreprocessing(info.preprocessing)(x))
        np.testing.assert_allclose(got, expected, atol=2e-5, err_msg=name)
        checked += 1
    assert checked >= 20
    assert registry.get_info("vgg16").preprocessing == "caffe"
    assert registry.get_info("resnet50_v2").preprocessing == "tf"
    assert registry.get_info("densenet121").preprocessing == "torch"
    assert registry.get_info("efficientnet_b0").preprocessing == "none"


def test_serializes_with_safe_mode():
    inputs = keras.Input((6, 6, 3))
    model = keras.Model(inputs, ImagePreprocessing("caffe", name="pre")(inputs))
    x = _pixels((1, 6, 6, 3), seed=2)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "pre.keras")
        model.save(path)
        loaded = keras.saving.load_model(path, safe_mode=True)
    assert isinstance(loaded.get_layer("pre"), ImagePreprocessing)
    assert loaded.get_layer("pre").mode == "caffe"
    np.testing.assert_array_equal(np.asarray(loaded(x)), np.asarray(model(x)))


def test_bad_arguments():
    with pytest.raises(ValueError, match="caffe.*tf.*torch.*none.*got 'bgr'"):
        ImagePreprocessing("bgr")
    with pytest.raises(ValueError, match="3 channels"):
        ImagePreprocessing("torch")(np.zeros((1, 4, 4, 1), "float32"))
    with pytest.raises(ValueError, match="preprocessing must be one of"):
        registry.register("not_a_model", task="classification", family="x", year=2000,
                          paper="", preprocessing="imagenet")(lambda: None)
