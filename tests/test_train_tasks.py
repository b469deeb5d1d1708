"""``kvision train`` for detectors and segmenters: the classifiers' run folder, the
task's held-out figure logged every epoch (equal to ``kvision evaluate`` on the saved
model), anchors fitted to the data, resume after an interruption, the data forms, and
clear errors for what cannot be trained this way."""

import csv
import json

import keras
import numpy as np
import pytest

from kvision import cli
from kvision.data.detection import write_yolo
from kvision.data.synthetic import digit_scenes
from kvision.ops.boxes import kmeans_anchors
from kvision.tasks import base, task_of
from kvision.tasks import detection as detection_task
from kvision.tasks.training import train_task

pytestmark = pytest.mark.xdist_group("train_tasks")

TINY_DETECTOR = ["--model-arg", "width=0.25", "--image-size", "64", "--max-images", "32"]


def _log(run):
    with open(run / "training_log.csv") as f:
        return list(csv.DictReader(f))


def _main(args, capsys):
    code = cli.main(args)
    out = capsys.readouterr().out
    assert code == 0, out
    return out


# Session scope: a worker that runs another module between two of these tests
# would otherwise tear the trained run down and train it again.
@pytest.fixture(scope="session")
def detector_run(tmp_path_factory):
    """``kvision train yolov3_tiny --data digit-scenes`` on 32 tiny scenes, 2 epochs."""
    run = tmp_path_factory.mktemp("train_detector") / "run"
    assert cli.main(["train", "yolov3_tiny", "--data", "digit-scenes", "--epochs", "2",
                     *TINY_DETECTOR, "--out", str(run)]) == 0
    return run


def test_a_detector_trains_into_the_run_folder_with_its_figure_every_epoch(detector_run):
    rows = _log(detector_run)
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    assert all(0.0 <= float(r["val_map_50"]) <= 1.0 for r in rows)
    for name in ("checkpoints/last.keras", "training_curves.png", "class_names.txt",
                 "1/saved_model.pb", "run.json"):
        assert (detector_run / name).is_file(), name
    saved = keras.saving.load_model(detector_run / "yolov3_tiny.keras", safe_mode=True)
    assert task_of(saved) == "detection"
    assert set(saved.output) >= {"boxes", "scores", "classes", "num_detections"}
    assert (detector_run / "class_names.txt").read_text().split() == [str(d) for d in
                                                                        range(10)]
    assert json.loads((detector_run / "run.json").read_text())["state"] == "finished"


def test_the_logged_figure_is_what_kvision_evaluate_measures(detector_run, capsys):
    out = _main(["evaluate", str(detector_run / "yolov3_tiny.keras"), "--data",
                 "digit-scenes", "--json"], capsys)
    measured = json.loads(out)["map_50"]
    assert float(_log(detector_run)[-1]["val_map_50"]) == pytest.approx(measured, abs=1e-6)


def test_the_anchors_are_fitted_to_the_training_boxes(detector_run):
    from kvision.models.detection import yolo

    trained = keras.saving.load_model(detector_run / "checkpoints" / "last.keras",
                                      safe_mode=True)
    anchors = np.concatenate([h.anchors for h in yolo.output_layers(trained)])
    data = detection_task.TASK.training_data("digit-scenes", image_size=64, channels=3,
                                             seed=0, max_images=32)
    boxes = np.concatenate([b[:, 2:] - b[:, :2] for b in data.train.boxes])
    expected = kmeans_anchors(boxes, 6, seed=0)
    np.testing.assert_allclose(np.sort(anchors.reshape(-1)),
                               np.sort(np.asarray(expected).reshape(-1)), rtol=1e-5)
    assert not np.allclose(np.sort(anchors.reshape(-1)),
                           np.sort(np.asarray(yolo.TINY_ANCHORS, "float32").reshape(-1)))


class _Interrupt(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        raise KeyboardInterrupt  # after the epoch's backup: a Ctrl-C between epochs


def test_an_interrupted_segmenter_run_resumes_from_its_last_epoch(tmp_path):
    options = dict(epochs=2, image_size=32, max_images=16, model_args={"filters": 4},
                   out_dir=str(tmp_path / "run"), export=False, verbose=0)
    with pytest.raises(KeyboardInterrupt):
        train_task("unet", "digit-scenes", callbacks=[_Interrupt()], **options)
    assert [int(r["epoch"]) for r in _log(tmp_path / "run")] == [0]
    result = train_task("unet", "digit-scenes", **options)
    assert result.initial_epoch == 1 and result.out_dir == str(tmp_path / "run")
    rows = _log(tmp_path / "run")
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    assert float(rows[-1]["val_mean_iou"]) == pytest.approx(result.figure, abs=1e-6)
    assert result.metric_label == "mIoU" and len(result.class_names) == 11


def test_a_yolo_folder_trains_with_its_class_names_and_its_val_split(tmp_path, capsys):
    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight",
             "nine"]
    for split, seed in (("train", 1), ("val", 2)):
        write_yolo(digit_scenes(12 if split == "train" else 4, image_size=64, seed=seed,
                                subset="test" if split == "val" else "train"),
                   tmp_path / "data", class_names=names, split=split)
    out = _main(["train", "yolov3_tiny", "--data", str(tmp_path / "data"), "--epochs", "1",
                 "--model-arg", "width=0.25", "--image-size", "64", "--no-export",
                 "--out", str(tmp_path / "run")], capsys)
    assert "12 images for training, 4 images of the val split" in out
    assert (tmp_path / "run" / "class_names.txt").read_text().split() == names
    assert "held-out mAP@0.5:" in out


def test_hold_out_splits_every_example_once_the_same_way_for_a_seed():
    import tensorflow as tf

    data = tf.data.Dataset.range(50)
    train, held, n_train, n_held = base.hold_out(data, 50, seed=3)
    train, held = list(train.as_numpy_iterator()), list(held.as_numpy_iterator())
    assert (n_train, n_held) == (45, 5) and (len(train), len(held)) == (45, 5)
    assert sorted(train + held) == list(range(50))
    again = list(base.hold_out(data, 50, seed=3)[1].as_numpy_iterator())
    other = list(base.hold_out(data, 50, seed=4)[1].as_numpy_iterator())
    assert again == held and other != held
    with pytest.raises(ValueError, match="at least two"):
        base.hold_out(data.take(1), 1)


def test_model_args_are_python_literals_or_strings():
    from kvision.commands.train import parse_model_args

    assert parse_model_args(["width=0.5", "padding=same", "rates=(6, 12)"]) == {
        "width": 0.5, "padding": "same", "rates": (6, 12)}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_model_args(["width"])


@pytest.mark.parametrize("args, message", [
    (["overfeat"], "cannot be trained from the command line yet"),
    (["rcnn", "--optimizer", "sgd"], "rcnn trains by its own pipeline, not model.fit"),
    (["two_network_instance"], "does not train this instance segmenter"),
    (["lenet5", "--model-arg", "width=2"], "for detectors, segmenters and pose"),
    (["lenet5", "--optimizer", "sgd"], "for detectors, segmenters and pose"),
    (["unet", "--no-augment"], "unet trains without augmentation already"),
    (["unet", "--strategy", "mirrored"], "for classifiers only"),
    (["yolov3_tiny", "--model-arg", "colour=1"], "yolov3_tiny takes no argument 'colour'"),
])
def test_what_cannot_be_trained_this_way_is_one_clear_error(args, message, tmp_path,
                                                            capsys):
    assert cli.main(["train", *args, "--out", str(tmp_path / "run")]) != 0
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # refused before any data or folder


def test_a_segmenter_trains_from_a_voc_folder_leaving_its_void_pixels_out(tmp_path,
                                                                          capsys):
    from kvision.data.segmentation import write_voc

    scenes = digit_scenes(20, image_size=32, digit_size=(8, 14), seed=1)
    scenes.semantic[:, :3, :] = 255  # a void band, as VOC's object borders
    names = ["bg", *(f"d{i}" for i in range(10))]
    write_voc(scenes, tmp_path / "voc", class_names=names)
    run = tmp_path / "run"
    out = _main(["train", "unet", "--data", str(tmp_path / "voc"), "--epochs", "1",
                 "--image-size", "32", "--model-arg", "filters=4", "--no-export",
                 "--out", str(run)], capsys)
    assert "18 images for training, 2 images held out at random" in out
    assert (run / "class_names.txt").read_text().split() == names
    report = json.loads(_main(["evaluate", str(run), "--data", str(tmp_path / "voc"),
                               "--json"], capsys))
    counted = sum(c["pixels"] for c in report["per_class"].values())
    assert counted == int(np.sum(scenes.semantic != 255))  # void pixels never counted


def test_a_detector_trains_from_a_coco_file(tmp_path, capsys):
    from kvision.data.detection import write_coco

    write_coco(digit_scenes(10, image_size=64, seed=1), tmp_path / "coco" / "train.json")
    out = _main(["train", "yolov3_tiny", "--data", str(tmp_path / "coco" / "train.json"),
                 "--epochs", "1", "--model-arg", "width=0.25", "--image-size", "64",
                 "--no-export", "--out", str(tmp_path / "run")], capsys)
    assert "9 images for training, 1 image held out at random" in out
    saved = keras.saving.load_model(tmp_path / "run" / "yolov3_tiny.keras", safe_mode=True)
    assert task_of(saved) == "detection"
