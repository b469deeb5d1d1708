"""``kvision export``: the table it prints holds the figures of the files it wrote,
recomputed here with TensorFlow's own interpreter."""

import argparse
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from kvision import registry
from kvision.data import digits
from kvision.export import command

pytestmark = pytest.mark.filterwarnings("ignore:.*tf.lite.Interpreter is deprecated")


def export_parser():
    """``kvision``'s own parser when it has ``export``, else one built from command.py."""
    from kvision import cli

    parser = cli.build_parser()
    subcommands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    if "export" in subcommands.choices:
        return parser
    parser = argparse.ArgumentParser(prog="kvision")
    command.add_parser(parser.add_subparsers(dest="command", required=True))
    return parser


def kvision(argv):
    args = export_parser().parse_args(argv)
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
    """``{format: (size, diff, agreement, drop, latency, path)}`` from the table."""
    table = {}
    for line in printed.splitlines():
        cells = line.split()
        if cells and cells[0] in ("savedmodel", "tflite", "tflite-int8"):
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

    # The int8 row's agreement and accuracy drop, recomputed by hand on the check set.
    _, (x_test, y_test) = digits.load_digits()  # what `kvision.data.load("digits")` holds out
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
    assert float(table["tflite-int8"][2].rstrip("%")) == pytest.approx(100 * agreement, abs=0.006)
    assert float(table["tflite-int8"][3]) == pytest.approx(drop, abs=0.006)
    assert agreement >= 0.97

    # The serving config names the model just exported.
    assert kvision(["export", "--serving-config", "saved_models"]) == 0
    with open("saved_models/models.config") as f:
        config = f.read()
    assert 'name: "lenet5"' in config and os.path.abspath("saved_models/lenet5") in config


def test_export_bad_input(saved, monkeypatch, tmp_path):
    root, _ = saved
    monkeypatch.chdir(root)
    parser = argparse.ArgumentParser()
    command.add_parser(parser.add_subparsers(dest="command"))
    before = sorted(os.listdir("saved_models/lenet5"))
    for argv, error, match in [
        (["export", "no_such_model"], FileNotFoundError, "no_such_model"),
        (["export", "lenet5", "--quantize", "int8"], ValueError, "--data"),
        (["export", "lenet5", "--quantize", "int4"], ValueError, "--quantize"),
        (["export", "lenet5", "--format", "onnx"], ValueError, "--format"),
        (["export"], ValueError, "MODEL"),
    ]:
        args = parser.parse_args(argv)
        with pytest.raises(error, match=match):
            command.run(args)
    assert sorted(os.listdir("saved_models/lenet5")) == before
