"""Detection metrics: COCO-style mean average precision, box or mask IoU.

:func:`evaluate` gives what pycocotools' ``COCOeval`` gives for crowd-free data, to
1e-4 (the tests hold it to that on random and hand-made cases): AP averaged over the
IoU thresholds 0.50:0.05:0.95 (``map``, COCO's headline figure), at IoU 0.50
(``map_50``, PASCAL VOC's) and at 0.75 (``map_75``), and per class, with COCO's rules:

- detections are matched per image and class, best score first, each to the unmatched
  ground-truth object it overlaps most (IoU at least the threshold; ties go to the
  later object, as in COCOeval's loop);
- at most ``max_detections`` detections per image and class count (COCO: 100);
- precision is made monotone and read at 101 recall points 0, 0.01, ..., 1;
- a class without ground truth is left out of the means (its detections are not
  penalised elsewhere); with no ground truth at all every figure is -1, COCOeval's mark.

Boxes are xyxy pixels; ``iou_type="segm"`` compares instance masks pixel by pixel
(mask AP, as COCOeval's ``segm``). :class:`MeanAveragePrecision` accumulates image by
image (the matching is done as images come, so memory holds only scores and match
flags), and :class:`DetectionEvaluation` is a Keras callback that logs ``val_map``,
``val_map_50`` and ``val_map_75`` at the end of an epoch. :func:`match`,
:func:`precision_curve` and :func:`headline` are COCOeval's matching, accumulation and
summary on their own, which :mod:`kvision.metrics.pose` uses for keypoint AP.
"""

from __future__ import annotations

import keras
import numpy as np

# COCOeval's own grids (pycocotools.cocoeval.Params.setDetParams), same floats.
IOU_THRESHOLDS = np.linspace(.5, 0.95, int(np.round((0.95 - .5) / .05)) + 1, endpoint=True)
RECALL_THRESHOLDS = np.linspace(.0, 1.00, int(np.round((1.00 - .0) / .01)) + 1,
                                endpoint=True)
IOU_TYPES = ("bbox", "segm")
METRIC_KEYS = ("map", "map_50", "map_75")


def evaluate(ground_truth, detections, *, iou_type="bbox", num_classes=None,
             max_detections=100):
    """COCO mAP@[.5:.95], mAP@.5, mAP@.75 and per-class AP of a set of images.

    Args:
        ground_truth: one dict per image, ``{"boxes": (N, 4) xyxy pixels, "classes":
            (N,) int}`` (``"labels"`` is accepted for ``"classes"``), plus ``"masks":
            (N, H, W) bool`` for ``iou_type="segm"``. An image may have no objects.
            A batched dict of padded arrays (class -1 = padding) is accepted too.
        detections: the same per image plus ``"scores": (M,)``; or the batched dict of
            an inference model (``boxes``, ``scores``, ``classes`` -1 padded,
            ``num_detections``). Float masks are thresholded at 0.5.
        iou_type: ``"bbox"`` or ``"segm"`` (mask AP).
        num_classes: when given, every class id must lie in ``[0, num_classes)``.
        max_detections: detections counted per image and class, best first (COCO 100).
    Returns:
        ``{"map": float, "map_50": float, "map_75": float, "per_class": {class_id:
        AP@[.5:.95]}}``; ``per_class`` holds the classes that have ground truth.
    Raises:
        ValueError: different image counts, shapes that disagree, class ids out of
            range, missing masks.
    """
    metric = MeanAveragePrecision(iou_type=iou_type, num_classes=num_classes,
                                  max_detections=max_detections)
    metric.update_state(ground_truth, detections)
    return metric.result()


class MeanAveragePrecision:
    """Streaming COCO mAP: ``update_state`` per batch, ``result``, ``reset_state``.

    Not a ``keras.metrics.Metric``: matching a variable number of boxes is host work
    on numpy, not graph work, so it runs from a callback (:class:`DetectionEvaluation`)
    or a loop. Each update matches its images at once and keeps only the scores, the
    match flags per IoU threshold and the ground-truth counts per class.
    """

    def __init__(self, *, iou_type="bbox", num_classes=None, max_detections=100):
        if iou_type not in IOU_TYPES:
            raise ValueError(f"iou_type must be one of {IOU_TYPES}, got {iou_type!r}.")
        if num_classes is not None and int(num_classes) < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}.")
        if int(max_detections) < 1:
            raise ValueError(f"max_detections must be >= 1, got {max_detections}.")
        self.iou_type = iou_type
        self.num_classes = None if num_classes is None else int(num_classes)
        self.max_detections = int(max_detections)
        self.reset_state()

    def reset_state(self):
        self._scores = {}     # class -> list of (D,) score arrays, one per image
        self._matched = {}    # class -> list of (T, D) bool arrays
        self._num_gt = {}     # class -> ground-truth objects seen
        self.num_images = 0

    def update_state(self, ground_truth, detections):
        """Matches the detections of a batch of images against their ground truth."""
        truths = _as_images(ground_truth, "ground_truth", scored=False,
                            masks=self.iou_type == "segm")
        found = _as_images(detections, "detections", scored=True,
                           masks=self.iou_type == "segm")
        if len(truths) != len(found):
            raise ValueError(f"ground_truth has {len(truths)} images but detections has "
                             f"{len(found)}; give one entry per image in both.")
        for index, (truth, det) in enumerate(zip(truths, found)):
            self._check_classes(truth["classes"], "ground_truth", index)
            self._check_classes(det["classes"], "detections", index)
            self._add_image(truth, det, index)
        self.num_images += len(truths)

    def result(self):
        """``{"map", "map_50", "map_75", "per_class"}`` over all images seen so far."""
        classes = sorted(c for c, n in self._num_gt.items() if n > 0)
        if not classes:
            return {"map": -1.0, "map_50": -1.0, "map_75": -1.0, "per_class": {}}
        # (T, R, K) like COCOeval's precision[:, :, :, area all, maxDets last]
        precision = np.stack([self._precision(c) for c in classes], axis=-1)
        return {**headline(precision),
                "per_class": {int(c): float(np.mean(precision[..., k]))
                              for k, c in enumerate(classes)}}

    # --- internals -----------------------------------------------------------------

    def _check_classes(self, classes, what, index):
        if classes.size == 0:
            return
        limit = self.num_classes if self.num_classes is not None else np.inf
        wrong = (classes < 0) | (classes >= limit)
        if wrong.any():
            expected = (f"[0, {self.num_classes})" if self.num_classes is not None
                        else ">= 0")
            raise ValueError(f"{what}[{index}]: class ids must be in {expected}, got "
                             f"{np.unique(classes[wrong]).tolist()}.")

    def _add_image(self, truth, det, index):
        if self.iou_type == "segm" and len(truth["masks"]) and len(det["masks"]) and \
                truth["masks"].shape[1:] != det["masks"].shape[1:]:
            raise ValueError(f"image {index}: ground-truth masks are "
                             f"{truth['masks'].shape[1:]} but detection masks are "
                             f"{det['masks'].shape[1:]}; both must be the image's (H, W).")
        for c in np.union1d(truth["classes"], det["classes"]).astype(int):
            gt = np.flatnonzero(truth["classes"] == c)
            dt = np.flatnonzero(det["classes"] == c)
            # COCOeval: best score first (stable), then keep max_detections.
            dt = dt[np.argsort(-det["scores"][dt], kind="mergesort")][:self.max_detections]
            ious = self._ious(truth, det, gt, dt)
            self._scores.setdefault(c, []).append(det["scores"][dt])
            self._matched.setdefault(c, []).append(match(ious)[0])
            self._num_gt[c] = self._num_gt.get(c, 0) + len(gt)

    def _ious(self, truth, det, gt, dt):
        if len(gt) == 0 or len(dt) == 0:
            return np.zeros((len(dt), len(gt)))
        if self.iou_type == "segm":
            return mask_iou(det["masks"][dt], truth["masks"][gt])
        return box_iou(det["boxes"][dt], truth["boxes"][gt])

    def _precision(self, c):
        """(T, R) interpolated precision of class ``c`` (COCOeval.accumulate)."""
        return precision_curve(np.concatenate(self._scores[c]),
                               np.concatenate(self._matched[c], axis=1), self._num_gt[c])


# --- COCOeval's matching and accumulation, shared with kvision.metrics.pose ----------

def headline(precision):
    """``{"map", "map_50", "map_75"}`` of a ``(T, R, ...)`` precision array
    (COCOeval's summarize: means over recall points and classes)."""
    fifty = int(np.argmin(np.abs(IOU_THRESHOLDS - 0.5)))
    seventy_five = int(np.argmin(np.abs(IOU_THRESHOLDS - 0.75)))
    return {"map": float(np.mean(precision)),
            "map_50": float(np.mean(precision[fifty])),
            "map_75": float(np.mean(precision[seventy_five]))}


def precision_curve(scores, matched, num_gt, ignored=None):
    """``(T, R)`` interpolated precision (COCOeval.accumulate) of one class.

    Args:
        scores: ``(D,)`` scores of every detection of every image.
        matched: ``(T, D)`` bool, a detection matched at each IoU threshold.
        num_gt: ground-truth objects that count (not ignored).
        ignored: ``(T, D)`` bool, detections that are neither true nor false
            positives (matched to an ignored object); None: none.
    """
    order = np.argsort(-scores, kind="mergesort")
    tps = matched[:, order]
    fps = ~tps
    if ignored is not None:
        tps = tps & ~ignored[:, order]
        fps = fps & ~ignored[:, order]
    tp_sum = np.cumsum(tps, axis=1).astype(float)
    fp_sum = np.cumsum(fps, axis=1).astype(float)
    precision = np.zeros((len(IOU_THRESHOLDS), len(RECALL_THRESHOLDS)))
    for t, (tp, fp) in enumerate(zip(tp_sum, fp_sum)):
        if len(tp) == 0:
            continue
        recall = tp / num_gt
        pr = tp / (fp + tp + np.spacing(1))
        pr = np.maximum.accumulate(pr[::-1])[::-1]  # monotone from the right
        inds = np.searchsorted(recall, RECALL_THRESHOLDS, side="left")
        reached = inds < len(pr)
        precision[t, reached] = pr[inds[reached]]
    return precision


def match(ious, gt_ignore=None):
    """COCOeval's greedy matching: ``(D, G)`` IoUs, D sorted by score -> ``(T, D)``
    bool matched and ``(T, D)`` bool matched to an ignored object.

    Each detection takes the unmatched object of highest IoU at or above the
    threshold; on a tie the later object (COCOeval's ``if iou < best: continue``).
    Ignored objects (``gt_ignore``, e.g. a person without labelled keypoints) are
    taken only when no other object qualifies: COCOeval sorts them last and stops
    there once a detection holds a regular object.
    """
    num_dt, num_gt = ious.shape
    matched = np.zeros((len(IOU_THRESHOLDS), num_dt), bool)
    ignored = np.zeros_like(matched)
    if num_dt == 0 or num_gt == 0:
        return matched, ignored
    gt_ignore = np.zeros(num_gt, bool) if gt_ignore is None else np.asarray(gt_ignore, bool)
    any_ignored = gt_ignore.any()
    thresholds = np.minimum(IOU_THRESHOLDS, 1 - 1e-10)
    taken = np.zeros((len(IOU_THRESHOLDS), num_gt), bool)
    rows = np.arange(len(IOU_THRESHOLDS))
    for d in range(num_dt):
        free = np.where(taken, -np.inf, ious[d][None, :])
        regular = np.where(gt_ignore, -np.inf, free) if any_ignored else free
        best, hit = _last_best(regular, thresholds)
        fallback = np.zeros_like(hit)
        if any_ignored:
            best_ignored, ok_ignored = _last_best(np.where(gt_ignore, free, -np.inf),
                                                  thresholds)
            fallback = ~hit & ok_ignored
            best = np.where(hit, best, best_ignored)
            hit = hit | fallback
        matched[hit, d] = True
        ignored[fallback, d] = True
        taken[rows[hit], best[hit]] = True
    return matched, ignored


def _last_best(candidates, thresholds):
    """Per threshold row: the last column of highest value and whether it qualifies."""
    rows = np.arange(len(candidates))
    last_best = candidates.shape[1] - 1 - np.argmax(candidates[:, ::-1], axis=1)
    return last_best, candidates[rows, last_best] >= thresholds


def box_iou(dt, gt):
    """``(D, 4), (G, 4)`` xyxy -> ``(D, G)`` IoU in float64, computed as COCO's
    ``maskApi.c`` ``bbIou`` does on xywh boxes (so results agree to the last bit)."""
    d = _xywh(dt)[:, None]
    g = _xywh(gt)[None]
    w = (np.minimum(d[..., 0] + d[..., 2], g[..., 0] + g[..., 2])
         - np.maximum(d[..., 0], g[..., 0]))
    h = (np.minimum(d[..., 1] + d[..., 3], g[..., 1] + g[..., 3])
         - np.maximum(d[..., 1], g[..., 1]))
    inter = w * h
    union = d[..., 2] * d[..., 3] + g[..., 2] * g[..., 3] - inter
    overlap = (w > 0) & (h > 0)
    return np.where(overlap, inter / np.where(overlap, union, 1.0), 0.0)


def _xywh(boxes):
    boxes = np.asarray(boxes, "float64")
    return np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)


def mask_iou(dt, gt):
    """``(D, H, W), (G, H, W)`` bool masks -> ``(D, G)`` pixel IoU (0 for empty pairs)."""
    d = dt.reshape(len(dt), -1).astype("float64")
    g = gt.reshape(len(gt), -1).astype("float64")
    inter = d @ g.T
    union = d.sum(1)[:, None] + g.sum(1)[None] - inter
    return np.where(union > 0, inter / np.maximum(union, 1), 0.0)


# --- input forms -------------------------------------------------------------------

def _numpy(value):
    if hasattr(value, "to_tensor"):  # tf.RaggedTensor of one image: dense is exact
        value = value.to_tensor()
    return np.asarray(value)


def _as_images(data, what, *, scored, masks):
    """Per-image dicts of numpy arrays from a list of dicts or a batched padded dict."""
    if isinstance(data, dict):
        data = _split_batch(data, what)
    if not isinstance(data, (list, tuple)):
        raise ValueError(f"{what} must be a list with one dict per image (or a batched "
                         f"dict of arrays), got {type(data).__name__}.")
    images = []
    for item in data:  # a list may hold batched dicts too (one per inference call)
        batched = (isinstance(item, dict)
                   and len(getattr(item.get("boxes"), "shape", ())) == 3)
        images.extend(_split_batch(item, what) if batched else [item])
    return [_one_image(item, f"{what}[{i}]", scored=scored, masks=masks)
            for i, item in enumerate(images)]


def _split_batch(batch, what):
    if "boxes" not in batch:
        raise ValueError(f"{what} dict needs 'boxes', got keys {sorted(batch)}.")
    arrays = {k: v for k, v in batch.items()}
    boxes = arrays["boxes"]
    size = boxes.shape[0] if hasattr(boxes, "shape") else len(boxes)
    if len(getattr(boxes, "shape", ())) == 2:  # one image's (N, 4): a list of one
        return [batch]
    images = []
    for i in range(size):
        image = {k: v[i] for k, v in arrays.items() if k != "num_detections"}
        if "num_detections" in arrays:
            n = int(np.asarray(arrays["num_detections"])[i])
            image = {k: _numpy(v)[:n] for k, v in image.items()}
        images.append(image)
    return images


def _one_image(item, what, *, scored, masks):
    if not isinstance(item, dict):
        raise ValueError(f"{what} must be a dict with 'boxes' and 'classes', got "
                         f"{type(item).__name__}.")
    label_key = "classes" if "classes" in item else "labels"
    if "boxes" not in item or label_key not in item:
        raise ValueError(f"{what} needs 'boxes' and 'classes' (or 'labels'), got keys "
                         f"{sorted(item)}.")
    boxes = _numpy(item["boxes"]).astype("float64")
    boxes = boxes.reshape(0, 4) if boxes.size == 0 else boxes
    classes = _numpy(item[label_key]).reshape(-1)
    if boxes.ndim != 2 or boxes.shape[1] != 4 or len(classes) != len(boxes):
        raise ValueError(f"{what}: boxes must be (N, 4) xyxy and classes (N,), got "
                         f"{boxes.shape} and {classes.shape}.")
    if classes.size and not np.all(np.mod(classes, 1) == 0):
        raise ValueError(f"{what}: classes must be integer ids, got {classes[:5]}.")
    classes = classes.astype("int64")
    keep = classes != -1  # padding of batched (densified) data
    out = {"boxes": boxes, "classes": classes}
    if scored:
        if "scores" not in item:
            raise ValueError(f"{what} needs 'scores' (one per box), got keys "
                             f"{sorted(item)}.")
        scores = _numpy(item["scores"]).astype("float64").reshape(-1)
        if len(scores) != len(boxes) or not np.all(np.isfinite(scores)):
            raise ValueError(f"{what}: scores must be ({len(boxes)},) finite numbers, got "
                             f"shape {scores.shape}.")
        out["scores"] = scores
    if masks:
        if "masks" not in item:
            raise ValueError(f"{what} needs 'masks' (N, H, W) for iou_type='segm'.")
        mask = _numpy(item["masks"])
        if mask.ndim == 2 and mask.size == 0:
            mask = mask.reshape(0, 1, 1)
        if mask.ndim != 3 or len(mask) != len(boxes):
            raise ValueError(f"{what}: masks must be ({len(boxes)}, H, W), one per box, "
                             f"got {mask.shape}.")
        out["masks"] = mask > 0.5 if mask.dtype.kind == "f" else mask.astype(bool)
    return {k: v[keep] for k, v in out.items()}


# --- Keras callback ------------------------------------------------------------------

class DetectionEvaluation(keras.callbacks.Callback):
    """Logs COCO ``val_map``, ``val_map_50``, ``val_map_75`` at the end of epochs.

    Put it before ``CSVLogger``, ``EarlyStopping`` or ``ModelCheckpoint`` in the
    callbacks list: they read the same epoch logs after it (History always does).

    Args:
        validation_data: what to evaluate on, one of: a ``tf.data.Dataset`` or
            iterable of batches, each Keras' bounding-box dict ``{"images",
            "bounding_boxes": {"boxes", "labels"}}`` (padded with label -1 or
            ragged) or a pair ``(images, {"boxes", "labels"|"classes"})``; an object
            with ``.images`` and ``.ground_truth()`` (kvision's synthetic scenes); or
            a pair ``(images array, list of ground-truth dicts)``.
        inference_fn_or_model: a detection inference model (or any callable) taking a
            batch of images and returning ``{"boxes", "scores", "classes",
            "num_detections"}`` (see ``inference_model`` of the detection families).
        iou_type, num_classes, max_detections: as for :func:`evaluate`.
        frequency: evaluate every this many epochs (others log nothing).
        batch_size: images per call for array-like validation data.
        prefix: log-key prefix.
        verbose: 1 shows a progress bar of the images evaluated.
    """

    def __init__(self, validation_data, inference_fn_or_model, *, iou_type="bbox",
                 num_classes=None, max_detections=100, frequency=1, batch_size=16,
                 prefix="val_", verbose=1):
        super().__init__()
        if not callable(inference_fn_or_model):
            raise ValueError(f"inference_fn_or_model must be a model or a function of a "
                             f"batch of images, got "
                             f"{type(inference_fn_or_model).__name__}.")
        if int(frequency) < 1:
            raise ValueError(f"frequency must be >= 1, got {frequency}.")
        self.validation_data = validation_data
        self.inference = inference_fn_or_model
        self.metric = MeanAveragePrecision(iou_type=iou_type, num_classes=num_classes,
                                           max_detections=max_detections)
        self.frequency = int(frequency)
        self.batch_size = int(batch_size)
        self.prefix = prefix
        self.verbose = verbose
        self.last_result = None

    def evaluate(self):
        """Runs the model over the validation data; the :func:`evaluate` dict."""
        self.metric.reset_state()
        bar = None
        if self.verbose:
            bar = keras.utils.Progbar(_count(self.validation_data), unit_name="image")
        seen = 0
        for images, truth in _batches(self.validation_data, self.batch_size):
            if isinstance(self.inference, keras.Model):  # compiled, not eager: ~8x faster
                outputs = self.inference.predict_on_batch(images)
            else:
                outputs = self.inference(images)
            outputs = {k: _numpy(v) for k, v in dict(outputs).items()}
            self.metric.update_state(truth, outputs)
            seen += len(images)
            if bar is not None:
                bar.update(seen)
        if bar is not None:
            bar.update(seen, finalize=True)
        self.last_result = self.metric.result()
        return self.last_result

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.frequency:
            return
        result = self.evaluate()
        figures = {self.prefix + key: result[key] for key in METRIC_KEYS}
        if logs is not None:  # Keras' epoch line and History show them from here
            logs.update(figures)


def _count(data):
    """Images in array-like validation data (None for a pipeline: unknown)."""
    if hasattr(data, "images") and hasattr(data, "ground_truth"):
        return len(data.images)
    if isinstance(data, tuple) and len(data) == 2 and isinstance(data[1], (list, tuple)):
        return len(data[1])
    return None


def _batches(data, batch_size):
    """(images, ground truth) batches from any accepted validation form."""
    if hasattr(data, "images") and hasattr(data, "ground_truth"):
        data = (np.asarray(data.images), data.ground_truth())
    if isinstance(data, tuple) and len(data) == 2 and isinstance(data[1], (list, tuple)):
        images, truth = data
        if len(images) != len(truth):
            raise ValueError(f"validation_data: {len(images)} images but {len(truth)} "
                             f"ground-truth entries.")
        for start in range(0, len(images), batch_size):
            yield (np.asarray(images[start:start + batch_size]),
                   list(truth[start:start + batch_size]))
        return
    for element in data:
        if isinstance(element, dict) and "images" in element:
            images, boxes = element["images"], element.get("bounding_boxes")
        elif isinstance(element, (tuple, list)) and len(element) >= 2:
            images, boxes = element[0], element[1]
        else:
            raise ValueError("validation_data batches must be {'images', "
                             "'bounding_boxes'} dicts or (images, boxes dict) pairs, got "
                             f"{type(element).__name__}.")
        if not isinstance(boxes, dict) or "boxes" not in boxes:
            raise ValueError(f"validation_data batches need ground truth as a dict with "
                             f"'boxes' and 'labels', got {type(boxes).__name__}.")
        images = _numpy(images)
        if images.ndim == 3:  # an unbatched pipeline
            images = images[None]
            boxes = {k: [v] for k, v in boxes.items()}
        yield images, _split_batch(dict(boxes), "validation ground truth")
