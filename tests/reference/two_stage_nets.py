"""The two-stage detectors' learned parts in NumPy (NCHW, float64).

Faster R-CNN and Mask R-CNN from torchvision's module code (``fasterrcnn_resnet50_fpn``
and ``maskrcnn_resnet50_fpn``): ``ops/feature_pyramid_network.py``
(FeaturePyramidNetwork, LastLevelMaxPool), ``models/detection/rpn.py`` (RPNHead,
``concat_box_prediction_layers``' permute-and-flatten, filter_proposals),
``models/detection/anchor_utils.py`` (AnchorGenerator), ``ops/poolers.py``
(MultiScaleRoIAlign, LevelMapper), ``models/detection/faster_rcnn.py`` (TwoMLPHead,
FastRCNNPredictor), ``models/detection/mask_rcnn.py`` (MaskRCNNHeads,
MaskRCNNPredictor) and ``models/detection/_utils.py`` (BoxCoder.decode_single).
Fast R-CNN from its Caffe definition (``models/VGG16/test.prototxt`` of
rbgirshick/fast-rcnn: VGG-16's conv1_1..conv5_3, ROIPooling 7x7 at 1/16, fc6, fc7,
cls_score, bbox_pred; Caffe's InnerProduct flattens ``(C, H, W)``). R-CNN's scorer
as kvision documents it (torchvision's AlexNet features, global average pooling,
three linear heads: the paper's CaffeNet has LRN and grouped convolutions, which
kvision's AlexNet does not).

Parameters are a torch-style state dict keyed by the reference's module names
(torchvision's checkpoint names, the prototxt's layer names): ``(O, I, kh, kw)``
kernels, ``(out, in)`` linear weights, ``(I, O, kh, kw)`` transposed kernels.
Nothing here imports kvision.
"""

import math

import numpy as np

from . import ops
from .torchvision_nets import _conv, _linear, alexnet

BOX_CODER_WEIGHTS = (10.0, 10.0, 5.0, 5.0)   # RoIHeads' BoxCoder (the RPN's: 1, 1, 1, 1)
BBOX_XFORM_CLIP = math.log(1000.0 / 16)


# ---- ops/feature_pyramid_network.py ----

def fpn(state, feats, prefix="backbone.fpn"):
    """FeaturePyramidNetwork.forward with LastLevelMaxPool: ``feats`` C2..C5 (NCHW) ->
    [P2, P3, P4, P5, P6]. The inner blocks are 1x1 convs, the layer blocks 3x3 padding
    1; the top-down map is ``F.interpolate(size=lateral's size, mode="nearest")``;
    P6 = ``F.max_pool2d(P5, 1, 2, 0)``."""
    last_inner = _conv(state, f"{prefix}.inner_blocks.{len(feats) - 1}", feats[-1])
    results = [_conv(state, f"{prefix}.layer_blocks.{len(feats) - 1}", last_inner,
                     padding=1)]
    for idx in range(len(feats) - 2, -1, -1):
        inner_lateral = _conv(state, f"{prefix}.inner_blocks.{idx}", feats[idx])
        inner_top_down = ops.interpolate_nearest(last_inner, inner_lateral.shape[-2:])
        last_inner = inner_lateral + inner_top_down
        results.insert(0, _conv(state, f"{prefix}.layer_blocks.{idx}", last_inner,
                                padding=1))
    results.append(ops.max_pool2d(results[-1], 1, 2, 0))
    return results


# ---- models/detection/rpn.py ----

def rpn_head(state, maps, prefix="rpn.head"):
    """RPNHead.forward then ``concat_box_prediction_layers``' ``permute_and_flatten``
    per level: ``[(objectness (N, H*W*A), deltas (N, H*W*A, 4))]``, in (y, x, anchor)
    order; the deltas' channels are ``view(N, A, 4, H, W)``."""
    answers = []
    for feature in maps:
        t = ops.relu(_conv(state, f"{prefix}.conv", feature, padding=1))
        logits = _conv(state, f"{prefix}.cls_logits", t)
        deltas = _conv(state, f"{prefix}.bbox_pred", t)
        n, a, h, w = logits.shape
        logits = logits.reshape(n, a, 1, h, w).transpose(0, 3, 4, 1, 2).reshape(n, -1)
        deltas = deltas.reshape(n, a, 4, h, w).transpose(0, 3, 4, 1, 2).reshape(n, -1, 4)
        answers.append((logits, deltas))
    return answers


# ---- ops/poolers.py ----

def box_area(boxes):
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def map_levels(boxes, k_min, k_max, canonical_scale=224, canonical_level=4, eps=1e-6):
    """LevelMapper.__call__: ``floor(4 + log2(sqrt(area) / 224 + eps))`` clamped to
    ``[k_min, k_max]``, minus ``k_min``."""
    s = np.sqrt(box_area(boxes))
    levels = np.floor(canonical_level + np.log2(s / canonical_scale + eps))
    return (np.clip(levels, k_min, k_max) - k_min).astype(np.int64)


def _infer_scale(feature, original_size):
    """MultiScaleRoIAlign.infer_scale: ``2 ** round(log2(feature side / image side))``."""
    scales = [2.0 ** round(math.log2(s1 / s2))
              for s1, s2 in zip(feature.shape[-2:], original_size)]
    assert scales[0] == scales[1]
    return scales[0]


def multi_scale_roi_align(maps, boxes, image_size, output_size, sampling_ratio):
    """MultiScaleRoIAlign.forward: ``maps`` the pooled levels (NCHW), ``boxes`` one
    ``(R_i, 4)`` array per image (xyxy image pixels) -> ``(sum R_i, C, out, out)``,
    each RoI from its level by ``roi_align(spatial_scale, sampling_ratio)``
    (``aligned=False``, roi_align's default, which the pooler does not override)."""
    rois = np.concatenate([np.concatenate([np.full((len(b), 1), i), b], axis=1)
                           for i, b in enumerate(boxes)])
    scales = [_infer_scale(m, image_size) for m in maps]
    k_min, k_max = -math.log2(scales[0]), -math.log2(scales[-1])
    if len(maps) == 1:
        return ops.roi_align(maps[0], rois, output_size, scales[0], sampling_ratio)
    levels = map_levels(np.concatenate(boxes), k_min, k_max)
    result = np.zeros((len(rois), maps[0].shape[1], output_size, output_size))
    for level, (feature, scale) in enumerate(zip(maps, scales)):
        index = np.nonzero(levels == level)[0]
        if len(index):
            result[index] = ops.roi_align(feature, rois[index], output_size, scale,
                                          sampling_ratio)
    return result


# ---- models/detection/faster_rcnn.py, mask_rcnn.py ----

def box_head(state, pooled, prefix="roi_heads"):
    """TwoMLPHead (``x.flatten(start_dim=1)``, relu(fc6), relu(fc7)) then
    FastRCNNPredictor: ``(class_logits (K, classes), box_regression (K, 4 classes))``."""
    x = pooled.reshape(len(pooled), -1)
    x = ops.relu(_linear(state, f"{prefix}.box_head.fc6", x))
    x = ops.relu(_linear(state, f"{prefix}.box_head.fc7", x))
    return (_linear(state, f"{prefix}.box_predictor.cls_score", x),
            _linear(state, f"{prefix}.box_predictor.bbox_pred", x))


def mask_head(state, pooled, prefix="roi_heads"):
    """MaskRCNNHeads (mask_fcn1..4: conv 3x3 padding 1 + ReLU) then MaskRCNNPredictor
    (conv5_mask: ConvTranspose2d 2x2 stride 2 + ReLU, mask_fcn_logits 1x1):
    ``(K, C, s, s)`` -> ``(K, classes, 2s, 2s)``."""
    x = pooled
    for i in range(1, 5):
        x = ops.relu(_conv(state, f"{prefix}.mask_head.mask_fcn{i}", x, padding=1))
    name = f"{prefix}.mask_predictor.conv5_mask"
    x = ops.relu(ops.conv_transpose2d(x, state[f"{name}.weight"], state[f"{name}.bias"],
                                      stride=2))
    return _conv(state, f"{prefix}.mask_predictor.mask_fcn_logits", x)


# ---- models/detection/_utils.py, ops/boxes.py ----

def decode_boxes(rel_codes, boxes, weights=BOX_CODER_WEIGHTS, clip=BBOX_XFORM_CLIP):
    """BoxCoder.decode_single: ``rel_codes (K, 4 classes)`` against ``boxes (K, 4)``
    -> ``(K, classes, 4)`` xyxy."""
    boxes = boxes.astype(np.float64)
    widths, heights = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    ctr_x, ctr_y = boxes[:, 0] + 0.5 * widths, boxes[:, 1] + 0.5 * heights
    wx, wy, ww, wh = weights
    dx, dy = rel_codes[:, 0::4] / wx, rel_codes[:, 1::4] / wy
    dw = np.minimum(rel_codes[:, 2::4] / ww, clip)
    dh = np.minimum(rel_codes[:, 3::4] / wh, clip)
    pred_ctr_x = dx * widths[:, None] + ctr_x[:, None]
    pred_ctr_y = dy * heights[:, None] + ctr_y[:, None]
    pred_w, pred_h = np.exp(dw) * widths[:, None], np.exp(dh) * heights[:, None]
    return np.stack([pred_ctr_x - 0.5 * pred_w, pred_ctr_y - 0.5 * pred_h,
                     pred_ctr_x + 0.5 * pred_w, pred_ctr_y + 0.5 * pred_h], axis=2)


def clip_boxes_to_image(boxes, size):
    """``clip_boxes_to_image``: x to ``[0, width]``, y to ``[0, height]``."""
    height, width = size
    out = boxes.copy()
    out[..., 0::2] = np.clip(out[..., 0::2], 0, width)
    out[..., 1::2] = np.clip(out[..., 1::2], 0, height)
    return out


# ---- models/detection/anchor_utils.py, rpn.py (filter_proposals) ----

def generate_anchors(scales, aspect_ratios):
    """AnchorGenerator.generate_anchors: ``h_ratios = sqrt(ratios)``, ``w_ratios = 1 /
    h_ratios``, ratio-major ``ws``/``hs``, ``round([-ws, -hs, ws, hs] / 2)`` (torch's
    round: half to even, as NumPy's)."""
    scales = np.asarray(scales, np.float32)
    aspect_ratios = np.asarray(aspect_ratios, np.float32)
    h_ratios = np.sqrt(aspect_ratios)
    w_ratios = 1 / h_ratios
    ws = (w_ratios[:, None] * scales[None, :]).reshape(-1)
    hs = (h_ratios[:, None] * scales[None, :]).reshape(-1)
    return np.round(np.stack([-ws, -hs, ws, hs], axis=1) / 2)


def grid_anchors(image_size, grid_sizes, sizes, aspect_ratios):
    """AnchorGenerator.forward for one image: per level, ``stride = image // grid``
    (integer), shifts ``arange(grid) * stride`` (the cells' top-left corners), anchors
    ``(shifts.view(-1, 1, 4) + base.view(1, -1, 4)).reshape(-1, 4)``; the levels
    concatenated. Returns the anchors and the count per level."""
    anchors = []
    for (gh, gw), level_sizes in zip(grid_sizes, sizes):
        sy, sx = image_size[0] // gh, image_size[1] // gw
        shift_y, shift_x = np.meshgrid(np.arange(gh) * sy, np.arange(gw) * sx,
                                       indexing="ij")
        shifts = np.stack([shift_x.ravel(), shift_y.ravel(), shift_x.ravel(),
                           shift_y.ravel()], axis=1)
        base = generate_anchors(level_sizes, aspect_ratios)
        anchors.append((shifts[:, None, :] + base[None, :, :]).reshape(-1, 4))
    return np.concatenate(anchors), [len(a) for a in anchors]


def nms(boxes, scores, iou_threshold):
    """``torchvision.ops.nms``: indices by decreasing score, dropping every box whose
    IoU (areas ``(x2 - x1)(y2 - y1)``) with a kept one is above the threshold."""
    order = np.argsort(-scores, kind="stable")
    areas = box_area(boxes)
    keep = []
    while len(order):
        i, rest = order[0], order[1:]
        keep.append(i)
        lt = np.maximum(boxes[i, :2], boxes[rest, :2])
        rb = np.minimum(boxes[i, 2:], boxes[rest, 2:])
        inter = np.prod(np.clip(rb - lt, 0, None), axis=1)
        iou = inter / (areas[i] + areas[rest] - inter)
        order = rest[iou <= iou_threshold]
    return np.asarray(keep, np.int64)


def batched_nms(boxes, scores, idxs, iou_threshold):
    """``batched_nms``: NMS within each ``idxs`` value, the kept indices sorted by
    decreasing score."""
    keep = np.concatenate([np.nonzero(idxs == k)[0][nms(boxes[idxs == k], scores[idxs == k],
                                                         iou_threshold)]
                           for k in np.unique(idxs)])
    return keep[np.argsort(-scores[keep], kind="stable")]


def filter_proposals(anchors, objectness, deltas, num_anchors_per_level, image_size, *,
                     pre_nms_top_n, post_nms_top_n, nms_thresh=0.7, min_size=1e-3,
                     score_thresh=0.0):
    """RegionProposalNetwork: ``box_coder.decode`` (weights 1) of every anchor, then
    filter_proposals per image: the ``pre_nms_top_n`` best logits of each level
    (``min`` with the level's count), sigmoid, clip_boxes_to_image,
    remove_small_boxes(min_size), scores >= score_thresh, batched_nms by level, the
    first ``post_nms_top_n``. Returns a list of ``(boxes, scores)`` per image."""
    levels = np.concatenate([np.full(n, i) for i, n in enumerate(num_anchors_per_level)])
    starts = np.cumsum([0, *num_anchors_per_level])
    found = []
    for logits, codes in zip(objectness, deltas):
        proposals = decode_boxes(codes.astype(np.float64), anchors,
                                 (1.0, 1.0, 1.0, 1.0))[:, 0]
        top = np.concatenate([
            start + np.argsort(-logits[start:end], kind="stable")[:pre_nms_top_n]
            for start, end in zip(starts[:-1], starts[1:])])  # min(top_n, the level's)
        boxes = clip_boxes_to_image(proposals[top], image_size)
        scores = 1 / (1 + np.exp(-logits[top].astype(np.float64)))
        lvl = levels[top]
        sides = boxes[:, 2:] - boxes[:, :2]
        keep = (sides >= min_size).all(axis=1)          # remove_small_boxes
        keep &= scores >= score_thresh
        boxes, scores, lvl = boxes[keep], scores[keep], lvl[keep]
        keep = batched_nms(boxes, scores, lvl, nms_thresh)[:post_nms_top_n]
        found.append((boxes[keep], scores[keep]))
    return found


def postprocess_detections(class_logits, box_regression, proposals, image_size, *,
                           score_thresh=0.05, nms_thresh=0.5, detections_per_img=100):
    """RoIHeads.postprocess_detections for one image: decode (10, 10, 5, 5), softmax,
    clip_boxes_to_image, the background column out, scores > score_thresh,
    remove_small_boxes(1e-2), batched_nms by label, the first detections_per_img.
    Returns ``(boxes, scores, labels)`` (labels 1..K)."""
    boxes = clip_boxes_to_image(decode_boxes(box_regression.astype(np.float64),
                                             proposals), image_size)
    logits = class_logits.astype(np.float64)
    scores = np.exp(logits - logits.max(axis=1, keepdims=True))
    scores /= scores.sum(axis=1, keepdims=True)
    labels = np.broadcast_to(np.arange(scores.shape[1]), scores.shape)
    boxes, scores = boxes[:, 1:].reshape(-1, 4), scores[:, 1:].reshape(-1)
    labels = labels[:, 1:].reshape(-1)
    keep = scores > score_thresh
    sides = boxes[:, 2:] - boxes[:, :2]
    keep &= (sides >= 1e-2).all(axis=1)
    boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    keep = batched_nms(boxes, scores, labels, nms_thresh)[:detections_per_img]
    return boxes[keep], scores[keep], labels[keep]


# ---- Fast R-CNN: models/VGG16/test.prototxt ----

VGG16_CONVS = ("conv1_1", "conv1_2", "M", "conv2_1", "conv2_2", "M", "conv3_1", "conv3_2",
               "conv3_3", "M", "conv4_1", "conv4_2", "conv4_3", "M", "conv5_1", "conv5_2",
               "conv5_3")


def fast_rcnn_vgg16_conv5(state, x):
    """conv1_1 .. relu5_3: 3x3 convs padding 1 + ReLU, 2x2 stride-2 max pooling between
    the blocks, no pool5 (the RoI pooling replaces it): stride 16."""
    for name in VGG16_CONVS:
        x = ops.max_pool2d(x, 2, 2) if name == "M" else ops.relu(
            _conv(state, name, x, padding=1))
    return x


def fast_rcnn_head(state, conv5, rois, spatial_scale=1 / 16, pooled=7):
    """roi_pool5 (ROIPooling 7x7, spatial_scale 0.0625) -> fc6 + relu6 -> fc7 + relu7
    (dropout: identity at test time) -> cls_score, bbox_pred; ``rois (K, 5)``."""
    x = ops.roi_pool(conv5, rois, pooled, spatial_scale).reshape(len(rois), -1)
    x = ops.relu(_linear(state, "fc6", x))
    x = ops.relu(_linear(state, "fc7", x))
    return _linear(state, "cls_score", x), _linear(state, "bbox_pred", x)


# ---- R-CNN's scorer ----

def rcnn_scorer(state, crops):
    """torchvision's AlexNet ``features`` on warped crops ``(N, 3, S, S)``, averaged
    over space, then the linear heads ``class_logits``, ``svm_scores``, ``box_deltas``."""
    features = alexnet(state, crops, features=True).mean(axis=(2, 3))
    return {"features": features,
            **{head: _linear(state, head, features)
               for head in ("class_logits", "svm_scores", "box_deltas")}}
