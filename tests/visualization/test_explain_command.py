"""``kvision explain`` as a user meets it: cli.main, a saved model with a nested
backbone, a PNG in, a PNG out; bad input exits 2 with one line."""

import numpy as np
import pytest
from PIL import Image

import keras

from kvision import cli
from kvision.commands.explain import METHOD_NAMES
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


def test_gradcam_png_is_the_image_beside_its_map(files, tmp_path, capsys):
    root, pixels = files
    out = tmp_path / "cam.png"
    assert _explain(root, "--method", "gradcam", "--class", "2", "--layer",
                    "backbone/c1", "--out", str(out)) == 0
    err = capsys.readouterr().err
    assert "gradcam" in err and "class '2'" in err and str(out) in err
    drawn = np.asarray(Image.open(out))
    factor = drawn.shape[0] // SIZE
    small = drawn[::factor, ::factor]
    np.testing.assert_array_equal(small[:, :SIZE], pixels)
    model = keras.saving.load_model(root / "tiny.keras")
    cam = A.gradcam(model, pixels[None].astype("float32"), class_index=2,
                    layer="backbone/c1")
    np.testing.assert_array_equal(small[:, SIZE + 2:], A.overlay(pixels, cam[0]))


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_every_method_writes_a_png(files, tmp_path, method):
    root, _ = files
    out = tmp_path / f"{method}.png"
    assert _explain(root, "--method", method, "--out", str(out)) == 0
    assert Image.open(out).format == "PNG"


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
    (["--method", "saliency", "--layer", "backbone/c1"], "--layer does not apply"),
    (["--out", "cam.jpg"], "--out must be a .png"),
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
