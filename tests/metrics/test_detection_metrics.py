"""kvision.metrics.detection against pycocotools' COCOeval (bbox and segm), to 1e-4."""

import contextlib
import io

import keras
import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from kvision.metrics.detection import DetectionEvaluation, MeanAveragePrecision, evaluate

H, W = 48, 64


# --- the reference --------------------------------------------------------------------

def _xywh(box):
    x1, y1, x2, y2 = (float(v) for v in np.asarray(box, "float64"))
    return [x1, y1, x2 - x1, y2 - y1]


def _rle(mask):
    return mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))


def coco_reference(ground_truth, detections, iou_type="bbox"):
    """COCOeval's stats[0:3] and per-class AP (category id = class + 1)."""
    segm = iou_type == "segm"
    images = [{"id": i + 1, "height": H, "width": W} for i in range(len(ground_truth))]
    annotations, results, classes = [], [], set()
    for i, truth in enumerate(ground_truth):
        for j, (box, c) in enumerate(zip(truth["boxes"], truth["classes"])):
            ann = {"id": len(annotations) + 1, "image_id": i + 1, "category_id": int(c) + 1,
                   "iscrowd": 0, "bbox": _xywh(box)}
            if segm:
                ann["segmentation"] = _rle(truth["masks"][j])
                ann["area"] = float(truth["masks"][j].sum())
            else:
                ann["area"] = ann["bbox"][2] * ann["bbox"][3]
            annotations.append(ann)
            classes.add(int(c))
    for i, det in enumerate(detections):
        for j, (box, c, s) in enumerate(zip(det["boxes"], det["classes"], det["scores"])):
            res = {"image_id": i + 1, "category_id": int(c) + 1, "score": float(s)}
            if segm:
                res["segmentation"] = _rle(det["masks"][j])
            else:
                res["bbox"] = _xywh(box)
            results.append(res)
            classes.add(int(c))
    coco = COCO()
    coco.dataset = {"images": images, "annotations": annotations,
                    "categories": [{"id": c + 1, "name": str(c)} for c in sorted(classes)]}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
        evaluator = COCOeval(coco, coco.loadRes(results), iou_type)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    precision = evaluator.eval["precision"][:, :, :, 0, -1]  # area all, maxDets 100
    per_class = {}
    for k, cat in enumerate(evaluator.params.catIds):
        p = precision[:, :, k]
        if np.all(p > -1):
            per_class[cat - 1] = float(p.mean())
    return {"map": evaluator.stats[0], "map_50": evaluator.stats[1],
            "map_75": evaluator.stats[2], "per_class": per_class}


def assert_agrees(ours, reference):
    for key in ("map", "map_50", "map_75"):
        assert ours[key] == pytest.approx(reference[key], abs=1e-4), key
    assert sorted(ours["per_class"]) == sorted(reference["per_class"])
    for c, ap in reference["per_class"].items():
        assert ours["per_class"][c] == pytest.approx(ap, abs=1e-4), c


# --- data ----------------------------------------------------------------------------

def box_mask(box, rng, hole=True):
    """An instance mask inside ``box``: the box minus a random notch (not a rectangle)."""
    mask = np.zeros((H, W), bool)
    x1, y1, x2, y2 = np.round(box).astype(int)
    mask[y1:y2, x1:x2] = True
    if hole and x2 - x1 > 4 and y2 - y1 > 4:
        nx, ny = rng.integers(x1, x2 - 2), rng.integers(y1, y2 - 2)
        mask[ny:ny + 3, nx:nx + 3] = False
    return mask


def random_case(seed, num_images=10, num_classes=4, masks=False):
    """Images with 0-6 objects; detections: jittered true boxes (some with the wrong
    class), misses, and false positives; an image without detections; a class only
    detected (no ground truth) and one never seen."""
    rng = np.random.default_rng(seed)
    truths, dets = [], []
    for i in range(num_images):
        n = 0 if i in (2, 7) else int(rng.integers(1, 7))
        xy = rng.uniform(0, [W - 12, H - 12], (n, 2))
        wh = rng.uniform(6, 20, (n, 2))
        boxes = np.concatenate([xy, np.minimum(xy + wh, [W, H])], 1).round(1)
        classes = rng.integers(0, num_classes - 2, n)  # classes num_classes-2.. never GT
        keep = rng.uniform(size=n) > 0.2
        jitter = rng.normal(0, 1.0, (n, 4))
        d_boxes = np.clip(boxes + jitter, 0, [W, H, W, H])[keep]
        d_classes = np.where(rng.uniform(size=n) < 0.15, num_classes - 2, classes)[keep]
        fp = int(rng.integers(0, 4))
        fxy = rng.uniform(0, [W - 12, H - 12], (fp, 2))
        false_boxes = np.concatenate([fxy, fxy + rng.uniform(4, 12, (fp, 2))], 1)
        d_boxes = np.concatenate([d_boxes, false_boxes])
        d_classes = np.concatenate([d_classes, rng.integers(0, num_classes - 1, fp)])
        if i == 5:
            d_boxes, d_classes = np.zeros((0, 4)), np.zeros((0,), int)
        scores = rng.uniform(size=len(d_boxes)).round(2)  # rounding makes score ties
        truth = {"boxes": boxes.astype("float32"), "classes": classes}
        det = {"boxes": d_boxes.astype("float32"), "classes": d_classes, "scores": scores}
        if masks:
            truth["masks"] = np.stack([box_mask(b, rng) for b in boxes]) if n else \
                np.zeros((0, H, W), bool)
            det["masks"] = np.stack([box_mask(b, rng) for b in d_boxes]) if len(d_boxes) \
                else np.zeros((0, H, W), bool)
        truths.append(truth)
        dets.append(det)
    return truths, dets


# --- tests ---------------------------------------------------------------------------

# The README's "40 random and hand-made cases": 30 random box cases, 5 random mask
# cases and the 5 hand-made ones below (about 0.01 s each).
@pytest.mark.parametrize("seed", range(30))
def test_bbox_map_agrees_with_cocoeval_on_random_cases(seed):
    truths, dets = random_case(seed)
    reference = coco_reference(truths, dets)
    assert 0.05 < reference["map"] < 0.95  # neither trivial nor empty
    assert_agrees(evaluate(truths, dets, num_classes=4), reference)


@pytest.mark.parametrize("seed", [3, 100, 101, 102, 103])
def test_segm_map_agrees_with_cocoeval_on_random_masks(seed):
    truths, dets = random_case(seed, num_images=6, masks=True)
    reference = coco_reference(truths, dets, "segm")
    ours = evaluate(truths, dets, iou_type="segm")
    assert_agrees(ours, reference)
    assert ours["map"] != pytest.approx(evaluate(truths, dets)["map"], abs=1e-3)


def test_hand_made_cases_agree_with_cocoeval():
    box = np.array([[0, 0, 10, 10]], "float32")
    cases = {
        # IoU exactly 0.5 (half the box): a hit at 0.50, a miss above.
        "threshold": ([{"boxes": box, "classes": [0]}],
                      [{"boxes": [[0, 0, 10, 5]], "classes": [0], "scores": [0.9]}]),
        # Two detections on one object: the second is a false positive; equal scores.
        "duplicate": ([{"boxes": box, "classes": [0]}],
                      [{"boxes": [[0, 0, 10, 10], [0, 0, 10, 9]], "classes": [0, 0],
                        "scores": [0.5, 0.5]}]),
        # One detection equally overlapping two objects: goes to the later one.
        "tie": ([{"boxes": [[0, 0, 10, 10], [0, 0, 10, 10]], "classes": [1, 1]}],
                [{"boxes": [[0, 0, 10, 8]], "classes": [1], "scores": [0.7]}]),
        # 120 detections of one class in one image: only the best 100 count.
        "max_detections": ([{"boxes": np.tile(box, (3, 1)), "classes": [2, 2, 2]}],
                           [{"boxes": np.tile(box, (120, 1)), "classes": [2] * 120,
                             "scores": np.r_[np.linspace(0.9, 0.5, 119), 0.95]}]),
        # Right box, wrong class; and an image with nothing at all.
        "wrong_class": ([{"boxes": box, "classes": [0]}, {"boxes": np.zeros((0, 4)),
                                                          "classes": []}],
                        [{"boxes": box, "classes": [1], "scores": [0.9]},
                         {"boxes": np.zeros((0, 4)), "classes": [], "scores": []}]),
    }
    for name, (truths, dets) in cases.items():
        truths = [{k: np.asarray(v) for k, v in t.items()} for t in truths]
        dets = [{k: np.asarray(v) for k, v in d.items()} for d in dets]
        ours = evaluate(truths, dets)
        assert_agrees(ours, coco_reference(truths, dets))
    # The hand figures: at IoU 0.5 the half box is a hit, above it a miss.
    threshold = evaluate(*[[{k: np.asarray(v) for k, v in x[0].items()}]
                           for x in cases["threshold"]])
    assert threshold["map_50"] == pytest.approx(1.0) and threshold["map_75"] == 0.0
    assert threshold["map"] == pytest.approx(0.1)


def test_streaming_equals_one_shot_and_takes_batched_inference_output():
    truths, dets = random_case(4, num_images=8)
    metric = MeanAveragePrecision(num_classes=4)
    for start in range(0, 8, 3):  # uneven batches
        t, d = truths[start:start + 3], dets[start:start + 3]
        k = max(len(x["scores"]) for x in d) + 2
        batched = {  # what an inference model returns: padded, num_detections
            "boxes": np.stack([np.pad(x["boxes"], ((0, k - len(x["boxes"])), (0, 0)))
                               for x in d]),
            "scores": np.stack([np.pad(x["scores"], (0, k - len(x["scores"]))) for x in d]),
            "classes": np.stack([np.pad(x["classes"], (0, k - len(x["classes"])),
                                        constant_values=-1) for x in d]),
            "num_detections": np.array([len(x["scores"]) for x in d])}
        metric.update_state(t, batched)
    assert metric.result() == evaluate(truths, dets, num_classes=4)
    metric.reset_state()
    assert metric.result()["map"] == -1.0  # COCOeval's mark for "no ground truth"


def test_bad_input_is_a_clear_error():
    truths, dets = random_case(5, num_images=3)
    with pytest.raises(ValueError, match=r"class ids must be in \[0, 2\)"):
        evaluate(truths, dets, num_classes=2)
    with pytest.raises(ValueError, match="ground_truth has 3 images but detections has 2"):
        evaluate(truths, dets[:2])
    with pytest.raises(ValueError, match="needs 'scores'"):
        evaluate(truths, truths)
    with pytest.raises(ValueError, match="needs 'masks'"):
        evaluate(truths, dets, iou_type="segm")
    with pytest.raises(ValueError, match=r"boxes must be \(N, 4\)"):
        evaluate([{"boxes": np.zeros((2, 5)), "classes": [0, 1]}],
                 [{"boxes": np.zeros((0, 4)), "classes": [], "scores": []}])


class _Oracle:
    """An inference function that returns the ground truth of the images it is shown
    (found by image content), with one false positive of class 1 per image, scored
    above them."""

    def __init__(self, images, truths):
        self.lookup = {img.tobytes(): t for img, t in zip(images, truths)}

    def __call__(self, images):
        out = {"boxes": [], "scores": [], "classes": [], "num_detections": []}
        for image in np.asarray(images):
            t = self.lookup[image.tobytes()]
            n = len(t["boxes"])
            boxes = np.concatenate([t["boxes"], [[0, 0, 3, 3]]]).astype("float32")
            out["boxes"].append(np.pad(boxes, ((0, 8 - n - 1), (0, 0))))
            out["scores"].append(np.pad(np.r_[np.full(n, 0.5), 0.9], (0, 8 - n - 1)))
            out["classes"].append(np.pad(np.r_[t["classes"], 1], (0, 8 - n - 1),
                                         constant_values=-1))
            out["num_detections"].append(n + 1)
        return {k: np.stack(v) for k, v in out.items()}


def test_callback_logs_val_map_for_csvlogger_and_early_stopping(tmp_path):
    import tensorflow as tf

    truths, _ = random_case(6, num_images=6)
    truths = [{"boxes": t["boxes"][:6], "classes": t["classes"][:6]} for t in truths]
    images = np.random.default_rng(0).integers(0, 255, (6, 8, 8, 3)).astype("float32")
    oracle = _Oracle(images, truths)
    expected = evaluate(truths, [oracle(images[i:i + 1]) for i in range(6)])
    ragged = tf.data.Dataset.from_tensor_slices({
        "images": images,
        "bounding_boxes": {"boxes": tf.ragged.constant([t["boxes"] for t in truths],
                                                       ragged_rank=1),
                           "labels": tf.ragged.constant([t["classes"] for t in truths])}})
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    csv = tmp_path / "log.csv"
    for data in (ragged.batch(4), (images, truths)):
        callback = DetectionEvaluation(data, _Oracle(images, truths), verbose=0)
        # EarlyStopping (mode "max") sees val_map: with it flat, epoch 2 of 4 stops.
        stop = keras.callbacks.EarlyStopping("val_map", mode="max", patience=0)
        history = model.fit(np.zeros((4, 4)), np.zeros((4, 1)), epochs=4, verbose=0,
                            callbacks=[callback, keras.callbacks.CSVLogger(csv), stop])
        assert history.history["val_map"] == pytest.approx([expected["map"]] * 2)
        assert history.history["val_map_50"][0] == pytest.approx(expected["map_50"])
        assert "val_map_75" in csv.read_text().splitlines()[0]
    assert 0.3 < expected["map"] < 1.0  # the false positives of class 1 cost something
