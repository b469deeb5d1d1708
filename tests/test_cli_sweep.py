"""Issue 21, the command line: bad invocations of every sub-command, each one exit
status 2, one line on stderr naming the problem, no traceback, nothing written.

Every case runs ``kvision.cli.main`` in this process (no subprocess each), in a
folder snapshotted before and after; ``model.fit`` is made to fail loudly, so a
bad value that slipped through to training is a failure here, not a long run.
Left out on purpose: ``kvision predict`` answers the files it can read and reports
each one it cannot (a missing or undecodable image) with exit status 1.
"""

import contextlib
import hashlib
import io
import os

import keras
import numpy as np
import pytest
from PIL import Image

from kvision.cli import main

# (id, argv): "{name}" stands for a path of the world fixture.
CASES = [
 # list
 ("list-unknown-task", ["list", "--task", "nosuchtask"]),
 ("list-plot-missing-value", ["list", "--plot"]),
 ("list-plot-folder", ["list", "--plot", "{folder}"]),
 ("list-plot-not-png", ["list", "--plot", "{tmp}/table.txt"]),
 ("list-unknown-flag", ["list", "--bogus"]),
 ("no-command", []),
 ("unknown-command", ["trian"]),
 # info
 ("info-missing-name", ["info"]),
 ("info-unknown-name", ["info", "resnet9000"]),
 ("info-empty-name", ["info", ""]),
 ("info-non-ascii-name", ["info", "réseau"]),
 # train
 ("train-unknown-model", ["train", "lenet55"]),
 ("train-missing-model", ["train"]),
 ("train-epochs-zero", ["train", "lenet5", "--epochs", "0"]),
 ("train-epochs-negative", ["train", "lenet5", "--epochs", "-3"]),
 ("train-epochs-not-int", ["train", "lenet5", "--epochs", "many"]),
 ("train-epochs-float", ["train", "lenet5", "--epochs", "1.5"]),
 ("train-batch-zero", ["train", "lenet5", "--batch-size", "0"]),
 ("train-batch-negative", ["train", "lenet5", "--batch-size", "-8"]),
 ("train-lr-zero", ["train", "lenet5", "--lr", "0"]),
 ("train-lr-negative", ["train", "lenet5", "--lr", "-0.1"]),
 ("train-lr-text", ["train", "lenet5", "--lr", "fast"]),
 ("train-lr-nan", ["train", "lenet5", "--lr", "nan"]),
 ("train-image-size-zero", ["train", "lenet5", "--image-size", "0"]),
 ("train-image-size-negative", ["train", "lenet5", "--image-size", "-32"]),
 ("train-steps-zero", ["train", "lenet5", "--steps-per-epoch", "0"]),
 ("train-clipnorm-zero", ["train", "lenet5", "--clipnorm", "0"]),
 ("train-clipvalue-negative", ["train", "lenet5", "--clipvalue", "-1"]),
 ("train-clip-both", ["train", "lenet5", "--clipnorm", "1", "--clipvalue", "1"]),
 ("train-regime-unknown", ["train", "lenet5", "--regime", "medium"]),
 ("train-strategy-unknown", ["train", "lenet5", "--strategy", "tpu"]),
 ("train-optimizer-unknown", ["train", "lenet5", "--optimizer", "adagrad"]),
 ("train-model-arg-classifier", ["train", "lenet5", "--model-arg", "width=2"]),
 ("train-max-images-classifier", ["train", "lenet5", "--max-images", "10"]),
 ("train-data-missing", ["train", "lenet5", "--data", "{tmp}/no such folder"]),
 ("train-data-non-ascii-missing", ["train", "lenet5", "--data", "{tmp}/données_absentes"]),
 ("train-data-empty-folder", ["train", "lenet5", "--data", "{empty_folder}"]),
 ("train-data-is-file", ["train", "lenet5", "--data", "{text}"]),
 ("train-data-one-class", ["train", "lenet5", "--data", "{one_class}"]),
 ("train-out-is-file", ["train", "lenet5", "--out", "{text}", "--epochs", "1"]),
 ("train-keras-missing", ["train", "{tmp}/missing.keras"]),
 ("train-keras-empty", ["train", "{empty_keras}"]),
 ("train-keras-garbage", ["train", "{garbage_keras}"]),
 ("train-backbone-weights-missing", ["train", "lenet5", "--backbone-weights", "{tmp}/w.weights.h5"]),
 ("train-seed-text", ["train", "lenet5", "--seed", "abc"]),
 ("train-detector-max-images-zero", ["train", "yolov1_tiny", "--max-images", "0"]),
 ("train-detector-epochs-zero", ["train", "yolov1_tiny", "--epochs", "0"]),
 ("train-detector-model-arg-bad", ["train", "yolov1_tiny", "--model-arg", "=3"]),
 ("train-detector-data-missing", ["train", "yolov1_tiny", "--data", "{tmp}/nope"]),
 ("train-segmenter-mixed", ["train", "unet", "--mixed-precision"]),
 # evaluate
 ("evaluate-missing-model", ["evaluate"]),
 ("evaluate-model-missing", ["evaluate", "{tmp}/nope.keras"]),
 ("evaluate-model-empty-folder", ["evaluate", "{empty_folder}"]),
 ("evaluate-model-empty-file", ["evaluate", "{empty_keras}"]),
 ("evaluate-model-garbage", ["evaluate", "{garbage_keras}"]),
 ("evaluate-model-text", ["evaluate", "{text}"]),
 ("evaluate-data-missing", ["evaluate", "{model}", "--data", "{tmp}/nope"]),
 ("evaluate-data-file", ["evaluate", "{model}", "--data", "{text}"]),
 ("evaluate-data-empty-folder", ["evaluate", "{model}", "--data", "{empty_folder}"]),
 ("evaluate-max-images-zero", ["evaluate", "{model}", "--max-images", "0"]),
 ("evaluate-max-images-negative", ["evaluate", "{model}", "--max-images", "-1"]),
 ("evaluate-seed-text", ["evaluate", "{model}", "--seed", "x"]),
 ("evaluate-confusion-folder", ["evaluate", "{model}", "--confusion", "{folder}"]),
 ("evaluate-model-spaces-missing", ["evaluate", "{tmp}/my model.keras"]),
 # predict
 ("predict-no-args", ["predict"]),
 ("predict-no-image", ["predict", "{model}"]),
 ("predict-model-missing", ["predict", "{tmp}/nope.keras", "{image}"]),
 ("predict-model-garbage", ["predict", "{garbage_keras}", "{image}"]),
 ("predict-model-empty", ["predict", "{empty_keras}", "{image}"]),
 ("predict-model-empty-folder", ["predict", "{empty_folder}", "{image}"]),
 ("predict-unknown-imagenet", ["predict", "nosuchnet:imagenet", "{image}"]),
 ("predict-top-k-zero", ["predict", "{model}", "{image}", "--top-k", "0"]),
 ("predict-top-k-negative", ["predict", "{model}", "{image}", "--top-k", "-2"]),
 ("predict-top-k-text", ["predict", "{model}", "{image}", "--top-k", "all"]),
 ("predict-score-threshold-above-1", ["predict", "{model}", "{image}", "--score-threshold", "1.5"]),
 ("predict-score-threshold-negative", ["predict", "{model}", "{image}", "--score-threshold", "-0.1"]),
 # explain
 ("explain-method-unknown", ["explain", "{model}", "{image}", "--out", "{tmp}/m.png", "--method", "lime"]),
 ("explain-missing-out", ["explain", "{model}", "{image}"]),
 ("explain-model-missing", ["explain", "{tmp}/nope.keras", "{image}", "--out", "{tmp}/m.png"]),
 ("explain-image-missing", ["explain", "{model}", "{tmp}/nope.png", "--out", "{tmp}/m.png"]),
 ("explain-image-folder", ["explain", "{model}", "{folder}", "--out", "{tmp}/m.png"]),
 ("explain-image-empty", ["explain", "{model}", "{empty_png}", "--out", "{tmp}/m.png"]),
 ("explain-class-text", ["explain", "{model}", "{image}", "--out", "{tmp}/m.png", "--class", "cat"]),
 ("explain-layer-unknown", ["explain", "{model}", "{image}", "--out", "{tmp}/m.png", "--layer", "nosuchlayer"]),
 ("explain-out-folder", ["explain", "{model}", "{image}", "--out", "{folder}"]),
 ("explain-out-not-png", ["explain", "{model}", "{image}", "--out", "{tmp}/m.txt"]),
 # sort
 ("sort-missing-input", ["sort", "{model}", "--output", "{tmp}/sorted"]),
 ("sort-missing-output", ["sort", "{model}", "--input", "{folder}"]),
 ("sort-input-missing", ["sort", "{model}", "--input", "{tmp}/nope", "--output", "{tmp}/sorted"]),
 ("sort-input-file", ["sort", "{model}", "--input", "{image}", "--output", "{tmp}/sorted"]),
 ("sort-output-file", ["sort", "{model}", "--input", "{folder}", "--output", "{text}"]),
 ("sort-threshold-above-1", ["sort", "{model}", "--input", "{folder}", "--output", "{tmp}/sorted", "--threshold", "1.5"]),
 ("sort-threshold-negative", ["sort", "{model}", "--input", "{folder}", "--output", "{tmp}/sorted", "--threshold", "-1"]),
 ("sort-threshold-text", ["sort", "{model}", "--input", "{folder}", "--output", "{tmp}/sorted", "--threshold", "high"]),
 ("sort-model-missing", ["sort", "{tmp}/nope.keras", "--input", "{folder}", "--output", "{tmp}/sorted"]),
 # embed
 ("embed-missing-index", ["embed", "{model}", "{folder}"]),
 ("embed-model-missing", ["embed", "{tmp}/nope.keras", "{folder}", "--index", "{tmp}/g.npz"]),
 ("embed-folder-missing", ["embed", "{model}", "{tmp}/nope", "--index", "{tmp}/g.npz"]),
 ("embed-folder-file", ["embed", "{model}", "{image}", "--index", "{tmp}/g.npz"]),
 ("embed-classifier", ["embed", "{model}", "{folder}", "--index", "{tmp}/g.npz"]),
 ("embed-index-folder", ["embed", "{model}", "{folder}", "--index", "{folder}"]),
 # search
 ("search-missing-index", ["search", "{model}", "{image}"]),
 ("search-index-missing", ["search", "{model}", "{image}", "--index", "{tmp}/nope.npz"]),
 ("search-index-empty", ["search", "{model}", "{image}", "--index", "{empty_file}"]),
 ("search-index-folder", ["search", "{model}", "{image}", "--index", "{folder}"]),
 ("search-k-zero", ["search", "{model}", "{image}", "--index", "{tmp}/nope.npz", "-k", "0"]),
 ("search-k-negative", ["search", "{model}", "{image}", "--index", "{tmp}/nope.npz", "-k", "-1"]),
 ("search-threshold-text", ["search", "{model}", "{image}", "--index", "{tmp}/nope.npz", "--threshold", "far"]),
 ("search-model-missing", ["search", "{tmp}/nope.keras", "{image}", "--index", "{tmp}/nope.npz"]),
 # export
 ("export-nothing", ["export"]),
 ("export-model-missing", ["export", "{tmp}/nope.keras"]),
 ("export-model-name-missing", ["export", "nosuchrun"]),
 ("export-model-empty", ["export", "{empty_keras}"]),
 ("export-model-garbage", ["export", "{garbage_keras}"]),
 ("export-model-empty-folder", ["export", "{empty_folder}"]),
 ("export-format-unknown", ["export", "{model}", "--format", "onnx"]),
 ("export-format-empty", ["export", "{model}", "--format", ""]),
 ("export-quantize-unknown", ["export", "{model}", "--quantize", "int4"]),
 ("export-int8-no-data", ["export", "{model}", "--quantize", "int8"]),
 ("export-int8-io-without-int8", ["export", "{model}", "--int8-io"]),
 ("export-version-zero", ["export", "{model}", "--version", "0", "--out", "{tmp}/exp"]),
 ("export-version-negative", ["export", "{model}", "--version", "-1", "--out", "{tmp}/exp"]),
 ("export-version-text", ["export", "{model}", "--version", "latest"]),
 ("export-out-file", ["export", "{model}", "--out", "{text}"]),
 ("export-agreement-above-1", ["export", "{model}", "--min-top1-agreement", "2"]),
 ("export-agreement-text", ["export", "{model}", "--min-top1-agreement", "most"]),
 ("export-accuracy-drop-negative", ["export", "{model}", "--max-accuracy-drop", "-1"]),
 ("export-keypoint-distance-negative", ["export", "{model}", "--max-keypoint-distance", "-0.5"]),
 ("export-pixel-agreement-classifier", ["export", "{model}", "--min-pixel-agreement", "0.9", "--out", "{tmp}/exp"]),
 ("export-data-missing", ["export", "{model}", "--data", "{tmp}/nope", "--out", "{tmp}/exp"]),
 ("export-data-file", ["export", "{model}", "--data", "{text}", "--out", "{tmp}/exp"]),
 ("export-serving-config-missing", ["export", "--serving-config", "{tmp}/nope"]),
 ("export-serving-config-empty", ["export", "--serving-config", "{empty_folder}"]),
 ("export-serving-config-file", ["export", "--serving-config", "{text}"]),
 ("export-non-ascii-missing", ["export", "{tmp}/modèle.keras"]),
]


def test_at_least_100_cases_over_every_subcommand():
    from kvision.cli import build_parser

    assert len(CASES) >= 100 and len({case for case, _ in CASES}) == len(CASES)
    commands = build_parser()._subparsers._group_actions[0].choices
    assert set(commands) <= {argv[0] for _, argv in CASES if argv}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A folder of things to misuse: a small trained-shape classifier, an image, a
    class folder, an empty folder, empty and garbage files."""
    from kvision import registry
    from kvision.saving import save_model

    root = tmp_path_factory.mktemp("sweep")
    model = registry.create("lenet5", input_shape=(32, 32, 1), classes=10)
    save_model(model, root / "model.keras", class_names=[str(i) for i in range(10)])
    pixels = np.random.default_rng(0).integers(0, 255, (32, 32), np.uint8)
    for folder in ("folder/a", "empty_folder", "one_class/cat"):
        os.makedirs(root / folder)
    for path in ("image.png", "folder/a/x.png", "one_class/cat/1.png",
                 "one_class/cat/2.png", "one_class/cat/3.png"):
        Image.fromarray(pixels).save(root / path)
    for path in ("empty.keras", "empty.png", "empty.bin"):
        (root / path).write_bytes(b"")
    (root / "garbage.keras").write_bytes(b"not a zip at all")
    (root / "notes.txt").write_text("hello\n")
    names = dict(model="model.keras", folder="folder", empty_folder="empty_folder",
                 one_class="one_class", image="image.png", empty_keras="empty.keras",
                 garbage_keras="garbage.keras", empty_png="empty.png", text="notes.txt",
                 empty_file="empty.bin")
    return root, {"tmp": str(root), **{k: str(root / v) for k, v in names.items()}}


def _snapshot(root):
    found = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs:
            found[os.path.relpath(os.path.join(folder, name), root)] = "folder"
        for name in files:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                found[os.path.relpath(path, root)] = hashlib.sha1(f.read()).hexdigest()
    return found


def _run(argv, paths, root):
    """What is wrong with ``kvision argv``'s answer ("" when nothing is)."""
    before = _snapshot(root)
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            status = main([arg.format(**paths) for arg in argv])
    except SystemExit as stop:  # argparse's errors
        status = stop.code
    except AssertionError as error:  # model.fit reached
        status = str(error)
    text = err.getvalue()
    lines = text.splitlines()
    wrong = []
    if status != 2:
        wrong.append(f"exit status {status}")
    if len(lines) != 1 or "Traceback" in text:
        wrong.append(f"{len(lines)} lines on stderr")
    elif not (lines[0].startswith("kvision") and ": error: " in lines[0]):
        wrong.append("no 'kvision ...: error:' line")
    after = _snapshot(root)
    if after != before:
        changed = sorted(set(after.items()) ^ set(before.items()))
        wrong.append(f"changed on disk: {changed}")
    return "; ".join(wrong) + (f" :: {text.strip()[-300:]}" if wrong else "")


def test_every_bad_invocation_is_one_line_and_exit_2(world, monkeypatch):
    """One test for the whole sweep (the suite's per-test teardown would cost more
    than the cases); every case that fails is listed with what was wrong."""
    root, paths = world
    monkeypatch.chdir(root)  # default outputs (saved_models/...) would land here

    def no_training(*args, **kwargs):
        raise AssertionError("a bad invocation reached model.fit")

    monkeypatch.setattr(keras.Model, "fit", no_training)
    failed = {case: wrong for case, argv in CASES if (wrong := _run(argv, paths, root))}
    assert not failed, "\n".join(f"{case}: {wrong}" for case, wrong in failed.items())
