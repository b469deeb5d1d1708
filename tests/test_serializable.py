"""``import kvision`` is all a saved kvision model needs (issue 15, point 2)."""

import ast
import json
import os
import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest

import kvision
from kvision import _serializable, transfer
from kvision.losses.segmentation import DiceLoss, FocalLoss, PixelCrossEntropy
from kvision.metrics.segmentation import MeanIoU
from kvision.models.detection import localization, overfeat, yolo, yolo_v1
from kvision.models.segmentation import instance
from kvision.testing import tiny_encoder

SOURCE = pathlib.Path(kvision.__file__).parent
DECORATOR = "register_keras_serializable"


def _module_name(path):
    parts = path.relative_to(SOURCE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _sources():
    for path in sorted(SOURCE.rglob("*.py")):
        yield _module_name(path), path.read_text()


def _registered_names():
    """``package>name`` of every class or function kvision decorates, from its source."""
    names = []
    for module, text in _sources():
        for node in ast.walk(ast.parse(text)):
            if not isinstance(node, (ast.ClassDef, ast.FunctionDef)):
                continue
            for call in node.decorator_list:
                if isinstance(call, ast.Call) and DECORATOR in ast.unparse(call.func):
                    kw = {k.arg: ast.literal_eval(k.value) for k in call.keywords}
                    package, name = kw.get("package", "Custom"), kw.get("name", node.name)
                    names.append(f"{package}>{name}")
    return names


def _run(code, *args):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True,
                          text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_the_list_names_every_module_that_registers_and_no_other():
    # Any use of the decorator counts (a comment or a docstring mentioning it without
    # a call does not), so a class moved to a new module must be listed there.
    holding = {module for module, text in _sources()
               if any(f"{DECORATOR}(" in line for line in text.splitlines()
                      if not line.lstrip().startswith("#"))}
    listed = set(_serializable.MODULES)
    assert holding - listed == set(), "register these in kvision/_serializable.py MODULES"
    assert listed - holding == set(), "these MODULES register nothing: remove them"
    assert len(_registered_names()) >= 30  # the scan sees the decorators


CHECK_REGISTERED = """
import json, sys
exec(sys.argv[1])
import keras
names = json.loads(sys.argv[2])
missing = [n for n in names if keras.saving.get_registered_object(n) is None]
print(json.dumps(missing))
"""


@pytest.mark.parametrize("imports", [
    "import kvision; assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules;"
    " import tensorflow",                     # Keras loads midway through TensorFlow's init
    "import keras; import kvision",           # Keras first: kvision registers at once
    "import kvision.layers",                  # Keras loads midway through kvision.layers
])
def test_every_registered_object_is_found_whatever_the_import_order(imports):
    missing = _run(CHECK_REGISTERED, imports, json.dumps(_registered_names()))
    assert json.loads(missing) == []


BROKEN_REGISTRATION = """
import json, warnings
import kvision
kvision._serializable.MODULES += ("kvision.no_such_module",)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import keras
assert keras.saving.load_model  # the user's Keras works all the same
print(json.dumps([str(w.message) for w in caught if w.category is RuntimeWarning]))
"""


def test_a_registration_that_fails_warns_and_leaves_keras_working():
    warned = json.loads(_run(BROKEN_REGISTRATION).splitlines()[-1])
    assert len(warned) == 1 and "kvision could not register" in warned[0]
    assert "No module named 'kvision.no_such_module'" in warned[0]


def _compiled(model, loss, metrics=None):
    model.compile(optimizer="adam", loss=loss, metrics=metrics)
    return model


def _models():
    """One tiny model of every task, compiled as kvision compiles it."""
    create = kvision.create
    yolo3 = create("yolov3_tiny", classes=2, input_shape=(64, 64, 3), width=0.125)
    yolo3.compile(optimizer="adam", loss=yolo.losses(yolo3))
    yolo1 = create("yolov1", classes=2, input_shape=(64, 64, 3), grid=2,
                   backbone=tiny_encoder(64), width=0.0625, batch_norm=True)
    yolo1.compile(optimizer="adam", loss=yolo_v1.loss(yolo1))
    localizer = localization.compile_localizer(
        create("localizer", backbone="lenet5", classes=10, input_shape=(32, 32, 1),
               hidden_units=8))
    window = _compiled(create("overfeat", backbone="lenet5", classes=10,
                              input_shape=(32, 32, 1), units=(24, 16), box_units=(8,)),
                       overfeat.losses())
    return {
        "scratch_classifier": _compiled(create("lenet5", classes=10),
                                        "sparse_categorical_crossentropy", ["accuracy"]),
        "transfer_classifier": _compiled(
            transfer.build_classifier("lenet5", 3, weights=None, input_shape=(32, 32, 3)),
            "sparse_categorical_crossentropy", ["accuracy"]),
        "yolov3_tiny": yolo3,
        "yolov3_tiny_detector": yolo.inference_model(yolo3),
        "yolov1": yolo1,
        "yolov1_detector": yolo_v1.inference_model(yolo1),
        "localizer": localizer,
        "localizer_detector": localization.inference_model(localizer),
        "overfeat": window,
        "overfeat_detector": overfeat.inference_model(window, image_shape=(48, 48, 1)),
        "unet": _compiled(create("unet", classes=3, input_shape=(32, 32, 3), filters=4),
                          PixelCrossEntropy(), [MeanIoU(3)]),
        "segnet": _compiled(create("segnet", classes=3, input_shape=(32, 32, 3),
                                   width=0.125), DiceLoss(), [MeanIoU(3)]),
        "fcn8s": _compiled(create("fcn8s", classes=3, input_shape=(32, 32, 3),
                                  backbone=tiny_encoder(32), fc_units=8),
                           FocalLoss(), [MeanIoU(3)]),
        "deeplabv3_plus": _compiled(
            create("deeplabv3_plus", classes=3, input_shape=(64, 64, 3),
                   backbone=tiny_encoder(64), filters=8, low_level_filters=4),
            "sparse_categorical_crossentropy", [MeanIoU(3)]),
        "two_network_instance": _compiled(
            instance.TwoNetworkInstance(3, (32, 32, 3), network="unet", filters=4),
            instance.losses()),
    }


LOAD_ALL = """
import json, sys
import kvision  # the only kvision import: it must be enough
import keras
import numpy as np

folder = sys.argv[1]
inputs = np.load(f"{folder}/inputs.npz")
outputs, compiled = {}, {}
for name in inputs.files:
    model = keras.saving.load_model(f"{folder}/{name}.keras", safe_mode=True)
    for i, y in enumerate(keras.tree.flatten(model(inputs[name], training=False))):
        outputs[f"{name}/{i}"] = keras.ops.convert_to_numpy(y)
    compiled[name] = model.get_compile_config()
np.savez(f"{folder}/outputs.npz", **outputs)
print(json.dumps(compiled, default=str))
"""


def _as_json(config):
    return json.loads(json.dumps(config, default=str))


@pytest.mark.slow
def test_a_saved_model_of_every_task_loads_after_import_kvision_alone(tmp_path):
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    models = _models()
    inputs, expected, compiled = {}, {}, {}
    for name, model in models.items():
        inputs[name] = rng.uniform(0, 255, (2, *model.input_shape[1:])).astype("float32")
        flat = keras.tree.flatten(model(inputs[name], training=False))
        expected[name] = [keras.ops.convert_to_numpy(y) for y in flat]
        compiled[name] = _as_json(model.get_compile_config())
        model.save(tmp_path / f"{name}.keras")
    np.savez(tmp_path / "inputs.npz", **inputs)

    loaded_compile = json.loads(_run(LOAD_ALL, str(tmp_path)).splitlines()[-1])
    got = np.load(tmp_path / "outputs.npz")
    for name, want in expected.items():
        assert loaded_compile[name] == compiled[name], f"{name}: compile() not restored"
        for i, y in enumerate(want):
            # Same weights and graph: float32 rounding only, relative to the values' size.
            scale = max(1.0, float(np.max(np.abs(y)))) if y.size else 1.0
            np.testing.assert_allclose(got[f"{name}/{i}"], y, rtol=1e-5,
                                       atol=1e-5 * scale, err_msg=f"{name} output {i}")
