"""Run folders: a finished run is never written into again, an unfinished one
resumes only with its own settings, ``--overwrite`` replaces a folder as a whole;
data with fewer than two classes stops before anything is built."""

import csv
import json
import logging
import os

import keras
import numpy as np
import pytest

from kvision import runs
from kvision.cli import main
from kvision.data import load_digits
from kvision.train import train_classifier

TINY = dict(epochs=1, steps_per_epoch=1, export=False, verbose=0)


def _epochs(run_dir):
    with open(os.path.join(run_dir, "training_log.csv")) as f:
        return [int(row["epoch"]) for row in csv.DictReader(f)]


def _contents(run_dir):
    """Every file under ``run_dir`` with its bytes."""
    found = {}
    for dirpath, _, files in os.walk(run_dir):
        for name in files:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                found[os.path.relpath(path, run_dir)] = f.read()
    return found


def test_a_finished_run_is_kept_and_the_next_goes_to_a_new_folder(tmp_path, caplog):
    out = str(tmp_path / "run")
    first = train_classifier("lenet5", out_dir=out, **TINY)
    assert first.out_dir == out
    assert json.load(open(os.path.join(out, "run.json")))["state"] == "finished"
    before = _contents(out)
    with caplog.at_level(logging.INFO, logger="kvision.train"):
        second = train_classifier("lenet5", out_dir=out, **TINY)
    assert second.out_dir == f"{out}-2" and second.keras_path.startswith(f"{out}-2")
    assert _contents(out) == before  # not one byte of the first run changed
    assert _epochs(f"{out}-2") == [0]
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and "holds a finished run" in warned[0]
    assert f"{out}-2" in warned[0]


def test_overwrite_replaces_the_whole_folder_and_prints_the_split(tmp_path, capsys):
    out = str(tmp_path / "run")
    command = ["train", "lenet5", "--epochs", "1", "--steps-per-epoch", "1", "--no-export",
               "--out", out]
    assert main(command) == 0
    stale = os.path.join(out, "lenet5.tflite")  # as `kvision export` leaves one
    open(stale, "wb").close()
    capsys.readouterr()
    assert main(command + ["--overwrite"]) == 0
    printed = capsys.readouterr().out
    assert not os.path.exists(stale) and not os.path.exists(f"{out}-2")
    assert _epochs(out) == [0]  # one run's log, not two appended
    assert f"run folder: {out} (the old run replaced)" in printed
    # The split printed before training: per class, against the digits' own labels.
    (_, y_train), (_, y_test) = load_digits()
    assert "1347 training and 450 test images in 10 classes" in printed
    for digit in range(10):
        assert (f"  {digit}  {np.sum(y_train == digit):>6} train  "
                f"{np.sum(y_test == digit):>5} test") in printed
    assert printed.index("run folder:") < printed.index("test top-1 accuracy")


class _Killed(Exception):
    pass


class _KillAfterFirstEpoch(keras.callbacks.Callback):
    """Stops the run as a kill would: after epoch 0's backup and log row (those
    callbacks come first), before epoch 1."""

    def on_epoch_end(self, epoch, logs=None):
        raise _Killed


def test_an_unfinished_run_resumes_only_with_its_own_settings(tmp_path, caplog):
    out = str(tmp_path / "run")
    with pytest.raises(_Killed):
        train_classifier("lenet5", out_dir=out, epochs=2, steps_per_epoch=1, export=False,
                         verbose=0, callbacks=[_KillAfterFirstEpoch()])
    assert os.path.isdir(os.path.join(out, "backup")) and _epochs(out) == [0]
    backup = _contents(os.path.join(out, "backup"))

    # Another input size: its network could not take the backup's weights.
    with caplog.at_level(logging.WARNING, logger="kvision.train"):
        other = train_classifier("lenet5", out_dir=out, image_size=36, **TINY)
    assert other.out_dir == f"{out}-2" and other.initial_epoch == 0
    assert "input_size 32 there, 36 now" in caplog.text
    assert _contents(os.path.join(out, "backup")) == backup and _epochs(out) == [0]

    resumed = train_classifier("lenet5", out_dir=out, epochs=2, steps_per_epoch=1,
                               export=False, verbose=0)
    assert resumed.out_dir == out and resumed.initial_epoch == 1
    assert _epochs(out) == [0, 1] and not os.path.exists(os.path.join(out, "backup"))


def test_one_class_is_a_clear_error_before_anything_is_written(tmp_path):
    import tensorflow as tf

    data = tmp_path / "pets"
    (data / "cat").mkdir(parents=True)
    (data / "dog").mkdir()  # a class folder with no image
    for i in range(3):
        png = tf.io.encode_png(np.full((8, 8, 3), 40 * i, np.uint8)).numpy()
        (data / "cat" / f"{i}.png").write_bytes(png)
    out = tmp_path / "run"
    with pytest.raises(ValueError, match="at least two classes") as error, \
            pytest.warns(UserWarning, match="'dog' \\(0 train, 0 test\\)"):
        train_classifier("lenet5", data=str(data), out_dir=str(out), **TINY)
    assert str(data) in str(error.value) and "'cat'" in str(error.value)
    assert "['dog']" in str(error.value)
    assert not out.exists()


def _folder(path, files=(), manifest=None):
    os.makedirs(path, exist_ok=True)
    for name in files:
        open(os.path.join(path, name), "w").close()
    if manifest is not None:
        with open(os.path.join(path, runs.MANIFEST), "w") as f:
            json.dump(manifest, f)
    return str(path)


SETTINGS = {"network": "lenet5", "classes": ["a", "b"], "seed": 0}


@pytest.mark.parametrize("state, files, expected", [
    (None, (), ("", "new")),                                          # missing
    ("empty", (), ("", "new")),
    ("training", (), ("", "resume")),
    ("finished", ("m.keras",), ("-2", "new")),
    ("saving", ("m.keras",), ("-2", "new")),                          # saving cut short
    ("no manifest", ("training_log.csv",), ("-2", "new")),            # an older kvision
    ("no manifest", ("holiday.jpg",), ("-2", "new")),                 # not a run
])
def test_choose_follows_the_rules(tmp_path, state, files, expected):
    requested = str(tmp_path / "run")
    if state == "empty":
        _folder(requested)
    elif state == "no manifest":
        _folder(requested, files)
    elif state is not None:
        _folder(requested, files, {"state": state, "settings": SETTINGS})
    chosen = runs.choose(requested, SETTINGS)
    assert (chosen.path, chosen.action) == (requested + expected[0], expected[1])
    assert bool(chosen.note) == (expected[0] == "-2")


def test_choose_resumes_a_later_folder_and_guards_overwrite(tmp_path):
    requested = _folder(tmp_path / "run", ["m.keras"], {"state": "finished",
                                                        "settings": SETTINGS})
    _folder(tmp_path / "run-2", [], {"state": "training",
                                     "settings": {**SETTINGS, "classes": ["a", "b", "c"]}})
    _folder(tmp_path / "run-3", [], {"state": "training", "settings": SETTINGS})
    chosen = runs.choose(requested, SETTINGS)
    assert (chosen.path, chosen.action) == (requested + "-3", "resume")
    assert runs.choose(requested, SETTINGS, overwrite=True).action == "replace"
    assert runs.choose(requested + "-3", SETTINGS, overwrite=True).action == "resume"
    photos = _folder(tmp_path / "photos", ["holiday.jpg"])
    with pytest.raises(ValueError, match="replaces only run folders"):
        runs.choose(photos, SETTINGS, overwrite=True)
    with pytest.raises(ValueError, match="is a file"):
        runs.choose(os.path.join(photos, "holiday.jpg"), SETTINGS)
