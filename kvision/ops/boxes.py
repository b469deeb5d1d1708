"""Box operations every detector imports: formats, IoU, anchors, targets, NMS.

Small pure functions in the manner of torchvision's ``ops/boxes.py``. They take numpy
arrays or tensors with any leading batch dimensions and compute with ``keras.ops``, so
they run in a model, in a loss and in a ``tf.data`` map. What Keras core already gives
is used, not copied: format conversion is ``keras.utils.bounding_boxes.convert_format``
(plus the ``"yolo"`` name), and NMS is ``tf.image``'s padded non-max suppression, the op
TFLite runs as the builtin ``NON_MAX_SUPPRESSION_V4``. Written here is what those lack:
GIoU/DIoU/CIoU for any leading dimensions, elementwise IoU, clipped deltas, per-class
batched NMS, anchors and k-means anchors, and the numpy clean-up a data pipeline needs.

Formats (``FORMATS``), pixels unless noted:

- ``xyxy``: ``(x1, y1, x2, y2)`` corners; ``yxyx``: ``(y1, x1, y2, x2)``;
- ``xywh``: top-left corner, width, height (COCO json);
- ``center_xywh``: center, width, height;
- ``rel_xyxy``: ``xyxy`` divided by the image width/height;
- ``yolo``: ``center_xywh`` divided by the image width/height (YOLO ``.txt`` labels).
"""

from __future__ import annotations

import math
import warnings

import keras
import numpy as np
from keras import ops

FORMATS = ("xyxy", "yxyx", "xywh", "center_xywh", "rel_xyxy", "yolo")
IOU_MODES = ("iou", "giou", "diou", "ciou")
RELATIVE_FORMATS = ("rel_xyxy", "yolo")
# Keras' name for each kvision format.
_KERAS_NAMES = {"xyxy": "xyxy", "yxyx": "yxyx", "xywh": "xywh",
                "center_xywh": "center_xywh", "rel_xyxy": "rel_xyxy",
                "yolo": "rel_center_xywh"}
# torchvision's bbox_xform_clip: exp() of a larger log-size delta overflows float32
# long before it means anything (a box 62x its anchor).
DELTA_CLIP = math.log(1000.0 / 16)
_EPS = 1e-7


class BoxWarning(UserWarning):
    """Boxes were dropped or changed while cleaning up data (see :func:`sanitize`)."""


# --- formats ---------------------------------------------------------------------------

def _check_format(format, what="format"):
    if format not in FORMATS:
        raise ValueError(f"{what} must be one of {FORMATS}, got {format!r}.")


def _check_boxes(boxes, what="boxes"):
    shape = ops.shape(boxes)
    if len(shape) < 1 or shape[-1] != 4:
        raise ValueError(f"{what} must have shape (..., 4) (four coordinates last), "
                         f"got shape {tuple(shape)}.")


def _height_width(image_shape, what):
    if image_shape is None:
        raise ValueError(f"{what} needs image_shape=(height, width) to convert "
                         f"between relative and pixel coordinates.")
    if isinstance(image_shape, (tuple, list, np.ndarray)):  # a tensor: trusted
        if len(image_shape) not in (2, 3):
            raise ValueError(f"image_shape must be (height, width) or (height, width, "
                             f"channels), got {tuple(image_shape)}.")
    return image_shape[0], image_shape[1]


def convert_format(boxes, source, target, *, image_shape=None):
    """Converts boxes ``(..., 4)`` from format ``source`` to ``target`` (float32).

    Args:
        boxes: array or tensor ``(..., 4)``.
        source, target: names from :data:`FORMATS`.
        image_shape: ``(height, width)`` of the image, needed when either format is
            relative (``"rel_xyxy"``, ``"yolo"``).
    """
    _check_format(source, "source")
    _check_format(target, "target")
    boxes = ops.convert_to_tensor(boxes)
    _check_boxes(boxes)
    height = width = None
    if source in RELATIVE_FORMATS or target in RELATIVE_FORMATS:
        height, width = _height_width(image_shape,
                                      f"convert_format({source!r} -> {target!r})")
    return keras.utils.bounding_boxes.convert_format(
        boxes, _KERAS_NAMES[source], _KERAS_NAMES[target], height=height, width=width)


def _to_xyxy(boxes, format, image_shape=None):
    _check_format(format)
    return convert_format(boxes, format, "xyxy", image_shape=image_shape)


def area(boxes, *, format="xyxy"):
    """Areas ``(...,)`` of boxes ``(..., 4)``; inverted boxes count as 0.

    Relative formats give areas as fractions of the image.
    """
    _check_format(format)
    boxes = ops.cast(ops.convert_to_tensor(boxes), "float32")
    _check_boxes(boxes)
    if format in ("xywh", "center_xywh", "yolo"):
        width, height = boxes[..., 2], boxes[..., 3]
    elif format == "yxyx":
        width, height = boxes[..., 3] - boxes[..., 1], boxes[..., 2] - boxes[..., 0]
    else:
        width, height = boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]
    return ops.maximum(width, 0.0) * ops.maximum(height, 0.0)


def clip(boxes, image_shape, *, format="xyxy"):
    """Clips boxes ``(..., 4)`` to an image of ``image_shape=(height, width)``."""
    _check_format(format)
    height, width = _height_width(image_shape, "clip")
    xyxy = _to_xyxy(boxes, format, (height, width))
    x1, y1, x2, y2 = ops.unstack(xyxy, 4, axis=-1)
    width = ops.cast(width, "float32")
    height = ops.cast(height, "float32")
    xyxy = ops.stack([ops.clip(x1, 0.0, width), ops.clip(y1, 0.0, height),
                      ops.clip(x2, 0.0, width), ops.clip(y2, 0.0, height)], axis=-1)
    return convert_format(xyxy, "xyxy", format, image_shape=(height, width))


# --- IoU -------------------------------------------------------------------------------

def _safe_divide(numerator, denominator):
    """numerator / denominator, 0 where the denominator is 0 (gradients stay finite)."""
    positive = denominator > 0
    return ops.where(positive, numerator / ops.where(positive, denominator, 1.0), 0.0)


def _iou_terms(b1, b2, mode):
    """IoU-family score of broadcastable xyxy boxes ``(..., 4)`` -> ``(...)``."""
    x1a, y1a, x2a, y2a = ops.unstack(b1, 4, axis=-1)
    x1b, y1b, x2b, y2b = ops.unstack(b2, 4, axis=-1)
    wa, ha = ops.maximum(x2a - x1a, 0.0), ops.maximum(y2a - y1a, 0.0)
    wb, hb = ops.maximum(x2b - x1b, 0.0), ops.maximum(y2b - y1b, 0.0)
    inter = (ops.maximum(ops.minimum(x2a, x2b) - ops.maximum(x1a, x1b), 0.0)
             * ops.maximum(ops.minimum(y2a, y2b) - ops.maximum(y1a, y1b), 0.0))
    union = wa * ha + wb * hb - inter
    iou_value = _safe_divide(inter, union)
    if mode == "iou":
        return iou_value
    enclose_w = ops.maximum(x2a, x2b) - ops.minimum(x1a, x1b)
    enclose_h = ops.maximum(y2a, y2b) - ops.minimum(y1a, y1b)
    if mode == "giou":  # Rezatofighi et al., 2019
        enclose = enclose_w * enclose_h
        return iou_value - _safe_divide(enclose - union, enclose)
    # DIoU / CIoU (Zheng et al., 2020): centre distance over the enclosing diagonal.
    centre_dist = (((x1a + x2a) - (x1b + x2b)) ** 2 + ((y1a + y2a) - (y1b + y2b)) ** 2) / 4
    diou = iou_value - centre_dist / (enclose_w ** 2 + enclose_h ** 2 + _EPS)
    if mode == "diou":
        return diou
    v = (4 / math.pi ** 2) * (ops.arctan(wb / (hb + _EPS))
                              - ops.arctan(wa / (ha + _EPS))) ** 2
    # alpha is a weight, not a path for gradients (the paper's and torchvision's choice).
    alpha = ops.stop_gradient(v / (1 - iou_value + v + _EPS))
    return diou - alpha * v


def _check_mode(mode):
    if mode not in IOU_MODES:
        raise ValueError(f"mode must be one of {IOU_MODES}, got {mode!r}.")


def iou(boxes1, boxes2, *, format="xyxy", mode="iou"):
    """Pairwise IoU (or GIoU, DIoU, CIoU) of ``(..., N, 4)`` and ``(..., M, 4)``.

    Leading dimensions broadcast. Returns ``(..., N, M)``; pairs with zero union score
    0 IoU. Relative formats need no image size: IoU and GIoU do not change when an axis
    is scaled, but DIoU and CIoU (distances, aspect ratios) do, so give those pixel
    boxes on non-square images.
    """
    _check_mode(mode)
    b1 = _to_xyxy(boxes1, format, _unit(format))
    b2 = _to_xyxy(boxes2, format, _unit(format))
    if len(b1.shape) < 2 or len(b2.shape) < 2:
        raise ValueError(f"iou takes boxes (..., N, 4) and (..., M, 4), got shapes "
                         f"{tuple(b1.shape)} and {tuple(b2.shape)}; use aligned_iou for "
                         f"single boxes.")
    return _iou_terms(ops.expand_dims(b1, -2), ops.expand_dims(b2, -3), mode)


def aligned_iou(boxes1, boxes2, *, format="xyxy", mode="iou"):
    """Elementwise IoU (or GIoU, DIoU, CIoU) of two ``(..., N, 4)`` sets -> ``(..., N)``."""
    _check_mode(mode)
    b1 = _to_xyxy(boxes1, format, _unit(format))
    b2 = _to_xyxy(boxes2, format, _unit(format))
    return _iou_terms(b1, b2, mode)


def _unit(format):
    return (1.0, 1.0) if format in RELATIVE_FORMATS else None


# --- data clean-up (numpy) -------------------------------------------------------------

def sanitize(boxes, classes, image_shape, *, num_classes=None, min_size=1.0):
    """Cleans one image's xyxy pixel boxes for a data pipeline (numpy).

    Boxes are clipped to the image; those narrower or lower than ``min_size`` pixels
    after clipping (zero-area, inverted or wholly outside) are dropped with one
    :class:`BoxWarning` saying how many. An image with no boxes is fine.

    Args:
        boxes: ``(n, 4)`` xyxy pixels (an empty list or ``(0,)`` array for none).
        classes: ``(n,)`` integer class ids.
        image_shape: ``(height, width)`` (or ``(height, width, channels)``).
        num_classes: when given, ids must lie in ``[0, num_classes)``.
        min_size: smallest width and height kept, in pixels.
    Returns:
        ``(boxes float32 (m, 4), classes int32 (m,))``, ``m <= n``.
    Raises:
        ValueError: wrong shapes, non-finite coordinates, non-integer or out-of-range
            class ids.
    """
    boxes = np.asarray(boxes, dtype="float64")
    classes = np.asarray(classes)
    if boxes.size == 0:
        boxes = boxes.reshape(0, 4)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must have shape (n, 4) (xyxy pixels), got {boxes.shape}.")
    classes = classes.reshape(-1) if classes.size == 0 else classes
    if classes.ndim != 1 or len(classes) != len(boxes):
        raise ValueError(f"classes must have shape ({len(boxes)},), one per box, got "
                         f"{classes.shape}.")
    if classes.size and not np.all(np.equal(np.mod(classes, 1), 0)):
        raise ValueError(f"classes must be integer ids, got {classes[:5]}...")
    classes = classes.astype("int64")
    if not np.all(np.isfinite(boxes)):
        bad = np.flatnonzero(~np.all(np.isfinite(boxes), axis=1))
        raise ValueError(f"boxes hold non-finite coordinates (rows {bad.tolist()}).")
    limit = num_classes if num_classes is not None else np.inf
    wrong = (classes < 0) | (classes >= limit)
    if wrong.any():
        expected = f"[0, {num_classes})" if num_classes is not None else ">= 0"
        raise ValueError(f"class ids must be in {expected}; got "
                         f"{np.unique(classes[wrong]).tolist()} (the data has a class the "
                         f"model does not know).")
    height, width = _height_width(image_shape, "sanitize")
    boxes = np.clip(boxes, 0, [width, height, width, height])
    keep = (((boxes[:, 2] - boxes[:, 0]) >= min_size)
            & ((boxes[:, 3] - boxes[:, 1]) >= min_size))
    dropped = int(len(boxes) - keep.sum())
    if dropped:
        warnings.warn(f"sanitize dropped {dropped} of {len(boxes)} boxes smaller than "
                      f"{min_size} px after clipping to {height}x{width} (zero-area, "
                      f"inverted or outside the image).", BoxWarning, stacklevel=2)
    return boxes[keep].astype("float32"), classes[keep].astype("int32")


def sanitize_images(boxes, classes, image_shape, *, num_classes=None, min_size=1.0,
                    names=None, caller="sanitize_images"):
    """:func:`sanitize` of many images, with one counted warning for them all.

    Boxes are clipped to their image; zero-area, inverted or outside boxes are dropped
    with one :class:`BoxWarning` (from ``caller``) counting them and the images they
    were in; class ids outside ``[0, num_classes)`` (when given; negative ones always)
    are a ValueError naming the image.

    Args:
        boxes, classes: per-image lists of ``(n, 4)`` xyxy pixel boxes and ``(n,)`` ids.
        image_shape: one ``(height, width)`` for all images, or a list with one each.
        num_classes, min_size: as :func:`sanitize`.
        names: per-image names for messages (default ``"image <i>"``).
        caller: the function named by the warning.
    Returns:
        The per-image ``(boxes, classes)`` lists.
    """
    if len(boxes) != len(classes):
        raise ValueError(f"{len(boxes)} box lists but {len(classes)} class lists.")
    one_shape = all(np.isscalar(side) for side in image_shape)
    shapes = [image_shape] * len(boxes) if one_shape else list(image_shape)
    names = [f"image {i}" for i in range(len(boxes))] if names is None else list(names)
    if not len(shapes) == len(names) == len(boxes):
        raise ValueError(f"{len(boxes)} images but {len(shapes)} image shapes and "
                         f"{len(names)} names.")
    cleaned_boxes, cleaned_classes, dropped, total, where = [], [], 0, 0, []
    for image_boxes, image_classes, shape, name in zip(boxes, classes, shapes, names):
        with warnings.catch_warnings(record=True):
            warnings.simplefilter("always", BoxWarning)  # counted here, once for all
            try:
                kept, kept_classes = sanitize(image_boxes, image_classes, shape,
                                              num_classes=num_classes, min_size=min_size)
            except ValueError as err:
                raise ValueError(f"{name}: {err}") from None
        given = np.asarray(image_boxes).size // 4
        total += given
        if len(kept) < given:
            dropped += given - len(kept)
            where.append(name)
        cleaned_boxes.append(kept)
        cleaned_classes.append(kept_classes)
    if dropped:
        warnings.warn(f"{caller} dropped {dropped} of {total} boxes smaller than {min_size} "
                      f"px after clipping to their image (zero-area, inverted or outside) "
                      f"in {len(where)} of {len(boxes)} images, e.g. {where[:3]}.",
                      BoxWarning, stacklevel=3)
    return cleaned_boxes, cleaned_classes


# --- anchors ---------------------------------------------------------------------------

def anchor_grid(feature_size, stride, anchor_wh):
    """Anchors at every cell of a feature map: ``(H * W * A, 4)`` center_xywh pixels.

    Centres sit at ``((col + 0.5) * stride_x, (row + 0.5) * stride_y)``; the order is
    row, column, anchor (so a head's ``(H, W, A * k)`` output reshaped to
    ``(H * W * A, k)`` lines up). ``feature_size`` and ``stride`` are an int or
    ``(height, width)`` / ``(stride_y, stride_x)``; ``anchor_wh`` is ``(A, 2)`` pixels.
    Returns a float32 numpy array (a constant, usable in models and pipelines).
    """
    fh, fw = _pair(feature_size, "feature_size")
    sy, sx = _pair(stride, "stride", integer=False)
    anchor_wh = np.asarray(anchor_wh, dtype="float32")
    if anchor_wh.ndim != 2 or anchor_wh.shape[1] != 2 or np.any(anchor_wh <= 0):
        raise ValueError(f"anchor_wh must be (A, 2) positive (width, height) pixels, got "
                         f"shape {anchor_wh.shape}.")
    cy, cx = np.meshgrid((np.arange(fh) + 0.5) * sy, (np.arange(fw) + 0.5) * sx,
                         indexing="ij")
    centres = np.stack([cx, cy], -1).reshape(-1, 1, 2)
    centres = np.broadcast_to(centres, (fh * fw, len(anchor_wh), 2))
    sizes = np.broadcast_to(anchor_wh, (fh * fw, len(anchor_wh), 2))
    return np.concatenate([centres, sizes], -1).reshape(-1, 4).astype("float32")


def _pair(value, what, integer=True):
    values = (value, value) if np.ndim(value) == 0 else tuple(value)
    if len(values) != 2 or any(v <= 0 for v in values):
        raise ValueError(f"{what} must be a positive number or a (height, width) pair, "
                         f"got {value!r}.")
    return tuple(int(v) for v in values) if integer else tuple(float(v) for v in values)


def _wh_iou(wh, centroids):
    """IoU of boxes and centroids sharing a corner: ``(N, 2), (k, 2) -> (N, k)``."""
    inter = (np.minimum(wh[:, None, 0], centroids[None, :, 0])
             * np.minimum(wh[:, None, 1], centroids[None, :, 1]))
    union = wh[:, None].prod(-1) + centroids[None].prod(-1) - inter
    return inter / union


def kmeans_anchors(wh, k, *, seed=0, max_iter=300):
    """YOLOv2's anchor sizes: k-means of box sizes under the distance ``1 - IoU``.

    Redmon & Farhadi (2017), "YOLO9000", section 2: boxes are compared by shape alone
    (as if they shared a centre), so large boxes do not dominate as with Euclidean
    distance. Seeded k-means++ start, Lloyd iterations with mean centroids.

    Args:
        wh: ``(N, 2)`` positive box widths and heights (pixels or relative), or
            ``(N, 4)`` xyxy boxes.
        k: number of anchors, ``1 <= k <= N``.
    Returns:
        ``(k, 2)`` float32 anchor sizes, sorted by area (smallest first).
    """
    wh = np.asarray(wh, dtype="float64")
    if wh.ndim == 2 and wh.shape[1] == 4:
        wh = wh[:, 2:] - wh[:, :2]
    if wh.ndim != 2 or wh.shape[1] != 2:
        raise ValueError(f"wh must be (N, 2) widths and heights or (N, 4) xyxy boxes, got "
                         f"shape {wh.shape}.")
    wh = wh[np.all(wh > 0, axis=1)]
    if not 1 <= int(k) <= len(wh):
        raise ValueError(f"k must be between 1 and the number of positive-size boxes "
                         f"({len(wh)}), got {k}.")
    rng = np.random.default_rng(seed)
    centroids = wh[[rng.integers(len(wh))]]
    while len(centroids) < k:  # k-means++: far (in 1 - IoU) boxes are likelier seeds
        distance = (1 - _wh_iou(wh, centroids)).min(1) ** 2
        total = distance.sum()
        pick = (rng.choice(len(wh), p=distance / total) if total > 0
                else rng.integers(len(wh)))
        centroids = np.concatenate([centroids, wh[[pick]]])
    assignment = None
    for _ in range(max_iter):
        new = np.argmax(_wh_iou(wh, centroids), axis=1)
        if assignment is not None and np.array_equal(new, assignment):
            break
        assignment = new
        for j in range(k):
            members = wh[assignment == j]
            if len(members):
                centroids[j] = members.mean(0)
    return centroids[np.argsort(centroids.prod(1), kind="stable")].astype("float32")


# --- box targets -----------------------------------------------------------------------

def _check_variances(variances):
    variances = tuple(float(v) for v in variances)
    if len(variances) != 4 or min(variances) <= 0:
        raise ValueError(f"variances must be 4 positive numbers, got {variances}.")
    return ops.convert_to_tensor(variances, "float32")


def encode(boxes, anchors, *, variances=(0.1, 0.1, 0.2, 0.2)):
    """Faster R-CNN / SSD regression targets of xyxy boxes against center_xywh anchors.

    ``((cx - ax) / aw, (cy - ay) / ah, log(w / aw), log(h / ah)) / variances`` (Ren et
    al., 2015, eq. 2; SSD's variances). boxes ``(..., N, 4)``, anchors ``(N, 4)`` or
    broadcastable -> deltas ``(..., N, 4)``. Sizes below 1e-7 are raised to it.
    """
    variances = _check_variances(variances)
    boxes = ops.cast(ops.convert_to_tensor(boxes), "float32")
    anchors = ops.cast(ops.convert_to_tensor(anchors), "float32")
    _check_boxes(boxes)
    _check_boxes(anchors, "anchors")
    centre = convert_format(boxes, "xyxy", "center_xywh")
    anchor_size = ops.maximum(anchors[..., 2:], _EPS)
    size = ops.maximum(centre[..., 2:], _EPS)
    deltas = ops.concatenate([(centre[..., :2] - anchors[..., :2]) / anchor_size,
                              ops.log(size / anchor_size)], axis=-1)
    return deltas / variances


def decode(deltas, anchors, *, variances=(0.1, 0.1, 0.2, 0.2)):
    """Inverse of :func:`encode`: deltas ``(..., N, 4)`` -> xyxy boxes ``(..., N, 4)``.

    Log-size deltas are clipped at ``log(1000 / 16)`` (torchvision's bound) so an
    untrained head cannot overflow ``exp``.
    """
    variances = _check_variances(variances)
    deltas = ops.cast(ops.convert_to_tensor(deltas), "float32")
    anchors = ops.cast(ops.convert_to_tensor(anchors), "float32")
    _check_boxes(deltas, "deltas")
    _check_boxes(anchors, "anchors")
    deltas = deltas * variances
    centre = deltas[..., :2] * anchors[..., 2:] + anchors[..., :2]
    size = ops.exp(ops.minimum(deltas[..., 2:], DELTA_CLIP)) * anchors[..., 2:]
    return convert_format(ops.concatenate([centre, size], axis=-1), "center_xywh", "xyxy")


# --- non-max suppression ---------------------------------------------------------------

def batched_nms(boxes, scores, classes, *, iou_threshold=0.5, score_threshold=0.0,
                max_detections=100):
    """Per-class non-max suppression of a batch, padded to ``max_detections``.

    Boxes of different classes never suppress each other: each class is moved to its
    own far-off region before one class-agnostic NMS (torchvision's ``batched_nms``
    trick), done by ``tf.image``'s padded NMS, which TFLite runs as its builtin
    ``NON_MAX_SUPPRESSION_V4``. A box is kept when its score is above
    ``score_threshold``.

    Args:
        boxes: ``(B, N, 4)`` xyxy. scores: ``(B, N)``. classes: ``(B, N)`` integer ids.
    Returns:
        dict of ``boxes (B, K, 4)`` float32, ``scores (B, K)`` float32, ``classes
        (B, K)`` int32 (padding: zero boxes and scores, class -1), ``num_detections
        (B,)`` int32, with ``K = max_detections``; detections sorted by score.
    """
    import tensorflow as tf  # the graph needs tf.image's NMS op (a TFLite builtin)

    iou_threshold, score_threshold, max_detections = _check_nms_arguments(
        iou_threshold, score_threshold, max_detections)
    boxes = tf.cast(tf.convert_to_tensor(boxes), tf.float32)
    scores = tf.cast(tf.convert_to_tensor(scores), tf.float32)
    classes = tf.convert_to_tensor(classes)
    if boxes.shape.rank != 3 or boxes.shape[-1] != 4:
        raise ValueError(f"batched_nms: boxes must be (B, N, 4) xyxy, got shape "
                         f"{tuple(boxes.shape)}.")
    for name, value in (("scores", scores), ("classes", classes)):
        if value.shape.rank != 2 or not tf.TensorShape(value.shape).is_compatible_with(
                boxes.shape[:2]):
            raise ValueError(f"batched_nms: {name} must be (B, N) = "
                             f"{tuple(boxes.shape[:2])}, got {tuple(value.shape)}.")
    classes = tf.cast(classes, tf.float32)
    if boxes.shape[1] is None or boxes.shape[1] == 0:
        # One never-kept box (score below any threshold) so that the gather of the
        # padded indices always has a row 0 to read, even with no candidates.
        batch = tf.shape(boxes)[0]
        boxes = tf.concat([boxes, tf.zeros([batch, 1, 4])], axis=1)
        scores = tf.concat([scores, tf.fill([batch, 1], -np.inf)], axis=1)
        classes = tf.concat([classes, tf.zeros([batch, 1])], axis=1)

    def one_image(args):
        image_boxes, image_scores, image_classes = args
        # Shift each class by more than the extent of all boxes: no overlaps across.
        extent = tf.reduce_max(tf.abs(image_boxes)) * 2 + 1
        shifted = image_boxes + (image_classes * extent)[:, None]
        # The raw op, not tf.image.non_max_suppression_padded: that one runs a tiled
        # TF re-implementation (which fails on zero boxes); this is the C++ kernel,
        # and TFLite maps it to its NON_MAX_SUPPRESSION_V4 builtin all the same.
        index, count = tf.raw_ops.NonMaxSuppressionV4(
            boxes=shifted, scores=image_scores, max_output_size=max_detections,
            iou_threshold=iou_threshold, score_threshold=score_threshold,
            pad_to_max_output_size=True)
        valid = tf.range(max_detections) < count
        kept_boxes = tf.where(valid[:, None], tf.gather(image_boxes, index), 0.0)
        kept_scores = tf.where(valid, tf.gather(image_scores, index), 0.0)
        kept_classes = tf.where(valid, tf.cast(tf.gather(image_classes, index), tf.int32),
                                -1)
        return kept_boxes, kept_scores, kept_classes, tf.cast(count, tf.int32)

    signature = (tf.TensorSpec([max_detections, 4], tf.float32),
                 tf.TensorSpec([max_detections], tf.float32),
                 tf.TensorSpec([max_detections], tf.int32), tf.TensorSpec([], tf.int32))
    if boxes.shape[0] is not None:  # static batch (exports): no loop op needed
        outputs = [one_image((boxes[i], scores[i], classes[i]))
                   for i in range(boxes.shape[0])]
        outputs = [tf.stack(part) for part in zip(*outputs)] if outputs else [
            tf.zeros([0, *spec.shape], spec.dtype) for spec in signature]
    else:
        outputs = tf.map_fn(one_image, (boxes, scores, classes),
                            fn_output_signature=signature)
    return dict(zip(("boxes", "scores", "classes", "num_detections"), outputs))


def _check_nms_arguments(iou_threshold, score_threshold, max_detections):
    if not np.isfinite(float(score_threshold)):
        raise ValueError(f"score_threshold must be a finite number, got {score_threshold}.")
    if not 0.0 <= float(iou_threshold) <= 1.0:
        raise ValueError(f"iou_threshold must be in [0, 1], got {iou_threshold}.")
    if int(max_detections) < 1:
        raise ValueError(f"max_detections must be >= 1, got {max_detections}.")
    return float(iou_threshold), float(score_threshold), int(max_detections)
