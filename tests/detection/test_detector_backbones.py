"""``kvision.models.create(DETECTOR, classes=..., backbone=...)`` for every detector:
a keras.applications backbone, frozen as in transfer learning (trained backbones and
the other regimes are tested with each family)."""

import keras
import pytest

import kvision

SHAPE = (64, 64, 3)
# name -> (small options, output shapes with 3 classes on a 64x64 MobileNetV2)
DETECTORS = {
    "localizer": ({"hidden_units": 8}, [(3,), (4,)]),
    "overfeat": ({"units": (8,), "box_units": (8,)}, [(4,), (4,)]),
    "yolov1": ({"width": 0.0625, "grid": 2}, [(2, 2, 13)]),
    "yolov3": ({}, [(2, 2, 3, 8), (4, 4, 3, 8), (8, 8, 3, 8)]),
    "yolov3_tiny": ({}, [(2, 2, 3, 8), (4, 4, 3, 8)]),
}


def _shapes(model):
    outputs = model.output
    outputs = list(outputs.values()) if isinstance(outputs, dict) else model.outputs
    return sorted(tuple(o.shape[1:]) for o in outputs)


@pytest.mark.parametrize("name", sorted(DETECTORS))
def test_create_takes_classes_and_a_keras_applications_backbone(name):
    options, shapes = DETECTORS[name]
    with keras.StatelessScope(initialize_variables=False):  # shapes only: fast
        frozen = kvision.create(name, classes=3, backbone="MobileNetV2",
                                input_shape=SHAPE, trainable_backbone=False, **options)
    assert _shapes(frozen) == sorted(shapes)
    backbone = frozen.get_layer("backbone")
    assert backbone.trainable_weights == [] and len(backbone.weights) > 200
    assert frozen.get_layer("preprocessing").mode == "tf"  # MobileNetV2's [-1, 1]
    assert 0 < len(frozen.trainable_weights)  # the heads train
