"""YOLOv3 and YOLOv3-tiny: reference parameter counts, targets, loss and decoding
against NumPy re-derivations, overfitting one batch to mAP@0.5 = 1, exports."""

import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import kvision
from kvision.data.synthetic import digit_scenes
from kvision.layers.yolo import YOLOv3Decode
from kvision.losses.detection import YOLOv3Loss
from kvision.metrics.detection import evaluate
from kvision.models.detection import yolo
from kvision.ops import boxes as box_ops

# The module-scoped trained fixture is built once, on one worker.
pytestmark = pytest.mark.xdist_group("yolo")

SIZE = 96
STEPS = 100  # Adam steps on the one batch


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def test_parameter_counts_match_the_reference_implementations():
    # qqwweee/keras-yolo3 at 416, 80 classes: 62,001,757 (61,949,149 trainable), the
    # float count of darknet's yolov3.weights; yolov3-tiny.weights is 35,434,956
    # bytes: 20 header bytes + 8,858,734 floats.
    with keras.StatelessScope(initialize_variables=False):  # shapes only
        model = kvision.create("yolov3")
        tiny = kvision.create("yolov3_tiny")
    assert model.count_params() == 62_001_757
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert trainable == 61_949_149
    assert [tuple(o.shape[1:3]) for o in model.outputs] == [(13, 13), (26, 26), (52, 52)]
    assert model.outputs[0].shape[3:] == (3, 85)
    assert tiny.count_params() == (35_434_956 - 20) // 4
    assert [tuple(o.shape[1:3]) for o in tiny.outputs] == [(13, 13), (26, 26)]
    for name in ("yolov3", "yolov3_tiny"):
        assert kvision.models.get_info(name).num_params == {
            "yolov3": model, "yolov3_tiny": tiny}[name].count_params()


def _numpy_decode(raw, anchors, image_size):
    """The paper's decoding, one prediction at a time."""
    height, width = image_size
    rows, cols, count = raw.shape[1], raw.shape[2], raw.shape[3]
    boxes, scores, classes = [], [], []
    for r in range(rows):
        for c in range(cols):
            for a in range(count):
                tx, ty, tw, th, to = raw[0, r, c, a, :5]
                cx = (_sigmoid(tx) + c) * width / cols
                cy = (_sigmoid(ty) + r) * height / rows
                w, h = anchors[a][0] * np.exp(tw), anchors[a][1] * np.exp(th)
                box = np.clip([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 0,
                              [width, height, width, height])
                probabilities = _sigmoid(to) * _sigmoid(raw[0, r, c, a, 5:])
                boxes.append(box)
                scores.append(probabilities.max())
                classes.append(probabilities.argmax())
    return np.array(boxes), np.array(scores), np.array(classes)


def test_decoding_matches_numpy():
    rng = np.random.default_rng(0)
    anchors = [[10, 13], [16, 30], [33, 23]]
    raw = rng.normal(0, 1.5, (1, 3, 4, 3, 5 + 4)).astype("float32")
    boxes, scores, classes = YOLOv3Decode(anchors, (96, 128))(raw)
    want = _numpy_decode(raw, anchors, (96, 128))
    np.testing.assert_allclose(np.asarray(boxes)[0], want[0], rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(np.asarray(scores)[0], want[1], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(classes)[0], want[2])


def test_targets_put_each_box_at_its_best_anchor_and_cell():
    anchors = [np.array([[60, 60], [90, 40]], "float32"),
               np.array([[10, 10], [20, 12]], "float32")]
    boxes = np.array([[40, 10, 70, 70], [3, 50, 23, 62]], "float32")  # 30x60, 20x12
    coarse, fine = yolo.encode_targets(boxes, [1, 2], anchors=anchors,
                                       grid_sizes=[(2, 2), (4, 4)], image_size=(96, 96),
                                       classes=3)
    # Box 0: IoU with 60x60 = 1800/3600, with 90x40 = 1200/4200: anchor 0 of the
    # coarse (48-px) grid, center (55, 40) -> row 0, column 1.
    assert float(np.sum(coarse[..., 4])) == 1.0 and float(np.sum(fine[..., 4])) == 1.0
    np.testing.assert_allclose(coarse[0, 1, 0], [55, 40, 30, 60, 1, 0, 1, 0])
    # Box 1 is exactly the 20x12 anchor; center (13, 56) on the 24-px grid.
    np.testing.assert_allclose(fine[2, 0, 1], [13, 56, 20, 12, 1, 0, 0, 1])
    empty = yolo.encode_targets(np.zeros((0, 4)), np.zeros((0,), "int32"),
                                anchors=anchors, grid_sizes=[(2, 2), (4, 4)],
                                image_size=(96, 96), classes=3)
    assert all(float(np.abs(t).sum()) == 0 for t in empty)
    options = dict(anchors=anchors, grid_sizes=[(2, 2), (4, 4)], image_size=(96, 96),
                   classes=3)
    with pytest.raises(ValueError, match=r"class ids must be in \[0, 3\).*\[5\]"):
        yolo.encode_targets(boxes, [1, 5], **options)
    # In a tf.data map (graph mode) the same check stops the pipeline with its message.
    data = tf.data.Dataset.from_tensors((boxes, np.array([1, 5], "int32"))).map(
        lambda b, c: yolo.encode_targets(b, c, **options))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"class ids must be in"):
        next(iter(data))


def _bce(target, logit):
    return np.maximum(logit, 0) - logit * target + np.log1p(np.exp(-np.abs(logit)))


def _numpy_iou(a, b):
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _numpy_v3_loss(y_true, y_pred, anchors, image_size, threshold=0.5):
    """qqwweee/keras-yolo3's yolo_loss for one image and scale, with loops."""
    height, width = image_size
    rows, cols, count = y_pred.shape[:3]
    sx, sy = width / cols, height / rows
    truths = [(*(y_true[r, c, a, :2] - y_true[r, c, a, 2:4] / 2),
               *(y_true[r, c, a, :2] + y_true[r, c, a, 2:4] / 2))
              for r in range(rows) for c in range(cols) for a in range(count)
              if y_true[r, c, a, 4]]
    total = 0.0
    for r in range(rows):
        for c in range(cols):
            for a in range(count):
                t, p = y_true[r, c, a], y_pred[r, c, a]
                if t[4]:
                    scale = 2 - t[2] * t[3] / (height * width)
                    txy = [t[0] / sx - c, t[1] / sy - r]
                    twh = np.log(t[2:4] / np.asarray(anchors[a]))
                    total += scale * _bce(np.array(txy), p[:2]).sum()
                    total += scale * 0.5 * ((twh - p[2:4]) ** 2).sum()
                    total += _bce(1.0, p[4]) + _bce(t[5:], p[5:]).sum()
                else:
                    cx, cy = (_sigmoid(p[0]) + c) * sx, (_sigmoid(p[1]) + r) * sy
                    w, h = anchors[a][0] * np.exp(p[2]), anchors[a][1] * np.exp(p[3])
                    box = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
                    best = max([_numpy_iou(box, tb) for tb in truths], default=0.0)
                    total += _bce(0.0, p[4]) * (best < threshold)
    return total


def test_v3_loss_matches_a_numpy_reference():
    rng = np.random.default_rng(3)
    anchors = [[20, 20], [40, 30]]
    y_true = np.zeros((2, 3, 3, 2, 5 + 2), "float32")
    y_true[0, 1, 2, 0] = [75, 40, 22, 18, 1, 0, 1]
    y_true[0, 0, 0, 1] = [10, 12, 36, 30, 1, 1, 0]
    y_true[1, 2, 1, 1] = [50, 80, 44, 26, 1, 1, 0]
    y_pred = rng.normal(0, 1, y_true.shape).astype("float32")
    # A prediction right on a ground-truth box by an anchor not assigned to it:
    # ignored, not pushed to "no object".
    y_pred[0, 1, 2, 1, :4] = [np.log(0.34375 / 0.65625), np.log(1 / 3), np.log(22 / 40),
                              np.log(18 / 30)]
    loss = YOLOv3Loss(anchors, (96, 96))
    per_image = loss.call(tf.constant(y_true), tf.constant(y_pred)).numpy()
    want = [_numpy_v3_loss(y_true[i], y_pred[i], anchors, (96, 96)) for i in range(2)]
    np.testing.assert_allclose(per_image, want, rtol=1e-5)
    np.testing.assert_allclose(float(loss(y_true, y_pred)), np.mean(want), rtol=1e-5)


def _scenes():
    return digit_scenes(4, image_size=SIZE, objects=(1, 3), digit_size=(16, 30), seed=0)


@pytest.fixture(scope="module")
def trained():
    """YOLOv3-tiny at width 0.25 (0.55M parameters), 96x96, fitted to 4 scenes with
    anchors from k-means on their boxes."""
    keras.utils.set_random_seed(0)
    scenes = _scenes()
    wh = np.concatenate([b[:, 2:] - b[:, :2] for b in scenes.boxes])
    anchors = box_ops.kmeans_anchors(wh, 6, seed=0)
    model = kvision.create("yolov3_tiny", classes=10, input_shape=(SIZE, SIZE, 3),
                           width=0.25, anchors=anchors)
    data = yolo.training_dataset(scenes, model, batch_size=4, shuffle=False)
    images, targets = next(iter(data))
    assigned = sum(float(np.sum(t[..., 4])) for t in targets)
    assert assigned == sum(len(b) for b in scenes.boxes)  # no two boxes share a slot
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss=yolo.losses(model),
                  jit_compile=False)
    batches = tf.data.Dataset.from_tensors((images, targets)).repeat()
    model.fit(batches, steps_per_epoch=STEPS, epochs=1, verbose=0)
    return scenes, model


def test_overfits_one_batch_to_map50_of_one(trained):
    scenes, model = trained
    detector = yolo.inference_model(model, score_threshold=0.5)
    found = detector(scenes.images.astype("float32"))
    assert set(found) == {"boxes", "scores", "classes", "num_detections"}
    result = evaluate(scenes.ground_truth(), found, num_classes=10)
    assert result["map_50"] == 1.0


def test_keras_file_round_trips_in_safe_mode(trained, tmp_path):
    """The detector holds the raw model: YOLOv3Output (with its anchors), the
    decoders and NMS all come back from the file."""
    scenes, model = trained
    detector = yolo.inference_model(model, score_threshold=0.5)
    x = scenes.images.astype("float32")
    detector.save(tmp_path / "detector.keras")
    again = keras.models.load_model(tmp_path / "detector.keras", safe_mode=True)
    want, got = detector(x), again(x)
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-5, atol=1e-4)
    raw = again.get_layer(model.name)
    assert [h.anchors for h in yolo.output_layers(raw)] == [
        h.anchors for h in yolo.output_layers(model)]


def test_tflite_export_is_builtin_only_and_gives_the_keras_detections(trained, tmp_path):
    """Through kvision.export.tflite (which checks parity itself); checked here again
    with the LiteRT interpreter directly: same detections, IoU >= 0.99, scores
    within 1e-3."""
    from ai_edge_litert.interpreter import Interpreter

    from kvision import export
    from kvision.export.litert import custom_ops

    scenes, model = trained
    detector = yolo.inference_model(model, score_threshold=0.5)
    images = scenes.images.astype("float32")
    path = tmp_path / "yolo.tflite"
    export.tflite(detector, path, check_data=images)
    assert custom_ops(path.read_bytes()) == []  # NMS included: builtin ops only
    interpreter = Interpreter(model_path=str(path))
    runner = interpreter.get_signature_runner(*interpreter.get_signature_list())
    for image in images:
        want = {k: np.asarray(v) for k, v in detector(image[None]).items()}
        got = runner(images=image[None])
        n = int(want["num_detections"][0])
        assert int(got["num_detections"][0]) == n > 0
        overlap = box_ops.aligned_iou(got["boxes"][0, :n], want["boxes"][0, :n])
        assert np.min(np.asarray(overlap)) >= 0.99
        np.testing.assert_allclose(got["scores"][0, :n], want["scores"][0, :n], atol=1e-3)
        np.testing.assert_array_equal(got["classes"][0, :n], want["classes"][0, :n])


def test_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match="multiples of 32"):
        kvision.create("yolov3_tiny", input_shape=(100, 100, 3))
    with pytest.raises(ValueError, match="classes"):
        kvision.create("yolov3_tiny", classes=0)
    with pytest.raises(ValueError, match="anchors must be"):
        kvision.create("yolov3_tiny", anchors=np.ones((5, 2)))
    with pytest.raises(FileNotFoundError, match="nowhere.weights.h5"):
        kvision.create("yolov3_tiny", input_shape=(64, 64, 3), width=0.125,
                       weights="nowhere.weights.h5")
    scenes = _scenes()
    model = kvision.create("yolov3_tiny", classes=5, input_shape=(SIZE, SIZE, 3),
                           width=0.125)
    with pytest.raises(ValueError, match=r"class ids must be in \[0, 5\)"):
        yolo.training_dataset(scenes, model)  # digits 0..9, a 5-class model
    small = kvision.create("yolov3_tiny", classes=10, input_shape=(64, 64, 3), width=0.125)
    with pytest.raises(ValueError, match=r"images are \(96, 96\).*takes \(64, 64\)"):
        yolo.training_dataset(scenes, small)
    # A box outside the image and one with zero area: clipped / dropped, counted once.
    broken = scenes[:2]
    broken.boxes = [np.array([[-10, 5, 30, 40], [50, 50, 50, 70]], "float32"),
                    np.zeros((0, 4), "float32")]
    broken.classes = [np.array([1, 2], "int32"), np.zeros((0,), "int32")]
    model10 = kvision.create("yolov3_tiny", classes=10, input_shape=(SIZE, SIZE, 3),
                             width=0.125)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = yolo.training_dataset(broken, model10, batch_size=2, shuffle=False)
    assert [str(w.message) for w in caught if issubclass(w.category, box_ops.BoxWarning)
            ] == ["yolo.training_dataset dropped 1 of 2 boxes smaller than 1.0 px after "
                  "clipping to their image (zero-area, inverted or outside) in 1 of 2 "
                  "images, e.g. ['image 0']."]
    _, targets = next(iter(data))
    assert sum(float(np.sum(t[..., 4])) for t in targets) == 1.0  # image 2 has none


def test_keras_applications_backbone_frozen():
    model = kvision.create("yolov3", classes=3, input_shape=(64, 64, 3),
                           backbone="MobileNetV2", trainable_backbone=False)
    assert [tuple(o.shape[1:]) for o in model.outputs] == [
        (2, 2, 3, 8), (4, 4, 3, 8), (8, 8, 3, 8)]
    backbone = model.get_layer("backbone")
    assert backbone.trainable_weights == [] and len(backbone.weights) > 200
    assert model.get_layer("preprocessing").mode == "tf"  # MobileNetV2's [-1, 1]


def test_targets_clip_boxes_and_skip_padding_in_a_tf_data_pipeline():
    """Keras' augmentation layers and dense batches mark padding with label -1 and a
    zero box: left out, not an error; a box reaching outside the image is clipped
    to it before it is assigned (v3 and v1 alike)."""
    anchors = [np.array([[30, 30]], "float32")]
    options = dict(anchors=anchors, grid_sizes=[(2, 2)], image_size=(64, 64), classes=3)
    boxes = np.array([[-20, 10, 30, 40], [0, 0, 0, 0], [40, 40, 40, 60]], "float32")
    labels = np.array([1, -1, 2], "int32")  # a real box, padding, a zero-width box
    data = tf.data.Dataset.from_tensors((boxes, labels)).map(
        lambda b, c: yolo.encode_targets(b, c, **options))
    (grid,) = next(iter(data))
    assert float(np.sum(grid[..., 4])) == 1.0
    # Clipped to (0, 10, 30, 40): center (15, 25) in cell (row 0, column 0), 30x30.
    np.testing.assert_allclose(grid[0, 0, 0], [15, 25, 30, 30, 1, 0, 1, 0])
    from kvision.models.detection import yolo_v1
    v1 = yolo_v1.encode_targets(boxes, labels, grid=2, image_size=(64, 64), classes=3)
    np.testing.assert_allclose(v1[0, 0], [15 / 32, 25 / 32, 30 / 64, 30 / 64, 1, 0, 1, 0],
                               rtol=1e-6)
    assert float(np.sum(v1[..., 4])) == 1.0
    with pytest.raises(ValueError, match=r"class ids must be in \[0, 3\).*\[-2\]"):
        yolo.encode_targets(boxes[:1], [-2], **options)  # not padding: an error


def test_objectness_threshold_defaults_to_one_half():
    """darknet's rule: a box whose objectness is not above the threshold scores 0,
    however sure its class; inference_model gates at 0.5 by default."""
    raw = np.zeros((1, 1, 2, 1, 5 + 2), "float32")
    raw[0, 0, :, 0, 5] = 10.0  # class 0 at sigmoid ~ 1 in both cells
    raw[0, 0, 0, 0, 4] = np.log(0.49 / 0.51)  # objectness 0.49
    raw[0, 0, 1, 0, 4] = np.log(0.51 / 0.49)  # objectness 0.51
    _, scores, _ = YOLOv3Decode([[8, 8]], (32, 64), objectness_threshold=0.5)(raw)
    np.testing.assert_allclose(np.asarray(scores)[0], [0.0, 0.51 * _sigmoid(10.0)],
                               rtol=1e-5)
    _, ungated, _ = YOLOv3Decode([[8, 8]], (32, 64))(raw)  # the layer's own default: 0
    np.testing.assert_allclose(np.asarray(ungated)[0],
                               np.array([0.49, 0.51]) * _sigmoid(10.0), rtol=1e-5)
    with pytest.raises(ValueError, match=r"objectness_threshold must be in \[0, 1\)"):
        YOLOv3Decode([[8, 8]], (32, 64), objectness_threshold=1.5)
    model = kvision.create("yolov3_tiny", classes=2, input_shape=(64, 64, 3), width=0.125)
    detector = yolo.inference_model(model)
    decoders = [layer for layer in detector.layers if isinstance(layer, YOLOv3Decode)]
    assert len(decoders) == 2
    assert all(layer.objectness_threshold == 0.5 for layer in decoders)
    assert detector.get_layer("nms").score_threshold == 0.5
    again = YOLOv3Decode.from_config(decoders[0].get_config())
    assert again.objectness_threshold == 0.5
