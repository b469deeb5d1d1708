"""Weights: local files are checked before loading; "imagenet" goes through
keras.applications' own download path."""

import os

import keras
import numpy as np
import pytest

import kvision
from kvision import testing


def test_local_weights_file_round_trip(tmp_path):
    source = testing.randomize_weights(kvision.create("vgg11_bn", input_shape=(32, 32, 3),
                                                      classes=5))
    path = str(tmp_path / "vgg.weights.h5")
    source.save_weights(path)
    model = kvision.create("vgg11_bn", input_shape=(32, 32, 3), classes=5, weights=path)
    x = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    np.testing.assert_array_equal(source(x), model(x))


def test_mismatched_file_names_the_differing_variables(tmp_path):
    path = str(tmp_path / "other.weights.h5")
    kvision.create("vgg11", input_shape=(32, 32, 3), classes=5).save_weights(path)
    with pytest.raises(ValueError, match=r"dense_2/vars/0: the model expects \(4096, 7\), "
                                         r"the file has \(4096, 5\)"):
        kvision.create("vgg11", input_shape=(32, 32, 3), classes=7, weights=path)
    with pytest.raises(ValueError, match="missing in the file"):
        kvision.create("vgg13", input_shape=(32, 32, 3), classes=5, weights=path)


def test_missing_or_wrong_kind_of_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        kvision.create("vgg11", weights=str(tmp_path / "absent.weights.h5"))
    text = tmp_path / "weights.txt"
    text.write_text("nope")
    with pytest.raises(ValueError, match=".weights.h5"):
        kvision.create("vgg11", weights=str(text))


def test_imagenet_refused_for_families_without_it():
    with pytest.raises(ValueError, match="No ImageNet weights exist for lenet5"):
        kvision.create("lenet5", weights="imagenet")


def test_imagenet_goes_through_keras_applications_download(monkeypatch, tmp_path):
    """Offline: keras.applications' get_file is replaced by a local file; the rest of
    the real path (the keras builder loading it, the move into kvision) runs."""
    reference = testing.randomize_weights(
        keras.applications.VGG16(weights=None, include_top=False, input_shape=(32, 32, 3)))
    path = str(tmp_path / "vgg16_notop.weights.h5")
    reference.save_weights(path)
    requested = []

    def fake_get_file(fname=None, origin=None, **kwargs):
        requested.append(origin)
        return path

    from keras.src.applications import vgg16
    monkeypatch.setattr(vgg16.file_utils, "get_file", fake_get_file)
    model = kvision.create("vgg16", weights="imagenet", include_top=False,
                           input_shape=(32, 32, 3))
    assert requested and requested[0].startswith("https://")
    assert "vgg16" in requested[0]
    x = np.random.default_rng(0).uniform(0, 255, (1, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(model(x), reference(x), atol=1e-5)


def test_imagenet_offline_fails_with_a_clear_error(monkeypatch):
    def offline(*args, **kwargs):
        raise Exception("URL fetch failure: no network")

    from keras.src.applications import vgg16
    monkeypatch.setattr(vgg16.file_utils, "get_file", offline)
    with pytest.raises(ConnectionError, match="local .weights.h5"):
        kvision.create("vgg16", weights="imagenet", include_top=False,
                       input_shape=(32, 32, 3))


def test_vgg_parity_with_keras_applications():
    assert testing.assert_keras_parity("vgg16", keras.applications.VGG16, (32, 32, 3)) == 0.0
    assert testing.assert_keras_parity("vgg19", keras.applications.VGG19, (40, 40, 3)) == 0.0


def test_imagenet_path_carries_normalization_statistics(monkeypatch, tmp_path):
    """EfficientNet's Normalization layer derives its scale from the loaded mean and
    variance: after the "imagenet" path the kvision model must use the new ones."""
    reference = testing.randomize_weights(keras.applications.EfficientNetB0(
        weights=None, include_top=False, input_shape=(32, 32, 3)))
    norm = reference.get_layer("normalization")
    assert not np.allclose(keras.ops.convert_to_numpy(norm.mean), 0.0)
    path = str(tmp_path / "b0_notop.weights.h5")
    reference.save_weights(path)
    from keras.src.applications import efficientnet
    monkeypatch.setattr(efficientnet.file_utils, "get_file", lambda *a, **k: path)
    model = kvision.create("efficientnet_b0", weights="imagenet", include_top=False,
                           input_shape=(32, 32, 3))
    # keras' own ImageNet model (built from the same "download") is the reference: with
    # ImageNet weights both add the standard-deviation rescaling keras adds.
    imagenet = keras.applications.EfficientNetB0(weights="imagenet", include_top=False,
                                                 input_shape=(32, 32, 3))
    x = np.random.default_rng(0).uniform(0, 255, (1, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(model(x), imagenet(x), atol=1e-5)
    assert not np.allclose(model(x), reference(x), atol=1e-5)
