"""Pose metrics: PCK and PCKh of keypoints, COCO keypoint AP by OKS.

Keypoints are ``(..., K, 3)`` arrays of ``x, y, v`` in image pixels, ``v`` COCO's
visibility (0 not labelled, 1 hidden, 2 visible; see :mod:`kvision.data.pose_layouts`).

:func:`pck` counts a labelled joint as found when the prediction lies closer than
``alpha`` times the instance's normalizing length (the percentage of correct
keypoints, PCK). The length is the caller's: :func:`box_sizes` (the box's longer side,
Yang & Ramanan's PCK@0.2) or :func:`head_lengths` (PCKh@0.5 is ``alpha=0.5`` with the
head segment, Andriluka et al. 2014).

:func:`evaluate` gives what pycocotools' ``COCOeval(iouType="keypoints")`` gives for
crowd-free data, to 1e-4 (the tests hold it to that on random and hand-made cases):
AP over the OKS thresholds 0.50:0.05:0.95 (``map``), at 0.50 and at 0.75, with
COCOeval's matching and accumulation (shared with :mod:`kvision.metrics.detection`),
its 20 detections per image, and its rule that a person without labelled keypoints is
ignored (a detection it takes counts neither way). :func:`oks` is the similarity
itself, COCOeval's ``computeOks``.
"""

from __future__ import annotations

import numpy as np

from kvision.data.pose_layouts import COCO, MPII
from kvision.metrics.detection import headline, match, precision_curve

# pycocotools' params.kpt_oks_sigmas: the layout's constants are written as in
# cocoeval's source, which divides them by 10 (COCO's site lists .026, .025, ...).
COCO_SIGMAS = np.asarray(COCO.sigmas, "float64") / 10.0
MAX_DETECTIONS = 20        # COCOeval.Params.setKpParams: maxDets = [20]
AREA_RANGE = (0.0, 1e10)   # its "all" area range, [0, 1e5 ** 2]
MPII_HEAD_BIAS = 0.6       # MPII's util_get_head_size.m: SC_BIAS = 0.6 (0.8 * 0.75)


# --- PCK / PCKh --------------------------------------------------------------------

def pck(true, pred, visible, normalizer, alpha=0.2):
    """Percentage of correct keypoints: ``|pred - true| / normalizer < alpha``.

    Args:
        true: ``(N, K, 2)`` labelled positions (or ``(N, K, 3)`` with visibility).
        pred: ``(N, K, 2)`` predicted positions (a third column is ignored). A
            non-finite prediction counts as a miss.
        visible: ``(N, K)``: the joints that count (True or > 0); as MPII's evaluation
            does, pass "labelled" (COCO ``v > 0``), hidden joints included. None takes
            it from ``true[..., 2] > 0``.
        normalizer: ``(N,)`` lengths (or one for all): :func:`box_sizes`,
            :func:`head_lengths`, :func:`mpii_head_sizes`. A NaN leaves the instance
            out (e.g. a head that is not labelled), a length <= 0 is an error.
        alpha: the threshold as a fraction of the normalizer (PCK@0.2, PCKh@0.5).
    Returns:
        ``{"mean": float, "per_joint": (K,) float64, "count": (K,) int}``: ``mean`` is
        correct / scored over all joints, each joint weighted by its count (as the
        ``jnt_ratio`` of HRNet's MPII evaluation; its table and bearpaw/pytorch-pose's
        also leave out pelvis and thorax, and bearpaw's averages the per-joint
        figures unweighted: use ``per_joint`` and ``count`` for those). A joint never
        visible has ``count`` 0, ``per_joint`` NaN and no weight in ``mean``. The
        comparison is strict (``<``), as bearpaw/pytorch-pose's ``eval_PCKh`` (HRNet's
        uses ``<=``: they differ only at exact ties).
    Raises:
        ValueError: shapes that disagree, a length <= 0, nothing visible to score.
    """
    true = _points(true, "true")
    pred = _points(pred, "pred")
    if true.shape[:2] != pred.shape[:2]:
        raise ValueError(f"true and pred must be (N, K, 2) with the same N and K, got "
                         f"{true.shape} and {pred.shape}.")
    visible = _visibility(visible, true)
    normalizer = _normalizer(normalizer, len(true))
    if not float(alpha) > 0:
        raise ValueError(f"alpha must be > 0, got {alpha}.")
    scored = visible & ~np.isnan(normalizer)[:, None]
    if not scored.any():
        raise ValueError(f"pck: no joint to score among {true.shape[:2]} (N, K): none is "
                         f"visible in an instance with a normalizer.")
    if not np.isfinite(true[..., :2][scored]).all():
        raise ValueError("true: visible joints must have finite coordinates.")
    distance = np.linalg.norm(pred[..., :2] - true[..., :2], axis=-1)
    with np.errstate(invalid="ignore"):  # NaN distances (unlabelled, diverged): misses
        correct = scored & (distance / np.nan_to_num(normalizer, nan=1.0)[:, None] < alpha)
    count = scored.sum(axis=0)
    hits = correct.sum(axis=0)
    per_joint = np.where(count > 0, hits / np.maximum(count, 1), np.nan)
    return {"mean": float(hits.sum() / count.sum()), "per_joint": per_joint,
            "count": count}


def head_lengths(keypoints, layout=MPII):
    """``(N,)`` upper_neck to head_top distances: the head segment of PCKh.

    Andriluka et al. (2014) define PCKh's threshold as "50% of the head segment
    length", taken here from the two joints, times 1. MPII's own evaluation code
    (``util_get_head_size.m``, copied by bearpaw/pytorch-pose's ``eval_PCKh``)
    estimates that length from the annotated head rectangle instead, as 0.6 times its
    diagonal: :func:`mpii_head_sizes` gives that when head boxes are at hand. An
    instance whose upper_neck or head_top is not labelled (``v == 0``) gets NaN,
    which :func:`pck` leaves out.

    Args:
        keypoints: ``(N, K, 3)`` (or ``(N, K, 2)``, all taken as labelled) in the
            layout's order.
        layout: a :class:`kvision.data.pose_layouts.Layout` with ``upper_neck`` and
            ``head_top`` (MPII's).
    """
    names = layout.names
    if "upper_neck" not in names or "head_top" not in names:
        raise ValueError(f"head_lengths needs a layout with 'upper_neck' and 'head_top' "
                         f"(MPII's); layout {layout.name!r} has {list(names)}.")
    points = _points(keypoints, "keypoints")
    if points.shape[1] != len(names):
        raise ValueError(f"keypoints are {points.shape} but layout {layout.name!r} has "
                         f"{len(names)} joints: expected (N, {len(names)}, 3).")
    neck, top = names.index("upper_neck"), names.index("head_top")
    lengths = np.linalg.norm(points[:, top, :2] - points[:, neck, :2], axis=-1)
    if points.shape[2] == 3:
        lengths[(points[:, top, 2] <= 0) | (points[:, neck, 2] <= 0)] = np.nan
    return lengths


def mpii_head_sizes(head_boxes):
    """``(N,)`` MPII's head size: 0.6 times the diagonal of the ``(N, 4)`` xyxy head
    rectangles (``util_get_head_size.m``), the normalizer of MPII's published PCKh."""
    boxes = _boxes(head_boxes, "head_boxes")
    return MPII_HEAD_BIAS * np.hypot(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])


def box_sizes(boxes):
    """``(N,)`` the longer side of ``(N, 4)`` xyxy person boxes: the normalizer of
    Yang & Ramanan's PCK (a joint is correct within ``alpha * max(h, w)``)."""
    boxes = _boxes(boxes, "boxes")
    return np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])


# --- COCO keypoint AP --------------------------------------------------------------

def evaluate(ground_truth, detections, sigmas=None, *, max_detections=MAX_DETECTIONS):
    """COCO keypoint AP: ``{"map", "map_50", "map_75"}`` (OKS 0.50:0.95, 0.50, 0.75).

    Args:
        ground_truth: one dict per image, ``{"keypoints": (n, K, 3) x, y, v, "boxes":
            (n, 4) xyxy}`` and optionally ``"areas": (n,)``. COCO's OKS divides by the
            person's segmentation area; without ``"areas"`` the box area is used
            (COCO's segment areas are smaller, so figures on real COCO data need the
            annotations' areas). An image may have no person.
        detections: one dict per image, ``{"keypoints": (m, K, 3) x, y, score (or
            (m, K, 2)), "scores": (m,)}``; per-joint scores are not used, as in COCO.
        sigmas: ``(K,)`` OKS constants as pycocotools' ``params.kpt_oks_sigmas``
            (:data:`COCO_SIGMAS` when ``K == 17`` and None).
        max_detections: detections counted per image, best first (COCO: 20).
    Returns:
        the three figures, floats; -1 (COCOeval's mark) when no person counts.
    Raises:
        ValueError: different image counts, shapes or joint counts that disagree,
            visibility other than 0/1/2, ``K != 17`` without sigmas.
    """
    truths = _images(ground_truth, "ground_truth", truth=True)
    found = _images(detections, "detections", truth=False)
    if len(truths) != len(found):
        raise ValueError(f"ground_truth has {len(truths)} images but detections has "
                         f"{len(found)}; give one entry per image in both.")
    if int(max_detections) < 1:
        raise ValueError(f"max_detections must be >= 1, got {max_detections}.")
    k = _joint_count(truths, found, sigmas)
    if k is None:  # not one person, detected or true: nothing to measure
        return {"map": -1.0, "map_50": -1.0, "map_75": -1.0}
    sigmas = _sigmas(sigmas, k)
    scores, matched, ignored, num_gt = [], [], [], 0
    for truth, det in zip(truths, found):
        order = np.argsort(-det["scores"], kind="mergesort")[:int(max_detections)]
        people_ignored, hits, misses_ignored = _match_image(
            truth, det["keypoints"][order], sigmas)
        scores.append(det["scores"][order])
        matched.append(hits)
        ignored.append(misses_ignored)
        num_gt += int(np.sum(~people_ignored))
    if num_gt == 0:
        return {"map": -1.0, "map_50": -1.0, "map_75": -1.0}
    precision = precision_curve(np.concatenate(scores), np.concatenate(matched, axis=1),
                                num_gt, np.concatenate(ignored, axis=1))
    return headline(precision)


def oks(gt, dt, areas, sigmas=None, boxes=None):
    """Object keypoint similarity, COCOeval's ``computeOks``: ``(D, G)`` float64.

    ``mean over labelled joints of exp(-d^2 / (2 * area * (2 * sigma)^2))``. A person
    with no labelled joint is measured, as COCO does, by how far each detected joint
    lies outside its box enlarged by the box's size on every side (``boxes`` needed).

    Args:
        gt: ``(G, K, 3)`` x, y, v (or one person ``(K, 3)``).
        dt: ``(D, K, 2)`` or ``(D, K, 3)`` (or one ``(K, 2|3)``).
        areas: ``(G,)`` person areas (or one number).
        sigmas: ``(K,)`` as pycocotools' ``kpt_oks_sigmas``; COCO's for ``K == 17``.
        boxes: ``(G, 4)`` xyxy, used for people without labelled joints.
    Returns:
        ``(D, G)``; a float when both ``gt`` and ``dt`` are one person.
    """
    single = np.ndim(gt) == 2 and np.ndim(dt) == 2
    gt = _points(np.asarray(gt, "float64")[None] if np.ndim(gt) == 2 else gt, "gt")
    dt = _points(np.asarray(dt, "float64")[None] if np.ndim(dt) == 2 else dt, "dt")
    if gt.shape[2] != 3:
        raise ValueError(f"gt must be (G, K, 3) x, y, visibility, got {gt.shape}.")
    if gt.shape[1] != dt.shape[1]:
        raise ValueError(f"gt {gt.shape} and dt {dt.shape} have different joint counts.")
    areas = _lengths(areas, len(gt), "areas")
    if boxes is not None:
        boxes = _boxes(boxes, "boxes")
        if len(boxes) != len(gt):
            raise ValueError(f"boxes must be ({len(gt)}, 4), one per gt, got "
                             f"{boxes.shape}.")
    similarity = _oks(gt, dt[..., :2], areas, _sigmas(sigmas, gt.shape[1]), boxes)
    return float(similarity[0, 0]) if single else similarity


def _oks(gt, dt, areas, sigmas, boxes):
    """(G, K, 3), (D, K, 2), (G,), (K,), (G, 4) or None -> (D, G), computeOks' order."""
    labelled = gt[..., 2] > 0                                   # (G, K)
    dx = dt[:, None, :, 0] - gt[None, :, :, 0]                  # (D, G, K)
    dy = dt[:, None, :, 1] - gt[None, :, :, 1]
    unlabelled = ~labelled.any(axis=1)
    if unlabelled.any():
        if boxes is None:
            raise ValueError(f"gt {np.flatnonzero(unlabelled).tolist()} has no labelled "
                             f"joint: COCO measures such a person against its box; pass "
                             f"boxes (G, 4).")
        far_x, far_y = _outside_box(dt, boxes)
        dx = np.where(unlabelled[None, :, None], far_x, dx)
        dy = np.where(unlabelled[None, :, None], far_y, dy)
        labelled = labelled | unlabelled[:, None]               # all K joints count
    variances = (sigmas * 2) ** 2
    with np.errstate(invalid="ignore"):  # unlabelled joints may hold NaN: masked below
        e = (dx ** 2 + dy ** 2) / variances / (areas[None, :, None] + np.spacing(1)) / 2
    similarity = np.where(labelled[None], np.exp(-e), 0.0).sum(axis=-1)
    return similarity / labelled.sum(axis=1)[None]


def _outside_box(dt, boxes):
    """(D, G, K) distances of detected joints outside each box grown by its size."""
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    x0, x1 = (boxes[:, 0] - w)[None, :, None], (boxes[:, 0] + w * 2)[None, :, None]
    y0, y1 = (boxes[:, 1] - h)[None, :, None], (boxes[:, 1] + h * 2)[None, :, None]
    x, y = dt[:, None, :, 0], dt[:, None, :, 1]
    return (np.maximum(0, x0 - x) + np.maximum(0, x - x1),
            np.maximum(0, y0 - y) + np.maximum(0, y - y1))


def _match_image(truth, xy, sigmas):
    """COCOeval.evaluateImg for one image, detections ``xy`` (D, K, 2) best first:
    the ignored people (G,), the (T, D) matches and the (T, D) ignored detections."""
    low, high = AREA_RANGE
    gt_ignore = ~(truth["keypoints"][..., 2] > 0).any(axis=1)
    gt_ignore |= (truth["areas"] < low) | (truth["areas"] > high)
    similarity = _oks(truth["keypoints"], xy, truth["areas"], sigmas, truth["boxes"])
    matched, ignored = match(similarity, gt_ignore)
    # loadRes gives a detection the area of its keypoints' box; unmatched ones outside
    # the area range are ignored
    spread = xy.max(axis=1) - xy.min(axis=1) if len(xy) else np.zeros((0, 2))
    area = spread[:, 0] * spread[:, 1]
    ignored |= ~matched & ((area < low) | (area > high))[None]
    return gt_ignore, matched, ignored


# --- input forms ---------------------------------------------------------------------

def _images(data, what, *, truth):
    if not isinstance(data, (list, tuple)):
        raise ValueError(f"{what} must be a list with one dict per image, got "
                         f"{type(data).__name__}.")
    return [_image(item, f"{what}[{i}]", truth=truth) for i, item in enumerate(data)]


def _image(item, what, *, truth):
    """One image's dict as float64 arrays; keypoints (n, K, 3) truth, (n, K, 2) dets."""
    needed = ("keypoints", "boxes") if truth else ("keypoints", "scores")
    if not isinstance(item, dict) or any(key not in item for key in needed):
        got = sorted(item) if isinstance(item, dict) else type(item).__name__
        raise ValueError(f"{what} must be a dict with {list(needed)}, got {got}.")
    points = np.asarray(item["keypoints"], "float64")
    if points.size == 0:
        points = points.reshape(0, 0, 3)  # no person: K comes from the others
    if points.ndim != 3 or points.shape[2] not in ((3,) if truth else (2, 3)):
        form = "(n, K, 3) x, y, visibility" if truth else "(m, K, 3) x, y, score"
        raise ValueError(f"{what}: keypoints must be {form}, got {points.shape}.")
    if truth:
        return _truth(item, points, what)
    scores = np.asarray(item["scores"], "float64").reshape(-1)
    if len(scores) != len(points) or not np.isfinite(scores).all():
        raise ValueError(f"{what}: scores must be ({len(points)},) finite numbers, one per "
                         f"person, got shape {scores.shape}.")
    if not np.isfinite(points[..., :2]).all():
        raise ValueError(f"{what}: keypoints must be finite numbers.")
    return {"keypoints": points[..., :2], "scores": scores}


def _truth(item, points, what):
    visibility = points[..., 2]
    if not np.isin(visibility, (0, 1, 2)).all():
        raise ValueError(f"{what}: visibility (keypoints[..., 2]) must be 0, 1 or 2, got "
                         f"{np.unique(visibility[~np.isin(visibility, (0, 1, 2))])[:5]}.")
    if not np.isfinite(points[..., :2][visibility > 0]).all():
        raise ValueError(f"{what}: labelled keypoints must have finite coordinates.")
    boxes = _boxes(item["boxes"], f"{what} boxes")
    if len(boxes) != len(points):
        raise ValueError(f"{what}: {len(points)} people's keypoints {points.shape} but "
                         f"boxes {boxes.shape}; give one (4,) xyxy box per person.")
    if item.get("areas") is None:
        areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    else:
        areas = _lengths(item["areas"], len(points), f"{what} areas")
    return {"keypoints": points, "boxes": boxes, "areas": areas}


def _joint_count(truths, found, sigmas):
    """The one K of every keypoints array and of ``sigmas``; None when there is none."""
    seen = {}
    for what, images in (("ground_truth", truths), ("detections", found)):
        for i, image in enumerate(images):
            if len(image["keypoints"]):
                seen.setdefault(image["keypoints"].shape[1], f"{what}[{i}]")
    if sigmas is not None:
        seen.setdefault(np.size(sigmas), "sigmas")
    if len(seen) > 1:
        raise ValueError("The joint counts disagree: " + ", ".join(
            f"{where} has K={k}" for k, where in seen.items()) + ".")
    if not seen:
        return None
    k = next(iter(seen))
    for images in (truths, found):
        for image in images:
            if not len(image["keypoints"]):
                image["keypoints"] = image["keypoints"].reshape(0, k, image[
                    "keypoints"].shape[2])
    return k


def _sigmas(sigmas, k):
    if sigmas is None:
        if k != len(COCO_SIGMAS):
            raise ValueError(f"The keypoints have K={k} joints; COCO's OKS sigmas are for "
                             f"its 17. Pass sigmas=(K,) constants for this layout "
                             f"(pycocotools' params.kpt_oks_sigmas scale, COCO's are "
                             f"0.025-0.107).")
        return COCO_SIGMAS
    sigmas = np.asarray(sigmas, "float64")
    if sigmas.shape != (k,) or not (np.isfinite(sigmas) & (sigmas > 0)).all():
        raise ValueError(f"sigmas must be ({k},) positive numbers, one per joint, got "
                         f"shape {sigmas.shape}.")
    return sigmas


def _points(value, what):
    points = np.asarray(value, "float64")
    if points.ndim != 3 or points.shape[2] not in (2, 3):
        raise ValueError(f"{what} must be (N, K, 2) x, y or (N, K, 3) x, y, v, got "
                         f"{points.shape}.")
    return points


def _visibility(visible, true):
    if visible is None:
        if true.shape[2] != 3:
            raise ValueError(f"visible is None but true is {true.shape}: give visible "
                             f"(N, K) or true as (N, K, 3) x, y, v.")
        return true[..., 2] > 0
    visible = np.asarray(visible)
    if visible.shape != true.shape[:2]:
        raise ValueError(f"visible must be {true.shape[:2]} (N, K), got {visible.shape}.")
    return visible > 0


def _normalizer(normalizer, n):
    lengths = np.asarray(normalizer, "float64")
    if lengths.ndim == 0:
        lengths = np.full(n, float(lengths))
    if lengths.shape != (n,):
        raise ValueError(f"normalizer must be ({n},), one length per instance, got "
                         f"{lengths.shape}.")
    bad = ~np.isnan(lengths) & ~(np.isfinite(lengths) & (lengths > 0))
    if bad.any():
        raise ValueError(f"normalizer must be > 0 and finite (NaN leaves an instance out); "
                         f"instances {np.flatnonzero(bad)[:10].tolist()} have "
                         f"{lengths[bad][:10].tolist()}.")
    return lengths


def _lengths(value, n, what):
    values = np.asarray(value, "float64")
    values = np.full(n, float(values)) if values.ndim == 0 else values.reshape(-1)
    if values.shape != (n,) or not (np.isfinite(values) & (values >= 0)).all():
        raise ValueError(f"{what} must be ({n},) finite numbers >= 0, got shape "
                         f"{np.shape(value)}.")
    return values


def _boxes(value, what):
    boxes = np.asarray(value, "float64")
    boxes = boxes.reshape(0, 4) if boxes.size == 0 else boxes
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"{what} must be (N, 4) xyxy, got {boxes.shape}.")
    if not np.isfinite(boxes).all() or (boxes[:, 2:] < boxes[:, :2]).any():
        raise ValueError(f"{what}: xyxy boxes need finite x1 <= x2 and y1 <= y2.")
    return boxes
