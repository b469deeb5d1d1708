"""The ``serve_gradcam`` SavedModel signature (kvision.export.gradcam) against the
Keras computation: the same class maps, classes and probabilities, through a nested
backbone, read with TF Serving's session-based loader."""

import os

import numpy as np
import pytest
import tensorflow as tf

import keras

from kvision.export.gradcam import SIGNATURE, gradcam_saved_model
from kvision.export.savedmodel import _session
from kvision.visualization import attribution as A


def _nested(seed=0):
    """A classifier whose spatial layers sit in a nested "backbone" model, with a
    flattening softmax head (so d logit / dA differs across positions)."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((12, 12, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="c1")(x)
    x = keras.layers.Conv2D(6, 3, strides=2, padding="same", name="c2")(x)
    x = keras.layers.ReLU(name="r2")(x)
    backbone = keras.Model(inputs, x, name="backbone")
    images = keras.Input((12, 12, 3))
    y = keras.layers.Flatten()(backbone(images))
    y = keras.layers.Dense(3, activation="softmax", name="predictions")(y)
    return keras.Model(images, y, name="outer")


def _direct_gradcam(model, x, path):
    """The paper's formula by hand, independent of the export's graph: A the nested
    layer's output (a sub-model of the backbone), the backbone's later layers and
    the Dense called one by one on it, the softmax left out."""
    backbone, dense = model.get_layer("backbone"), model.get_layer("predictions")
    inner = keras.Model(backbone.inputs, backbone.get_layer(path).output)
    later = {"c1": ["c2", "r2"], "r2": []}[path]
    with tf.GradientTape() as tape:
        a = inner(x)
        tape.watch(a)
        h = a
        for name in later:
            h = backbone.get_layer(name)(h)
        logits = tf.reshape(h, (len(x), -1)) @ dense.kernel + dense.bias
        top = tf.argmax(logits, axis=-1)
        score = tf.reduce_sum(tf.gather(logits, top, batch_dims=1))
    g = tape.gradient(score, a).numpy()
    cam = np.maximum(np.einsum("nk,nhwk->nhw", g.mean(axis=(1, 2)), a.numpy()), 0)
    cam = tf.image.resize(cam[..., None], x.shape[1:3], method="bilinear").numpy()[..., 0]
    return cam / cam.max(axis=(1, 2), keepdims=True), top.numpy()


def test_serve_gradcam_answers_the_keras_maps_with_the_prediction(tmp_path):
    model = _nested()
    x = np.random.default_rng(1).uniform(0, 255, (5, 12, 12, 3)).astype("float32")
    path = tmp_path / "gradcam"
    result = gradcam_saved_model(model, path, check_inputs=x[:2])
    with _session(str(path)) as run:  # TF Serving's loader, on images it never saw
        got = run(SIGNATURE, {"images": x})
    expected, top = _direct_gradcam(model, x, "r2")
    assert got["gradcam"].shape == (5, 12, 12) and got["gradcam"].dtype == np.float32
    # Maps in [0, 1]: float32 error of a few ops on values of order 1.
    np.testing.assert_allclose(got["gradcam"], expected, rtol=0, atol=1e-5)
    np.testing.assert_allclose(got["gradcam"], A.gradcam(model, x), rtol=0, atol=1e-5)
    np.testing.assert_array_equal(got["class"], top)
    np.testing.assert_allclose(got["probabilities"], model.predict(x, verbose=0),
                               rtol=0, atol=1e-5)  # float32, graphs differ
    assert result.parity["gradcam_max_abs_diff"] <= 1e-4
    assert result.parity["gradcam_class_agreement"] == 1.0


def test_bad_requests_are_refused_before_anything_is_written(tmp_path):
    model = _nested()
    existing = tmp_path / "taken"
    existing.mkdir()
    with pytest.raises(ValueError, match="already exists"):
        gradcam_saved_model(model, existing)
    with pytest.raises(ValueError, match="No layer 'backbone/c9'"):
        gradcam_saved_model(model, tmp_path / "a", layer="backbone/c9")
    with pytest.raises(ValueError, match=r"check_inputs must be images of shape \(N, 12"):
        gradcam_saved_model(model, tmp_path / "b", check_inputs=np.zeros((1, 8, 8, 3)))
    inputs = keras.Input((12, 12, 3))
    two = keras.Model(inputs, [keras.layers.Conv2D(2, 3)(inputs)])
    with pytest.raises(ValueError, match=r"one output of shape \(None, classes\)"):
        gradcam_saved_model(two, tmp_path / "c")
    assert sorted(os.listdir(tmp_path)) == ["taken"]  # no staging left behind


def test_kvision_export_gradcam_serves_the_maps_beside_serving_default(tmp_path, capsys):
    from kvision import cli

    model = _nested()
    model.save(tmp_path / "tiny.keras")
    served = tmp_path / "served"
    assert cli.main(["export", str(tmp_path / "tiny.keras"), "--format", "savedmodel",
                     "--gradcam-layer", "backbone/c1", "--out", str(served)]) == 0
    assert "serve_gradcam's maps within" in capsys.readouterr().out
    x = np.random.default_rng(3).uniform(0, 255, (5, 12, 12, 3)).astype("float32")
    with _session(str(served / "1")) as run:  # TF Serving's loader, unseen images
        got = run(SIGNATURE, {"images": x})
        default = run("serving_default", {"images": x})
    expected, top = _direct_gradcam(model, x, "c1")  # a layer by its path
    np.testing.assert_allclose(got["gradcam"], expected, rtol=0, atol=1e-5)
    np.testing.assert_allclose(got["gradcam"], A.gradcam(model, x, layer="backbone/c1"),
                               rtol=0, atol=1e-5)
    np.testing.assert_array_equal(got["class"], top)
    np.testing.assert_array_equal(default["top_k_classes"][:, 0], top)
    np.testing.assert_allclose(got["probabilities"], default["probabilities"],
                               rtol=0, atol=1e-5)  # float32, graphs differ
    # TF Serving warms the new signature up too: one request per signature
    warmup = served / "1" / "assets.extra" / "tf_serving_warmup_requests"
    from tensorflow_serving.apis import prediction_log_pb2

    signatures = set()
    for record in tf.data.TFRecordDataset(str(warmup)):
        log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
        signatures.add(log.predict_log.request.model_spec.signature_name)
    assert signatures == {"serving_default", "serve_image_bytes", SIGNATURE}


@pytest.mark.parametrize("extra, words", [
    (["--gradcam-layer", "backbone/c9"], "No layer 'backbone/c9'"),
    (["--gradcam", "--format", "tflite"], "--format must include savedmodel"),
])
def test_kvision_export_gradcam_refuses_bad_requests_in_one_line(tmp_path, capsys,
                                                                 extra, words):
    from kvision import cli

    _nested().save(tmp_path / "tiny.keras")
    assert cli.main(["export", str(tmp_path / "tiny.keras"), *extra,
                     "--out", str(tmp_path / "served")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and words in err and "Traceback" not in err
    assert not (tmp_path / "served").exists()
