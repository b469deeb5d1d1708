"""``kvision predict DETECTOR image.png``: boxes as JSON, drawn as a PNG."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

import kvision
from kvision import cli
from kvision.data.synthetic import digit_scenes
from kvision.models.detection import localization as L

NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A saved 32x32 localizer detector (2 slots) with class names, and a 48x64
    grey scene (the model's input is resized from it: boxes scale back by 2 and
    1.5)."""
    keras.utils.set_random_seed(0)
    root = tmp_path_factory.mktemp("predict_detector")
    model = kvision.create("localizer", backbone="lenet5", classes=10, objects=2,
                           input_shape=(32, 32, 1), hidden_units=16)
    detector = L.inference_model(model, score_threshold=0.0, max_detections=4)
    detector.save(root / "det.keras")
    (root / "class_names.txt").write_text("\n".join(NAMES) + "\n")
    scene = digit_scenes(1, image_size=64, objects=2, channels=1, seed=3).images[0]
    image = scene[8:56]  # 48 x 64
    (root / "scene.png").write_bytes(tf.io.encode_png(image).numpy())
    return root, detector, image


def _reference(detector, image):
    """The detector on the image resized as tf.image does, boxes scaled back."""
    resized = tf.image.resize(image[None].astype("float32"), (32, 32), method="bilinear")
    out = {k: np.asarray(v)[0] for k, v in detector(resized).items()}
    n = int(out["num_detections"])
    return out["boxes"][:n] * [2.0, 1.5, 2.0, 1.5], out["scores"][:n], out["classes"][:n]


def test_json_lists_the_models_detections_in_the_files_pixels(files, capsys):
    root, detector, image = files
    code = cli.main(["predict", str(root / "det.keras"), str(root / "scene.png"),
                     "--json"])
    assert code == 0
    (result,) = json.loads(capsys.readouterr().out)
    boxes, scores, classes = _reference(detector, image)
    assert result["image_size"] == [48, 64]
    found = result["detections"]
    assert len(found) == len(boxes) > 0
    np.testing.assert_allclose([d["box"] for d in found], boxes, atol=1e-3)
    np.testing.assert_allclose([d["score"] for d in found], scores, atol=1e-5)
    assert [d["class"] for d in found] == classes.tolist()
    assert [d["label"] for d in found] == [NAMES[c] for c in classes]


def test_out_draws_boxes_and_labels_on_the_original_image(files, capsys):
    pytest.importorskip("cv2")  # keras.visualization draws with OpenCV
    root, detector, image = files
    drawn_path = root / "drawn.png"
    code = cli.main(["predict", str(root / "det.keras"), str(root / "scene.png"),
                     "--out", str(drawn_path)])
    assert code == 0
    assert str(drawn_path) in capsys.readouterr().out
    drawn = tf.io.decode_png(drawn_path.read_bytes()).numpy()
    assert drawn.shape == (48, 64, 3)
    boxes, _, _ = _reference(detector, image)
    # Each box's top-left corner is painted in the drawing colour (255, 64, 64);
    # far from every box the grey image is untouched.
    for x0, y0, _, _ in boxes.astype(int):
        if 0 <= x0 < 64 and 0 <= y0 < 48:
            np.testing.assert_array_equal(drawn[y0, x0], [255, 64, 64])
    untouched = np.ones((48, 64), bool)
    for x0, y0, x1, y1 in boxes.astype(int):
        untouched[max(y0 - 2, 0):y1 + 2, max(x0 - 2, 0):x1 + 2] = False
        untouched[max(y0 - 14, 0):y0 + 14, max(x0 - 2, 0):] = False  # the label
    np.testing.assert_array_equal(drawn[untouched], np.repeat(image[untouched], 3, -1))


def test_out_on_a_classifier_is_a_clear_error(tmp_path, capsys):
    model = kvision.create("lenet5", classes=3)
    model.save(tmp_path / "clf.keras")
    image = tmp_path / "x.png"
    image.write_bytes(tf.io.encode_png(np.zeros((32, 32, 1), "uint8")).numpy())
    code = cli.main(["predict", str(tmp_path / "clf.keras"), str(image), "--out",
                     str(tmp_path / "drawn.png")])
    assert code == 2
    assert "is a classifier" in capsys.readouterr().err
