"""``kvision predict``: which model answers, files that cannot be read, and class names
that travel inside the ``.keras`` file.

The classifier is hand-set: the mean colour of the image times ``eye(3) / 50``, then
a softmax, so its answer on a one-colour file is known without running it (a
one-colour image stays one colour through any resize).
"""

import json
import os
import zipfile

import keras
import numpy as np
import pytest
import tensorflow as tf

import kvision.models
from kvision import cli, predict
from kvision.saving import save_model, saved_class_names

NAMES = ["red", "green", "blue"]
COLOURS = {"red": (200, 10, 10), "green": (10, 200, 10), "blue": (10, 10, 200)}


def _classifier(size=(8, 8)):
    inputs = keras.Input((*size, 3))
    x = keras.layers.GlobalAveragePooling2D()(inputs)
    dense = keras.layers.Dense(3, activation="softmax", name="predictions")
    outputs = dense(x)
    dense.set_weights([np.eye(3, dtype="float32") / 50, np.zeros(3, "float32")])
    return keras.Model(inputs, outputs)


def _expected(colour):
    """The hand-set classifier's probabilities for a one-colour image (numpy)."""
    logits = np.asarray(colour, "float64") / 50
    e = np.exp(logits - logits.max())
    return e / e.sum()


def _png(path, colour, size=(12, 16)):
    image = np.zeros((*size, 3), "uint8")
    image[...] = colour
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(tf.io.encode_png(image).numpy())
    return path


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    """A classifier saved with its names inside and no class_names.txt beside it."""
    path = tmp_path_factory.mktemp("predict_models") / "colours" / "colours.keras"
    save_model(_classifier(), path, class_names=NAMES)
    return path


def _run(capsys, *args):
    capsys.readouterr()
    code = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


# --- class names inside the model -----------------------------------------------------

def test_class_names_travel_inside_a_plain_keras_file(model_file, tmp_path, capsys):
    with zipfile.ZipFile(model_file) as archive:  # still Keras' three members
        assert sorted(archive.namelist()) == ["config.json", "metadata.json",
                                              "model.weights.h5"]
    loaded = keras.saving.load_model(model_file, safe_mode=True)
    x = np.random.default_rng(0).uniform(0, 255, (2, 8, 8, 3)).astype("float32")
    np.testing.assert_allclose(loaded.predict(x, verbose=0),
                               _classifier().predict(x, verbose=0), rtol=1e-6)
    # Copied alone into another folder, the model still knows its names.
    copy = tmp_path / "elsewhere.keras"
    copy.write_bytes(model_file.read_bytes())
    trained = predict.load_trained(copy)
    assert trained.class_names == tuple(NAMES)
    assert trained.describe() == (f"{copy}: classifier, 3 classes, names saved in the "
                                  f"model")
    blue = _png(tmp_path / "b.png", COLOURS["blue"])
    code, out, err = _run(capsys, "predict", copy, blue)
    assert code == 0, err
    assert out.startswith(f"{tmp_path / 'b.png'}: blue ")
    assert f"kvision predict: model {copy}: classifier" in err


def test_names_inside_win_and_class_names_txt_is_the_fallback(tmp_path):
    path = tmp_path / "run" / "run.keras"
    save_model(_classifier(), path, class_names=NAMES)
    (path.parent / "class_names.txt").write_text("a\nb\nc\n")
    assert predict.load_trained(path).class_names == tuple(NAMES)
    plain = tmp_path / "plain" / "plain.keras"
    save_model(_classifier(), plain)  # no names: nothing added to Keras' metadata
    assert saved_class_names(plain) is None
    assert predict.load_trained(plain).class_names == ("0", "1", "2")
    (plain.parent / "class_names.txt").write_text("a\nb\nc\n")
    trained = predict.load_trained(plain)
    assert trained.class_names == ("a", "b", "c")
    assert "class_names.txt" in trained.names_from
    (plain.parent / "class_names.txt").write_text("a\nb\n")
    with pytest.raises(ValueError, match="2 class names .* 3 outputs"):
        predict.load_trained(plain)


def test_a_segmenter_saved_by_kvision_names_its_classes(tmp_path, capsys):
    """A pixel is class 1 ("red") when its red channel exceeds 100, else background."""
    inputs = keras.Input((8, 8, 3))
    conv = keras.layers.Conv2D(2, 1, activation="softmax")
    outputs = conv(inputs)
    kernel = np.zeros((1, 1, 3, 2), "float32")
    kernel[0, 0, 0, 1] = 1.0
    conv.set_weights([kernel, np.array([100.0, 0.0], "float32")])
    path = tmp_path / "seg.keras"
    save_model(keras.Model(inputs, outputs), path, class_names=["background", "red"])
    image = np.zeros((16, 16, 3), "uint8")
    image[:, :4] = COLOURS["red"]  # a quarter of the pixels
    (tmp_path / "scene.png").write_bytes(tf.io.encode_png(image).numpy())
    code, out, err = _run(capsys, "predict", path, tmp_path / "scene.png", "--json")
    assert code == 0, err
    (result,) = json.loads(out)
    assert [(c["label"], c["fraction"]) for c in result["classes"]] == [
        ("background", 0.75), ("red", 0.25)]


def test_save_model_keeps_the_old_file_when_saving_fails(tmp_path, monkeypatch):
    path = tmp_path / "m.keras"
    save_model(_classifier(), path, class_names=NAMES)
    before = path.read_bytes()
    model = _classifier()

    def broken(filepath, *args, **kwargs):
        with open(filepath, "wb") as f:
            f.write(b"half a fi")
        raise OSError("disk full")

    monkeypatch.setattr(model, "save", broken)
    with pytest.raises(OSError, match="disk full"):
        save_model(model, path, class_names=NAMES)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["m.keras"]  # no temporary left behind
    with pytest.raises(ValueError, match="list of names"):
        save_model(_classifier(), tmp_path / "n.keras", class_names="red")


def test_kvision_train_saves_the_names_inside(tmp_path):
    from kvision.train import train_classifier

    result = train_classifier("lenet5", epochs=1, steps_per_epoch=1, verbose=0,
                              out_dir=str(tmp_path / "run"), export=False)
    assert saved_class_names(result.keras_path) == result.class_names == tuple(
        str(d) for d in range(10))


# --- which model answers ----------------------------------------------------------------

def test_a_name_meaning_a_run_and_a_pretrained_network_is_refused(tmp_path, monkeypatch,
                                                                  capsys):
    monkeypatch.chdir(tmp_path)
    save_model(_classifier(), "saved_models/efficientnet_lite0/efficientnet_lite0.keras",
               class_names=NAMES)
    image = _png(tmp_path / "g.png", COLOURS["green"])
    code, out, err = _run(capsys, "predict", "efficientnet_lite0", image)
    assert code == 2 and out == ""
    assert "saved_models/efficientnet_lite0 (the run)" in err
    assert "efficientnet_lite0:imagenet (the ImageNet network)" in err
    assert "Traceback" not in err
    code, out, err = _run(capsys, "predict", "saved_models/efficientnet_lite0", image)
    assert code == 0, err
    assert ("model saved_models/efficientnet_lite0/efficientnet_lite0.keras: classifier"
            in err)
    assert out.startswith(f"{image}: green ")
    # export takes trained files only: a run name is the run; NAME:imagenet is not one.
    found = predict.find_model_file("efficientnet_lite0")
    assert found.endswith("efficientnet_lite0.keras")
    with pytest.raises(ValueError, match="not a trained model"):
        predict.find_model_file("efficientnet_lite0:imagenet")


def test_name_colon_imagenet_is_the_pretrained_network(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a run of the same name is here: not taken
    save_model(_classifier(), "saved_models/efficientnet_lite0/efficientnet_lite0.keras")
    asked = []

    def create(name, **kwargs):  # stands in for the 4.7M-parameter network
        asked.append((name, kwargs))
        return keras.Sequential([keras.Input((4, 4, 3)), keras.layers.Flatten(),
                                 keras.layers.Dense(1000, activation="softmax")])

    monkeypatch.setattr(kvision.models, "create", create)
    trained = predict.load_trained("efficientnet_lite0:imagenet")
    assert asked == [("efficientnet_lite0", {"weights": "imagenet"})]
    assert trained.class_names[281] == "tabby, tabby cat"
    assert trained.describe().startswith("efficientnet_lite0 (ImageNet weights): "
                                         "classifier, 1000 classes")
    with pytest.raises(ValueError, match="'lenet5' is not a registry network with "
                                         "ImageNet weights; those that have them: .*"
                                         "efficientnet_lite0"):
        predict.load_trained("lenet5:imagenet")


# --- files that cannot be read, folders, --top-k -------------------------------------

def test_a_bad_file_among_good_ones_is_reported_and_the_rest_answered(model_file,
                                                                        tmp_path, capsys):
    red = _png(tmp_path / "red.png", COLOURS["red"])
    blue = _png(tmp_path / "blue.png", COLOURS["blue"])
    bad = tmp_path / "bad.jpg"
    bad.write_text("not a picture")
    code, out, err = _run(capsys, "predict", model_file, red, bad, blue, "--top-k", "2")
    assert code == 1
    lines = out.splitlines()
    assert [line.split(":")[0] for line in lines] == [str(red), str(blue)]
    p = _expected(COLOURS["red"])
    assert lines[0] == f"{red}: red {p[0]:.3f}, green {p[1]:.3f}"
    assert (f"kvision predict: Cannot decode {str(bad)!r}: expected a JPEG, PNG, GIF or "
            f"BMP image (Unknown image file format).") in err.splitlines()
    assert "{{" not in err and "Op:" not in err and "Traceback" not in err

    code, out, err = _run(capsys, "predict", model_file, red, bad, "--json")
    assert code == 1
    answers = json.loads(out)
    assert [a["path"] for a in answers] == [str(red), str(bad)]
    np.testing.assert_allclose([q["probability"] for q in answers[0]["predictions"]],
                               np.sort(p)[::-1], rtol=1e-5)
    assert "Cannot decode" in answers[1]["error"] and "predictions" not in answers[1]


def test_a_folder_is_read_as_its_images(model_file, tmp_path, capsys):
    folder = tmp_path / "photos"
    green = _png(folder / "b_green.png", COLOURS["green"])
    red = _png(folder / "sub" / "a_red.png", COLOURS["red"])
    (folder / "notes.txt").write_text("not an image, and not named as one")
    (tmp_path / "empty").mkdir()
    code, out, err = _run(capsys, "predict", model_file, folder, tmp_path / "empty",
                          "--top-k", "1")
    assert code == 1  # the empty folder
    assert out.splitlines() == [f"{green}: green {_expected(COLOURS['green'])[1]:.3f}",
                                f"{red}: red {_expected(COLOURS['red'])[0]:.3f}"]
    assert "No image files in the folder" in err and "notes.txt" not in err


def test_top_k_is_at_least_one_and_at_most_the_classes(model_file, tmp_path, capsys):
    image = _png(tmp_path / "r.png", COLOURS["red"])
    for bad in ("0", "-1", "two"):
        with pytest.raises(SystemExit) as stop:
            cli.main(["predict", str(model_file), str(image), "--top-k", bad])
        assert stop.value.code == 2
        expected = f"--top-k: expected an integer >= 1, got '{bad}'"
        assert expected in capsys.readouterr().err
    code, out, _ = _run(capsys, "predict", model_file, image, "--top-k", "10")
    assert code == 0 and out.count(" 0.") == 3  # every class, once
    with pytest.raises(ValueError, match=">= 1, got 0"):
        predict.predict_images(predict.load_trained(model_file), [str(image)], k=0)


def test_a_free_size_segmenter_reports_a_bad_file_plainly(tmp_path, capsys):
    inputs = keras.Input((None, None, 3))
    outputs = keras.layers.Conv2D(2, 1, activation="softmax")(inputs)
    path = tmp_path / "free.keras"
    save_model(keras.Model(inputs, outputs), path, class_names=["background", "thing"])
    good = _png(tmp_path / "good.png", COLOURS["red"], size=(6, 10))
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    code, out, err = _run(capsys, "predict", path, bad, good, "--json")
    assert code == 1
    answers = json.loads(out)
    assert answers[1]["image_size"] == [6, 10]
    assert answers[0]["error"] == (f"Cannot decode {str(bad)!r}: expected a JPEG, PNG, "
                                   f"GIF or BMP image (Invalid PNG).")
    assert "Traceback" not in err


def test_sort_names_a_file_that_did_not_decode(model_file, tmp_path, capsys):
    folder = tmp_path / "in"
    _png(folder / "r.png", COLOURS["red"])
    (folder / "broken.jpg").write_text("not a picture")
    (folder / "notes.txt").write_text("text")
    code, out, err = _run(capsys, "sort", model_file, "--input", folder,
                          "--output", tmp_path / "out")
    assert code == 1
    assert os.listdir(tmp_path / "out" / "red") == ["r.png"]
    assert "Cannot decode" in err and "broken.jpg" in err
    assert f"not an image: {folder / 'notes.txt'}" in err


def test_a_run_name_is_its_folder_under_saved_models(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    save_model(_classifier(), "saved_models/colours-2/colours.keras", class_names=NAMES)
    (tmp_path / "saved_models" / "colours-2" / "checkpoints").mkdir()
    assert predict.find_model_file("colours-2") == os.path.join(
        "saved_models", "colours-2", "colours.keras")  # a second run keeps NAME.keras
    assert predict.load_trained("colours-2").class_names == tuple(NAMES)
    with pytest.raises(FileNotFoundError, match="there is no saved_models/colours-3"):
        predict.load_trained("colours-3")
