"""Losses and layers live in ``kvision/losses/`` and ``kvision/layers/``, not in model
files (issue 16); what users saved, and imported, before the move still works."""

import importlib
import inspect
import json
import os
import pathlib
import pkgutil
import subprocess
import sys

import keras
import numpy as np
import pytest

import kvision.models
from kvision import _serializable, layers, losses
from kvision.losses import detection as detection_losses
from kvision.losses import segmentation as segmentation_losses
from kvision.testing import assert_float32_close

DATA = pathlib.Path(__file__).parent / "data"

LOAD_SAVED = """
import json, sys
import kvision  # the only kvision import: it must be enough
import keras
import numpy as np

data, out = sys.argv[1], sys.argv[2]
saved = np.load(f"{data}/moved_classes.npz")
model = keras.saving.load_model(f"{data}/moved_classes.keras", safe_mode=True)
labeling = keras.saving.load_model(f"{data}/moved_instance_labeling.keras",
                                   safe_mode=True)
pred = {k: keras.ops.convert_to_numpy(v) for k, v in model(saved["images"]).items()}
found = labeling([saved["probabilities"], saved["separation"]])
results = {**{f"pred/{k}": v for k, v in pred.items()},
           **{f"loss/{k}": np.float32(model.loss[k](saved[f"true/{k}"], pred[k]))
              for k in pred},
           **{f"instances/{k}": keras.ops.convert_to_numpy(v) for k, v in found.items()}}
np.savez(out, **results)
classes = [type(loss) for loss in model.loss.values()]
classes += [type(layer) for layer in labeling.layers if "labeling" in layer.name]
print(json.dumps({f"{c.__module__}.{c.__name__}": keras.saving.get_registered_name(c)
                  for c in classes}))
"""


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    """What a fresh interpreter gets from the files saved before the move."""
    out = tmp_path_factory.mktemp("moved") / "loaded.npz"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run([sys.executable, "-c", LOAD_SAVED, str(DATA), str(out)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1]), np.load(out)


def test_a_model_saved_before_the_move_loads_with_the_moved_classes(loaded):
    classes, _ = loaded
    assert classes == {
        "kvision.losses.detection.YOLOv3Loss": "kvision>YOLOv3Loss",
        "kvision.losses.detection.YOLOv1Loss": "kvision>YOLOv1Loss",
        "kvision.losses.detection.BoxRegressionLoss": "kvision>BoxRegressionLoss",
        "kvision.losses.segmentation.SeparationLoss": "kvision>SeparationLoss",
        "kvision.layers.labeling.InstanceLabeling": "kvision>InstanceLabeling",
    }


def test_a_model_saved_before_the_move_gives_the_same_outputs_and_losses(loaded):
    _, got = loaded
    saved = np.load(DATA / "moved_classes.npz")
    for name in ("yolov3", "yolov1", "boxes", "separation"):
        # A 3x3x3 convolution, then at most a pooled dense layer: float32 rounding only.
        assert_float32_close(got[f"pred/{name}"], saved[f"pred/{name}"], terms=27,
                             depth=2, err_msg=name)
        # The loss sums over every cell of a target: that many terms, on top.
        cells = saved[f"true/{name}"][0].size
        assert_float32_close(got[f"loss/{name}"], saved[f"loss/{name}"], terms=cells,
                             depth=3, err_msg=f"{name} loss")
    for name in ("instance_map", "classes", "num_detections", "boxes"):
        np.testing.assert_array_equal(got[f"instances/{name}"],
                                      saved[f"instances/{name}"], err_msg=name)
    assert_float32_close(got["instances/scores"], saved["instances/scores"], terms=144)
    assert int(got["instances/num_detections"][0]) == 3  # the cut made two of one class


def test_the_old_import_paths_and_the_packages_give_the_moved_objects():
    from kvision.models.detection import localization, overfeat, yolo, yolo_v1
    from kvision.models.segmentation import instance

    assert yolo.YOLOv3Loss is detection_losses.YOLOv3Loss
    assert yolo_v1.YOLOv1Loss is detection_losses.YOLOv1Loss
    assert localization.BoxRegressionLoss is detection_losses.BoxRegressionLoss
    assert overfeat.BoxRegressionLoss is detection_losses.BoxRegressionLoss
    assert instance.SeparationLoss is segmentation_losses.SeparationLoss
    assert instance.InstanceLabeling is layers.InstanceLabeling
    for name in ("YOLOv3Loss", "YOLOv1Loss", "BoxRegressionLoss"):  # the package's names
        assert getattr(losses, name) is getattr(detection_losses, name)
    assert losses.SeparationLoss is segmentation_losses.SeparationLoss


def _model_modules():
    for info in pkgutil.walk_packages(kvision.models.__path__, "kvision.models."):
        yield importlib.import_module(info.name)


def test_no_model_file_defines_a_loss_a_layer_or_a_metric():
    # STYLE.md: a model file builds networks; its losses and layers live elsewhere.
    kinds = (keras.losses.Loss, keras.layers.Layer, keras.metrics.Metric)
    defined = [f"{module.__name__}.{name}" for module in _model_modules()
               for name, value in vars(module).items()
               if inspect.isclass(value) and issubclass(value, kinds)
               and value.__module__ == module.__name__]
    assert defined == []
    assert [m for m in _serializable.MODULES if m.startswith("kvision.models.")] == []
