"""``kvision predict`` and ``kvision evaluate`` on exported artifacts: a ``.tflite``
file (float32 and int8) and a SavedModel version directory answer what
``TFLiteModel`` and the SavedModel's ``serving_default`` signature answer."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from kvision import cli, registry
from kvision.data import digits, load, load_image
from kvision.export import TFLiteModel, saved_model, tflite

pytestmark = pytest.mark.filterwarnings("ignore:.*tf.lite.Interpreter is deprecated")

NAMES = [str(i) for i in range(10)]


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """A LeNet-5 trained 2 epochs on the digits, exported as SavedModel version 1 and
    float32 / int8 ``.tflite`` files, with 4 test digits as PNG files."""
    root = tmp_path_factory.mktemp("exports")
    (x_train, y_train), (x_test, _) = digits.load_digits()
    keras.utils.set_random_seed(0)
    model = registry.create("lenet5", input_shape=(32, 32, 1), classes=10)
    model.compile(keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy")
    model.fit(x_train, y_train, epochs=2, batch_size=32, verbose=0)
    names = list(load("digits", image_size=32, channels=1).class_names)
    saved_model(model, root / "lenet5", class_names=names, warmup=False)
    tflite(model, root / "lenet5.tflite", class_names=names)
    tflite(model, root / "lenet5.int8.tflite", quantize="int8",
           representative_data=x_train[:200], int8_io=True, class_names=names)
    images = []
    for i in range(4):
        path = root / f"digit{i}.png"
        path.write_bytes(tf.io.encode_png(np.round(x_test[i]).astype("uint8")).numpy())
        images.append(str(path))
    return root, images


def signature_probabilities(version_dir, images):
    signature = tf.saved_model.load(str(version_dir)).signatures["serving_default"]
    return signature(images=tf.constant(images))["probabilities"].numpy()


def reference(exports, which, images):
    """The probabilities the export itself gives on ``images`` (float pixels)."""
    root, _ = exports
    if which == "savedmodel":
        return signature_probabilities(root / "lenet5" / "1", images)
    return TFLiteModel(root / which).predict(images)


def kvision(capsys, argv):
    code = cli.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("which", ["lenet5.tflite", "lenet5.int8.tflite", "savedmodel"])
def test_predict_answers_what_the_export_answers(exports, which, capsys):
    root, files = exports
    ref = root / "lenet5" / "1" if which == "savedmodel" else root / which
    code, out, err = kvision(capsys, ["predict", str(ref), *files, "--top-k", "10",
                                      "--json"])
    assert code == 0, err
    assert f"model {ref}" in err and "classifier, 10 classes, names from its labels" in err
    pixels = np.stack([load_image(f, (32, 32), 1) for f in files])
    expected = reference(exports, which, pixels)
    for answer, row in zip(json.loads(out), expected):
        got = np.zeros(10)
        for p in answer["predictions"]:
            got[int(p["label"])] = p["probability"]
        np.testing.assert_allclose(got, row, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("which", ["lenet5.int8.tflite", "savedmodel"])
def test_evaluate_top1_is_the_exports_accuracy(exports, which, capsys):
    root, _ = exports
    ref = root / "lenet5" / "1" if which == "savedmodel" else root / which
    png = root / f"confusion-{which}.png"
    code, out, err = kvision(capsys, ["evaluate", str(ref), "--data", "digits", "--json",
                                      "--confusion", str(png)])
    assert code == 0, err
    data = load("digits", image_size=32, channels=1)
    pairs = list(data.test.as_numpy_iterator())
    images = np.stack([x for x, _ in pairs]).astype("float32")
    labels = np.array([y for _, y in pairs])
    accuracy = np.mean(reference(exports, which, images).argmax(-1) == labels)
    assert json.loads(out)["top1_accuracy"] == pytest.approx(accuracy, abs=1e-12)
    assert png.is_file()


def test_a_model_directory_answers_with_its_newest_version(exports, tmp_path, capsys):
    root, files = exports
    model_dir = tmp_path / "served"
    model_dir.mkdir()
    for version in ("3", "12"):  # 12 > 3 as numbers, not as text
        os.symlink(root / "lenet5" / "1", model_dir / version, target_is_directory=True)
    code, _, err = kvision(capsys, ["predict", str(model_dir), files[0]])
    assert code == 0, err
    assert f"model {model_dir / '12'} (SavedModel version 12, the newest of 3, 12)" in err


def test_broken_exports_are_one_clear_error_line(exports, tmp_path, capsys):
    corrupt = tmp_path / "broken.tflite"
    corrupt.write_bytes(b"not a flatbuffer at all")
    empty = tmp_path / "export" / "1"
    empty.mkdir(parents=True)
    _, files = exports
    for ref, words in [(corrupt, "is not a TFLite model"), (empty, "saved_model.pb")]:
        code, out, err = kvision(capsys, ["predict", str(ref), files[0]])
        assert code == 2 and out == ""
        assert err.count("\n") == 1 and words in err and str(ref) in err, err
