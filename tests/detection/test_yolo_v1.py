"""YOLO v1: the paper's parameter count, its loss and decoding against NumPy loops,
and overfitting one batch to mAP@0.5 = 1."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import kvision
from kvision.blocks import conv_bn_act
from kvision.data.synthetic import digit_scenes
from kvision.layers.yolo import YOLOv1Decode
from kvision.losses.detection import YOLOv1Loss
from kvision.metrics.detection import evaluate
from kvision.models.detection import yolo_v1


def test_parameter_count_is_the_papers_figure_3():
    # Figure 3 at 448: (kernel, in, out) of the 24 convolutions, all with biases,
    # then FC 7*7*1024 -> 4096 -> 7*7*30.
    convs = [(7, 3, 64), (3, 64, 192), (1, 192, 128), (3, 128, 256), (1, 256, 256),
             (3, 256, 512), *[(1, 512, 256), (3, 256, 512)] * 4, (1, 512, 512),
             (3, 512, 1024), (1, 1024, 512), (3, 512, 1024), (1, 1024, 512),
             (3, 512, 1024), *[(3, 1024, 1024)] * 4]
    assert len(convs) == 24
    figure = (sum(k * k * i * o + o for k, i, o in convs)
              + 7 * 7 * 1024 * 4096 + 4096 + 4096 * 1470 + 1470)
    with keras.StatelessScope(initialize_variables=False):  # shapes, no 1 GB draw
        model = kvision.create("yolov1")
    assert model.output_shape == (None, 7, 7, 30)
    assert model.count_params() == figure == kvision.models.get_info("yolov1").num_params


def _iou(a, b):
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return w * h / union if union > 0 else 0.0


def _corners(x, y, w, h, row, col, grid):
    cx, cy = (col + x) / grid, (row + y) / grid
    return (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)


def _paper_loss(y_true, y_pred, boxes_per_cell, coord=5.0, noobj=0.5):
    """Equation (3) of the paper, one image, term by term."""
    grid = y_true.shape[0]
    total = 0.0
    for row in range(grid):
        for col in range(grid):
            t, p = y_true[row, col], y_pred[row, col]
            predictors = [p[5 * j:5 * j + 5] for j in range(boxes_per_cell)]
            if t[4]:
                truth = _corners(*t[:4], row, col, grid)
                ious = [_iou(_corners(q[0], q[1], q[2] ** 2, q[3] ** 2, row, col, grid),
                             truth) for q in predictors]
                j = int(np.argmax(ious))
                q = predictors[j]
                total += coord * ((q[0] - t[0]) ** 2 + (q[1] - t[1]) ** 2)
                total += coord * ((q[2] - np.sqrt(t[2])) ** 2 + (q[3] - np.sqrt(t[3])) ** 2)
                total += (q[4] - ious[j]) ** 2
                total += noobj * sum(predictors[k][4] ** 2
                                     for k in range(boxes_per_cell) if k != j)
                total += np.sum((p[5 * boxes_per_cell:] - t[5:]) ** 2)
            else:
                total += noobj * sum(q[4] ** 2 for q in predictors)
    return total


def test_loss_is_the_papers_equation():
    rng = np.random.default_rng(0)
    grid, boxes, classes = 3, 2, 3
    y_true = np.zeros((2, grid, grid, 5 + classes), "float32")
    y_true[0, 0, 1] = [0.3, 0.6, 0.2, 0.4, 1, 0, 1, 0]
    y_true[0, 2, 2] = [0.9, 0.1, 0.5, 0.3, 1, 1, 0, 0]
    y_true[1, 1, 0] = [0.5, 0.5, 0.25, 0.25, 1, 0, 0, 1]
    y_pred = rng.uniform(0.05, 0.9, (2, grid, grid, 5 * boxes + classes)).astype("float32")
    loss = YOLOv1Loss(boxes)
    got = loss.call(tf.constant(y_true), tf.constant(y_pred)).numpy()
    want = [_paper_loss(y_true[i], y_pred[i], boxes) for i in range(2)]
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_targets_and_decoding():
    boxes = np.array([[10, 20, 40, 80], [60, 0, 96, 30]], "float32")
    targets = yolo_v1.encode_targets(boxes, [2, 0], grid=3, image_size=(96, 96),
                                     classes=3).numpy()
    # Centers (25, 50) and (78, 15) on 32-px cells: (row 1, col 0) and (row 0, col 2).
    np.testing.assert_allclose(targets[1, 0], [25 / 32, 50 / 32 - 1, 30 / 96, 60 / 96, 1,
                                               0, 0, 1], rtol=1e-6)
    np.testing.assert_allclose(targets[0, 2], [78 / 32 - 2, 15 / 32, 36 / 96, 30 / 96, 1,
                                               1, 0, 0], rtol=1e-6)
    assert targets[..., 4].sum() == 2
    # Decoding: box = cell offset + sqrt-size squared; score = class prob x confidence.
    raw = np.random.default_rng(1).uniform(-0.2, 1.2, (1, 3, 3, 13)).astype("float32")
    got_boxes, got_scores, got_classes = (np.asarray(t)[0] for t in
                                          YOLOv1Decode(2, (96, 96))(raw))
    i = 0
    for row in range(3):
        for col in range(3):
            for j in range(2):
                x, y, sw, sh, c = raw[0, row, col, 5 * j:5 * j + 5]
                box = np.clip(np.array(_corners(x, y, sw ** 2, sh ** 2, row, col, 3)) * 96,
                              0, 96)
                scores = np.clip(c, 0, 1) * np.clip(raw[0, row, col, 10:], 0, 1)
                np.testing.assert_allclose(got_boxes[i], box, rtol=1e-5, atol=1e-4)
                assert got_scores[i] == pytest.approx(scores.max(), rel=1e-6, abs=1e-7)
                assert got_classes[i] == np.argmax(scores)
                i += 1


def _small_backbone(size):
    """A 5-conv stride-32 network (raw pixels in): a user's keras.Model backbone."""
    inputs = keras.Input((size, size, 3))
    x = keras.layers.Rescaling(1 / 255, name="scale")(inputs)
    for i, filters in enumerate((16, 32, 64, 64, 128)):
        x = conv_bn_act(x, filters, 3, 2, activation="leaky_relu", bn_momentum=0.9,
                        name=f"b{i}")
    return keras.Model(inputs, x, name="small")


def test_overfits_one_batch_to_map50_of_one():
    keras.utils.set_random_seed(0)
    scenes = digit_scenes(4, image_size=96, objects=(1, 3), digit_size=(16, 30), seed=0)
    model = kvision.create("yolov1", classes=10, input_shape=(96, 96, 3), grid=4,
                           backbone=_small_backbone(96), width=0.0625, dropout=0.0,
                           batch_norm=True)
    images, targets = next(iter(yolo_v1.training_dataset(scenes, model, batch_size=4,
                                                         shuffle=False)))
    assert float(np.sum(targets[..., 4])) == sum(len(b) for b in scenes.boxes)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=yolo_v1.loss(model),
                  jit_compile=False)
    batches = tf.data.Dataset.from_tensors((images, targets)).repeat()
    model.fit(batches, steps_per_epoch=100, epochs=1, verbose=0)
    detector = yolo_v1.inference_model(model, score_threshold=0.5)
    found = detector(scenes.images.astype("float32"))
    assert evaluate(scenes.ground_truth(), found, num_classes=10)["map_50"] == 1.0
