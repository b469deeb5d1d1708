"""``kvision export``: the table it prints holds the figures of the files it wrote,
recomputed here with TensorFlow's own interpreter."""

import hashlib
import importlib
import os
import re

import keras
import numpy as np
import pytest
import tensorflow as tf

from scipy.stats import binomtest

from kvision import _native, cli, registry
from kvision.data import digits

pytestmark = pytest.mark.filterwarnings("ignore:.*tf.lite.Interpreter is deprecated")


def kvision(argv):
    """``kvision ARGV`` through the command line's own parser (kvision.cli), with the
    error raised rather than printed, so that a test can match it."""
    args = cli.build_parser().parse_args(argv)
    return args.func(args)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A LeNet-5 trained 2 epochs on the digits, saved as saved_models/lenet5/lenet5.keras."""
    root = tmp_path_factory.mktemp("project")
    (x_train, y_train), _ = digits.load_digits()
    keras.utils.set_random_seed(0)
    model = registry.create("lenet5", input_shape=(32, 32, 1), classes=10)
    model.compile(keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy")
    model.fit(x_train, y_train, epochs=2, batch_size=32, verbose=0)
    os.makedirs(root / "saved_models" / "lenet5")
    model.save(root / "saved_models" / "lenet5" / "lenet5.keras")
    return root, model


def rows(printed):
    """``{format: (size, images, diff, agreement, interval, drop, latency, path)}``
    from the table."""
    table = {}
    for line in printed.splitlines():
        cells = line.split()
        if cells and cells[0] in ("savedmodel", "tflite", "tflite-float16",
                                  "tflite-dynamic", "tflite-int8"):
            table[cells[0]] = cells[1:]
    return table


def test_export_prints_the_figures_of_its_files(saved, monkeypatch, capsys):
    root, model = saved
    monkeypatch.chdir(root)
    assert kvision(["export", "lenet5", "--format", "savedmodel,tflite",
                    "--quantize", "none,int8", "--data", "digits"]) == 0
    table = rows(capsys.readouterr().out)
    assert sorted(table) == ["savedmodel", "tflite", "tflite-int8"]
    assert table["savedmodel"][-1] == os.path.join(os.path.abspath("saved_models/lenet5"), "1")
    assert os.path.isfile(os.path.join(table["savedmodel"][-1], "saved_model.pb"))
    for fmt in ("tflite", "tflite-int8"):
        path = table[fmt][-1]
        assert float(table[fmt][0]) == pytest.approx(os.path.getsize(path) / 1e6, abs=5e-4)
    # Labels travelled: the digits' class names, beside each file.
    with open("saved_models/lenet5/lenet5.int8.labels.txt") as f:
        assert f.read().split() == list(digits.CLASS_NAMES)

    # The int8 row's agreement, its interval and accuracy drop, recomputed by hand on
    # the check set: every digit, the held-out ones first.
    (x_train, y_train), (x_test, y_test) = digits.load_digits()
    x_test, y_test = np.concatenate([x_test, x_train]), np.concatenate([y_test, y_train])
    assert table["tflite-int8"][1] == str(len(x_test)) == "1797"
    interpreter = tf.lite.Interpreter(model_path=table["tflite-int8"][-1])
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    top1 = []
    for image in x_test:
        interpreter.set_tensor(inp["index"], image[None])
        interpreter.invoke()
        top1.append(interpreter.get_tensor(out["index"])[0].argmax())
    expected = keras.ops.convert_to_numpy(model(x_test, training=False)).argmax(-1)
    agreement = np.mean(np.array(top1) == expected)
    drop = 100 * (np.mean(expected == y_test) - np.mean(np.array(top1) == y_test))
    assert float(table["tflite-int8"][3].rstrip("%")) == pytest.approx(100 * agreement, abs=0.006)
    assert float(table["tflite-int8"][5]) == pytest.approx(drop, abs=0.006)
    assert agreement >= 0.97
    wilson = binomtest(int(np.sum(np.array(top1) == expected)), len(expected)).proportion_ci(
        method="wilson")
    assert [float(x) for x in table["tflite-int8"][4].replace("%", "").split("-")] == \
        pytest.approx([100 * wilson.low, 100 * wilson.high], abs=0.06)

    # The serving config names the model just exported.
    assert kvision(["export", "--serving-config", "saved_models"]) == 0
    with open("saved_models/models.config") as f:
        config = f.read()
    assert 'name: "lenet5"' in config and os.path.abspath("saved_models/lenet5") in config


def test_export_bad_input(saved, monkeypatch, capsys):
    """What a user sees: ``kvision export`` (cli.main) exits 2 with one error line
    naming the problem, no traceback, and nothing written."""
    root, _ = saved
    monkeypatch.chdir(root)
    monkeypatch.setattr(_native, "QUIET", _native.QUIET)  # main() sets it; put it back
    before = sorted(os.listdir("saved_models/lenet5"))
    for argv, match in [
        (["export", "no_such_model"], "no_such_model"),
        (["export", "lenet5", "--quantize", "int8"], "--data"),
        (["export", "lenet5", "--quantize", "int4"], "--quantize"),
        (["export", "lenet5", "--format", "onnx"], "--format"),
        (["export"], "MODEL"),
    ]:
        assert cli.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("kvision export: error: ") and match in err, (argv, err)
        assert "Traceback" not in err
    assert sorted(os.listdir("saved_models/lenet5")) == before


# --- all or nothing, check sets that mean something, thresholds as flags ---------------

def listing(folder):
    """Every path under ``folder`` with a hash of its bytes: what "as it was" means."""
    found = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs:
            found[os.path.relpath(os.path.join(root, name), folder)] = "folder"
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                found[os.path.relpath(os.path.join(root, name), folder)] = \
                    hashlib.sha256(f.read()).hexdigest()
    return found


def earlier_export(out, name):
    """What an earlier run left in ``out``: version 1, float32 and int8 files, labels."""
    (out / "1").mkdir(parents=True)
    (out / "1" / "saved_model.pb").write_bytes(b"version 1")
    for file in (f"{name}.tflite", f"{name}.labels.txt", f"{name}.int8.tflite",
                 f"{name}.int8.labels.txt"):
        (out / file).write_bytes(f"the earlier {file}".encode())
    return listing(out)


@pytest.fixture(scope="module")
def untrained(tmp_path_factory):
    """A LeNet-5 never trained: near-tied outputs, which int8 flips on a few % of the
    digits (96.99% agree here)."""
    path = tmp_path_factory.mktemp("untrained") / "raw.keras"
    keras.utils.set_random_seed(0)
    registry.create("lenet5", input_shape=(32, 32, 1), classes=10).save(path)
    return path


def test_a_failed_check_leaves_the_folder_as_it_was(untrained, tmp_path, monkeypatch):
    """SavedModel and float32 pass, int8 fails: nothing of the three is kept, and the
    message says on how many images, with what margin, and what to try."""
    out = tmp_path / "out"
    before = earlier_export(out, "raw")
    monkeypatch.setitem(importlib.import_module("kvision.export.tflite").MIN_TOP1_AGREEMENT,
                        "int8", 1.0)
    with pytest.raises(ValueError, match="top-1 agreement") as error:
        kvision(["export", str(untrained), "--out", str(out), "--format", "savedmodel,tflite",
                 "--quantize", "none,int8", "--data", "digits"])
    assert listing(out) == before
    message = str(error.value)
    assert "on 1797 images (agreement's 95% interval " in message  # every digit
    assert f"Nothing was written: {out} is as it was" in message
    for hint in ("--quantize float16", "--quantize dynamic", "--min-top1-agreement 0."):
        assert hint in message


def test_thresholds_are_flags(untrained, tmp_path, capsys):
    parser = cli.build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["export", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    for flag, default in [("--min-top1-agreement", "default 0.99 float16, 0.97 dynamic and int8"),
                          ("--min-pixel-agreement", "default 0.995 float32"),
                          ("--min-detection-match", "default 0.99 float16, 0.97 dynamic"),
                          ("--max-accuracy-drop", "default 1.0")]:
        assert flag in help_text and default in help_text
    out = tmp_path / "out"
    argv = ["export", str(untrained), "--out", str(out), "--format", "tflite",
            "--quantize", "int8", "--data", "digits"]
    with pytest.raises(ValueError, match=r"top-1 agreement 9\d\.\d\d% < 100\.00%"):
        kvision(argv + ["--min-top1-agreement", "1"])
    assert not out.exists()
    assert kvision(argv + ["--min-top1-agreement", "0.5"]) == 0
    assert rows(capsys.readouterr().out)["tflite-int8"][1] == "1797"
    with pytest.raises(ValueError, match="a classifier, whose agreement flag is "
                                         "--min-top1-agreement"):
        kvision(argv + ["--min-pixel-agreement", "0.5"])
    for bad in (["--min-top1-agreement", "97"], ["--max-accuracy-drop", "-1"]):
        with pytest.raises(SystemExit):  # a fraction, not %; points lost, not gained
            parser.parse_args(argv + bad)


def test_max_accuracy_drop_reaches_every_tflite_check(saved, tmp_path, monkeypatch):
    """The flag is what each TFLite check is given (the digits' int8 accuracy drop is
    about 0 either way, so it cannot be shown failing on real figures here)."""
    from kvision import export as package

    root, _ = saved
    given = []
    export_tflite = package.tflite

    def recording(*args, **kwargs):
        given.append(kwargs["max_accuracy_drop"])
        return export_tflite(*args, **kwargs)

    monkeypatch.setattr(package, "tflite", recording)
    assert kvision(["export", str(root / "saved_models" / "lenet5" / "lenet5.keras"),
                    "--out", str(tmp_path), "--format", "tflite", "--quantize",
                    "none,float16", "--max-accuracy-drop", "2.5"]) == 0
    assert given == [2.5, 2.5]


def test_a_folder_is_checked_on_all_its_images(saved, tmp_path, capsys):
    """4 classes of 20 images: 80 check images, not the 16 its split holds out."""
    root, _ = saved
    (x, y), _ = digits.load_digits()
    for label in range(4):
        (tmp_path / "photos" / str(label)).mkdir(parents=True)
        for i, image in enumerate(x[y == label][:20]):
            (tmp_path / "photos" / str(label) / f"{i}.png").write_bytes(
                tf.io.encode_png(image.astype("uint8")).numpy())
    assert kvision(["export", str(root / "saved_models" / "lenet5" / "lenet5.keras"),
                    "--out", str(tmp_path / "out"), "--format", "tflite", "--quantize",
                    "dynamic", "--data", str(tmp_path / "photos")]) == 0
    assert rows(capsys.readouterr().out)["tflite-dynamic"][1] == "80"


def failing_rename(monkeypatch, *, dst=(), src=()):
    """``os.rename`` that fails (an I/O error) moving a staged file onto a ``dst``
    path, or moving a ``src`` path anywhere."""
    rename = os.rename

    def patched(a, b, *args, **kwargs):
        staged = f"{os.sep}.export-" in os.fspath(a)
        if (staged and os.fspath(b) in map(str, dst)) or os.fspath(a) in map(str, src):
            raise OSError(28, "No space left on device")
        return rename(a, b, *args, **kwargs)

    monkeypatch.setattr(os, "rename", patched)


def test_a_failed_move_is_undone(saved, tmp_path, monkeypatch):
    """Every file passed its check, but moving the second into place fails: the
    first (SavedModel version 2) is moved back and the originals put back."""
    root, _ = saved
    out = tmp_path / "out"
    before = earlier_export(out, "lenet5")
    failing_rename(monkeypatch, dst=[out / "lenet5.tflite"])
    with pytest.raises(ValueError, match="every move was undone"):
        kvision(["export", str(root / "saved_models" / "lenet5" / "lenet5.keras"),
                 "--out", str(out)])
    assert listing(out) == before


def test_a_move_that_cannot_be_undone_is_named(saved, tmp_path, monkeypatch):
    root, _ = saved
    out = tmp_path / "out"
    earlier_export(out, "lenet5")
    failing_rename(monkeypatch, dst=[out / "lenet5.tflite"], src=[out / "2"])
    with pytest.raises(ValueError, match=r"nor undo every move\. Written: "
                                         + re.escape(str(out / "2")) + ";"):
        kvision(["export", str(root / "saved_models" / "lenet5" / "lenet5.keras"),
                 "--out", str(out)])
    assert os.path.isfile(out / "2" / "saved_model.pb")
    assert (out / "lenet5.tflite").read_bytes() == b"the earlier lenet5.tflite"
