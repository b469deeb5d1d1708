"""``kvision evaluate`` on instance segmenters: COCO mask AP of the model's instances,
equal to pycocotools' ``segm`` COCOeval on the same instances, through the instance
task (:class:`kvision.tasks.segmentation.InstanceSegmentationTask`).

The model is a two-network instance model whose networks are fixed 1x1 convolutions:
the semantic one reads each pixel's class off its grey level (scenes painted with
grey ``20 * (class + 1)`` on each digit's mask), the separation one says "no border"
everywhere; so its instances are the scenes' digits, same-class touching ones merged
(mask AP 0.47 here, box AP 0.43 on the same instances)."""

import json

import keras
import numpy as np
import pytest

from kvision import cli
from kvision.data.synthetic import digit_scenes
from kvision.models.segmentation.instance import TwoNetworkInstance
from kvision.predict import Trained
from kvision.saving import save_model
from kvision.tasks import detection
from kvision.tasks.base import get_task

SIZE, CLASSES = 48, 11
STEP = 20.0  # grey level of class c: STEP * (c + 1)


def _grey_reader():
    """Pixels -> softmax over 11 classes peaked at the class whose grey level is
    nearest: logits -(x - level_k)^2 up to a term common to every class."""
    levels = np.arange(CLASSES, dtype="float32") * STEP  # class 0: background, grey 0
    scale = 0.05
    inputs = keras.Input((SIZE, SIZE, 3))
    conv = keras.layers.Conv2D(CLASSES, 1, activation="softmax")
    outputs = conv(inputs)
    kernel = np.zeros((1, 1, 3, CLASSES), "float32")
    kernel[0, 0, 0] = 2 * levels * scale
    conv.set_weights([kernel, -(levels ** 2) * scale])
    return keras.Model(inputs, outputs)


def _no_borders():
    inputs = keras.Input((SIZE, SIZE, 3))
    conv = keras.layers.Conv2D(1, 1, activation="sigmoid")
    outputs = conv(inputs)
    conv.set_weights([np.zeros((1, 1, 3, 1), "float32"), np.full((1,), -20.0, "float32")])
    return keras.Model(inputs, outputs)


@pytest.fixture(scope="module")
def painted():
    """Digit scenes re-painted so a pixel's grey level says its class."""
    # Same-class digits that touch merge into one instance (no border is ever
    # predicted): mask AP well under 1, and apart from box AP on the same instances.
    scenes = digit_scenes(12, image_size=SIZE, digit_size=(10, 16), objects=(2, 4),
                          touching=0.7, subset="test", seed=4)
    images = np.zeros((len(scenes), SIZE, SIZE, 3), "float32")
    for image, masks, classes in zip(images, scenes.masks, scenes.classes):
        for mask, c in zip(masks, classes):
            image[mask] = STEP * (c + 1)
    truth = [{"boxes": b, "classes": c, "masks": m}
             for b, c, m in zip(scenes.boxes, scenes.classes, scenes.masks)]
    return detection.Labelled(list(images), truth, tuple(scenes.class_names), "painted")


@pytest.fixture(scope="module")
def model():
    return TwoNetworkInstance(CLASSES, (SIZE, SIZE, 3), network=_grey_reader(),
                              separation_network=_no_borders())


def test_mask_ap_equals_cocoeval_on_the_same_instances(model, painted, coco_reference):
    from kvision.models.segmentation import instance

    names = ("background", *painted.class_names)
    report = get_task("instance_segmentation").evaluate(Trained(model, names, "m"),
                                                        painted)
    found = instance.predict_instances(model, np.stack(painted.images), score_threshold=0.0)
    reference = coco_reference(painted.ground_truth, found, iou_type="segm")
    assert report.figures["map"] == pytest.approx(reference["map"], abs=1e-4)
    assert report.figures["map_50"] == pytest.approx(reference["map_50"], abs=1e-4)
    assert 0.3 < report.figures["map"] < 0.9  # digits found, touching ones merged
    assert report.format().startswith("mask AP: mAP@[.5:.95]")
    assert report.as_dict()["task"] == "instance_segmentation"


def test_kvision_evaluate_measures_a_saved_instance_model(model, tmp_path, capsys):
    path = save_model(model, tmp_path / "instances.keras",
                      class_names=("background", *(str(d) for d in range(10))))
    assert cli.main(["evaluate", str(path), "--max-images", "4", "--json"]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert figures["task"] == "instance_segmentation" and figures["figure"] == "mask AP"
    assert figures["images"] == 4 and set(figures["per_class"]) == {str(d) for d in
                                                                     range(10)}
    assert cli.main(["evaluate", str(path), "--data", "digits"]) == 2
    assert "instance segmenter is measured on digit-scenes" in capsys.readouterr().err
