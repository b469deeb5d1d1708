"""kvision.ops.rcnn against references written here from torchvision's formulas
(AnchorGenerator, BoxCoder, Matcher, BalancedPositiveNegativeSampler, filter_proposals,
fastrcnn_loss) in float64 NumPy, hand-made cases, and TFLite's builtin ops."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from kvision.ops import rcnn


def random_boxes(rng, shape, size=64.0, low=2.0):
    corner = rng.uniform(0, size * 0.75, (*shape, 2))
    wh = rng.uniform(low, size / 2, (*shape, 2))
    return np.concatenate([corner, corner + wh], -1).astype("float32")


def np_iou(a, b):
    """(n, 4), (m, 4) -> (n, m), float64, torchvision's box_iou."""
    a, b = a.astype("float64")[:, None], b.astype("float64")[None]
    iw = np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0])
    ih = np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1])
    inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    return inter / (area_a + area_b - inter)


def np_encode(boxes, ref, w):
    bw, bh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    rw, rh = ref[:, 2] - ref[:, 0], ref[:, 3] - ref[:, 1]
    return np.stack([w[0] * ((boxes[:, 0] + bw / 2) - (ref[:, 0] + rw / 2)) / rw,
                     w[1] * ((boxes[:, 1] + bh / 2) - (ref[:, 1] + rh / 2)) / rh,
                     w[2] * np.log(bw / rw), w[3] * np.log(bh / rh)], 1)


def np_decode(deltas, ref, w, clip=math.log(1000 / 16)):
    rw, rh = ref[:, 2] - ref[:, 0], ref[:, 3] - ref[:, 1]
    cx = deltas[:, 0] / w[0] * rw + ref[:, 0] + rw / 2
    cy = deltas[:, 1] / w[1] * rh + ref[:, 1] + rh / 2
    pw = np.exp(np.minimum(deltas[:, 2] / w[2], clip)) * rw
    ph = np.exp(np.minimum(deltas[:, 3] / w[3], clip)) * rh
    return np.stack([cx - pw / 2, cy - ph / 2, cx + pw / 2, cy + ph / 2], 1)


# --- anchors ---------------------------------------------------------------------------

def test_paper_anchors_are_torchvisions_numbers():
    # AnchorGenerator(((128, 256, 512),), ((0.5, 1.0, 2.0),)).cell_anchors[0], from
    # its formula: w = s / sqrt(r), h = s * sqrt(r), (-w, -h, w, h) / 2 rounded,
    # ratio-major.
    expected = np.array([[-91, -45, 91, 45], [-181, -91, 181, 91], [-362, -181, 362, 181],
                         [-64, -64, 64, 64], [-128, -128, 128, 128],
                         [-256, -256, 256, 256],
                         [-45, -91, 45, 91], [-91, -181, 91, 181], [-181, -362, 181, 362]])
    np.testing.assert_array_equal(rcnn.paper_anchors(), expected)
    assert rcnn.PAPER_STRIDE == 16
    assert rcnn.pyramid_anchor_sizes() == ((32,), (64,), (128,), (256,), (512,))
    # 32 at ratio 0.5: 45.25 x 22.63 -> halves 22.63, 11.31 round to 23, 11.
    np.testing.assert_array_equal(
        rcnn.anchor_shapes((32,)),
        [[-23, -11, 23, 11], [-16, -16, 16, 16], [-11, -23, 11, 23]])


def test_grid_anchors_are_location_major_shifted_by_the_cell_corner():
    base = rcnn.anchor_shapes((8, 16), (1.0,))
    anchors = rcnn.grid_anchors((2, 3), (4, 5), base)  # 2 rows, 3 cols, stride_y 4, x 5
    expected = [np.array([c * 5, r * 4, c * 5, r * 4]) + b
                for r in range(2) for c in range(3) for b in base]
    np.testing.assert_array_equal(anchors, np.array(expected))
    stacked, levels = rcnn.pyramid_anchors([(2, 2), (1, 1)], [4, 8], sizes=((8,), (16,)))
    assert stacked.shape == (15, 4)
    np.testing.assert_array_equal(levels, [0] * 12 + [1] * 3)


# --- box coder -------------------------------------------------------------------------

def test_encode_decode_equal_torchvisions_box_coder():
    rng = np.random.default_rng(0)
    boxes, anchors = random_boxes(rng, (20,)), random_boxes(rng, (20,))
    weights = (10.0, 10.0, 5.0, 5.0)
    deltas = np_encode(boxes.astype("float64"), anchors.astype("float64"), weights)
    np.testing.assert_allclose(rcnn.encode_deltas(boxes, anchors, weights), deltas,
                               rtol=1e-5, atol=1e-5 * np.abs(deltas).max())
    np.testing.assert_allclose(rcnn.decode_deltas(deltas, anchors, weights), boxes,
                               rtol=1e-5, atol=1e-4)
    huge = np.array([[0.0, 0.0, 50.0, 50.0]], "float32")  # log-size clipped at log(62.5)
    expected = np_decode(huge.astype("float64"), anchors[:1].astype("float64"), (1,) * 4)
    np.testing.assert_allclose(rcnn.decode_deltas(huge, anchors[:1]), expected, rtol=1e-5)


# --- anchor labelling ------------------------------------------------------------------

def np_label(anchors, gt, valid, high=0.7, low=0.3):
    """torchvision's Matcher(high, low, allow_low_quality_matches=True) per image."""
    if not valid.any():
        return np.zeros(len(anchors)), np.zeros(len(anchors), int)
    quality = np_iou(gt[valid], anchors)  # (G, A)
    best, matched = quality.max(0), quality.argmax(0)
    labels = np.where(best >= high, 1.0, np.where(best < low, 0.0, -1.0))
    for g in range(len(quality)):
        if quality[g].max() > 0:
            labels[quality[g] == quality[g].max()] = 1.0
    return labels, np.flatnonzero(valid)[matched]


def test_label_anchors_hand_made():
    anchors = np.array([[0, 0, 10, 10],     # IoU 1 with gt 0: positive
                        [0, 0, 10, 12],     # IoU 10/12 = 0.83: positive
                        [0, 0, 10, 20],     # IoU 0.5: ignored
                        [0, 0, 10, 40],     # IoU 0.25: negative
                        [50, 50, 70, 70],   # best of gt 1 (IoU 0.44 < 0.7): positive
                        [52, 52, 70, 70],   # IoU with gt 1 0.36: ignored
                        [90, 90, 99, 99]], "float32")  # touches nothing: negative
    gt = np.array([[[0, 0, 10, 10], [50, 50, 80, 80], [0, 0, 0, 0]],
                   [[0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]],
                   [[200, 200, 210, 210], [0, 0, 0, 0], [0, 0, 0, 0]]], "float32")
    classes = np.array([[3, 5, -1], [-1, -1, -1], [1, -1, -1]])
    labels, matched = map(np.asarray, rcnn.label_anchors(anchors, gt, classes))
    np.testing.assert_array_equal(labels[0], [1, 1, -1, 0, 1, -1, 0])
    np.testing.assert_array_equal(matched[0][[0, 1, 4]], [0, 0, 1])
    np.testing.assert_array_equal(labels[1], np.zeros(7))  # no objects: all negative
    # A gt no anchor touches makes no anchor positive (torchvision's Matcher would
    # take its "best" IoU, 0, and make every anchor positive).
    np.testing.assert_array_equal(labels[2], np.zeros(7))
    no_gt_at_all = rcnn.label_anchors(anchors, np.zeros((1, 0, 4)), np.zeros((1, 0), int))
    np.testing.assert_array_equal(no_gt_at_all[0], np.zeros((1, 7)))


def test_label_anchors_equal_a_numpy_matcher_on_random_boxes():
    rng = np.random.default_rng(1)
    anchors = random_boxes(rng, (300,))
    gt = random_boxes(rng, (3, 6))
    classes = rng.integers(-1, 4, (3, 6))
    classes[2] = -1
    labels, matched = map(np.asarray, rcnn.label_anchors(anchors, gt, classes))
    for i in range(3):
        want_labels, want_matched = np_label(anchors, gt[i], classes[i] >= 0)
        np.testing.assert_array_equal(labels[i], want_labels)
        positive = want_labels == 1
        np.testing.assert_array_equal(matched[i][positive],
                                      want_matched[positive])


# --- anchor sampling -------------------------------------------------------------------

def test_sample_anchors_counts_and_subsets():
    labels = np.full((3, 1000), -1.0, "float32")
    labels[0, :400], labels[0, 400:900] = 1, 0      # plenty of both: 128 + 128
    labels[1, :10], labels[1, 10:700] = 1, 0        # few positives: 10 + 246
    labels[2, :300], labels[2, 300:350] = 1, 0      # few negatives: 128 + 50
    sampled = np.asarray(rcnn.sample_anchors(labels, num=256, positive_fraction=0.5,
                                             seed=3))
    counts = [((row == 1).sum(), (row == 0).sum()) for row in sampled]
    assert counts == [(128, 128), (10, 246), (128, 50)]
    kept = sampled >= 0
    np.testing.assert_array_equal(sampled[kept], labels[kept])  # a subset, same labels
    assert sampled[1, 10:700].min() == -1  # negatives were drawn, not all kept


def test_sample_anchors_draws_anew_every_step_in_a_graph():
    labels = tf.constant(np.r_[np.ones(200), np.zeros(200)][None], tf.float32)
    generator = keras.random.SeedGenerator(0)
    step = tf.function(lambda: (rcnn.sample_anchors(labels, 64, seed=generator),
                                rcnn.sample_anchors(labels, 64)))
    first, second = step(), step()
    for a, b in zip(first, second):
        assert (np.asarray(a) != np.asarray(b)).any()
        assert (np.asarray(a) == 1).sum() == 32


# --- proposals -------------------------------------------------------------------------

def np_nms(boxes, scores, threshold):
    order, keep = np.argsort(-scores, kind="stable"), []
    while order.size:
        keep.append(order[0])
        order = order[1:][np_iou(boxes[order[:1]], boxes[order[1:]])[0] <= threshold]
    return np.array(keep, int)


def np_proposals(anchors, objectness, deltas, size, levels, pre, post, nms, min_size):
    """torchvision's filter_proposals for one image, float64."""
    keep_boxes, keep_scores = [], []
    for level in np.unique(levels):
        idx = np.flatnonzero(levels == level)
        top = idx[np.argsort(-objectness[idx], kind="stable")[:pre]]
        boxes = np_decode(deltas[top], anchors[top], (1,) * 4)
        boxes = np.clip(boxes, 0, [size[1], size[0], size[1], size[0]])
        big = ((boxes[:, 2] - boxes[:, 0]) >= min_size) & ((boxes[:, 3] - boxes[:, 1])
                                                           >= min_size)
        kept = np_nms(boxes[big], objectness[top][big], nms)
        keep_boxes.append(boxes[big][kept])
        keep_scores.append(1 / (1 + np.exp(-objectness[top][big][kept])))
    boxes, scores = np.concatenate(keep_boxes), np.concatenate(keep_scores)
    order = np.argsort(-scores, kind="stable")[:post]
    return boxes[order], scores[order]


def proposal_case(seed=2):
    rng = np.random.default_rng(seed)
    anchors, levels = rcnn.pyramid_anchors([(4, 4), (2, 2)], [8, 16], sizes=((12,), (24,)))
    objectness = rng.normal(size=(2, len(anchors))).astype("float32")
    deltas = rng.normal(scale=0.3, size=(2, len(anchors), 4)).astype("float32")
    deltas[0, np.argmax(objectness[0]), 2:] = -20  # a tiny box, dropped by min_size
    return anchors, levels, objectness, deltas


def test_generate_proposals_equal_numpy_decode_clip_nms():
    anchors, levels, objectness, deltas = proposal_case()
    boxes, scores, valid = map(np.asarray, rcnn.generate_proposals(
        anchors, objectness, deltas, (32, 32), pre_nms_top_n=20, post_nms_top_n=40,
        nms_threshold=0.5, min_size=1.0, levels=levels))
    for i in range(2):
        want_boxes, want_scores = np_proposals(anchors, objectness[i].astype("float64"),
                                               deltas[i].astype("float64"), (32, 32),
                                               levels, 20, 40, 0.5, 1.0)
        n = len(want_boxes)
        assert 0 < n < 40 and valid[i].sum() == n
        np.testing.assert_allclose(boxes[i][:n], want_boxes, atol=1e-4)
        np.testing.assert_allclose(scores[i][:n], want_scores, rtol=1e-5)
        np.testing.assert_array_equal(boxes[i][n:], 0.0)


def test_generate_proposals_converts_to_tflite_builtins_and_agrees():
    from kvision.export.litert import _interpreter_class, custom_ops

    anchors, levels, objectness, deltas = proposal_case(3)
    a = len(anchors)

    @tf.function(input_signature=[tf.TensorSpec((1, a), tf.float32, name="objectness"),
                                  tf.TensorSpec((1, a, 4), tf.float32, name="deltas")])
    def propose(objectness, deltas):
        boxes, scores, valid = rcnn.generate_proposals(
            anchors, objectness, deltas, (32, 32), pre_nms_top_n=12, post_nms_top_n=16,
            levels=levels)
        return {"boxes": boxes, "scores": scores, "valid": tf.cast(valid, tf.int32)}

    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [propose.get_concrete_function()], tf.Module())
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]  # no Flex
    content = converter.convert()
    assert custom_ops(content) == []
    lite = _interpreter_class()(model_content=content).get_signature_runner()(
        objectness=objectness[:1], deltas=deltas[:1])
    expected = propose(objectness[:1], deltas[:1])
    for key in expected:
        np.testing.assert_allclose(lite[key], expected[key], atol=1e-4)


def test_anchor_count_disagreeing_with_the_head_is_named():
    anchors = rcnn.grid_anchors(4, 16, rcnn.paper_anchors())  # 144 anchors
    with pytest.raises(ValueError, match=r"144.*\(2, 160\)"):
        rcnn.generate_proposals(anchors, np.zeros((2, 160)), np.zeros((2, 160, 4)),
                                (64, 64), pre_nms_top_n=10, post_nms_top_n=5)


# --- RoI sampling ----------------------------------------------------------------------

def test_sample_rois_fractions_ranges_and_targets():
    rng = np.random.default_rng(4)
    gt = np.array([[[10, 10, 40, 40], [30, 5, 60, 25], [0, 0, 0, 0]]], "float32")
    classes = np.array([[2, 0, -1]])
    # Proposals around the gt (many foreground) and anywhere (background).
    jitter = rng.normal(scale=3, size=(300, 4))
    near = (np.repeat(gt[0, :2], 150, 0) + jitter).astype("float32")
    anywhere = random_boxes(rng, (300,))
    proposals = np.concatenate([near, anywhere])[None]
    valid = np.ones((1, 600), bool)
    valid[0, -50:] = False
    rois, labels, targets, matched = (np.asarray(t) for t in rcnn.sample_rois(
        proposals, valid, gt, classes, num=128, seed=5))
    overlap = np_iou(rois[0], gt[0, :2]).max(1)
    fg, bg = labels[0] > 0, labels[0] == 0
    assert fg.sum() == 32 and bg.sum() == 96 and (labels >= 0).all()
    assert overlap[fg].min() >= 0.5 and overlap[bg].max() < 0.5
    assert overlap[bg].min() >= 0.1  # there were enough in [0.1, 0.5)
    np.testing.assert_array_equal(labels[0][fg], classes[0][matched[0][fg]] + 1)
    want = np_encode(gt[0][matched[0][fg]].astype("float64"), rois[0][fg].astype("float64"),
                     (10, 10, 5, 5))
    np.testing.assert_allclose(targets[0][fg], want, atol=1e-4)
    np.testing.assert_array_equal(targets[0][~fg], 0.0)
    sampled_from = set(map(tuple, np.concatenate([proposals[0][valid[0]], gt[0, :2]])))
    assert set(map(tuple, rois[0])) <= sampled_from  # invalid proposals never taken


def test_sample_rois_fill_background_and_empty_images():
    gt = np.array([[[0, 0, 20, 20]], [[0, 0, 0, 0]]], "float32")
    classes = np.array([[1], [-1]])
    proposals = np.array([[[0, 0, 20, 30], [0, 0, 20, 100], [60, 60, 80, 80]]] * 2,
                         "float32")  # IoU 0.67, 0.2, 0 with the gt
    valid = np.ones((2, 3), bool)
    rois, labels, _, _ = (np.asarray(t) for t in rcnn.sample_rois(
        proposals, valid, gt, classes, num=6, positive_fraction=0.5, seed=0))
    # Image 0: the gt itself and the 0.67 box are foreground; 0.2 then (filled) 0.
    assert sorted(labels[0]) == [-1, -1, 0, 0, 2, 2]
    np.testing.assert_array_equal(rois[0][labels[0] == -1], 0.0)
    # Image 1 has no objects: every valid proposal is background, nothing else.
    assert sorted(labels[1]) == [-1, -1, -1, 0, 0, 0]
    only_fill = rcnn.sample_rois(proposals[:1, 2:], valid[:1, 2:], gt[:1], classes[:1],
                                 num=4, seed=0)[1]
    assert sorted(np.asarray(only_fill)[0]) == [-1, -1, 0, 2]  # IoU 0 fills background


# --- losses ----------------------------------------------------------------------------

def np_smooth_l1(x, beta=1 / 9):
    x = np.abs(x)
    return np.where(x < beta, 0.5 * x ** 2 / beta, x - 0.5 * beta).sum(-1)


def test_rpn_losses_equal_numpy_and_stay_finite_when_empty():
    rng = np.random.default_rng(6)
    logits = rng.normal(size=(2, 50)).astype("float32")
    deltas, targets = rng.normal(size=(2, 2, 50, 4)).astype("float32")
    labels = rng.choice([-1.0, 0.0, 1.0], size=(2, 50)).astype("float32")
    targets[labels < 1] = np.nan  # never read: unsampled anchors' targets
    objectness, box = rcnn.rpn_losses(logits, deltas, labels, targets)
    s, p = labels >= 0, labels == 1
    z = labels[s].astype("float64")
    x = logits[s].astype("float64")
    bce = -(z * np.log(1 / (1 + np.exp(-x))) + (1 - z) * np.log(1 - 1 / (1 + np.exp(-x))))
    np.testing.assert_allclose(objectness, bce.sum() / s.sum(), rtol=1e-5)
    np.testing.assert_allclose(box, np_smooth_l1(deltas[p] - targets[p]).sum() / s.sum(),
                               rtol=1e-5)
    deltas = tf.Variable(deltas)
    with tf.GradientTape() as tape:  # nothing sampled (no objects, nothing drawn)
        losses = rcnn.rpn_losses(logits, deltas, np.full((2, 50), -1.0), targets)
        total = losses[0] + losses[1]
    assert float(total) == 0.0 and np.isfinite(tape.gradient(total, deltas)).all()


def test_box_head_losses_equal_numpy_and_stay_finite_when_empty():
    rng = np.random.default_rng(7)
    logits = rng.normal(size=(2, 8, 4)).astype("float32")  # 3 classes + background
    deltas = rng.normal(size=(2, 8, 16)).astype("float32")
    targets = rng.normal(size=(2, 8, 4)).astype("float32")
    labels = rng.integers(-1, 4, (2, 8))
    cls, box = rcnn.box_head_losses(logits, deltas, labels, targets)
    lab = labels >= 0
    x = logits.astype("float64")
    log_softmax = x - np.log(np.exp(x).sum(-1, keepdims=True))
    ce = -np.take_along_axis(log_softmax, np.maximum(labels, 0)[..., None], -1)[..., 0]
    np.testing.assert_allclose(cls, ce[lab].sum() / lab.sum(), rtol=1e-5)
    fg = labels > 0
    own = deltas.reshape(2, 8, 4, 4)[fg, labels[fg]]
    np.testing.assert_allclose(box, np_smooth_l1(own - targets[fg]).sum() / lab.sum(),
                               rtol=1e-5)
    same = rcnn.box_head_losses(logits, deltas.reshape(2, 8, 4, 4), labels, targets)
    np.testing.assert_allclose(same, (cls, box), rtol=1e-6)
    empty = rcnn.box_head_losses(logits, deltas, np.full((2, 8), -1), targets)
    np.testing.assert_array_equal(empty, (0.0, 0.0))
    with pytest.raises(ValueError, match="16 for 4 classes, got 12"):
        rcnn.box_head_losses(logits, deltas[..., :12], labels, targets)


def test_training_path_runs_in_a_graph_of_unknown_sizes_without_objects():
    anchors, levels = rcnn.pyramid_anchors([(4, 4), (2, 2)], [8, 16], sizes=((12,), (24,)))
    a = len(anchors)
    generator = keras.random.SeedGenerator(0)

    @tf.function(input_signature=[
        tf.TensorSpec((None, a)), tf.TensorSpec((None, a, 4)),
        tf.TensorSpec((None, None, 4)), tf.TensorSpec((None, None), tf.int32)])
    def step(objectness, deltas, gt_boxes, gt_classes):  # G unknown: 0 here
        labels, matched = rcnn.label_anchors(anchors, gt_boxes, gt_classes)
        labels = rcnn.sample_anchors(labels, 16, seed=generator)
        targets = rcnn.encode_deltas(rcnn.take_matched(gt_boxes, matched), anchors)
        losses = rcnn.rpn_losses(objectness, deltas, labels, targets)
        proposals, _, valid = rcnn.generate_proposals(
            anchors, objectness, deltas, (32, 32), pre_nms_top_n=8, post_nms_top_n=6,
            levels=levels)
        rois, roi_labels, roi_targets, _ = rcnn.sample_rois(
            proposals, valid, gt_boxes, gt_classes, num=8, seed=generator)
        return losses, labels, roi_labels, roi_targets

    _, _, objectness, deltas = proposal_case(5)
    losses, labels, roi_labels, roi_targets = step(
        objectness, deltas, tf.zeros((2, 0, 4)), tf.zeros((2, 0), tf.int32))
    assert np.isfinite(losses).all() and float(losses[1]) == 0.0
    assert set(np.unique(labels)) == {-1, 0} and (np.asarray(labels) == 0).sum() == 32
    assert set(np.unique(roi_labels)) <= {-1, 0} and (np.asarray(roi_labels) == 0).sum() > 0
    assert np.isfinite(roi_targets).all()
