"""SavedModel exports for TensorFlow Serving, checked the ways the server would use them.

References: ``saved_model_cli`` (the CLI that ships with TensorFlow), TF Serving's own
protos (``PredictionLog``, ``ModelServerConfig``), the TF1 session-based loader (the
path of TF Serving's C++ loader), the Keras model on pixels decoded and resized with
``tf.image``/scikit-image, and ``np.argsort`` for the top-k outputs.
"""

import os
import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format
from skimage import data as skdata
from tensorflow_serving.apis import prediction_log_pb2
from tensorflow_serving.config import model_server_config_pb2

from kvision.data import load_digits
from kvision.export import next_version, saved_model, serving_config
from kvision.export import savedmodel as savedmodel_module

SIZE = 16
NAMES = ["cat", "dog", "bird", "fish", "frog"]
TOP_K = 3


def _tiny_classifier(channels=3, classes=5, seed=1):
    """A small CNN on raw 0..255 pixels (preprocessing inside), softmax over classes."""
    inputs = keras.Input((SIZE, SIZE, channels), name="pixels")
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(inputs)
    x = keras.layers.Conv2D(8, 3, activation="relu",
                            kernel_initializer=keras.initializers.HeNormal(seed))(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    # Wide weights spread the scores, so the top-k order is not decided by rounding.
    outputs = keras.layers.Dense(classes, activation="softmax",
                                 kernel_initializer=keras.initializers.RandomNormal(
                                     stddev=3.0, seed=seed))(x)
    return keras.Model(inputs, outputs)


def _photos():
    """Three real RGB photos of different sizes (uint8)."""
    return [skdata.chelsea(), skdata.astronaut(), skdata.coffee()]


def _resized(images, size=SIZE):
    """Reference pixels: ``tf.image.resize`` bilinear, no antialias, float32 0..255."""
    return np.stack([tf.image.resize(tf.cast(im, tf.float32), (size, size),
                                     method="bilinear", antialias=False).numpy()
                     for im in images])


def _listing(path):
    """Every path under ``path`` with file sizes and mtimes (to prove nothing changed)."""
    if not os.path.exists(path):
        return None
    found = {}
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            full = os.path.join(root, name)
            stat = os.stat(full)
            found[os.path.relpath(full, path)] = (stat.st_size, stat.st_mtime_ns)
    return found


@pytest.fixture(scope="module")
def tiny():
    return _tiny_classifier()


@pytest.fixture(scope="module")
def exported(tiny, tmp_path_factory):
    """Version 1 of the tiny classifier, with class names, checked on real photos."""
    model_dir = tmp_path_factory.mktemp("serving") / "tiny"
    result = saved_model(tiny, model_dir, class_names=NAMES, top_k=TOP_K,
                         check_inputs=_resized(_photos()))
    return result


def test_result_and_layout(exported, tiny):
    path = os.fspath(exported)
    assert path == str(exported) == exported.path
    assert os.path.basename(path) == "1"
    assert os.path.isfile(os.path.join(path, "saved_model.pb"))
    assert exported.format == "savedmodel"
    on_disk = sum(p.stat().st_size for p in pathlib.Path(path).rglob("*")
                  if p.is_file())
    assert exported.size_mb == pytest.approx(on_disk / 1e6)
    assert exported.parity["max_abs_diff"] <= 1e-4
    assert exported.parity["top1_agreement"] == 1.0
    assert exported.parity["image_bytes_max_abs_diff"] <= 1e-4
    assert exported.latency_ms > 0
    # Nothing but the version directory was left beside it (no temp directory).
    assert os.listdir(os.path.dirname(path)) == ["1"]


def test_saved_model_cli_lists_both_signatures(exported):
    # saved_model_cli ships with TensorFlow; the venv's copy sits beside python.
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    shown = subprocess.run([cli, "show", "--all", "--dir", os.fspath(exported)],
                           capture_output=True, text=True, timeout=120,
                           env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert shown.returncode == 0, shown.stderr[-2000:]
    blocks = {}
    for block in shown.stdout.split("signature_def[")[1:]:
        name = block.split("'")[1]
        blocks[name] = block.split("Method name is:")[0]
    assert {"serving_default", "serve_image_bytes"} <= set(blocks)
    default = blocks["serving_default"]
    assert "inputs['images']" in default
    images_info = default.split("inputs['images']")[1]
    assert "dtype: DT_FLOAT" in images_info.split("outputs[")[0]
    assert f"shape: (-1, {SIZE}, {SIZE}, 3)" in images_info.split("outputs[")[0]
    bytes_info = blocks["serve_image_bytes"].split("inputs['image_bytes']")[1]
    assert "dtype: DT_STRING" in bytes_info.split("outputs[")[0]
    assert "shape: (-1)" in bytes_info.split("outputs[")[0]
    for block in (default, blocks["serve_image_bytes"]):
        for key, dtype, shape in [("probabilities", "DT_FLOAT", "(-1, 5)"),
                                  ("top_k_scores", "DT_FLOAT", f"(-1, {TOP_K})"),
                                  ("top_k_classes", "DT_INT32", f"(-1, {TOP_K})"),
                                  ("top_k_labels", "DT_STRING", f"(-1, {TOP_K})")]:
            info = block.split(f"outputs['{key}']")[1].split("name:")[0]
            assert f"dtype: {dtype}" in info and f"shape: {shape}" in info, (key, info)


def test_serving_default_matches_keras_and_argsort(exported, tiny):
    x = _resized(_photos())
    signature = tf.saved_model.load(os.fspath(exported)).signatures["serving_default"]
    out = {k: v.numpy() for k, v in signature(images=tf.constant(x)).items()}
    expected = tiny.predict(x, verbose=0)
    np.testing.assert_allclose(out["probabilities"], expected, atol=1e-5)
    order = np.argsort(expected, axis=-1)[:, ::-1][:, :TOP_K]
    # The order is not decided by rounding: the gaps are far above float error.
    gaps = -np.diff(np.sort(expected, axis=-1)[:, ::-1][:, :TOP_K + 1], axis=-1)
    assert gaps.min() > 1e-4
    assert out["top_k_classes"].dtype == np.int32
    np.testing.assert_array_equal(out["top_k_classes"], order)
    np.testing.assert_allclose(out["top_k_scores"],
                               np.take_along_axis(expected, order, -1), atol=1e-5)
    assert out["top_k_labels"].tolist() == [[n.encode() for n in np.array(NAMES)[row]]
                                            for row in order]


def test_serve_image_bytes_on_real_jpeg_and_png(exported, tiny):
    photos = _photos()
    jpegs = [tf.io.encode_jpeg(p, quality=90).numpy() for p in photos]
    pngs = [tf.io.encode_png(p).numpy() for p in photos]
    signature = tf.saved_model.load(os.fspath(exported)).signatures["serve_image_bytes"]
    # One request mixing sizes and formats, as a REST client's {"b64": ...} list.
    out = signature(image_bytes=tf.constant(jpegs + pngs))
    # PNG is lossless: the reference is the original photo resized with tf.image.
    # JPEG: the same bytes decoded with tf.io.decode_jpeg, then resized.
    decoded = [tf.io.decode_jpeg(j, channels=3).numpy() for j in jpegs]
    expected = tiny.predict(_resized(decoded + photos), verbose=0)
    np.testing.assert_allclose(out["probabilities"].numpy(), expected, atol=1e-5)
    np.testing.assert_array_equal(out["top_k_classes"].numpy(),
                                  np.argsort(expected, axis=-1)[:, ::-1][:, :TOP_K])


def test_image_bytes_with_the_models_channels(tmp_path):
    """LeNet-5-style 1-channel model: serving decodes to 1 channel, digits as PNG."""
    model = _tiny_classifier(channels=1, classes=10)
    _, (x_test, _) = load_digits(image_size=SIZE, channels=1)
    digits = x_test[:6].astype("uint8")
    # RGB PNGs of the digits: the server converts them to the model's one channel.
    rgb = [tf.io.encode_png(np.repeat(d, 3, axis=-1)).numpy() for d in digits]
    result = saved_model(model, tmp_path / "digits", check_inputs=x_test[:4],
                         image_bytes=True)
    loaded = tf.saved_model.load(os.fspath(result))
    grey = loaded.signatures["serve_image_bytes"](image_bytes=tf.constant(rgb))
    np.testing.assert_allclose(grey["probabilities"].numpy(),
                               model.predict(digits.astype("float32"), verbose=0),
                               atol=1e-5)
    assert "top_k_labels" not in grey  # no class names given
    assert grey["top_k_classes"].shape == (6, 5)


def test_uint8_images_signature(tiny, tmp_path):
    result = saved_model(tiny, tmp_path / "u8", input_dtype="uint8", image_bytes=False,
                         top_k=10)
    loaded = tf.saved_model.load(os.fspath(result))
    assert set(loaded.signatures) == {"serving_default"}
    signature = loaded.signatures["serving_default"]
    spec = signature.structured_input_signature[1]["images"]
    assert spec.dtype == tf.uint8 and spec.shape.as_list() == [None, SIZE, SIZE, 3]
    x = _resized(_photos()).round().astype("uint8")
    out = signature(images=tf.constant(x))
    expected = tiny.predict(x.astype("float32"), verbose=0)
    np.testing.assert_allclose(out["probabilities"].numpy(), expected, atol=1e-5)
    assert out["top_k_scores"].shape == (3, 5)  # k = min(top_k, classes)
    with pytest.raises((TypeError, ValueError, tf.errors.InvalidArgumentError)):
        signature(images=tf.constant(x.astype("float32")))


def test_session_based_loader_runs_serving_default_with_labels_asset(exported, tiny):
    """The path of TF Serving's C++ loader: a TF1 Session with the SavedModel's graph."""
    path = os.fspath(exported)
    x = _resized(_photos())
    with tf.Graph().as_default() as graph, tf.compat.v1.Session(graph=graph) as session:
        meta_graph = tf.compat.v1.saved_model.loader.load(session, ["serve"], path)
        signature = meta_graph.signature_def["serving_default"]
        out = session.run({k: v.name for k, v in signature.outputs.items()},
                          {signature.inputs["images"].name: x})
    expected = tiny.predict(x, verbose=0)
    np.testing.assert_allclose(out["probabilities"], expected, atol=1e-5)
    # The labels come from the asset file, which is one of the graph's assets.
    assert [a.filename for a in meta_graph.asset_file_def] == ["labels.txt"]
    with open(os.path.join(path, "assets", "labels.txt"), encoding="utf-8") as f:
        assert f.read().splitlines() == NAMES
    top = np.argsort(expected, axis=-1)[:, ::-1][:, :TOP_K]
    assert out["top_k_labels"].tolist() == [[NAMES[i].encode() for i in row]
                                            for row in top]


def test_warmup_requests_parse_and_run(exported, tiny):
    path = os.fspath(exported)
    records = list(tf.data.TFRecordDataset(
        os.path.join(path, "assets.extra", "tf_serving_warmup_requests")))
    logs = [prediction_log_pb2.PredictionLog.FromString(r.numpy()) for r in records]
    requests = {log.predict_log.request.model_spec.signature_name: log.predict_log.request
                for log in logs}
    assert set(requests) == {"serving_default", "serve_image_bytes"}
    images = tf.make_ndarray(requests["serving_default"].inputs["images"])
    assert images.shape == (1, SIZE, SIZE, 3) and images.dtype == np.float32
    encoded = tf.make_ndarray(requests["serve_image_bytes"].inputs["image_bytes"])
    assert encoded.shape == (1,)
    assert tf.io.decode_png(encoded[0]).shape == (SIZE, SIZE, 3)
    # Replayed as TF Serving does at load time, each request answers like Keras.
    loaded = tf.saved_model.load(path)
    out = loaded.signatures["serving_default"](images=tf.constant(images))
    np.testing.assert_allclose(out["probabilities"].numpy(),
                               tiny.predict(images, verbose=0), atol=1e-5)


def test_next_version_and_explicit_versions(tiny, tmp_path):
    model_dir = tmp_path / "m"
    assert next_version(model_dir) == 1
    saved_model(tiny, model_dir, version=3, warmup=False, image_bytes=False)
    (model_dir / "notes").mkdir()  # not a version: ignored
    assert next_version(model_dir) == 4
    result = saved_model(tiny, model_dir, warmup=False, image_bytes=False)
    assert os.path.basename(os.fspath(result)) == "4"
    assert sorted(os.listdir(model_dir)) == ["3", "4", "notes"]


def test_non_classifier_exports_its_named_outputs(tmp_path):
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    outputs = keras.layers.Conv2D(2, 3, padding="same", activation="sigmoid",
                                  name="mask")(x)
    model = keras.Model(inputs, outputs)
    result = saved_model(model, tmp_path / "seg", warmup=False)
    loaded = tf.saved_model.load(os.fspath(result))
    x = _resized(_photos()[:2])
    for name, arg in [("serving_default", x),
                      ("serve_image_bytes", [tf.io.encode_png(p.astype("uint8")).numpy()
                                             for p in x.round()])]:
        out = loaded.signatures[name](**{"images" if name == "serving_default"
                                         else "image_bytes": tf.constant(arg)})
        assert set(out) == {"mask"}
        np.testing.assert_allclose(out["mask"].numpy(),
                                   model.predict(x.round() if name != "serving_default"
                                                 else x, verbose=0), atol=1e-5)
    with pytest.raises(ValueError, match="not a classifier"):
        saved_model(model, tmp_path / "seg", class_names=["a", "b"])


def test_mixed_precision_model_exports_float32(tmp_path):
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = _tiny_classifier()
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert model.layers[2].compute_dtype == "float16"
    result = saved_model(model, tmp_path / "mixed", warmup=False, image_bytes=False)
    signature = tf.saved_model.load(os.fspath(result)).signatures["serving_default"]
    assert signature.structured_outputs["probabilities"].dtype == tf.float32
    x = _resized(_photos())
    out = signature(images=tf.constant(x))["probabilities"].numpy()
    # Same answers as the mixed model, to float16 precision, computed in float32.
    np.testing.assert_allclose(out, model.predict(x, verbose=0), atol=2e-2)
    assert result.parity["max_abs_diff"] <= 1e-4


def test_serving_config_parses_with_tf_serving_protos(tiny, tmp_path):
    base = tmp_path / "saved_models"
    for name in ("beta", "alpha"):
        saved_model(tiny, base / name, warmup=False, image_bytes=False)
    (base / "empty").mkdir()                      # no version: not a model
    (base / "half" / "1").mkdir(parents=True)     # version without saved_model.pb
    (base / "README.md").write_text("not a model")
    (base / "models.config").write_text("old content")
    path = serving_config(base)
    assert path == os.path.join(str(base), "models.config")
    config = text_format.Parse(open(path).read(), model_server_config_pb2.ModelServerConfig())
    models = config.model_config_list.config
    assert [m.name for m in models] == ["alpha", "beta"]
    assert [m.base_path for m in models] == [str(base / "alpha"), str(base / "beta")]
    assert all(os.path.isabs(m.base_path) and m.model_platform == "tensorflow"
               for m in models)
    other = serving_config(base, output=tmp_path / "elsewhere.config")
    assert os.fspath(other).endswith("elsewhere.config")
    assert sorted(os.listdir(base)) == ["README.md", "alpha", "beta", "empty", "half",
                                        "models.config"]
    with pytest.raises(ValueError, match="No model"):
        serving_config(base / "empty")
    with pytest.raises(FileNotFoundError):
        serving_config(tmp_path / "nowhere")


def test_bad_input_leaves_model_dir_unchanged(tiny, tmp_path, monkeypatch):
    model_dir = tmp_path / "m"
    saved_model(tiny, model_dir, warmup=False, image_bytes=False)
    before = _listing(model_dir)

    def fails(match, **kwargs):
        with pytest.raises(ValueError, match=match):
            saved_model(kwargs.pop("model", tiny), model_dir, **kwargs)
        assert _listing(model_dir) == before

    fails("already exists", version=1)
    fails("Expected 5 class_names", class_names=NAMES[:4])
    free = keras.Input((None, None, 3))
    fails("input_shape", model=keras.Model(free, keras.layers.Conv2D(2, 1)(free)))
    fails("input_shape", model=keras.Sequential([keras.layers.Dense(3)]))
    fails("input_dtype", input_dtype="float16")
    fails(r"check_inputs must be images of shape \(N, 16, 16, 3\)",
          check_inputs=np.zeros((2, 8, 8, 3)))

    # A decoding bug in the image-bytes path (upside-down images) is caught by the
    # check, and the half-written export is removed.
    original = savedmodel_module._decode_resize
    monkeypatch.setattr(savedmodel_module, "_decode_resize",
                        lambda *a: tf.reverse(original(*a), axis=[0]))
    fails("serve_image_bytes does not answer")
    monkeypatch.undo()

    # Labels read back in the wrong order (a broken asset) are caught too.
    original_table = savedmodel_module._labels_table
    monkeypatch.setattr(savedmodel_module, "_labels_table",
                        lambda names, scratch: original_table(names[::-1], scratch))
    fails("top_k_labels .* do not name", class_names=NAMES, warmup=False,
          image_bytes=False)
    monkeypatch.undo()

    # NOTES' pitfall: a plain tf.saved_model.save of functions closing over the Keras
    # model loads with tf.saved_model.load but not in TF Serving's session loader.
    def plain_save(model, spec, export_path, scratch):
        @tf.function(input_signature=[tf.TensorSpec((None, SIZE, SIZE, 3), tf.float32,
                                                    name="images")])
        def serve(images):
            return {"probabilities": model(images, training=False)}
        module = tf.Module()
        module.model = model
        tf.saved_model.save(module, export_path, signatures={"serving_default": serve})
        assert tf.saved_model.load(export_path).signatures  # the object loader is fine

    monkeypatch.setattr(savedmodel_module, "_write", plain_save)
    fails("does not run in TF Serving's session-based loader", image_bytes=False,
          warmup=False)
    monkeypatch.undo()

    # A path that is a file, and a model dir that did not exist and must not appear.
    a_file = tmp_path / "file"
    a_file.write_text("keep me")
    with pytest.raises(ValueError, match="is a file"):
        saved_model(tiny, a_file)
    assert a_file.read_text() == "keep me"
    # A parity failure (no export can meet atol=-1) reports the figures.
    with pytest.raises(ValueError, match=r"does not answer as the Keras model does: "
                                         r"max abs diff .* > -1"):
        saved_model(tiny, tmp_path / "new", atol=-1, warmup=False)
    assert not (tmp_path / "new").exists()
