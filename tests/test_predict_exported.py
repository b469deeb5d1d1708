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


@pytest.fixture(scope="module")
def task_exports(tmp_path_factory):
    """A tiny OverFeat detector (NMS inside) and a tiny U-Net, each exported as a
    SavedModel and a float32 ``.tflite``, with 2 scenes as 48x48 PNG files."""
    from kvision.data.synthetic import digit_scenes
    from kvision.models.detection import overfeat

    root = tmp_path_factory.mktemp("tasks")
    keras.utils.set_random_seed(0)
    classifier = registry.create("overfeat", backbone="lenet5", classes=10,
                                 input_shape=(32, 32, 1), units=(16,), box_units=(8,))
    detector = overfeat.inference_model(classifier, image_shape=(48, 48, 1),
                                        scales=(1.0, 0.8), score_threshold=0.1,
                                        iou_threshold=0.5, max_detections=20)
    segmenter = registry.create("unet", classes=3, input_shape=(48, 48, 1), filters=4)
    images = digit_scenes(2, image_size=48, objects=(1, 2), channels=1,
                          seed=4).images.astype("float32")
    files = []
    for i, image in enumerate(images):
        path = root / f"scene{i}.png"
        path.write_bytes(tf.io.encode_png(np.round(image).astype("uint8")).numpy())
        files.append(str(path))
    for name, model in [("det", detector), ("seg", segmenter)]:
        saved_model(model, root / name, warmup=False, image_bytes=False,
                    check_inputs=images)
        tflite(model, root / f"{name}.tflite", check_data=images, atol=None)
    return root, files, np.stack([load_image(f, (48, 48), 1) for f in files])


def export_outputs(root, ref, pixels):
    """The export's own outputs by name: the TFLite signature or serving_default."""
    if ref.endswith(".tflite"):
        from kvision.export.tflite import run_detector

        return run_detector(root / ref, pixels)[0]
    signature = tf.saved_model.load(str(root / ref / "1")).signatures["serving_default"]
    return {k: v.numpy() for k, v in signature(images=tf.constant(pixels)).items()}


@pytest.mark.parametrize("ref", ["det.tflite", "det"])
def test_a_detectors_export_answers_its_detections(task_exports, ref, capsys):
    root, files, pixels = task_exports
    code, out, err = kvision(capsys, ["predict", str(root / ref), *files, "--json"])
    assert code == 0, err
    assert "detector" in err
    expected = export_outputs(root, ref, pixels)
    assert int(np.sum(expected["num_detections"])) > 0
    for i, answer in enumerate(json.loads(out)):
        n = int(expected["num_detections"][i])
        found = answer["detections"]
        assert [d["class"] for d in found] == expected["classes"][i][:n].astype(int).tolist()
        np.testing.assert_allclose([d["box"] for d in found] or np.zeros((0, 4)),
                                   expected["boxes"][i][:n], rtol=1e-5, atol=1e-3)
        np.testing.assert_allclose([d["score"] for d in found],
                                   expected["scores"][i][:n], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("ref", ["seg.tflite", "seg"])
def test_a_segmenters_export_answers_its_label_map(task_exports, ref, capsys):
    root, files, pixels = task_exports
    code, out, err = kvision(capsys, ["predict", str(root / ref), *files, "--json"])
    assert code == 0, err
    assert "segmenter, 3 classes" in err
    if ref.endswith(".tflite"):
        maps = TFLiteModel(root / ref).predict(pixels)
    else:  # the SavedModel answers the U-Net's one named output
        (maps,) = export_outputs(root, ref, pixels).values()
    for answer, scores in zip(json.loads(out), maps):
        present, counts = np.unique(scores.argmax(-1), return_counts=True)
        got = {int(c["class"]): c["pixels"] for c in answer["classes"]}
        assert got == dict(zip(present.tolist(), counts.tolist()))


def test_evaluate_refuses_classifier_data_for_a_detectors_export_in_one_line(
        task_exports, capsys):
    root, _, _ = task_exports
    code, out, err = kvision(capsys, ["evaluate", str(root / "det.tflite"), "--data",
                                      "digits"])
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "No detection data at 'digits'" in err


@pytest.mark.parametrize("ref", ["det.tflite", "det"])
def test_evaluate_measures_a_detectors_export(task_exports, ref, capsys):
    root, _, _ = task_exports
    code, out, err = kvision(capsys, ["evaluate", str(root / ref), "--max-images", "3",
                                      "--json"])
    assert code == 0, err
    figures = json.loads(out)
    assert figures["task"] == "detection" and figures["images"] == 3
