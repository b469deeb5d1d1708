"""Fast R-CNN (kvision/models/detection/fast_rcnn.py): the paper's VGG-16 head sizes,
proposals as an input, and one batch overfitted to mAP@0.5 = 1.0 from proposals
around the objects and at random."""

import keras
import numpy as np
import pytest

import kvision
from kvision import testing
from kvision.data.synthetic import digit_scenes
from kvision.metrics.detection import evaluate
from kvision.models.detection import fast_rcnn

pytestmark = pytest.mark.xdist_group("rcnn")
SIDE = 64


def test_the_head_is_the_papers_vgg16_head():
    """fc6 (512*7*7 -> 4096) and fc7 of VGG-16, a 21-way classifier and 84 box outputs
    for PASCAL VOC's 20 classes."""
    with testing.built_at_once(values=False):
        model = kvision.create("fast_rcnn")
    head = (512 * 7 * 7 * 4096 + 4096) + (4096 * 4096 + 4096) + (4096 * 21 + 21) + (
        4096 * 84 + 84)
    assert model.get_layer("box_head").count_params() == head == 119_976_041
    assert type(model.get_layer("box_roi_pool").pool).__name__ == "RoIPooling"
    assert model.input_shape[1] == (None, 2000, 4)


def _proposals(scenes, rng, around=8, random=24):
    """Per image: jittered copies of its boxes (IoU mostly above 0.5) and random
    boxes (mostly background), as a selective search would give both."""
    out = []
    for boxes in scenes.boxes:
        wh = boxes[:, 2:] - boxes[:, :2]
        jitter = rng.normal(0, 0.08, (len(boxes), around, 4)) * np.tile(wh, 2)[:, None]
        near = (boxes[:, None] + jitter).reshape(-1, 4)
        corner = rng.uniform(0, SIDE - 8, (random, 2))
        far = np.concatenate([corner, corner + rng.uniform(6, 30, (random, 2))], 1)
        out.append(np.clip(np.concatenate([near, far]), 0, SIDE).astype("float32"))
    return out


def _body():
    inputs = keras.Input((SIDE, SIDE, 3))
    x = inputs
    for i, filters in enumerate((16, 32, 32, 48)):  # stride 16, no BatchNorm
        x = keras.layers.Conv2D(filters, 3, strides=2, padding="same", activation="relu",
                                name=f"c{i}")(x)
    return keras.Model(inputs, x, name="tiny_body")


def test_one_batch_is_overfitted_to_map_50_of_one():
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    scenes = digit_scenes(4, image_size=SIDE, digit_size=(10, 24), subset="train", seed=1)
    proposals = _proposals(scenes, rng)
    model = kvision.create("fast_rcnn", classes=10, input_shape=(SIDE, SIDE, 3),
                           backbone=_body(), representation=128, max_proposals=64)
    model.compile(optimizer=keras.optimizers.Adam(
        keras.optimizers.schedules.CosineDecay(3e-3, 300)))
    batches = fast_rcnn.training_dataset(scenes, proposals, model, batch_size=4,
                                         shuffle=False)
    history = model.fit(batches.cache().repeat(), epochs=1, steps_per_epoch=300, verbose=0)
    assert set(fast_rcnn.HEAD_LOSSES) <= set(history.history)
    assert "rpn_box_loss" not in history.history
    detector = fast_rcnn.inference_model(model, score_threshold=0.3)
    test_proposals = fast_rcnn.pad_proposals(_proposals(scenes, rng), 64)
    out = detector.predict([scenes.images.astype("float32"), test_proposals], verbose=0)
    n = out["num_detections"]
    found = [{k: out[k][i][:n[i]] for k in ("boxes", "scores", "classes")}
             for i in range(len(n))]
    truth = [{"boxes": b, "classes": c} for b, c in zip(scenes.boxes, scenes.classes)]
    assert evaluate(truth, found)["map_50"] == 1.0


def test_padding_rows_are_not_proposals():
    padded = fast_rcnn.pad_proposals([np.ones((2, 4)) * [1, 2, 5, 6], np.zeros((0, 4))], 3)
    assert padded.shape == (2, 3, 4) and not padded[0, 2:].any() and not padded[1].any()
    model = kvision.create("fast_rcnn", classes=3, input_shape=(SIDE, SIDE, 3),
                           backbone=_body(), representation=8, max_proposals=3)
    valid = model([np.zeros((2, SIDE, SIDE, 3), "float32"), padded])["proposal_valid"]
    np.testing.assert_array_equal(np.asarray(valid), [[True, True, False], [False] * 3])
