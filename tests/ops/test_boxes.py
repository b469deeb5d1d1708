"""kvision.ops.boxes against independent references: numpy formulas written here from
the papers / torchvision, keras.utils.bounding_boxes, tf.image's NMS, and TFLite."""

import math
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

from kvision.layers.detection import NonMaxSuppression
from kvision.ops import boxes as B


def random_boxes(rng, shape, size=60.0):
    corner = rng.uniform(0, size, (*shape, 2))
    wh = rng.uniform(1, size / 2, (*shape, 2))
    return np.concatenate([corner, corner + wh], -1).astype("float32")


# --- independent numpy references ---------------------------------------------------

def np_from_xyxy(b, fmt, h, w):
    x1, y1, x2, y2 = np.moveaxis(b.astype("float64"), -1, 0)
    cx, cy, bw, bh = (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1
    return np.stack({"xyxy": (x1, y1, x2, y2), "yxyx": (y1, x1, y2, x2),
                     "xywh": (x1, y1, bw, bh), "center_xywh": (cx, cy, bw, bh),
                     "rel_xyxy": (x1 / w, y1 / h, x2 / w, y2 / h),
                     "yolo": (cx / w, cy / h, bw / w, bh / h)}[fmt], -1)


def np_pairwise(b1, b2, mode):
    """torchvision's box_iou / generalized / distance / complete_box_iou, in float64."""
    a = b1.astype("float64")[:, None]
    b = b2.astype("float64")[None]
    wa, ha = a[..., 2] - a[..., 0], a[..., 3] - a[..., 1]
    wb, hb = b[..., 2] - b[..., 0], b[..., 3] - b[..., 1]
    iw = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0,
                 None)
    ih = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0,
                 None)
    inter = iw * ih
    union = wa * ha + wb * hb - inter
    iou = inter / union
    cw = np.maximum(a[..., 2], b[..., 2]) - np.minimum(a[..., 0], b[..., 0])
    ch = np.maximum(a[..., 3], b[..., 3]) - np.minimum(a[..., 1], b[..., 1])
    if mode == "iou":
        return iou
    if mode == "giou":
        return iou - (cw * ch - union) / (cw * ch)
    rho2 = ((a[..., 0] + a[..., 2]) / 2 - (b[..., 0] + b[..., 2]) / 2) ** 2 + \
           ((a[..., 1] + a[..., 3]) / 2 - (b[..., 1] + b[..., 3]) / 2) ** 2
    diou = iou - rho2 / (cw ** 2 + ch ** 2)
    if mode == "diou":
        return diou
    v = 4 / math.pi ** 2 * (np.arctan(wb / hb) - np.arctan(wa / ha)) ** 2
    return diou - v / (1 - iou + v) * v


# --- formats --------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", B.FORMATS)
def test_convert_format_matches_numpy_and_round_trips(fmt):
    rng = np.random.default_rng(1)
    boxes = random_boxes(rng, (2, 3, 5))  # two leading batch dimensions
    got = B.convert_format(boxes, "xyxy", fmt, image_shape=(48, 80))
    np.testing.assert_allclose(got, np_from_xyxy(boxes, fmt, 48, 80), rtol=1e-6, atol=1e-5)
    back = B.convert_format(got, fmt, "xyxy", image_shape=(48, 80))
    np.testing.assert_allclose(back, boxes, atol=1e-4)


def test_yolo_label_of_a_known_box():
    # A 640x480 image, box from (100, 120) to (300, 360): the YOLO .txt line is
    # "cls 0.3125 0.5 0.3125 0.5" (centre and size over width and height).
    yolo = B.convert_format(np.array([[100, 120, 300, 360.0]]), "xyxy", "yolo",
                            image_shape=(480, 640))
    np.testing.assert_allclose(yolo, [[0.3125, 0.5, 0.3125, 0.5]], atol=1e-7)


def test_area_and_clip():
    boxes = np.array([[-10, 5, 30, 50], [10, 10, 5, 20], [90, 90, 120, 130]], "float32")
    np.testing.assert_allclose(B.area(boxes), [40 * 45, 0, 30 * 40])
    np.testing.assert_allclose(B.area(np_from_xyxy(boxes[:1], "xywh", 1, 1), format="xywh"),
                               [40 * 45])
    np.testing.assert_allclose(B.clip(boxes, (100, 100)),
                               [[0, 5, 30, 50], [10, 10, 5, 20], [90, 90, 100, 100]])
    clipped = B.clip(B.convert_format(boxes, "xyxy", "yolo", image_shape=(100, 100)),
                     (100, 100), format="yolo")
    np.testing.assert_allclose(clipped[2], [0.95, 0.95, 0.1, 0.1], atol=1e-6)


def test_runs_in_a_tf_data_map_with_the_image_size_as_a_tensor():
    rng = np.random.default_rng(8)
    images, boxes = np.zeros((3, 40, 80, 1), "float32"), random_boxes(rng, (3, 4), 70)
    anchors = B.anchor_grid((2, 2), 20, [[15, 15]])

    @tf.autograph.experimental.do_not_convert  # plain graph code: no autograph pass
    def targets(image, box):
        shape = tf.shape(image)[:2]
        clipped = B.clip(box, shape)
        return (B.convert_format(clipped, "xyxy", "yolo", image_shape=shape),
                B.encode(clipped, anchors))

    data = tf.data.Dataset.from_tensor_slices((images, boxes)).map(targets).batch(3)
    yolo, deltas = next(iter(data))
    clipped = B.clip(boxes, (40, 80))
    np.testing.assert_allclose(yolo, np_from_xyxy(np.asarray(clipped), "yolo", 40, 80),
                               atol=1e-6)
    np.testing.assert_allclose(deltas, B.encode(clipped, anchors), atol=1e-5)


def test_bad_formats_and_shapes_say_what_was_expected():
    boxes = np.zeros((3, 4), "float32")
    with pytest.raises(ValueError, match="target must be one of"):
        B.convert_format(boxes, "xyxy", "cxcywh")
    with pytest.raises(ValueError, match=r"shape \(\.\.\., 4\).*\(3, 5\)"):
        B.convert_format(np.zeros((3, 5)), "xyxy", "xywh")
    with pytest.raises(ValueError, match="image_shape=\\(height, width\\)"):
        B.convert_format(boxes, "xyxy", "yolo")
    with pytest.raises(ValueError, match="mode must be one of"):
        B.iou(boxes, boxes, mode="eiou")
    with pytest.raises(ValueError, match="variances"):
        B.encode(boxes, boxes, variances=(0.1, 0.2))


# --- IoU ------------------------------------------------------------------------------

def test_iou_agrees_with_keras_compute_iou():
    rng = np.random.default_rng(2)
    boxes1, boxes2 = random_boxes(rng, (3, 6)), random_boxes(rng, (3, 9))
    ours = B.iou(boxes1, boxes2)
    theirs = keras.utils.bounding_boxes.compute_iou(boxes1, boxes2, "xyxy")
    assert ours.shape == (3, 6, 9)
    assert np.mean(np.asarray(ours) > 0) > 0.2  # enough overlapping pairs to mean something
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
    # Formats are converted first: the same boxes as center_xywh give the same IoU.
    centre = np_from_xyxy(boxes1, "center_xywh", 1, 1)
    np.testing.assert_allclose(B.iou(centre, np_from_xyxy(boxes2, "center_xywh", 1, 1),
                                     format="center_xywh"), theirs, atol=1e-5)


@pytest.mark.parametrize("mode", B.IOU_MODES)
def test_iou_family_matches_torchvision_formulas(mode):
    rng = np.random.default_rng(3)
    boxes1, boxes2 = random_boxes(rng, (7,)), random_boxes(rng, (5,))
    expected = np_pairwise(boxes1, boxes2, mode)
    np.testing.assert_allclose(B.iou(boxes1, boxes2, mode=mode), expected, atol=1e-5)
    # Elementwise form: the diagonal of the pairwise one, with tensors as input.
    np.testing.assert_allclose(
        B.aligned_iou(tf.constant(boxes1[:5]), tf.constant(boxes2), mode=mode),
        np.diagonal(expected), atol=1e-5)


def test_giou_of_disjoint_boxes_is_negative_as_in_the_paper():
    # Rezatofighi et al.: GIoU -> -1 as disjoint boxes move apart; IoU stays 0.
    a = np.array([[0, 0, 1, 1.0]])
    b = np.array([[9, 9, 10, 10.0]])
    assert float(B.iou(a, b)[0, 0]) == 0
    np.testing.assert_allclose(B.iou(a, b, mode="giou"), [[2 / 100 - 1]], atol=1e-6)
    # Zero-area boxes: IoU 0, not NaN.
    assert float(B.aligned_iou(np.zeros((1, 4)), np.zeros((1, 4)))[0]) == 0


# --- targets and anchors --------------------------------------------------------------

def test_encode_matches_keras_and_decode_inverts_it():
    rng = np.random.default_rng(4)
    anchors = B.anchor_grid((3, 4), 16, [[20, 30], [40, 40]])
    boxes = random_boxes(rng, (2, len(anchors)))
    deltas = B.encode(boxes, anchors)
    reference = keras.utils.bounding_boxes.encode_box_to_deltas(
        anchors, boxes, anchor_format="center_xywh", box_format="xyxy",
        encoding_format="center_xywh", variance=[0.1, 0.1, 0.2, 0.2])
    np.testing.assert_allclose(deltas, reference, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(B.decode(deltas, anchors), boxes, atol=1e-4)
    # An untrained head's huge size delta is clipped, not an overflow.
    assert np.all(np.isfinite(B.decode(np.full((1, 4), 1e4), anchors[:1])))


def test_anchor_grid_centres_and_order():
    anchors = B.anchor_grid((2, 3), (8, 10), [[4, 6], [12, 12]])
    assert anchors.shape == (2 * 3 * 2, 4)
    # row 0 col 0 anchors 0/1, then row 0 col 1 ...; centres at (col + .5) * stride.
    np.testing.assert_allclose(anchors[:3], [[5, 4, 4, 6], [5, 4, 12, 12], [15, 4, 4, 6]])
    np.testing.assert_allclose(anchors[-1], [25, 12, 12, 12])


def test_kmeans_anchors_recover_known_clusters():
    rng = np.random.default_rng(5)
    centres = np.array([[10, 30], [30, 12], [60, 60.0]])  # tall, wide, big
    wh = np.concatenate([c * rng.uniform(0.93, 1.07, (200, 2)) for c in centres])
    anchors = B.kmeans_anchors(wh[rng.permutation(len(wh))], 3, seed=0)
    np.testing.assert_allclose(anchors, centres[[0, 1, 2]], rtol=0.03)  # sorted by area
    np.testing.assert_array_equal(anchors, B.kmeans_anchors(wh, 3, seed=0))
    with pytest.raises(ValueError, match="k must be between 1 and"):
        B.kmeans_anchors(wh[:2], 3)


def test_sanitize_clips_drops_with_one_counted_warning_and_rejects_bad_classes():
    boxes = [[-5, -5, 20, 20], [10, 10, 10, 30], [30, 40, 20, 50], [90, 90, 120, 99],
             [150, 150, 160, 160]]
    with pytest.warns(B.BoxWarning, match="dropped 3 of 5") as record:
        kept, classes = B.sanitize(boxes, [0, 1, 2, 3, 4], (100, 100), num_classes=5)
    assert len(record) == 1
    np.testing.assert_allclose(kept, [[0, 0, 20, 20], [90, 90, 100, 99]])
    np.testing.assert_array_equal(classes, [0, 3])
    assert classes.dtype == np.int32 and kept.dtype == np.float32
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        empty, empty_classes = B.sanitize(np.zeros((0,)), [], (64, 64), num_classes=3)
    assert empty.shape == (0, 4) and empty_classes.shape == (0,)
    with pytest.raises(ValueError, match=r"class ids must be in \[0, 3\); got \[3, 7\]"):
        B.sanitize([[0, 0, 5, 5]] * 3, [3, 1, 7], (64, 64), num_classes=3)
    with pytest.raises(ValueError, match=r"classes must have shape \(2,\)"):
        B.sanitize([[0, 0, 5, 5]] * 2, [1], (64, 64))


# --- non-max suppression --------------------------------------------------------------

def nms_reference(boxes, scores, classes, iou_threshold, score_threshold, k):
    """Single-class tf.image.non_max_suppression run class by class, merged by score."""
    kept = []
    for c in np.unique(classes):
        idx = np.flatnonzero(classes == c)
        sel = tf.image.non_max_suppression(boxes[idx], scores[idx], len(idx),
                                           iou_threshold, score_threshold).numpy()
        kept.extend(idx[sel])
    kept = sorted(kept, key=lambda i: -scores[i])[:k]
    return boxes[kept], scores[kept], classes[kept]


def test_batched_nms_is_per_class_tf_image_nms():
    rng = np.random.default_rng(6)
    boxes = random_boxes(rng, (3, 40), size=30)  # crowded: much to suppress
    scores = rng.uniform(size=(3, 40)).astype("float32")
    classes = rng.integers(0, 3, (3, 40))
    out = B.batched_nms(boxes, scores, classes, iou_threshold=0.4, score_threshold=0.2,
                        max_detections=12)
    assert out["boxes"].shape == (3, 12, 4) and out["classes"].dtype == tf.int32
    for i in range(3):
        ref_boxes, ref_scores, ref_classes = nms_reference(boxes[i], scores[i], classes[i],
                                                           0.4, 0.2, 12)
        n = int(out["num_detections"][i])
        assert n == len(ref_scores)
        np.testing.assert_allclose(out["boxes"][i, :n], ref_boxes)
        np.testing.assert_allclose(out["scores"][i, :n], ref_scores)
        np.testing.assert_array_equal(out["classes"][i, :n], ref_classes)
        np.testing.assert_array_equal(out["classes"][i, n:], -1)
    # Same-place boxes of two classes both survive; of one class only the better one.
    same = np.array([[[0, 0, 10, 10], [0, 0, 10, 10]]], "float32")
    for labels, expected in (([[0, 1]], 2), ([[1, 1]], 1)):
        result = B.batched_nms(same, [[0.9, 0.8]], labels)
        assert int(result["num_detections"][0]) == expected
    # No candidates at all: all padding, not an error.
    empty = B.batched_nms(np.zeros((2, 0, 4)), np.zeros((2, 0)), np.zeros((2, 0), int),
                          max_detections=3)
    np.testing.assert_array_equal(empty["classes"], -np.ones((2, 3)))
    np.testing.assert_array_equal(empty["num_detections"], [0, 0])


def np_greedy_nms(boxes, scores, classes, iou_threshold, score_threshold, k):
    """Greedy NMS in numpy, class by class (Neubeck & Van Gool; torchvision's nms): the
    best remaining box of a class is kept and every box of that class overlapping it
    by IoU > iou_threshold dropped; then the best k of all classes, by score."""
    kept = []
    for c in np.unique(classes):
        left = [i for i in np.argsort(-scores) if classes[i] == c and scores[i] > score_threshold]
        while left:
            best, left = left[0], left[1:]
            kept.append(best)
            overlap = np_pairwise(boxes[[best]], boxes[left], "iou")[0] if left else []
            left = [i for i, o in zip(left, overlap) if o <= iou_threshold]
    kept = sorted(kept, key=lambda i: -scores[i])[:k]
    return boxes[kept], scores[kept], classes[kept]


@pytest.fixture(scope="module")
def nms_model():
    boxes = keras.Input((20, 4), name="boxes")
    scores = keras.Input((20, 3), name="scores")
    return keras.Model([boxes, scores], NonMaxSuppression(0.5, 0.1, 12)(boxes, scores))


def nms_inputs(batch=2):
    """20 boxes per image in 5 clusters of 4 jittered copies (IoU about 0.5-0.9 within
    a cluster): much to suppress within a class, little across clusters."""
    rng = np.random.default_rng(7)
    scores = rng.uniform(size=(batch, 20, 3)).astype("float32")
    centres = np.repeat(random_boxes(rng, (batch, 5), 40), 4, axis=1)
    return (centres + rng.uniform(-2, 2, (batch, 20, 4))).astype("float32"), scores


def test_nms_layer_saves_and_loads_in_safe_mode(nms_model, tmp_path):
    boxes, scores = nms_inputs()
    path = tmp_path / "nms.keras"
    nms_model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    before, after = nms_model.predict([boxes, scores], verbose=0), loaded([boxes, scores])
    for key in ("boxes", "scores", "classes", "num_detections"):
        np.testing.assert_array_equal(before[key], after[key])
    # Per-class scores (B, N, C): each box takes its best class, then greedy NMS.
    for i in range(len(boxes)):
        ref_boxes, ref_scores, ref_classes = np_greedy_nms(
            boxes[i], scores[i].max(-1), scores[i].argmax(-1), 0.5, 0.1, 12)
        n = len(ref_scores)
        assert int(before["num_detections"][i]) == n
        np.testing.assert_allclose(before["boxes"][i, :n], ref_boxes, rtol=1e-6)
        np.testing.assert_allclose(before["scores"][i, :n], ref_scores, rtol=1e-6)
        np.testing.assert_array_equal(before["classes"][i, :n], ref_classes)
        np.testing.assert_array_equal(before["classes"][i, n:], -1)


def test_nms_layer_converts_to_tflite_builtins_and_agrees(nms_model):
    from ai_edge_litert import schema_py_generated as schema

    from kvision.export.litert import _interpreter_class, custom_ops

    fn = tf.function(lambda boxes, scores: nms_model([boxes, scores]), input_signature=[
        tf.TensorSpec((None, 20, 4), tf.float32, name="boxes"),
        tf.TensorSpec((None, 20, 3), tf.float32, name="scores")])
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [fn.get_concrete_function()], nms_model)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]  # no Flex
    content = converter.convert()
    assert custom_ops(content) == []
    flat = schema.Model.GetRootAs(content, 0)
    codes = {flat.OperatorCodes(i).BuiltinCode() for i in range(flat.OperatorCodesLength())}
    assert schema.BuiltinOperator.NON_MAX_SUPPRESSION_V4 in codes
    boxes, scores = nms_inputs(batch=2)
    lite = _interpreter_class()(model_content=content).get_signature_runner()(
        boxes=boxes, scores=scores)
    expected = nms_model.predict([boxes, scores], verbose=0)
    for key in expected:
        np.testing.assert_allclose(lite[key], expected[key], atol=1e-6)
