"""TFLite export and the LiteRT runner, checked against Keras and TensorFlow's own
``tf.lite.Interpreter`` (run by hand here, independently of ``TFLiteModel``)."""

import os
import stat
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

from kvision import registry
from kvision.data import digits
from kvision.export import TFLiteModel, tflite

pytestmark = pytest.mark.filterwarnings("ignore:.*tf.lite.Interpreter is deprecated")


@pytest.fixture(scope="module")
def data():
    return digits.load_digits()


@pytest.fixture(scope="module")
def trained(data):
    """LeNet-5 trained 2 epochs on the digits (about 95% held-out accuracy)."""
    (x_train, y_train), _ = data
    keras.utils.set_random_seed(0)
    model = registry.create("lenet5", input_shape=(32, 32, 1), classes=10)
    model.compile(keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy")
    model.fit(x_train, y_train, epochs=2, batch_size=32, verbose=0)
    return model


@pytest.fixture(scope="module")
def exports(trained, data, tmp_path_factory):
    """One export per variant, calibrated on the training images, checked on the test."""
    (x_train, y_train), (x_test, y_test) = data
    out = tmp_path_factory.mktemp("tflite")
    return {q: tflite(trained, out / f"lenet5-{q}.tflite", q, (x_train, y_train),
                      class_names=digits.CLASS_NAMES, check_data=x_test, check_labels=y_test)
            for q in (None, "float16", "dynamic", "int8")}


def run_interpreter(path, x):
    """TensorFlow's interpreter by hand, one image at a time, (de)quantizing by the
    tensors' own parameters: an implementation independent of TFLiteModel."""
    interpreter = tf.lite.Interpreter(model_path=os.fspath(path))
    interpreter.allocate_tensors()
    inp = interpreter.get_input_details()[0]
    out = interpreter.get_output_details()[0]
    results = []
    for image in x:
        image = image[None]
        if inp["dtype"] != np.float32:
            scale, zero = inp["quantization"]
            image = np.clip(np.rint(image / scale) + zero, -128, 127).astype(inp["dtype"])
        interpreter.set_tensor(inp["index"], image)
        interpreter.invoke()
        y = interpreter.get_tensor(out["index"])[0]
        if out["dtype"] != np.float32:
            scale, zero = out["quantization"]
            y = (y.astype("float64") - zero) * scale
        results.append(y)
    return np.array(results), inp


def test_float32_matches_keras(trained, data, exports):
    _, (x_test, y_test) = data
    result = exports[None]
    assert result.format == "tflite"
    assert result.size_mb == pytest.approx(os.path.getsize(result.path) / 1e6)
    expected = keras.ops.convert_to_numpy(trained(x_test, training=False))
    by_hand, _ = run_interpreter(result.path, x_test)
    assert np.max(np.abs(by_hand - expected)) <= 1e-4
    assert result.parity["max_abs_diff"] == pytest.approx(
        np.max(np.abs(by_hand - expected)), abs=1e-6)
    runner = TFLiteModel(result.path)
    assert runner.input_shape == (None, 32, 32, 1)
    assert runner.input_dtype == np.float32
    assert runner.class_names == list(digits.CLASS_NAMES)
    # Any batch size, and any batch_size per call, gives the same outputs.
    for n, batch_size in ((1, None), (7, 3), (len(x_test), None)):
        got = runner.predict(x_test[:n], batch_size=batch_size)
        assert got.shape == (n, 10) and got.dtype == np.float32
        np.testing.assert_allclose(got, by_hand[:n], atol=1e-6)
    assert result.latency_ms is not None and result.latency_ms > 0
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(os.stat(result.path).st_mode) == 0o666 & ~umask  # not a temp file's 0600


@pytest.mark.parametrize("quantize, agreement, max_size", [
    ("float16", 0.99, 0.55),   # float16 weights: half the file
    ("dynamic", 0.97, 0.35),   # int8 weights
])
def test_float16_and_dynamic_agree(trained, data, exports, quantize, agreement, max_size):
    _, (x_test, _) = data
    result = exports[quantize]
    assert result.format == f"tflite-{quantize}"
    got = TFLiteModel(result.path).predict(x_test)
    expected = keras.ops.convert_to_numpy(trained(x_test, training=False))
    assert np.mean(got.argmax(-1) == expected.argmax(-1)) >= agreement
    assert os.path.getsize(result.path) <= max_size * os.path.getsize(exports[None].path)


def test_int8_agreement_accuracy_and_size(trained, data, exports):
    _, (x_test, y_test) = data
    result = exports["int8"]
    expected = keras.ops.convert_to_numpy(trained(x_test, training=False)).argmax(-1)
    by_hand, inp = run_interpreter(result.path, x_test)
    assert inp["dtype"] == np.float32  # float I/O unless int8_io
    top1 = by_hand.argmax(-1)
    assert np.mean(top1 == expected) >= 0.97
    accuracy_keras = np.mean(expected == y_test)
    accuracy_int8 = np.mean(top1 == y_test)
    assert accuracy_keras - accuracy_int8 <= 0.01
    assert result.parity["accuracy_drop"] == pytest.approx(
        100 * (accuracy_keras - accuracy_int8), abs=1e-6)
    assert os.path.getsize(result.path) <= 0.35 * os.path.getsize(exports[None].path)
    # Full-integer: the convolution kernels are stored as int8.
    interpreter = tf.lite.Interpreter(model_path=result.path)
    kernels = [d for d in interpreter.get_tensor_details() if "c1_conv" in d["name"]
               and len(d["shape"]) == 4]
    assert kernels and all(d["dtype"] == np.int8 for d in kernels)


def test_int8_io_from_tf_data(trained, data, tmp_path):
    (x_train, y_train), (x_test, y_test) = data
    pipeline = tf.data.Dataset.from_tensor_slices((x_train, y_train)).batch(16)
    result = tflite(trained, tmp_path / "io.tflite", "int8", pipeline, int8_io=True,
                    check_data=x_test, check_labels=y_test)
    runner = TFLiteModel(result.path)
    assert runner.input_dtype == np.int8
    assert runner.quantization["output"][0] > 0
    expected = keras.ops.convert_to_numpy(trained(x_test, training=False)).argmax(-1)
    by_hand, inp = run_interpreter(result.path, x_test)
    assert inp["dtype"] == np.int8
    assert np.mean(by_hand.argmax(-1) == expected) >= 0.97
    np.testing.assert_allclose(runner.predict(x_test), by_hand, atol=1e-6)


def test_int8_from_a_folder(trained, data, tmp_path):
    """A folder of class folders calibrates, and its labels give the accuracy figures."""
    (x_train, y_train), _ = data
    pick = np.random.default_rng(0).choice(len(x_train), 300, replace=False)
    for i in pick:
        folder = tmp_path / "images" / digits.CLASS_NAMES[y_train[i]]
        folder.mkdir(parents=True, exist_ok=True)
        png = tf.io.encode_png(np.round(x_train[i]).astype("uint8"))
        (folder / f"{i}.png").write_bytes(png.numpy())
    result = tflite(trained, tmp_path / "folder.tflite", "int8", tmp_path / "images",
                    class_names=digits.CLASS_NAMES)
    assert result.parity["num_images"] == 256
    assert result.parity["top1_agreement"] >= 0.97
    # The check images are 256 of the folder's: the Keras accuracy on them is that of
    # the same images from the training arrays (PNG keeps the rounded pixels).
    rounded = np.round(x_train[pick])
    keras_top1 = keras.ops.convert_to_numpy(trained(rounded, training=False)).argmax(-1)
    accuracy = np.mean(keras_top1 == y_train[pick])
    assert abs(result.parity["accuracy_reference"] - accuracy) <= 0.05


def test_mixed_precision_model_exports_as_float32(trained, data, tmp_path):
    _, (x_test, _) = data
    keras.config.set_dtype_policy("mixed_float16")
    try:
        mixed = registry.create("lenet5", input_shape=(32, 32, 1), classes=10)
    finally:
        keras.config.set_dtype_policy("float32")
    mixed.set_weights(trained.get_weights())
    result = tflite(mixed, tmp_path / "mixed.tflite", check_data=x_test[:64])
    runner = TFLiteModel(result.path)
    assert runner.input_dtype == np.float32
    expected = keras.ops.convert_to_numpy(trained(x_test[:64], training=False))
    np.testing.assert_allclose(runner.predict(x_test[:64]), expected, atol=1e-4)


@keras.saving.register_keras_serializable(package="kvision_tests")
class CumulativeProduct(keras.Layer):
    """Needs tf.math.cumprod: TFLite has no builtin for it (only its Flex delegate)."""

    def call(self, x):
        return tf.reshape(tf.math.cumprod(x, axis=1), [-1, 64])

    def get_config(self):
        return super().get_config()


def test_flex_ops_named_unless_allowed(tmp_path):
    inputs = keras.Input((8, 8, 1))
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(
        CumulativeProduct()(inputs)))
    with pytest.raises(ValueError, match="Cumprod"):
        tflite(model, tmp_path / "flex.tflite")
    assert not os.listdir(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = tflite(model, tmp_path / "flex.tflite", allow_flex=True)
    with open(result.path, "rb") as f:
        assert b"FlexCumprod" in f.read()
    assert result.parity["flex_ops"] == ["FlexCumprod"]
    # This machine's interpreters lack the Flex delegate: said, not hidden.
    assert any("FlexCumprod" in str(w.message) for w in caught)
    with pytest.raises(ValueError, match="FlexCumprod"):
        TFLiteModel(result.path)


def test_corrupt_or_missing_file(exports, tmp_path):
    with pytest.raises(FileNotFoundError):
        TFLiteModel(tmp_path / "missing.tflite")
    garbage = tmp_path / "garbage.tflite"
    garbage.write_bytes(os.urandom(2000))
    with pytest.raises(ValueError, match="garbage.tflite"):
        TFLiteModel(garbage)
    with open(exports[None].path, "rb") as f:
        head = f.read()[:30_000]  # a real file cut short
    truncated = tmp_path / "truncated.tflite"
    truncated.write_bytes(head)
    with pytest.raises(ValueError, match="truncated.tflite"):
        TFLiteModel(truncated)


def test_bad_arguments_write_nothing(trained, data, tmp_path):
    (x_train, _), _ = data
    target = tmp_path / "model.tflite"
    with pytest.raises(ValueError, match="representative_data"):
        tflite(trained, target, "int8")
    with pytest.raises(ValueError, match="directory"):
        tflite(trained, tmp_path)
    with pytest.raises(ValueError, match="int8_io"):
        tflite(trained, target, "float16", int8_io=True)
    with pytest.raises(ValueError, match=r"\(N, 32, 32, 1\)"):
        tflite(trained, target, "int8", x_train[:, :16, :16])
    with pytest.raises(ValueError, match="class_names"):
        tflite(trained, target, class_names=["a", "b"])
    assert not os.listdir(tmp_path)


def test_failing_parity_keeps_existing_file(trained, data, exports, tmp_path):
    _, (x_test, _) = data
    target = tmp_path / "model.tflite"
    labels = tmp_path / "model.labels.txt"
    old = b"the user's earlier file"
    target.write_bytes(old)
    labels.write_text("old labels\n")
    with pytest.raises(ValueError, match="top-1 agreement"):
        tflite(trained, target, "float16", check_data=x_test[:32],
               class_names=digits.CLASS_NAMES, min_top1_agreement=1.01)
    assert target.read_bytes() == old
    assert labels.read_text() == "old labels\n"
    assert sorted(os.listdir(tmp_path)) == ["model.labels.txt", "model.tflite"]
    # A directory made for the export goes too.
    with pytest.raises(ValueError, match="max abs diff"):
        tflite(trained, tmp_path / "new" / "model.tflite", check_data=x_test[:32], atol=-1.0)
    assert sorted(os.listdir(tmp_path)) == ["model.labels.txt", "model.tflite"]
