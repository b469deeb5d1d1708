"""kvision train rcnn (R-CNN's own pipeline through the task contract's ``own_fit``)
and the two-input export of a detector whose proposals come from selective search
(kvision.export.proposals): one tiny run, its saved file evaluated and exported."""

import json
import os
import re

import keras
import numpy as np
import pytest

from kvision import cli
from kvision.data.proposals import selective_search
from kvision.metrics.detection import evaluate

pytestmark = pytest.mark.xdist_group("rcnn_cli")
SIDE, SCENES, HELD = 64, 12, 4


def _baseline(scenes, seed=0):
    """A detector that knows nothing: every selective-search proposal as every class,
    scores at random (what mAP is without CNN features or SVMs)."""
    rng = np.random.default_rng(seed)
    found = []
    for image in scenes.images:
        boxes = selective_search(image, "fast", 64)
        found.append({"boxes": np.repeat(boxes, 10, 0),
                      "classes": np.tile(np.arange(10), len(boxes)),
                      "scores": rng.uniform(size=10 * len(boxes))})
    return evaluate(scenes.ground_truth(), found)["map_50"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """kvision train rcnn on 12 digit scenes of 64 pixels (LeNet-5's body on 32-pixel
    crops, 10 epochs of fine-tuning in batches of 32), measured on 4 held-out scenes;
    selective search cached in a folder of the test's own."""
    from kvision.models.detection import rcnn_classic
    from kvision.tasks import detection

    out = tmp_path_factory.mktemp("rcnn_cli")
    patch = pytest.MonkeyPatch()
    patch.setattr(detection, "DIGIT_SCENES_COUNT", HELD)
    patch.setattr(rcnn_classic, "proposal_cache", lambda: str(out / "cache"))
    import contextlib
    import io

    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            code = cli.main(["train", "rcnn", "--max-images", str(SCENES), "--epochs", "10",
                             "--batch-size", "32", "--image-size", str(SIDE),
                             "--model-arg", "backbone=lenet5", "--out", str(out / "run")])
    finally:
        patch.undo()
    return code, printed.getvalue(), out


def test_kvision_train_rcnn_runs_its_pipeline_and_evaluate_reads_what_it_saved(run, capsys):
    """The run trains R-CNN by its own steps (selective search cached once per scene,
    fine-tuning, one SVM per class, box regression), prints each, and reports a
    held-out mAP@0.5 that kvision evaluate gives again from the saved file, well
    above a detector that knows nothing on the same scenes."""
    from kvision.tasks.detection import _Shape, held_out_scenes

    code, printed, out = run
    assert code == 0, printed
    assert f"selective search: {SCENES}/{SCENES} images" in printed
    assert "SVM 10/10" in printed and "box regression" in printed
    assert len(os.listdir(out / "cache")) == SCENES            # one file per scene
    # no epoch log or curves are written, and the last line does not promise them
    assert not os.path.exists(out / "run" / "training_log.csv")
    assert "(its settings, run.json, in" in printed, printed
    reported = float(re.search(r"held-out mAP@0\.5: ([0-9.]+)", printed).group(1))
    assert cli.main(["evaluate", str(out / "run" / "rcnn.keras"), "--data", "digit-scenes",
                     "--max-images", str(HELD), "--json"]) == 0
    measured = json.loads(capsys.readouterr().out)["map_50"]
    assert measured == pytest.approx(reported, abs=5e-5)       # printed to 4 places
    held = held_out_scenes(_Shape((SIDE, SIDE), 3), HELD, 0)
    assert reported > _baseline(held) + 0.15, (reported, _baseline(held))


def test_the_saved_rcnn_exports_with_the_proposals_an_input(run, tmp_path, capsys):
    """kvision export cuts selective search out of the saved detector: its SavedModel
    takes images and proposals (any count), checked detection by detection against
    the Keras detector given the same proposals; TFLite is refused in one line."""
    from kvision.data.synthetic import digit_scenes
    from kvision.export.proposals import proposal_model
    from kvision.export.savedmodel import _session

    code, _, out = run
    assert code == 0
    keras_file = str(out / "run" / "rcnn.keras")
    assert cli.main(["export", keras_file, "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "crop_and_resize" in err[0] and "--format savedmodel" in err[0]
    assert not (tmp_path / "x").exists()
    assert cli.main(["export", keras_file, "--format", "savedmodel",
                     "--out", str(tmp_path / "x")]) == 0
    assert "the caller runs selective search" in capsys.readouterr().out

    scenes = digit_scenes(2, image_size=SIDE, digit_size=(8, 21), subset="test", seed=9)
    images = scenes.images.astype("float32")
    found = [selective_search(image, "fast", 64) for image in images]
    padded = np.zeros((2, 64, 4), "float32")
    for i, boxes in enumerate(found):
        padded[i, :len(boxes)] = boxes
    detector = keras.saving.load_model(keras_file)
    two_input = proposal_model(detector)
    expected = two_input.predict([images, padded], verbose=0)
    # The proposals are what the detector's own search finds: the same detections.
    own = detector.predict(images, verbose=0)
    np.testing.assert_array_equal(own["classes"], expected["classes"])
    assert np.asarray(expected["num_detections"]).min() >= 1
    with _session(str(tmp_path / "x" / "1")) as serve:   # TF Serving's loader
        for i, boxes in enumerate(found):                # each its own count: unpadded
            got = serve("serving_default", {"images": images[i:i + 1],
                                            "proposals": boxes[None]})
            n = int(expected["num_detections"][i])
            assert int(got["num_detections"][0]) == n
            np.testing.assert_array_equal(got["classes"][0, :n], expected["classes"][i, :n])
            np.testing.assert_allclose(got["boxes"][0, :n], expected["boxes"][i, :n],
                                       atol=1e-3)
            np.testing.assert_allclose(got["scores"][0, :n], expected["scores"][i, :n],
                                       atol=1e-5)
