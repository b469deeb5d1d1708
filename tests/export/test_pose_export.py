"""``kvision export`` of a pose estimator to TFLite: both outputs (keypoints, scores)
kept, builtin operators only, held to parity on the decoded keypoints (mean distance
in heatmap pixels), recomputed here with LiteRT's own interpreter; a bar not met
writes nothing."""

import os
import re

import keras
import numpy as np
import pytest

import kvision
from kvision import cli, testing
from kvision.data.figures import figures
from kvision.export.litert import custom_ops
from kvision.models.pose import hourglass

pytestmark = [pytest.mark.xdist_group("pose_export"),
              pytest.mark.filterwarnings("ignore:.*tf.lite.Interpreter is deprecated")]
SIZE, HEATMAP = 64, 16  # input and heatmap sides: 4 input pixels per heatmap pixel


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """An untrained one-stack hourglass of one level (the deeper levels are the same
    operators), flip-averaged and decoded: saved_models/pose/pose.keras."""
    keras.utils.set_random_seed(0)
    network = kvision.create("stacked_hourglass", input_shape=(SIZE, SIZE, 3), stacks=1,
                             features=16, depth=1)
    folder = tmp_path_factory.mktemp("project") / "pose"
    folder.mkdir()
    path = folder / "pose.keras"
    hourglass.inference_model(network).save(path)
    return path


def _interpreted(path, images):
    """``{name: array}`` of a .tflite file on ``images``, one at a time, through
    LiteRT's interpreter and the file's signature (outputs by name)."""
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_path=str(path)).get_signature_runner()
    (name,) = runner.get_input_details()
    parts = [runner(**{name: image[None]}) for image in images]
    return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}


def _distance(reference, got):
    """Mean Euclidean distance of twin keypoints, in heatmap pixels."""
    return float(np.mean(np.linalg.norm(reference - got, axis=-1)) / (SIZE / HEATMAP))


def test_float32_and_int8_files_answer_the_keras_keypoints(saved, tmp_path, capsys):
    out = tmp_path / "lite"
    # An untrained network's flat heatmaps tie more under int8 than a trained one's
    # (1.3 heatmap pixels measured there): a wider bar for it here.
    assert cli.main(["export", str(saved), "--format", "tflite", "--quantize", "none,int8",
                     "--data", "figures", "--max-keypoint-distance", "5",
                     "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert sorted(os.listdir(out)) == ["pose.int8.tflite", "pose.tflite"]  # no labels

    images = figures(200, image_size=SIZE, subset="test").images.astype("float32")
    expected = keras.saving.load_model(saved, safe_mode=True).predict(images, verbose=0)
    for variant, file in (("tflite", "pose.tflite"), ("tflite-int8", "pose.int8.tflite")):
        assert custom_ops((out / file).read_bytes()) == []  # builtins only
        got = _interpreted(out / file, images)
        assert got["keypoints"].shape == (200, 16, 2) and got["scores"].shape == (200, 16)
        distance = _distance(expected["keypoints"], got["keypoints"])
        shown = float(re.search(rf"^{variant}: keypoints ([\d.]+) heatmap pixels",
                                printed, re.M).group(1))
        assert shown == pytest.approx(distance, abs=1e-3)  # the table tells the truth
        if variant == "tflite":
            assert distance <= 0.5  # the bar
            # Rounding through the convolutions in a row (fewer than the 40 of two
            # stacks in tests/models/test_hourglass.py), the stem's 7x7x3 the widest.
            testing.assert_float32_close(got["scores"], expected["scores"], terms=147,
                                         depth=40)


def test_a_keypoint_bar_not_met_writes_nothing(saved, tmp_path, capsys):
    out = tmp_path / "lite"
    out.mkdir()
    (out / "pose.int8.tflite").write_bytes(b"the user's file")
    assert cli.main(["export", str(saved), "--format", "tflite", "--quantize", "int8",
                     "--data", "figures", "--max-keypoint-distance", "0",
                     "--out", str(out)]) != 0
    err = capsys.readouterr().err
    assert "does not find the Keras model's keypoints: mean distance" in err
    assert "heatmap pixels > 0 " in err and "on 200 images" in err
    assert "--max-keypoint-distance" in err.split("To try:")[1]
    assert os.listdir(out) == ["pose.int8.tflite"]  # no staging left behind
    assert (out / "pose.int8.tflite").read_bytes() == b"the user's file"


def test_another_kinds_bar_is_refused_naming_the_pose_flag(saved, tmp_path, capsys):
    assert cli.main(["export", str(saved), "--format", "tflite", "--min-top1-agreement",
                     "0.9", "--out", str(tmp_path / "lite")]) != 0
    err = capsys.readouterr().err
    assert "--min-top1-agreement is not for this model" in err
    assert "--max-keypoint-distance" in err
    assert not (tmp_path / "lite").exists()


def test_the_savedmodel_is_held_to_its_keypoints(saved, tmp_path):
    import tensorflow as tf

    from kvision.export import command

    (result,) = command.export(saved, formats=["savedmodel"], data="figures",
                               out=tmp_path / "serve")
    served = tf.saved_model.load(result.path).signatures["serving_default"]
    images = figures(200, image_size=SIZE, subset="test").images.astype("float32")
    images = images[:command.SAVEDMODEL_CHECK_IMAGES]
    got = served(images=tf.constant(images))["keypoints"].numpy()
    expected = keras.saving.load_model(saved, safe_mode=True).predict(images, verbose=0)
    distance = _distance(expected["keypoints"], got)
    assert result.parity["keypoint_distance"] == pytest.approx(distance, abs=1e-6)
    assert result.parity["num_images"] == len(images) and distance <= 0.5
