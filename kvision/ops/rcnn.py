"""The region-proposal and sampling operations of Faster R-CNN and Mask R-CNN.

Batched, static-shape versions of torchvision's detection code
(``models/detection/{anchor_utils,_utils,rpn,roi_heads}.py``): anchors, the box coder,
anchor labelling (the Matcher with low-quality matches), balanced sampling, proposal
generation, RoI sampling and the two heads' losses. Where torchvision returns lists of
variable length, these return tensors padded to the budget with a validity mask or the
label ``-1``, so that they run inside a Keras functional model during ``model.fit``.

Conventions: boxes are xyxy pixels; anchors ``(A, 4)`` are shared by the batch; ground
truth arrives padded, ``gt_boxes (N, G, 4)`` and ``gt_classes (N, G)`` int with ``-1``
on padding rows. :func:`generate_proposals` also runs in inference graphs and converts
to TFLite with builtin operations only (top_k, gather, ``NON_MAX_SUPPRESSION_V4``).
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from kvision.ops import boxes as box_ops

PAPER_STRIDE = 16  # Ren et al. (2015): conv5 of VGG-16 / ResNet's C4
PAPER_SIZES = (128, 256, 512)
RATIOS = (0.5, 1.0, 2.0)  # height / width, torchvision's convention
RPN_WEIGHTS = (1.0, 1.0, 1.0, 1.0)
BOX_HEAD_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
SMOOTH_L1_BETA = 1.0 / 9  # torchvision's RPN and box head
_MIN_SIZE = 1e-6  # widths below this are raised to it so log() stays finite


# --- anchors (numpy constants) ---------------------------------------------------------

def anchor_shapes(sizes, ratios=RATIOS):
    """Zero-centred base anchors ``(len(ratios) * len(sizes), 4)`` xyxy, float32.

    torchvision's ``AnchorGenerator.generate_anchors``: ratio = height / width, an
    anchor of size s and ratio r is ``s / sqrt(r)`` wide and ``s * sqrt(r)`` high,
    ratio-major, coordinates rounded (half to even, as ``torch.round``).
    """
    sizes = np.asarray(sizes, dtype="float32").reshape(-1)
    ratios = np.asarray(ratios, dtype="float32").reshape(-1)
    if sizes.size == 0 or ratios.size == 0 or np.any(sizes <= 0) or np.any(ratios <= 0):
        raise ValueError(f"anchor_shapes needs positive sizes and ratios, got sizes="
                         f"{sizes.tolist()} ratios={ratios.tolist()}.")
    h_ratios = np.sqrt(ratios)
    w_ratios = 1 / h_ratios
    widths = (w_ratios[:, None] * sizes[None, :]).reshape(-1)
    heights = (h_ratios[:, None] * sizes[None, :]).reshape(-1)
    return np.round(np.stack([-widths, -heights, widths, heights], 1) / 2).astype("float32")


def grid_anchors(feature_size, stride, base):
    """Base anchors shifted to every cell of a feature map: ``(H * W * A, 4)`` xyxy.

    torchvision's ``AnchorGenerator.grid_anchors``: the shift of cell (row, col) is
    ``(col * stride_x, row * stride_y)`` (the cell's top-left corner), location-major
    and anchor-minor, so a head's ``(H, W, A * k)`` output reshaped to ``(H * W * A, k)``
    lines up. ``feature_size``/``stride``: an int or ``(height, width)`` pair.
    """
    fh, fw = box_ops._pair(feature_size, "feature_size")
    sy, sx = box_ops._pair(stride, "stride", integer=False)
    base = np.asarray(base, dtype="float32")
    if base.ndim != 2 or base.shape[1] != 4:
        raise ValueError(f"base must be (A, 4) xyxy anchors, got shape {base.shape}.")
    shift_y, shift_x = np.meshgrid(np.arange(fh, dtype="float32") * sy,
                                   np.arange(fw, dtype="float32") * sx, indexing="ij")
    shifts = np.stack([shift_x, shift_y, shift_x, shift_y], -1).reshape(-1, 1, 4)
    return (shifts + base[None]).reshape(-1, 4).astype("float32")


def paper_anchors():
    """The paper's 9 base anchors (sizes 128, 256, 512 x ratios 1:2, 1:1, 2:1), to be
    laid on one feature map of stride :data:`PAPER_STRIDE` (16) by :func:`grid_anchors`."""
    return anchor_shapes(PAPER_SIZES, RATIOS)


def pyramid_anchor_sizes():
    """One anchor size per pyramid level P2..P6 (strides 4..64), torchvision's FPN sizes."""
    return ((32,), (64,), (128,), (256,), (512,))


def pyramid_anchors(feature_sizes, strides, sizes=None, ratios=RATIOS):
    """Anchors of every pyramid level, concatenated, and each anchor's level.

    Returns ``(anchors (A, 4) float32, levels (A,) int32)``, the order in which a head's
    per-level outputs are concatenated (torchvision's); ``levels`` is what
    :func:`generate_proposals` takes to pick top-N and suppress per level.
    """
    sizes = pyramid_anchor_sizes() if sizes is None else sizes
    if not len(feature_sizes) == len(strides) == len(sizes):
        raise ValueError(f"one feature size, stride and size tuple per level: got "
                         f"{len(feature_sizes)} feature sizes, {len(strides)} strides and "
                         f"{len(sizes)} size tuples.")
    per_level = [grid_anchors(size, stride, anchor_shapes(level_sizes, ratios))
                 for size, stride, level_sizes in zip(feature_sizes, strides, sizes)]
    levels = np.concatenate([np.full(len(a), i, "int32") for i, a in enumerate(per_level)])
    return np.concatenate(per_level).astype("float32"), levels


# --- box coder -------------------------------------------------------------------------

def _centres(boxes):
    widths = ops.maximum(boxes[..., 2] - boxes[..., 0], _MIN_SIZE)
    heights = ops.maximum(boxes[..., 3] - boxes[..., 1], _MIN_SIZE)
    return boxes[..., 0] + 0.5 * widths, boxes[..., 1] + 0.5 * heights, widths, heights


def encode_deltas(boxes, anchors, weights=RPN_WEIGHTS):
    """torchvision's ``BoxCoder.encode``: regression targets of xyxy ``boxes`` against
    xyxy ``anchors`` (broadcastable ``(..., 4)``), ``(wx dx, wy dy, ww dw, wh dh)``.

    Widths and heights below 1e-6 are raised to it (padding rows of zeros give finite,
    if meaningless, targets rather than ``-inf``).
    """
    boxes = ops.cast(ops.convert_to_tensor(boxes), "float32")
    anchors = ops.cast(ops.convert_to_tensor(anchors), "float32")
    wx, wy, ww, wh = _check_weights(weights)
    gx, gy, gw, gh = _centres(boxes)
    ax, ay, aw, ah = _centres(anchors)
    return ops.stack([wx * (gx - ax) / aw, wy * (gy - ay) / ah,
                      ww * ops.log(gw / aw), wh * ops.log(gh / ah)], axis=-1)


def decode_deltas(deltas, anchors, weights=RPN_WEIGHTS, clip=box_ops.DELTA_CLIP):
    """torchvision's ``BoxCoder.decode``: xyxy boxes from deltas ``(..., 4)`` and xyxy
    anchors; log-size deltas are clipped at ``clip`` (log(1000/16)) before ``exp``."""
    deltas = ops.cast(ops.convert_to_tensor(deltas), "float32")
    anchors = ops.cast(ops.convert_to_tensor(anchors), "float32")
    wx, wy, ww, wh = _check_weights(weights)
    ax, ay, aw, ah = _centres(anchors)
    cx = deltas[..., 0] / wx * aw + ax
    cy = deltas[..., 1] / wy * ah + ay
    half_w = 0.5 * ops.exp(ops.minimum(deltas[..., 2] / ww, clip)) * aw
    half_h = 0.5 * ops.exp(ops.minimum(deltas[..., 3] / wh, clip)) * ah
    return ops.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], axis=-1)


def _check_weights(weights):
    weights = tuple(float(w) for w in weights)
    if len(weights) != 4 or min(weights) <= 0:
        raise ValueError(f"weights must be 4 positive numbers (wx, wy, ww, wh), got "
                         f"{weights}.")
    return weights


# --- matching --------------------------------------------------------------------------

def _check_gt(gt_boxes, gt_classes, caller):
    gt_boxes = ops.cast(ops.convert_to_tensor(gt_boxes), "float32")
    gt_classes = ops.cast(ops.convert_to_tensor(gt_classes), "int32")
    if len(gt_boxes.shape) != 3 or gt_boxes.shape[-1] != 4 or len(gt_classes.shape) != 2:
        raise ValueError(f"{caller}: gt_boxes must be (N, G, 4) xyxy and gt_classes (N, G) "
                         f"(-1 on padding rows), got {tuple(gt_boxes.shape)} and "
                         f"{tuple(gt_classes.shape)}.")
    if (gt_boxes.shape[1] is not None and gt_classes.shape[1] is not None
            and gt_boxes.shape[1] != gt_classes.shape[1]):
        raise ValueError(f"{caller}: {gt_boxes.shape[1]} gt boxes per image but "
                         f"{gt_classes.shape[1]} gt classes.")
    return gt_boxes, gt_classes


def _match(boxes, box_valid, gt_boxes, gt_classes):
    """IoU of boxes ``(N or 1, B, 4)`` with the valid gt ``(N, G, 4)``.

    Returns ``(iou (N, B, G+1), best (N, B), matched (N, B))``: one never-matching
    padding column is appended so that G = 0 and images without objects need no special
    case; ``best`` is -1 where no valid gt exists, ``matched`` is clipped into
    ``[0, G-1]`` (0 when there is no gt at all).
    """
    batch = ops.shape(gt_boxes)[0]
    gt_boxes = ops.concatenate([gt_boxes, ops.zeros((batch, 1, 4))], axis=1)
    gt_valid = ops.concatenate([gt_classes >= 0, ops.zeros((batch, 1), "bool")], axis=1)
    overlap = box_ops.iou(boxes, gt_boxes)
    overlap = ops.where(gt_valid[:, None, :], overlap, -1.0)
    if box_valid is not None:
        overlap = ops.where(box_valid[..., None], overlap, -1.0)
    best = ops.max(overlap, axis=-1)
    last = ops.maximum(ops.shape(gt_boxes)[1] - 2, 0)
    matched = ops.minimum(ops.cast(ops.argmax(overlap, axis=-1), "int32"), last)
    return overlap, best, matched


def take_matched(values, matched):
    """``values (N, G, ...)`` gathered at ``matched (N, B)`` -> ``(N, B, ...)`` (the gt
    box, class or mask of each anchor or RoI). With G = 0 it reads zeros."""
    values = ops.convert_to_tensor(values)
    # One zero row after the last: what index 0 reads when there is no gt at all.
    shape = ops.shape(values)
    zero_row = ops.zeros((shape[0], 1, *shape[2:]), values.dtype)
    values = ops.concatenate([values, zero_row], axis=1)
    return ops.take_along_axis(values, _expand_like(matched, values), axis=1)


def _expand_like(index, values):
    index = ops.cast(index, "int32")
    for _ in range(len(values.shape) - 2):
        index = ops.expand_dims(index, -1)
    return index


def label_anchors(anchors, gt_boxes, gt_classes, high=0.7, low=0.3):
    """RPN labels: torchvision's ``Matcher(high, low, allow_low_quality_matches=True)``.

    An anchor whose best IoU with a valid gt is ``>= high`` is positive (1), ``< low``
    negative (0), in between ignored (-1); besides, for every gt the anchors with its
    highest IoU (ties included) are positive even below ``high`` (the paper's rule (i)),
    matched to the gt they overlap most, as torchvision does. Unlike torchvision, a gt
    whose best IoU is 0 (degenerate or outside every anchor) gives no such matches,
    where torchvision would make every non-overlapping anchor positive. An image with
    no valid gt has every anchor negative.

    Args:
        anchors: ``(A, 4)`` xyxy pixels. gt_boxes: ``(N, G, 4)``. gt_classes: ``(N, G)``.
    Returns:
        ``(labels (N, A) float32 in {1, 0, -1}, matched (N, A) int32 index into G)``.
    """
    if not 0.0 <= low <= high <= 1.0:
        raise ValueError(f"label_anchors needs 0 <= low <= high <= 1, got low={low}, "
                         f"high={high}.")
    gt_boxes, gt_classes = _check_gt(gt_boxes, gt_classes, "label_anchors")
    anchors = ops.cast(ops.convert_to_tensor(anchors), "float32")
    overlap, best, matched = _match(anchors[None], None, gt_boxes, gt_classes)
    labels = ops.where(best >= high, 1.0, ops.where(best < low, 0.0, -1.0))
    gt_best = ops.max(overlap, axis=1, keepdims=True)  # (N, 1, G+1): each gt's best anchor
    is_best = ops.any((overlap == gt_best) & (gt_best > 0.0), axis=-1)
    return ops.where(is_best, 1.0, labels), matched


# --- sampling --------------------------------------------------------------------------

def _uniform(shape, seed):
    """Uniform [0, 1) noise: stateful TF draws for ``seed=None`` (new every step in a
    graph), else ``keras.random`` (an int repeats, a SeedGenerator advances)."""
    if seed is None:
        import tensorflow as tf  # the stateful op: no variable to create inside a graph
        return tf.random.uniform(shape)
    return keras.random.uniform(shape, seed=seed)


def _top_k(key, k):
    """``top_k`` of ``key (N, B)`` for any B, also B < k or unknown: ``k`` columns of
    -3 (below every key used here) are appended first. Returns ``(values, index)``."""
    if key.shape[1] is None or key.shape[1] < k:
        key = ops.concatenate([key, ops.full((ops.shape(key)[0], k), -3.0)], axis=1)
    return ops.top_k(key, k)


def _random_subset(candidates, k, limit, noise):
    """A random subset of at most ``min(k, limit)`` of the True entries of ``candidates
    (N, A)``, as a bool mask: the top-k of the noise among candidates, scattered back."""
    if k <= 0:
        return ops.zeros_like(candidates)
    values, index = _top_k(ops.where(candidates, noise, -1.0), k)
    take = (values >= 0.0) & (ops.arange(k)[None, :] < ops.cast(limit, "int32")[:, None])
    index = ops.where(take, index, 0)  # padding columns point nowhere real
    rows = ops.broadcast_to(ops.arange(ops.shape(candidates)[0])[:, None],
                            ops.shape(index))
    where = ops.stack([ops.reshape(rows, (-1,)), ops.reshape(index, (-1,))], axis=1)
    mask = ops.scatter(where, ops.reshape(ops.cast(take, "int32"), (-1,)),
                       ops.shape(candidates))
    return mask > 0


def _count(mask):
    return ops.sum(ops.cast(mask, "int32"), axis=-1)


def sample_anchors(labels, num=256, positive_fraction=0.5, seed=None):
    """torchvision's ``BalancedPositiveNegativeSampler`` on RPN labels ``(N, A)``.

    Per image, at most ``int(num * positive_fraction)`` random positives are kept, the
    sample is filled to ``num`` with random negatives, every other anchor becomes -1.
    ``seed``: None (TF's stateful generator, different every step), a
    ``keras.random.SeedGenerator`` (a layer's: different every step, reproducible) or
    an int (the same draw each call). Returns labels of the same dtype.
    """
    _check_fraction(num, positive_fraction, "sample_anchors")
    labels = ops.convert_to_tensor(labels)
    if len(labels.shape) != 2:
        raise ValueError(f"sample_anchors: labels must be (N, A), got "
                         f"{tuple(labels.shape)}.")
    noise = _uniform(ops.shape(labels), seed)
    positive, negative = labels == 1, labels == 0
    unlimited = ops.full((ops.shape(labels)[0],), num, "int32")
    kept_positive = _random_subset(positive, int(num * positive_fraction), unlimited,
                                   noise)
    kept_negative = _random_subset(negative, num, num - _count(kept_positive), noise)
    return ops.cast(ops.where(kept_positive, 1, ops.where(kept_negative, 0, -1)),
                    labels.dtype)


def _check_fraction(num, fraction, caller):
    if int(num) < 1 or not 0.0 <= float(fraction) <= 1.0:
        raise ValueError(f"{caller}: num must be >= 1 and positive_fraction in [0, 1], got "
                         f"num={num}, positive_fraction={fraction}.")


# --- proposals -------------------------------------------------------------------------

def check_anchor_count(anchors, objectness, deltas=None):
    """A clear ValueError when the anchors and the RPN head disagree (torchvision#1539):
    ``anchors (A, 4)``, ``objectness (N, A)``, ``deltas (N, A, 4)``."""
    count = int(anchors.shape[0])
    if len(objectness.shape) != 2 or objectness.shape[1] not in (None, count):
        raise ValueError(f"The anchors number {count} per image but the RPN head's "
                         f"objectness has shape {tuple(objectness.shape)} (expected (N, "
                         f"{count})): its anchors per location or feature sizes differ from "
                         f"the anchor generator's.")
    if deltas is not None and (len(deltas.shape) != 3 or deltas.shape[-1] != 4
                               or deltas.shape[1] not in (None, count)):
        raise ValueError(f"The anchors number {count} per image but the RPN head's deltas "
                         f"have shape {tuple(deltas.shape)} (expected (N, {count}, 4)).")


def _top_per_level(objectness, count, levels, pre_nms_top_n):
    """Indices ``(N, K)`` of the top ``pre_nms_top_n`` logits of each level, and the
    level of each (torchvision's ``_get_top_n_idx``)."""
    if levels is None:
        levels = np.zeros(count, "int32")
    levels = np.asarray(levels).reshape(-1)
    if levels.size != count:
        raise ValueError(f"levels must give the level of each of the {count} anchors, "
                         f"got {levels.size} entries.")
    indices, level_of = [], []
    for level in np.unique(levels):
        members = np.flatnonzero(levels == level).astype("int32")
        k = min(int(pre_nms_top_n), members.size)
        _, top = ops.top_k(ops.take(objectness, members, axis=1), k)
        indices.append(ops.take(ops.convert_to_tensor(members), top))
        level_of.append(np.full(k, level, "int32"))
    return ops.concatenate(indices, axis=1), np.concatenate(level_of)


def generate_proposals(anchors, objectness, deltas, image_size, *, pre_nms_top_n,
                       post_nms_top_n, nms_threshold=0.7, min_size=1e-3, levels=None):
    """RPN proposals, torchvision's ``RegionProposalNetwork.filter_proposals``, padded.

    Per image (and per level when ``levels`` is given): the ``pre_nms_top_n`` highest
    objectness logits, their boxes decoded (weights 1) and clipped to the image, boxes
    narrower or lower than ``min_size`` dropped, NMS at ``nms_threshold`` within each
    level, the ``post_nms_top_n`` best kept, sorted by score. No gradient flows into
    the proposals (Faster R-CNN's approximate joint training, as torchvision).

    Args:
        anchors: ``(A, 4)`` xyxy pixels (numpy). objectness: ``(N, A)`` logits.
        deltas: ``(N, A, 4)``. image_size: ``(height, width)``.
        levels: ``(A,)`` int, the pyramid level of each anchor (numpy), or None.
    Returns:
        ``(proposals (N, post, 4), scores (N, post) sigmoid probabilities, valid (N,
        post) bool)``; invalid rows are zero boxes with score 0.
    """
    anchors = np.asarray(anchors, dtype="float32")
    objectness = ops.stop_gradient(ops.cast(ops.convert_to_tensor(objectness), "float32"))
    deltas = ops.stop_gradient(ops.cast(ops.convert_to_tensor(deltas), "float32"))
    check_anchor_count(anchors, objectness, deltas)
    top, level_of = _top_per_level(objectness, len(anchors), levels, pre_nms_top_n)
    logits = ops.take_along_axis(objectness, top, axis=1)
    boxes = decode_deltas(ops.take_along_axis(deltas, top[..., None], axis=1),
                          ops.take(ops.convert_to_tensor(anchors), top, axis=0))
    boxes = box_ops.clip(boxes, image_size)
    big = ((boxes[..., 2] - boxes[..., 0] >= min_size)
           & (boxes[..., 3] - boxes[..., 1] >= min_size))
    # Dropped boxes score -1: below the threshold, so NMS never keeps them.
    scores = ops.where(big, ops.sigmoid(logits), -1.0)
    level_of = ops.broadcast_to(ops.convert_to_tensor(level_of)[None], ops.shape(scores))
    kept = box_ops.batched_nms(boxes, scores, level_of, iou_threshold=nms_threshold,
                               score_threshold=-0.5, max_detections=post_nms_top_n)
    valid = ops.arange(post_nms_top_n)[None, :] < kept["num_detections"][:, None]
    return kept["boxes"], ops.where(valid, kept["scores"], 0.0), valid


# --- RoI sampling ----------------------------------------------------------------------

def sample_rois(proposals, proposal_valid, gt_boxes, gt_classes, *, num=512,
                positive_fraction=0.25, fg_iou=0.5, bg_iou=(0.1, 0.5),
                weights=BOX_HEAD_WEIGHTS, seed=None):
    """The box head's training RoIs: torchvision's ``select_training_samples``, padded.

    The valid gt boxes join the proposals (so every object has a perfect RoI); each
    candidate is matched to its best gt. Up to ``int(num * positive_fraction)`` random
    foreground (IoU >= ``fg_iou``), then random background from ``bg_iou = [lo, hi)``
    (Fast R-CNN's [0.1, 0.5); torchvision takes [0, 0.5)), filled from ``[0, lo)`` when
    that is short, so that an image without objects still trains its background. The
    rest is padding.

    Args:
        proposals: ``(N, P, 4)`` xyxy. proposal_valid: ``(N, P)`` bool.
        gt_boxes: ``(N, G, 4)``. gt_classes: ``(N, G)`` int, -1 on padding rows.
    Returns:
        ``(rois (N, num, 4), labels (N, num) int32 (0 background, class + 1 foreground,
        -1 padding), targets (N, num, 4) deltas of the matched gt with ``weights`` (zero
        but on foreground), matched (N, num) int32 index into G)``; padding RoIs are
        zero boxes. Nothing here carries a gradient.
    """
    _check_fraction(num, positive_fraction, "sample_rois")
    low, high = (float(b) for b in bg_iou)
    if not 0.0 <= low <= high <= float(fg_iou) <= 1.0:
        raise ValueError(f"sample_rois needs 0 <= bg_iou[0] <= bg_iou[1] <= fg_iou <= 1, "
                         f"got bg_iou={bg_iou}, fg_iou={fg_iou}.")
    gt_boxes, gt_classes = _check_gt(gt_boxes, gt_classes, "sample_rois")
    proposals = ops.stop_gradient(ops.cast(ops.convert_to_tensor(proposals), "float32"))
    candidates = ops.concatenate([proposals, gt_boxes], axis=1)
    valid = ops.concatenate([ops.cast(proposal_valid, "bool"), gt_classes >= 0], axis=1)
    _, best, matched = _match(candidates, valid, gt_boxes, gt_classes)
    noise = _uniform(ops.shape(best), seed)
    budget = ops.full((ops.shape(best)[0],), num, "int32")
    foreground = _random_subset(valid & (best >= fg_iou), int(num * positive_fraction),
                                budget, noise)
    # Rank: chosen foreground, then [lo, hi), then [0, lo); top_k takes the first num.
    rank = ops.where(foreground, 3.0, ops.where(valid & (best >= low) & (best < high), 2.0,
                                                ops.where(valid & (best < low), 1.0, -2.0)))
    rank_values, index = _top_k(rank + noise, num)
    taken = rank_values > 0.0
    index = ops.where(taken, index, 0)
    picked_foreground = ops.take_along_axis(foreground, index, axis=1) & taken
    matched = ops.take_along_axis(matched, index, axis=1)
    rois = ops.where(taken[..., None], take_matched(candidates, index), 0.0)
    classes = take_matched(gt_classes, matched)
    labels = ops.where(picked_foreground, classes + 1, ops.where(taken, 0, -1))
    targets = encode_deltas(take_matched(gt_boxes, matched), rois, weights)
    targets = ops.where(picked_foreground[..., None], targets, 0.0)
    return rois, ops.cast(labels, "int32"), targets, matched


# --- losses ----------------------------------------------------------------------------

def _smooth_l1(error, beta=SMOOTH_L1_BETA):
    error = ops.abs(error)
    return ops.sum(ops.where(error < beta, 0.5 * ops.square(error) / beta,
                             error - 0.5 * beta), axis=-1)


def _per_sampled(total, mask):
    """``total`` divided by the number of True entries of ``mask`` (1 when none)."""
    return total / ops.maximum(ops.sum(ops.cast(mask, "float32")), 1.0)


def rpn_losses(objectness, deltas, labels, targets):
    """torchvision's RPN loss: ``(objectness, box)`` scalars over the whole batch.

    Binary cross-entropy of the logits over the sampled anchors (labels 0 or 1) and
    smooth-L1 (beta 1/9) of the deltas over the positives, both divided by the number
    of sampled anchors; 0, not NaN, when nothing was sampled (torchvision#2144).

    Args:
        objectness: ``(N, A)`` logits. deltas: ``(N, A, 4)``. labels: ``(N, A)`` from
            :func:`sample_anchors`. targets: ``(N, A, 4)``
            (:func:`encode_deltas` of the matched gt against the anchors).
    """
    objectness = ops.cast(objectness, "float32")
    labels = ops.cast(labels, "float32")
    if tuple(objectness.shape[1:]) != tuple(labels.shape[1:]):
        raise ValueError(f"rpn_losses: objectness {tuple(objectness.shape)} and labels "
                         f"{tuple(labels.shape)} must both be (N, A).")
    sampled, positive = labels >= 0, labels > 0
    truth = ops.where(positive, 1.0, 0.0)
    cross_entropy = (ops.maximum(objectness, 0.0) - objectness * truth
                     + ops.log1p(ops.exp(-ops.abs(objectness))))
    objectness_loss = _per_sampled(ops.sum(ops.where(sampled, cross_entropy, 0.0)), sampled)
    # Targets of unsampled anchors are zeroed first: a where() after the loss would
    # still pass NaN gradients from them.
    targets = ops.where(positive[..., None], ops.cast(targets, "float32"), 0.0)
    box = ops.where(positive, _smooth_l1(ops.cast(deltas, "float32") - targets), 0.0)
    return objectness_loss, _per_sampled(ops.sum(box), sampled)


def box_head_losses(class_logits, box_deltas, labels, targets):
    """torchvision's ``fastrcnn_loss``: ``(classification, box)`` scalars (λ = 1).

    Cross-entropy over the labelled RoIs (labels >= 0) and smooth-L1 (beta 1/9) of the
    true class's deltas over the foreground (labels > 0), both divided by the number
    of labelled RoIs; 0, not NaN, when none is.

    Args:
        class_logits: ``(N, R, K + 1)``, class 0 the background.
        box_deltas: ``(N, R, K + 1, 4)`` or ``(N, R, 4 * (K + 1))``.
        labels: ``(N, R)`` int from :func:`sample_rois`. targets: ``(N, R, 4)``.
    """
    class_logits = ops.cast(class_logits, "float32")
    classes = class_logits.shape[-1]
    box_deltas = ops.cast(box_deltas, "float32")
    if len(box_deltas.shape) == 3:
        if box_deltas.shape[-1] != 4 * classes:
            raise ValueError(f"box_head_losses: box_deltas' last axis must be 4 * (K + 1)"
                             f" = {4 * classes} for {classes} classes, got "
                             f"{box_deltas.shape[-1]}.")
        box_deltas = ops.reshape(box_deltas, (*ops.shape(box_deltas)[:2], classes, 4))
    elif tuple(box_deltas.shape[2:]) != (classes, 4):
        raise ValueError(f"box_head_losses: box_deltas must be (N, R, {classes}, 4) or (N, "
                         f"R, {4 * classes}), got {tuple(box_deltas.shape)}.")
    labels = ops.cast(labels, "int32")
    labelled, foreground = labels >= 0, labels > 0
    index = ops.maximum(labels, 0)
    picked_logit = ops.take_along_axis(class_logits, index[..., None], axis=-1)[..., 0]
    cross_entropy = ops.logsumexp(class_logits, axis=-1) - picked_logit
    classification = _per_sampled(ops.sum(ops.where(labelled, cross_entropy, 0.0)),
                                  labelled)
    own = ops.take_along_axis(box_deltas, index[..., None, None], axis=2)[:, :, 0]
    targets = ops.where(foreground[..., None], ops.cast(targets, "float32"), 0.0)
    box = ops.where(foreground, _smooth_l1(own - targets), 0.0)
    return classification, _per_sampled(ops.sum(box), labelled)
