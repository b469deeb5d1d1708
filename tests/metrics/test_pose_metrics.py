"""kvision.metrics.pose: COCO keypoint AP and OKS against pycocotools' COCOeval
(iouType="keypoints") to 1e-4; PCK and PCKh against MPII's evaluation rule and hand
counts."""

import contextlib
import io

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from kvision.data.pose_layouts import COCO as COCO_LAYOUT
from kvision.data.pose_layouts import MPII
from kvision.metrics.pose import (box_sizes, evaluate, head_lengths, mpii_head_sizes, oks,
                                  pck)

H, W = 120, 160


# --- the reference --------------------------------------------------------------------

def _xywh(box):
    x1, y1, x2, y2 = (float(v) for v in box)
    return [x1, y1, x2 - x1, y2 - y1]


def coco_evaluator(ground_truth, detections, sigmas=None):
    """COCOeval(iouType="keypoints") run on the same people; areas as ours: the
    given ``areas``, else the box area."""
    k = len(sigmas) if sigmas is not None else 17
    images = [{"id": i + 1, "height": H, "width": W} for i in range(len(ground_truth))]
    annotations, results = [], []
    for i, truth in enumerate(ground_truth):
        areas = truth.get("areas")
        for j, (points, box) in enumerate(zip(truth["keypoints"], truth["boxes"])):
            bbox = _xywh(box)
            annotations.append({
                "id": len(annotations) + 1, "image_id": i + 1, "category_id": 1,
                "iscrowd": 0, "bbox": bbox,
                "area": float(areas[j]) if areas is not None else bbox[2] * bbox[3],
                "keypoints": [float(v) for v in np.asarray(points).reshape(-1)],
                "num_keypoints": int(np.count_nonzero(np.asarray(points)[:, 2] > 0))})
    for i, det in enumerate(detections):
        for points, score in zip(det["keypoints"], det["scores"]):
            points = np.asarray(points)
            if points.shape[-1] == 2:  # results hold x, y, score triples
                points = np.concatenate([points, np.ones((k, 1))], axis=1)
            results.append({"image_id": i + 1, "category_id": 1, "score": float(score),
                            "keypoints": [float(v) for v in points.reshape(-1)]})
    coco = COCO()
    coco.dataset = {"images": images, "annotations": annotations, "categories": [
        {"id": 1, "name": "person", "keypoints": [str(j) for j in range(k)],
         "skeleton": []}]}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
        evaluator = COCOeval(coco, coco.loadRes(results), "keypoints")
        if sigmas is not None:
            evaluator.params.kpt_oks_sigmas = np.asarray(sigmas, "float64")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator


def coco_reference(ground_truth, detections, sigmas=None):
    stats = coco_evaluator(ground_truth, detections, sigmas).stats
    return {"map": stats[0], "map_50": stats[1], "map_75": stats[2]}


def assert_agrees(ours, reference):
    assert sorted(ours) == ["map", "map_50", "map_75"]
    for key in ("map", "map_50", "map_75"):
        assert ours[key] == pytest.approx(reference[key], abs=1e-4), key


# --- data ------------------------------------------------------------------------------

def random_person(rng, k):
    """A box and keypoints inside it; some joints hidden (1) or not labelled (0, at
    0, 0 as in COCO files)."""
    xy = rng.uniform(0, [W - 40, H - 40])
    box = np.concatenate([xy, xy + rng.uniform(12, 40, 2)]).round(1)
    points = rng.uniform(box[:2], box[2:], (k, 2))
    v = rng.choice([0, 1, 2], k, p=[0.25, 0.25, 0.5])
    points[v == 0] = 0
    return box, np.concatenate([points, v[:, None]], axis=1)


def random_case(seed, k=17, num_images=8):
    """Images with 0-4 people (one with no labelled joint: COCOeval ignores it);
    detections: jittered people at scales that spread OKS over 0..1, misses, false
    positives, score ties, an image over the 20 detections COCO counts."""
    rng = np.random.default_rng(seed)
    truths, dets = [], []
    for i in range(num_images):
        n = 0 if i == 3 else int(rng.integers(1, 5))
        people = [random_person(rng, k) for _ in range(n)]
        if i == 1 and n:
            people[0][1][:, 2] = 0
            people[0][1][:, :2] = 0
        boxes = np.array([b for b, _ in people]).reshape(-1, 4)
        points = np.array([p for _, p in people]).reshape(-1, k, 3)
        truth = {"keypoints": points, "boxes": boxes}
        if rng.uniform() < 0.5:  # a segment area, smaller than the box's
            truth["areas"] = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
                              * rng.uniform(0.4, 0.9, n))
        found = []
        for box, person in people:
            if rng.uniform() < 0.2:
                continue  # a miss
            spread = rng.choice([0.5, 2.0, 5.0])
            guess = np.where(person[:, 2:] > 0, person[:, :2],
                             rng.uniform(box[:2], box[2:], (k, 2)))
            found.append(guess + rng.normal(0, spread, (k, 2)))
        for _ in range(int(rng.integers(0, 3)) + (22 if i == 6 else 0)):
            found.append(random_person(rng, k)[1][:, :2])  # false positives
        xy = np.array(found).reshape(-1, k, 2)
        score_column = rng.uniform(size=(len(xy), k, 1))  # per-joint scores: unused
        truths.append(truth)
        dets.append({"keypoints": np.concatenate([xy, score_column], axis=2),
                     "scores": rng.uniform(size=len(xy)).round(1)})  # ties
    return truths, dets


def sigmas_for(k, seed=0):
    return np.random.default_rng(seed).uniform(0.02, 0.11, k).round(3)


# --- COCO keypoint AP and OKS ----------------------------------------------------------

@pytest.mark.parametrize("seed", range(20))
def test_keypoint_ap_equals_cocoeval_on_random_cases(seed):
    truths, dets = random_case(seed)
    reference = coco_reference(truths, dets)
    assert 0 < reference["map"] < 1  # a case that tells right from wrong
    assert_agrees(evaluate(truths, dets), reference)


@pytest.mark.parametrize("seed", range(100, 104))
def test_other_layouts_use_their_sigmas_as_cocoeval_does(seed):
    truths, dets = random_case(seed, k=16)
    sigmas = sigmas_for(16, seed)
    reference = coco_reference(truths, dets, sigmas)
    assert 0 < reference["map"] < 1
    assert_agrees(evaluate(truths, dets, sigmas=sigmas), reference)


def test_oks_equals_cocoevals_computeoks():
    truths, dets = random_case(7)
    evaluator = coco_evaluator(truths, dets)
    compared = 0
    for i, (truth, det) in enumerate(zip(truths, dets)):
        if not len(truth["keypoints"]) or not len(det["keypoints"]):
            continue
        boxes = truth["boxes"]
        box_areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        areas = truth.get("areas", box_areas)
        order = np.argsort(-det["scores"], kind="mergesort")[:20]
        ours = oks(truth["keypoints"], det["keypoints"][order], areas, boxes=boxes)
        np.testing.assert_allclose(ours, evaluator.ious[(i + 1, 1)], rtol=1e-12, atol=0)
        compared += ours.size
    assert compared > 50


def test_oks_of_one_joint_is_cocos_formula():
    """One labelled joint: OKS = exp(-d^2 / (2 s^2 k^2)), s^2 the area, k = 2 sigma
    (COCO's keypoint evaluation page); the other joints are not labelled."""
    gt = np.zeros((17, 3))
    gt[0] = [50, 50, 2]
    dt = np.full((17, 2), 500.0)  # far from joints that do not count
    dt[0] = [53, 54]
    expected = np.exp(-25 / (2 * 400 * (2 * 0.026) ** 2))
    assert oks(gt, dt, 400.0) == pytest.approx(expected, rel=1e-12)
    assert oks(gt, dt[None], [400.0]).shape == (1, 1)


def test_perfect_detections_score_one_and_misses_zero():
    truths, _ = random_case(3)
    labelled = [t["keypoints"][(t["keypoints"][..., 2] > 0).any(axis=1)] for t in truths]
    perfect = [{"keypoints": p[..., :2], "scores": np.ones(len(p))} for p in labelled]
    assert evaluate(truths, perfect) == {"map": 1.0, "map_50": 1.0, "map_75": 1.0}
    nothing = [{"keypoints": np.zeros((0, 17, 3)), "scores": np.zeros(0)} for _ in truths]
    assert evaluate(truths, nothing) == {"map": 0.0, "map_50": 0.0, "map_75": 0.0}
    empty = [{"keypoints": np.zeros((0, 17, 3)), "boxes": np.zeros((0, 4))}]
    assert evaluate(empty, nothing[:1]) == {"map": -1.0, "map_50": -1.0, "map_75": -1.0}


def test_a_person_without_labelled_joints_is_ignored_not_a_false_positive():
    """COCOeval ignores a person with num_keypoints 0: the best-scored detection, on
    that person's box, is neither a true nor a false positive."""
    labelled = np.concatenate([np.random.default_rng(0).uniform(20, 60, (17, 2)),
                               np.full((17, 1), 2)], axis=1)
    truth = {"keypoints": np.stack([labelled, np.zeros((17, 3))]),
             "boxes": np.array([[20, 20, 60, 60], [100, 60, 140, 110]], float)}
    on_the_unlabelled = np.random.default_rng(1).uniform([100, 60], [140, 110], (17, 2))
    det = {"keypoints": np.stack([on_the_unlabelled, labelled[:, :2]]),
           "scores": np.array([0.95, 0.9])}
    ours = evaluate([truth], [det])
    assert ours["map"] == pytest.approx(1.0)
    assert_agrees(ours, coco_reference([truth], [det]))


def test_an_unmatched_detection_wider_than_cocos_area_range_is_ignored():
    """loadRes gives a detection its keypoints' box area; COCOeval's "all" range ends at
    1e10, so a stray 2e5-pixel-wide detection is not a false positive."""
    truths, dets = random_case(5)
    stray = np.random.default_rng(2).uniform(0, 2e5, (17, 2))
    stray[:2] = [[0, 0], [2e5, 2e5]]
    dets[0] = {"keypoints": np.concatenate([dets[0]["keypoints"][..., :2], stray[None]]),
               "scores": np.append(dets[0]["scores"], 1.0)}
    reference = coco_reference(truths, dets)
    assert_agrees(evaluate(truths, dets), reference)
    dets[0]["keypoints"][-1] /= 10  # 2e4 wide: inside the range, a false positive
    assert evaluate(truths, dets)["map"] < reference["map"]


def test_bad_input_is_a_clear_error():
    truths, dets = random_case(0)
    with pytest.raises(ValueError, match="K=16.*sigmas"):
        evaluate(*random_case(0, k=16))
    mixed = truths[:1] + random_case(0, k=16)[0][1:]
    with pytest.raises(ValueError, match="K=17.*K=16"):
        evaluate(mixed, dets)
    with pytest.raises(ValueError, match=r"sigmas has K=5"):
        evaluate(truths, dets, sigmas=np.full(5, 0.05))
    with pytest.raises(ValueError, match="8 images.*7"):
        evaluate(truths, dets[:7])
    one_box_short = dict(truths[0], boxes=truths[0]["boxes"][1:])
    with pytest.raises(ValueError, match=r"ground_truth\[0\].*boxes \(\d, 4\)"):
        evaluate([one_box_short], dets[:1])
    scored = dict(truths[0], keypoints=truths[0]["keypoints"] * [1, 1, 0.4])
    with pytest.raises(ValueError, match=r"ground_truth\[0\]: visibility.*0, 1 or 2"):
        evaluate([scored], dets[:1])
    with pytest.raises(ValueError, match=r"detections\[0\].*scores"):
        evaluate(truths[:1], [{"keypoints": dets[0]["keypoints"]}])
    with pytest.raises(ValueError, match=r"keypoints must be \(m, K, 3\).*\(17, 3\)"):
        evaluate(truths[:1], [{"keypoints": np.zeros((17, 3)), "scores": np.ones(17)}])


# --- PCK and PCKh -----------------------------------------------------------------------

def mpii_rule(true, pred, visible, normalizer, alpha):
    """MPII's eval_PCKh, joint by joint: scaled error < threshold among labelled
    joints, the mean weighted by each joint's count (its ``jnt_ratio``)."""
    n, k = visible.shape
    per_joint, counts = [], []
    for j in range(k):
        hits = count = 0
        for i in range(n):
            if visible[i, j] and not np.isnan(normalizer[i]):
                count += 1
                error = np.hypot(*(pred[i, j] - true[i, j]))
                hits += int(error / normalizer[i] < alpha)
        counts.append(count)
        per_joint.append(hits / count if count else np.nan)
    counts = np.array(counts)
    present = counts > 0
    mean = np.sum(np.array(per_joint)[present] * counts[present] / counts.sum())
    return mean, np.array(per_joint), counts


@pytest.mark.parametrize("alpha", [0.2, 0.5])
def test_pck_follows_mpiis_rule(alpha):
    rng = np.random.default_rng(int(alpha * 10))
    true = rng.uniform(0, 100, (30, 16, 2))
    pred = true + rng.normal(0, 4, true.shape)
    visible = rng.uniform(size=(30, 16)) < 0.8
    visible[:, 6] = False  # a joint never labelled
    lengths = rng.uniform(10, 30, 30)
    lengths[4] = np.nan    # an instance without a normalizer
    ours = pck(true, pred, visible, lengths, alpha=alpha)
    mean, per_joint, counts = mpii_rule(true, pred, visible, lengths, alpha)
    assert 0.2 < mean < 0.95
    assert ours["mean"] == pytest.approx(mean, rel=1e-12)
    np.testing.assert_allclose(ours["per_joint"], per_joint, rtol=1e-12)
    np.testing.assert_array_equal(ours["count"], counts)
    assert np.isnan(ours["per_joint"][6]) and ours["count"][6] == 0


def test_pck_threshold_is_strict_and_visibility_comes_from_v():
    true = np.array([[[0, 0, 2], [0, 0, 2], [0, 0, 0]]], float)
    pred = np.array([[[3, 4], [2.9, 4], [0, 0]]], float)  # 5 and 4.94 from the truth
    result = pck(true, pred, None, [10.0], alpha=0.5)     # threshold 5: the first misses
    assert result["mean"] == 0.5
    np.testing.assert_array_equal(result["per_joint"], [0.0, 1.0, np.nan])
    assert pck(true, true, None, 10.0)["mean"] == 1.0


def test_normalizing_lengths():
    points = np.zeros((2, 16, 3))
    points[:, :, 2] = 2
    points[:, 8, :2] = [10, 20]  # upper_neck
    points[:, 9, :2] = [13, 24]  # head_top: 5 pixels away
    points[1, 9, 2] = 0          # not labelled: no head length
    lengths = head_lengths(points)
    assert lengths[0] == 5.0 and np.isnan(lengths[1])
    assert head_lengths(points[..., :2])[1] == 5.0
    np.testing.assert_allclose(mpii_head_sizes([[0, 0, 30, 40], [5, 5, 11, 13]]), [30, 6])
    np.testing.assert_array_equal(box_sizes([[0, 0, 30, 40], [5, 5, 25, 13]]), [40, 20])


def test_pck_bad_input_is_a_clear_error():
    true = np.zeros((3, 16, 2))
    with pytest.raises(ValueError, match=r"\(3, 16, 2\) and \(3, 15, 2\)"):
        pck(true, np.zeros((3, 15, 2)), np.ones((3, 16)), np.ones(3))
    with pytest.raises(ValueError, match=r"instances \[1\] have \[0.0\]"):
        pck(true, true, np.ones((3, 16)), [1.0, 0.0, 2.0])
    with pytest.raises(ValueError, match="no joint to score"):
        pck(true, true, np.zeros((3, 16)), np.ones(3))
    with pytest.raises(ValueError, match=r"visible must be \(3, 16\)"):
        pck(true, true, np.ones((3, 17)), np.ones(3))
    with pytest.raises(ValueError, match="upper_neck.*'coco'"):
        head_lengths(np.zeros((1, 17, 3)), layout=COCO_LAYOUT)
    with pytest.raises(ValueError, match=r"\(1, 17, 3\).*16 joints"):
        head_lengths(np.zeros((1, 17, 3)), layout=MPII)
