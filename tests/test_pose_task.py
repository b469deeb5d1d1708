"""The pose task through the command line: ``kvision train stacked_hourglass`` on the
embedded figures, its held-out PCK logged every epoch and equal to ``kvision
evaluate`` (and to PCK computed here from the saved model's keypoints), ``kvision
predict`` printing the keypoints in the file's pixels and drawing the skeleton, and
the SavedModel answering the Keras model's keypoints."""

import csv
import json

import keras
import numpy as np
import pytest

from kvision import cli
from kvision.data.figures import figures
from kvision.data.pose_layouts import MPII
from kvision.tasks import task_of

pytestmark = pytest.mark.xdist_group("pose_task")
SIZE = 64


# Session scope: a worker that runs another module between two of these tests
# would otherwise tear the trained run down and train it again.
@pytest.fixture(scope="session")
def run(tmp_path_factory):
    """A one-stack, 16-feature hourglass trained one epoch on 48 figures with the
    paper's RMSprop."""
    out = tmp_path_factory.mktemp("pose") / "run"
    assert cli.main(["train", "stacked_hourglass", "--data", "figures", "--epochs", "1",
                     "--max-images", "48", "--model-arg", "stacks=1", "--model-arg",
                     "features=16", "--optimizer", "rmsprop", "--lr", "2.5e-4",
                     "--no-augment", "--out", str(out)]) == 0
    return out


def _main(args, capsys):
    code = cli.main(args)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return captured.out


def test_the_run_logs_pck_and_saves_the_flip_averaged_inference_model(run, capsys):
    with open(run / "training_log.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and 0.0 <= float(rows[0]["val_pck"]) <= 1.0
    model = keras.saving.load_model(run / "stacked_hourglass.keras", safe_mode=True)
    assert task_of(model) == "pose" and set(model.output) == {"keypoints", "scores"}
    assert (run / "class_names.txt").read_text().split() == list(MPII.names)
    # --optimizer reached model.fit: the checkpoint holds RMSprop's own state
    last = keras.saving.load_model(run / "checkpoints" / "last.keras", safe_mode=True)
    assert isinstance(last.optimizer, keras.optimizers.RMSprop)
    assert json.loads((run / "run.json").read_text())["settings"]["augment"] is False

    # kvision evaluate: the logged figure, and PCK@0.2 computed here from the keypoints
    report = json.loads(_main(["evaluate", str(run), "--json"], capsys))
    assert report["pck"] == pytest.approx(float(rows[0]["val_pck"]), abs=1e-6)
    held = figures(200, image_size=SIZE, subset="test", seed=0)
    found = model.predict(held.images.astype("float32"), verbose=0)["keypoints"]
    truth = held.main_keypoints
    boxes = np.stack([b[0] for b in held.boxes])
    side = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    labelled = truth[..., 2] > 0
    close = np.hypot(*(found - truth[..., :2]).transpose(2, 0, 1)) < 0.2 * side[:, None]
    assert report["pck"] == pytest.approx(close[labelled].mean(), abs=1e-6)


def test_predict_prints_keypoints_in_the_files_pixels_and_draws_them(run, tmp_path, capsys):
    from PIL import Image

    image = figures(1, image_size=2 * SIZE, subset="test", seed=7).images[0]
    path = tmp_path / "person.png"
    Image.fromarray(image).save(path)
    out = _main(["predict", str(run), str(path), "--json", "--out",
                 str(tmp_path / "skeleton.png")], capsys)
    (answer,) = json.loads(out)
    model = keras.saving.load_model(run / "stacked_hourglass.keras", safe_mode=True)
    from kvision.data import load_image

    small = load_image(str(path), (SIZE, SIZE), 3)  # predict's own resize
    expected = model.predict(small[None], verbose=0)["keypoints"][0] * 2  # file pixels
    got = np.array([[k["x"], k["y"]] for k in answer["keypoints"]])
    np.testing.assert_allclose(got, expected, atol=1e-3)
    assert [k["joint"] for k in answer["keypoints"]] == list(MPII.names)
    drawn = np.asarray(Image.open(tmp_path / "skeleton.png"))
    assert drawn.shape[:2] == image.shape[:2] and np.any(drawn != image)


def test_the_savedmodel_answers_the_keras_keypoints(run, tmp_path, capsys):
    import tensorflow as tf

    _main(["export", str(run), "--format", "savedmodel", "--out", str(tmp_path / "serve")],
          capsys)
    served = tf.saved_model.load(str(tmp_path / "serve" / "1")).signatures["serving_default"]
    images = figures(4, image_size=SIZE, subset="test", seed=3).images.astype("float32")
    answer = served(images=tf.constant(images))
    model = keras.saving.load_model(run / "stacked_hourglass.keras", safe_mode=True)
    expected = model.predict(images, verbose=0)
    np.testing.assert_allclose(answer["keypoints"].numpy(), expected["keypoints"], atol=1e-3)
    np.testing.assert_allclose(answer["scores"].numpy(), expected["scores"], rtol=1e-4,
                               atol=1e-5)


def test_wrong_data_is_one_error_line(run, capsys):
    # (TFLite export: tests/export/test_pose_export.py)
    assert cli.main(["evaluate", str(run), "--data", "digits"]) != 0
    assert "a pose estimator is measured on figures" in capsys.readouterr().err
