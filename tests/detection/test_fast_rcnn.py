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
    batches = fast_rcnn.training_dataset(scenes, model, proposals=proposals, batch_size=4,
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


def test_the_task_detector_searches_in_its_graph_as_selective_search_does(tmp_path,
                                                                          capsys):
    """What kvision train fast_rcnn trains on and saves: batches whose proposals are
    OpenCV's selective search of each scene (kvision.data.proposals, the reference),
    and a detector of images alone equal to the two-input detector fed those
    proposals; it loads in safe mode, kvision evaluate's figure is the two-input
    detector's, its search cut out for export (kvision.export.proposals) answers the
    same given those proposals, and kvision export refuses TFLite of it in one line
    (its SavedModel export: tests/detection/test_two_stage_cli.py). (The whole
    kvision train / evaluate / predict run on 8 scenes was checked by hand: minutes
    of suite time for its 200 held-out scenes, measured twice.)"""
    import json

    from kvision import cli
    from kvision.data.proposals import selective_search
    from kvision.saving import save_model
    from kvision.tasks.detection import TASK

    keras.utils.set_random_seed(0)
    scenes = digit_scenes(2, image_size=SIDE, digit_size=(10, 24), subset="train", seed=3)
    model = kvision.create("fast_rcnn", classes=10, input_shape=(SIDE, SIDE, 3),
                           backbone=_body(), representation=16, max_proposals=64)
    reference = fast_rcnn.pad_proposals(
        [selective_search(image, "fast", 64) for image in scenes.images], 64)
    (_, boxes), _ = next(iter(fast_rcnn.training_dataset(scenes, model, batch_size=2,
                                                         shuffle=False)))
    np.testing.assert_array_equal(boxes, reference)
    from_files = fast_rcnn.training_dataset(scenes.as_dataset(), model, batch_size=2,
                                            shuffle=False)
    # Read from a tf.data set, the images are searched in parallel threads
    # (map_parallelization): the same boxes in the same order all the same (OpenCV's
    # random ranking draws from the process's generator, seeded under a lock).
    np.testing.assert_array_equal(next(iter(from_files))[0][1].numpy(), reference)
    detector = TASK.inference_model("fast_rcnn", model)
    assert len(detector.inputs) == 1
    images = scenes.images.astype("float32")
    ours = detector.predict(images, verbose=0)
    fed_detector = fast_rcnn.inference_model(model, score_threshold=0.1)
    fed = fed_detector.predict([images, reference], verbose=0)
    for key in ("classes", "num_detections"):
        np.testing.assert_array_equal(ours[key], fed[key])
    np.testing.assert_allclose(ours["boxes"], fed["boxes"], atol=1e-4)
    path = tmp_path / "fast_rcnn.keras"
    save_model(detector, path, class_names=scenes.class_names)
    assert keras.saving.load_model(path, safe_mode=True).get_layer(
        "selective_search").max_proposals == 64
    assert cli.main(["evaluate", str(path), "--data", "digit-scenes", "--max-images", "2",
                     "--json"]) == 0
    from kvision.metrics.detection import evaluate as coco
    from kvision.tasks.detection import _Shape, held_out_scenes

    held = held_out_scenes(_Shape((SIDE, SIDE), 3), 2, 0)
    expected = coco(held.ground_truth(), fed_detector.predict(
        [held.images.astype("float32"), fast_rcnn.pad_proposals(
            [selective_search(image, "fast", 64) for image in held.images], 64)],
        verbose=0))
    assert json.loads(capsys.readouterr().out)["map_50"] == pytest.approx(
        expected["map_50"], abs=1e-6)
    # kvision export: the search cut out, the proposals an input (the same detections
    # as the detector given its own search's); TFLite refused in one line.
    from kvision.export.proposals import proposal_model

    cut = proposal_model(keras.saving.load_model(path)).predict([images, reference],
                                                                verbose=0)
    for key in ("classes", "num_detections"):
        np.testing.assert_array_equal(cut[key], ours[key])
    assert cli.main(["export", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "host" in err[0] and "--format savedmodel" in err[0]
    assert not (tmp_path / "out").exists()
