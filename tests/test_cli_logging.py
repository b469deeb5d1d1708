"""The command line is quiet by default: TensorFlow's native start-up logging (absl's
"before InitializeLog" notice, oneDNN's, the CUDA stub's) is held back unless
``--verbose`` asks for it."""

import os
import re
import subprocess
import sys

import numpy as np

# An absl/glog line: severity letter, MMDD date, time, thread id, file:line]
NATIVE_LOG_LINE = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ [\w.]+:\d+\]", re.M)


def _kvision(*argv):
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    return subprocess.run([sys.executable, "-m", "kvision.cli", *argv], env=env,
                          capture_output=True, text=True, timeout=300)


def test_commands_print_no_native_logging_unless_verbose():
    quiet = _kvision("info", "lenet5", "--no-summary")
    assert quiet.returncode == 0, quiet.stderr
    assert "lenet5" in quiet.stdout
    assert not NATIVE_LOG_LINE.search(quiet.stderr), quiet.stderr
    assert "InitializeLog" not in quiet.stderr


def test_every_command_takes_verbose():
    from kvision.cli import build_parser

    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    for name, command in commands.items():
        flags = {flag for action in command._actions for flag in action.option_strings}
        assert {"-v", "--verbose"} <= flags, name


def test_held_logging_is_shown_when_the_import_fails(capfd):
    """A failing block's native output is not lost: it is written out, then the error."""
    import pytest

    from kvision.cli import _native_stderr_held

    with pytest.raises(RuntimeError, match="boom"):
        with _native_stderr_held():
            os.write(2, b"native detail\n")
            raise RuntimeError("boom")
    assert "native detail" in capfd.readouterr().err
    with _native_stderr_held():
        os.write(2, b"held back\n")
    assert "held back" not in capfd.readouterr().err


def test_the_quiet_command_line_holds_litert_delegate_notices(tmp_path, monkeypatch, capfd):
    """Opening a .tflite prints "INFO: Created TensorFlow Lite XNNPACK delegate" on
    file descriptor 2 from C++; the quiet command line holds it back too."""
    import keras
    import tensorflow as tf

    from kvision import _native
    from kvision.export.litert import TFLiteModel

    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    path = tmp_path / "tiny.tflite"
    path.write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    capfd.readouterr()
    monkeypatch.setattr(_native, "QUIET", True)
    TFLiteModel(path).predict(np.zeros((3, 4), "float32"))
    assert "XNNPACK" not in capfd.readouterr().err
