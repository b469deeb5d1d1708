"""``kvision explain`` as a user meets it: cli.main, a saved model with a nested
backbone, a PNG in, a PNG out; bad input exits 2 with one line."""

import numpy as np
import pytest
from PIL import Image

import keras

from kvision import cli
from kvision.commands.explain import METHOD_NAMES, methods
from kvision.visualization import attribution as A

SIZE = 16


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A saved classifier whose convolutions are in a nested "backbone" model, and
    a 16x16 colour image at its input size."""
    keras.utils.set_random_seed(0)
    root = tmp_path_factory.mktemp("explain")
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="c1")(x)
    x = keras.layers.Conv2D(6, 3, strides=2, padding="same", activation="relu",
                            name="c2")(x)
    backbone = keras.Model(inputs, x, name="backbone")
    images = keras.Input((SIZE, SIZE, 3))
    y = keras.layers.Flatten()(backbone(images))
    y = keras.layers.Dense(3, activation="softmax", name="predictions")(y)
    keras.Model(images, y, name="tiny").save(root / "tiny.keras")
    pixels = np.random.default_rng(0).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(root / "image.png")
    return root, pixels


def _explain(root, *extra):
    return cli.main(["explain", str(root / "tiny.keras"), str(root / "image.png"),
                     *extra])


def _inner(root, path):
    """The nested backbone's own sub-model to ``path``: an independent route to the
    layer (the backbone's input is reachable from inside it)."""
    backbone = keras.saving.load_model(root / "tiny.keras").get_layer("backbone")
    return keras.Model(backbone.inputs, backbone.get_layer(path).output)


def _dream_loss(inner, image):
    """keras.io's DeepDream loss in NumPy: the mean square activation, two border
    pixels left out."""
    act = np.asarray(inner(image[None].astype("float32")), "float64")
    return np.sum(act[:, 2:-2, 2:-2] ** 2) / act.size


# For each method: the flags, and what the library draws for them.
DRAWN = {
    "gradcam": (["--layer", "backbone/c1", "--class", "2"], lambda m, x: A.overlay(
        x[0], A.gradcam(m, x, class_index=2, layer="backbone/c1")[0])),
    "gradcam++": (["--layer", "backbone/c1", "--class", "2"], lambda m, x: A.overlay(
        x[0], A.gradcam_plus_plus(m, x, class_index=2, layer="backbone/c1")[0])),
    "saliency": (["--class", "2"], lambda m, x: A.overlay(
        x[0], A.saliency(m, x, class_index=2)[0])),
    "guided": (["--class", "2"], lambda m, x: A.projection_image(
        A.guided_backprop(m, x, class_index=2)[0])),
    "deconvnet": (["--layer", "backbone/c2"], lambda m, x: A.projection_image(
        A.deconvnet(m, x, layer="backbone/c2")[0])),
    "occlusion": (["--class", "1"], lambda m, x: A.overlay(
        x[0], A.occlusion(m, x, class_index=1)[0])),
    "deepdream": (["--layer", "backbone/c1"], None),
}


def test_every_method_is_listed_with_what_it_draws():
    assert set(DRAWN) == set(METHOD_NAMES) == set(methods())


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_each_method_draws_the_image_beside_what_the_library_computes(files, tmp_path,
                                                                      capsys, method):
    root, pixels = files
    flags, library = DRAWN[method]
    out = tmp_path / "drawn.png"
    assert _explain(root, "--method", method, *flags, "--out", str(out)) == 0
    err = capsys.readouterr().err
    assert f"{method} of" in err and str(out) in err
    drawn = np.asarray(Image.open(out))
    factor = drawn.shape[0] // SIZE
    small = drawn[::factor, ::factor]
    np.testing.assert_array_equal(small[:, :SIZE], pixels)
    right = small[:, SIZE + 2:]
    if method == "deepdream":  # the layer's activation rose, measured independently
        inner = _inner(root, "c1")
        assert _dream_loss(inner, right) > 1.5 * _dream_loss(inner, pixels)
        assert "at layer backbone/c1" in err and "octave 3/3" in err
        return
    if "--class" in flags:
        assert "class '" in err
    # a method that failed the randomization check says so (issue 20: flagged)
    assert ("model-randomization check" in err) == (method == "gradcam++")
    model = keras.saving.load_model(root / "tiny.keras")
    np.testing.assert_array_equal(right, library(model, pixels[None].astype("float32")))


def test_an_unknown_layer_exits_2_with_one_line_naming_close_ones(files, tmp_path,
                                                                  capsys):
    root, _ = files
    out = tmp_path / "never.png"
    assert _explain(root, "--layer", "backbone/c3", "--out", str(out)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("kvision explain: error: No layer 'backbone/c3'")
    assert "backbone/c2" in err
    assert not out.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("extra, words", [
    (["--class", "7"], "class_index must be in [0, 3)"),
    (["--class", "-1"], "--class takes a class index (an integer"),
    (["--method", "guided", "--class", "3"], "class_index must be in [0, 3)"),
    (["--method", "occlusion", "--class", "9"], "class_index must be in [0, 3)"),
    (["--method", "saliency", "--layer", "backbone/c1"], "--layer does not apply"),
    (["--out", "cam.jpg"], "--out must be a .png"),
    (["--method", "dream"], "--method must be one of gradcam, gradcam++"),
    (["--class", "two"], "--class takes a class index (an integer"),
    (["--method", "deepdream", "--class", "1"], "--class does not apply to deepdream"),
    (["--method", "guided", "--layer", "backbone/c1", "--class", "1"],
     "--class does not apply to guided with --layer"),
    (["--method", "deepdream", "--layer", "backbone/c7"], "No layer 'backbone/c7'"),
])
def test_other_bad_input_exits_2_with_one_line(files, tmp_path, capsys, extra, words):
    root, _ = files
    argv = ["--out", str(tmp_path / "x.png")] + extra
    assert _explain(root, *argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and words in err
    assert not (tmp_path / "x.png").exists()


def test_a_detector_explains_one_detection_and_refuses_one_it_did_not_find(tmp_path,
                                                                           capsys):
    import kvision
    from kvision.models.detection import localization

    keras.utils.set_random_seed(0)
    model = kvision.create("localizer", backbone="lenet5", classes=10, objects=2,
                           input_shape=(32, 32, 1), hidden_units=16)
    detector = localization.inference_model(model, score_threshold=0.0,
                                            max_detections=4)
    detector.save(tmp_path / "det.keras")
    pixels = np.random.default_rng(3).integers(0, 256, (32, 32), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "scene.png")
    found = int(detector(pixels[None, ..., None].astype("float32"))["num_detections"][0])
    argv = ["explain", str(tmp_path / "det.keras"), str(tmp_path / "scene.png")]
    assert cli.main(argv + ["--detection", "0", "--out", str(tmp_path / "d.png")]) == 0
    assert "detection 0" in capsys.readouterr().err
    assert cli.main(argv + ["--detection", str(found), "--out",
                            str(tmp_path / "e.png")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"found {found} detections" in err
    assert not (tmp_path / "e.png").exists()
    # a detection's score is explained, not a class's: --class was silently ignored
    assert cli.main(argv + ["--class", "1", "--out", str(tmp_path / "f.png")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--class does not apply to a detector" in err
    assert not (tmp_path / "f.png").exists()
