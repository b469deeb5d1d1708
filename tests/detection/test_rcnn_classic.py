"""R-CNN (kvision.models.detection.rcnn_classic) and its selective-search proposals
(kvision.data.proposals): the warp with context against hand-made expectations, the
SVM's hard negatives, the box-regression targets against their formula, the proposal
cache, and detection on digit scenes."""

import os
import sys
import types

import keras
import numpy as np
import pytest

import kvision
from kvision.data import proposals as proposal_lib
from kvision.data.synthetic import digit_scenes
from kvision.metrics.detection import evaluate
from kvision.models.detection import rcnn_classic as rc
from kvision.testing import float32_atol

# --- the warp -------------------------------------------------------------------------


def test_the_papers_context_puts_16_pixels_around_the_box_at_227():
    """A 195-pixel box (227 - 2 x 16) is enlarged to 227 pixels, so the warp is a
    plain crop: the box and 16 pixels of image on each side, pixel for pixel."""
    rng = np.random.default_rng(0)
    image = rng.uniform(0, 255, (300, 320, 3)).astype("float32")
    box = [50, 60, 50 + 195, 60 + 195]
    np.testing.assert_allclose(rc.context_boxes([box], 227), [[34, 44, 261, 271]])
    crop = rc.warp_regions(image, [box], 227)
    assert crop.shape == (1, 227, 227, 3)
    expected = image[44:271, 34:261]
    assert np.max(np.abs(crop[0] - expected)) <= float32_atol(expected)


def test_the_warp_is_anisotropic_and_keeps_the_context_in_pixels():
    """A 32x16 box warped to 32x32 with 8 pixels of context: its columns shrink by 2,
    its rows stretch by 1 (the enlarged box is 64x32), and the box's ink lands on
    exactly the 16x16 pixels inside 8 pixels of background on every side."""
    image = np.zeros((64, 64, 1), "float32")
    image[24:40, 16:48] = 1.0                        # the box (x 16..48, y 24..40)
    crop = rc.warp_regions(image, [[16, 24, 48, 40]], 32, context=8)[0, ..., 0]
    expected = np.zeros((32, 32))
    expected[8:24, 8:24] = 1.0
    assert np.max(np.abs(crop - expected)) <= float32_atol(expected)
    # Columns average source pairs (2x down), rows hit source rows at half steps.
    ramp = np.tile(np.arange(64, dtype="float32"), (64, 1))[..., None]
    columns = rc.warp_regions(ramp, [[16, 24, 48, 40]], 32, context=8)[0, 0, :, 0]
    np.testing.assert_allclose(columns, 2 * np.arange(32) + 0.5, atol=1e-4)


def test_context_outside_the_image_is_the_mean_pixel():
    image = np.zeros((40, 40, 3), "float32")
    image[:20] = 200.0                                    # the mean is 100
    crop = rc.warp_regions(image, [[0, 0, 16, 16]], 32, context=8)[0]
    # The enlarged box is (-8, -8, 24, 24) sampled 1:1: 8 rows and columns outside.
    np.testing.assert_allclose(crop[:8], 100.0, atol=1e-3)
    np.testing.assert_allclose(crop[:, :8], 100.0, atol=1e-3)
    np.testing.assert_allclose(crop[8:28, 8:], 200.0, atol=1e-3)


def test_no_room_for_the_box_is_refused():
    with pytest.raises(ValueError, match="no room"):
        rc.context_boxes([[0, 0, 10, 10]], 32, context=16)


# --- SVMs and box regression ----------------------------------------------------------


def _svm_case(seed=0):
    """Positives near (1, 0); 2,000 easy negatives near (-1, 0) and 6 hard ones at
    (0.4, +-0.5), between the two: a random first cache of 30 negatives misses them."""
    rng = np.random.default_rng(seed)
    positives = rng.normal([1.0, 0.0], 0.1, (20, 2))
    easy = rng.normal([-1.0, 0.0], 0.1, (2000, 2))
    hard = np.array([[0.45, 0.5], [0.45, -0.5], [0.5, 0.6], [0.5, -0.6], [0.4, 0.0],
                     [0.55, 0.0]])
    return positives, np.concatenate([easy, hard]), slice(2000, None)


def test_hard_negative_mining_finds_the_negatives_a_random_cache_missed():
    positives, negatives, hard = _svm_case()
    margins = {}
    for rounds in (0, 2):
        w, b = rc.train_svm(positives, negatives, C=10.0, rounds=rounds,
                            first_negatives=30, seed=0)
        margins[rounds] = negatives @ w + b, positives @ w + b
    # Without mining the SVM never saw them: some hard negatives score as objects.
    assert np.max(margins[0][0][hard]) > 0
    # Mined, every negative and every positive is on its side.
    assert np.all(margins[2][0] < 0) and np.all(margins[2][1] > 0)


def test_training_without_scikit_learn_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.svm", None)    # import fails
    with pytest.raises(ImportError, match=r"kvision\[rcnn\]"):
        rc.train_svm(np.ones((2, 2)), -np.ones((2, 2)))


def test_svms_take_ground_truth_as_positives_and_low_overlap_as_negatives():
    """Class 1's positives are the ground-truth regions of class 1; a proposal at IoU
    0.5 with a class-1 box is neither positive nor negative, one at 0.1 is negative,
    and so is the ground truth of class 0."""
    features = np.array([[1.0, 0], [0, 1.0], [0.9, 0.1], [-1.0, 0], [0.1, -1.0]])
    is_gt = np.array([True, True, False, False, False])
    overlaps = np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.0], [0.1, 0.0], [0.0, 0.0]])
    gt_classes = np.array([[1, 0]] * 5)
    kernel, bias = rc.train_svms(features, is_gt, overlaps, gt_classes, 3, C=10.0,
                                 rounds=0)
    scores = features @ kernel + bias
    assert scores[0, 1] > 0 and scores[3, 1] < 0 and scores[4, 1] < 0
    assert scores[1, 1] < 0 and scores[0, 0] < 0              # the other class's box
    assert scores[1, 0] > 0                                   # class 0's own positive
    assert np.all(kernel[:, 2] == 0) and bias[2] == -1.0      # class 2: no positives


def test_regression_targets_are_appendix_cs_formula():
    rng = np.random.default_rng(3)
    corners = rng.uniform(0, 80, (50, 2))
    proposals = np.concatenate([corners, corners + rng.uniform(4, 40, (50, 2))], 1)
    boxes = proposals + rng.uniform(-2, 2, (50, 4))       # widths stay positive
    px = (proposals[:, 0] + proposals[:, 2]) / 2
    py = (proposals[:, 1] + proposals[:, 3]) / 2
    pw, ph = proposals[:, 2] - proposals[:, 0], proposals[:, 3] - proposals[:, 1]
    gx, gy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    gw, gh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    expected = np.stack([(gx - px) / pw, (gy - py) / ph,
                         np.log(gw / pw), np.log(gh / ph)], 1)
    got = rc.regression_targets(proposals.astype("float32"), boxes.astype("float32"))
    assert np.max(np.abs(got - expected)) <= 1e-5 * np.max(np.abs(expected)) + 1e-6


def test_box_regressors_learn_a_class_specific_shift():
    """Features that say how far the box is off: the ridge regression of class 1
    recovers the shift; class 0, with no proposal near it, does not move boxes."""
    rng = np.random.default_rng(4)
    gt = np.array([[20.0, 20.0, 60.0, 60.0]])
    shift = rng.uniform(-4, 4, (200, 1))
    zero = np.zeros((200, 1))
    proposals = gt + np.concatenate([shift, zero, shift, zero], 1)
    features = np.concatenate([shift * 100, np.ones((200, 1))], 1)
    overlaps = rc.regions(proposals, gt)[2][1:]
    kernel, bias = rc.train_box_regressors(features, proposals, overlaps,
                                           np.repeat(gt[None], 200, 0),
                                           np.ones((200, 1), int), 2, alpha=1.0)
    deltas = features @ kernel + bias
    np.testing.assert_allclose(deltas[:, 4], -shift[:, 0] / 40, atol=2e-3)
    assert np.all(kernel[:, :4] == 0) and np.all(bias[:4] == 0)


# --- proposals and their cache --------------------------------------------------------


def test_selective_search_gives_boxes_inside_the_image_up_to_the_budget():
    scenes = digit_scenes(1, image_size=64, objects=(2, 2), seed=0)
    boxes = proposal_lib.selective_search(scenes.images[0], "fast")
    assert boxes.dtype == np.float32 and boxes.ndim == 2 and boxes.shape[1] == 4
    assert len(boxes) > 2 and len(np.unique(boxes, axis=0)) == len(boxes)
    assert np.all(boxes[:, :2] >= 0) and np.all(boxes[:, 2:] <= 64)
    assert np.all(boxes[:, 2:] > boxes[:, :2])
    np.testing.assert_array_equal(
        proposal_lib.selective_search(scenes.images[0], "fast", max_proposals=2), boxes[:2])
    other = proposal_lib.selective_search(scenes.images[0], "fast", seed=1)
    assert not np.array_equal(other, boxes)                   # a random ranking
    np.testing.assert_array_equal(np.unique(other, axis=0), np.unique(boxes, axis=0))
    with pytest.raises(ValueError, match="mode"):
        proposal_lib.selective_search(scenes.images[0], "slow")
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        proposal_lib.selective_search(np.zeros((4, 4, 4)))


def test_a_cv2_without_contrib_modules_names_the_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "cv2", types.SimpleNamespace(__version__="5.0"))
    with pytest.raises(ImportError, match="opencv-contrib-python-headless"):
        proposal_lib.selective_search(np.zeros((8, 8, 3), np.uint8))


def test_the_cache_computes_each_image_once_and_recomputes_a_corrupt_file(tmp_path,
                                                                         monkeypatch):
    scenes = digit_scenes(3, image_size=48, objects=(1, 2), digit_size=(12, 20), seed=5)
    calls = []
    search = proposal_lib.selective_search
    monkeypatch.setattr(proposal_lib, "selective_search",
                        lambda *a, **k: calls.append(1) or search(*a, **k))
    first = proposal_lib.cached_proposals(scenes.images, tmp_path)
    assert len(calls) == 3 and len(os.listdir(tmp_path)) == 3
    second = proposal_lib.cached_proposals(list(scenes.images), tmp_path, max_proposals=3)
    assert len(calls) == 3                                     # read, not recomputed
    for a, b in zip(first, second):
        np.testing.assert_array_equal(b, a[:3])
    path = tmp_path / proposal_lib.cache_key(scenes.images[1], "fast")
    path.write_bytes(path.read_bytes()[:40])                  # a truncated file
    third = proposal_lib.cached_proposals(scenes.images, tmp_path)
    assert len(calls) == 4
    np.testing.assert_array_equal(third[1], first[1])
    np.testing.assert_array_equal(np.load(path), first[1])    # rewritten whole
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]


def test_the_cache_reads_paths_and_refuses_missing_ones(tmp_path):
    from PIL import Image

    scenes = digit_scenes(1, image_size=48, seed=6)
    Image.fromarray(scenes.images[0]).save(tmp_path / "scene.png")
    from_path = proposal_lib.cached_proposals([str(tmp_path / "scene.png")],
                                              tmp_path / "cache")
    from_array = proposal_lib.cached_proposals(scenes.images, tmp_path / "cache")
    np.testing.assert_array_equal(from_path[0], from_array[0])
    assert len(os.listdir(tmp_path / "cache")) == 1           # one key for both
    with pytest.raises(FileNotFoundError, match="missing.png"):
        proposal_lib.cached_proposals([str(tmp_path / "missing.png")], tmp_path)


# --- detection ------------------------------------------------------------------------


def _small_body(size):
    """Three 3x3 conv + ReLU + 2x2 max-pool stages, no BatchNorm (R-CNN's features
    come one crop at a time; nothing in them depends on the batch)."""
    x = inputs = keras.Input((size, size, 3))
    x = keras.layers.Rescaling(1 / 255)(x)
    for i, filters in enumerate((16, 32, 64)):
        x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu",
                                name=f"conv{i}")(x)
        x = keras.layers.MaxPooling2D(2, name=f"pool{i}")(x)
    return keras.Model(inputs, x, name="small_body")


@pytest.fixture(scope="module")
def trained():
    """R-CNN on 24 digit scenes (64x64, 14-24 px digits), crops 32x32 with 2 pixels of
    context (16/227 of 32), fine-tuned 40 epochs; C = 0.01 rather than the paper's
    0.001, since the hinge term grows with the examples and here a class has about 5
    ground-truth boxes, not hundreds."""
    keras.utils.set_random_seed(0)
    scenes = digit_scenes(24, image_size=64, objects=(1, 3), digit_size=(14, 24), seed=0)
    model = kvision.create("rcnn", classes=10, backbone=_small_body(32),
                           input_shape=(32, 32, 3))
    rc.fit(model, scenes.images, scenes.boxes, scenes.classes, epochs=40, context=2,
           C=0.01, seed=0)
    return model, scenes


def test_rcnn_detects_its_training_scenes(trained):
    model, scenes = trained
    detections = rc.detect(model, scenes.images, context=2)
    assert detections["boxes"].shape == (24, 100, 4)
    found = evaluate(scenes.ground_truth(), detections)
    # Seeds 0-3 of this recipe measured 0.55-0.80 here (this one, seed 0: 0.80).
    assert found["map_50"] >= 0.5, found


def test_the_detector_answers_the_protocol_and_survives_no_proposals(trained):
    model, scenes = trained
    detector = rc.inference_model(model, context=2)
    answers = detector(scenes.images[:2])
    assert set(answers) == {"boxes", "scores", "classes", "num_detections"}
    none = rc.detect(model, scenes.images[:2],
                     proposals=[np.zeros((0, 4)), scenes.boxes[1]], context=2)
    assert none["num_detections"][0] == 0 and np.all(none["classes"][0] == -1)
    assert none["num_detections"][1] >= 1


def test_fit_refuses_class_ids_out_of_range_and_missing_annotations():
    model = kvision.create("rcnn", classes=2, backbone=_small_body(32),
                           input_shape=(32, 32, 3))
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        rc.fit(model, np.zeros((1, 32, 32, 3)), [np.array([[2, 2, 20, 20]])],
               [np.array([5])], proposals=[np.zeros((0, 4))])
    with pytest.raises(ValueError, match="one entry per image"):
        rc.fit(model, np.zeros((2, 32, 32, 3)), [np.array([[2, 2, 20, 20]])],
               [np.array([1])])


def test_the_graph_detector_answers_as_the_numpy_pipeline_and_saves(trained, tmp_path,
                                                                    capsys):
    """rcnn_classic.inference_graph (selective search, warp, SVMs, regressors and NMS
    in one Keras graph) against detect() detection by detection; its .keras file
    loads in safe mode and kvision evaluate's figure equals detect()'s on the same
    held-out scenes (kvision train rcnn: tests/detection/test_two_stage_cli.py)."""
    import json

    from kvision import cli
    from kvision.saving import save_model
    from kvision.tasks.detection import held_out_scenes

    model, scenes = trained
    graph = rc.inference_graph(model, (64, 64, 3), context=2)
    images = scenes.images[:4].astype("float32")
    ours, numpy = graph.predict(images, verbose=0), rc.detect(model, images, context=2)
    np.testing.assert_array_equal(ours["num_detections"], numpy["num_detections"])
    np.testing.assert_array_equal(ours["classes"], numpy["classes"])
    np.testing.assert_allclose(ours["boxes"], numpy["boxes"], atol=1e-3)
    np.testing.assert_allclose(ours["scores"], numpy["scores"], atol=1e-5)
    save_model(graph, tmp_path / "rcnn.keras", class_names=scenes.class_names)
    assert keras.saving.load_model(tmp_path / "rcnn.keras", safe_mode=True).get_layer(
        "warp").context == 2
    assert cli.main(["evaluate", str(tmp_path / "rcnn.keras"), "--data", "digit-scenes",
                     "--max-images", "6", "--json"]) == 0
    figures = json.loads(capsys.readouterr().out)
    held = held_out_scenes(_shape64(), 6, 0)
    expected = evaluate(held.ground_truth(), rc.detect(model, held.images, context=2))
    assert figures["map_50"] == pytest.approx(expected["map_50"], abs=1e-6)


def _shape64():
    from kvision.tasks.detection import _Shape

    return _Shape((64, 64), 3)
