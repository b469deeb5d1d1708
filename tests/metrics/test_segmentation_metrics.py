"""Segmentation metrics against scikit-learn and keras.metrics.MeanIoU."""

import keras
import numpy as np
import pytest
from sklearn import metrics as skm

from kvision.metrics import segmentation as seg

C = 5
IGNORE = 255


@pytest.fixture(scope="module")
def maps():
    """Two batches of label maps; class 4 never occurs, some pixels are ignored."""
    rng = np.random.default_rng(0)
    truth = rng.integers(0, C - 1, (2, 3, 12, 10))
    pred = np.where(rng.random(truth.shape) < 0.6, truth, rng.integers(0, C - 1, truth.shape))
    truth[:, 0, :2] = IGNORE
    return truth, pred


def _kept(truth, pred):
    keep = truth != IGNORE
    return truth[keep], pred[keep]


def test_confusion_matrix_agrees_with_sklearn(maps):
    truth, pred = maps
    t, p = _kept(truth, pred)
    expected = skm.confusion_matrix(t, p, labels=range(C))
    np.testing.assert_array_equal(seg.confusion_matrix(truth, pred, C, IGNORE), expected)
    # Probabilities with a trailing class axis are reduced with argmax.
    probs = keras.ops.one_hot(pred, C) * 0.7 + 0.06
    np.testing.assert_array_equal(seg.confusion_matrix(truth, probs, C, IGNORE), expected)


def test_iou_accuracy_dice_agree_with_sklearn(maps):
    truth, pred = maps
    t, p = _kept(truth, pred)
    present = list(range(C - 1))  # class 4 is in neither map: NaN, left out of the mean
    iou = seg.per_class_iou(truth, pred, C, IGNORE)
    np.testing.assert_allclose(iou[:C - 1], skm.jaccard_score(t, p, labels=present,
                                                              average=None))
    assert np.isnan(iou[C - 1])
    assert seg.mean_iou(truth, pred, C, IGNORE) == pytest.approx(
        skm.jaccard_score(t, p, labels=present, average="macro"))
    assert seg.pixel_accuracy(truth, pred, C, IGNORE) == pytest.approx(
        skm.accuracy_score(t, p))
    np.testing.assert_allclose(seg.dice(truth, pred, C, IGNORE, average=None)[:C - 1],
                               skm.f1_score(t, p, labels=present, average=None))
    report = seg.evaluate(truth, pred, C, IGNORE, class_names="abcde")
    assert sorted(report["per_class_iou"]) == ["a", "b", "c", "d"]
    assert report["mean_dice"] == pytest.approx(
        skm.f1_score(t, p, labels=present, average="macro"))


def test_streaming_metric_agrees_with_keras_mean_iou(maps):
    truth, pred = maps
    probs = np.asarray(keras.ops.one_hot(pred, C)) * 0.8 + 0.04
    ours = seg.MeanIoU(C, ignore_index=IGNORE)
    reference = keras.metrics.MeanIoU(C, ignore_class=IGNORE, sparse_y_pred=False)
    for batch in range(len(truth)):
        ours.update_state(truth[batch], probs[batch])
        reference.update_state(truth[batch], probs[batch])
    assert float(ours.result()) == pytest.approx(float(reference.result()), abs=1e-6)
    assert float(ours.result()) == pytest.approx(seg.mean_iou(truth, pred, C, IGNORE),
                                                 abs=1e-6)
    restored = seg.MeanIoU.from_config(ours.get_config())
    assert (restored.num_classes, restored.ignore_index) == (C, IGNORE)
    ours.reset_state()
    assert float(ours.result()) == 0.0


def test_streaming_metric_in_fit_and_evaluate():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(8, 8, 8, 3)).astype("float32")
    y = rng.integers(0, 3, (8, 8, 8))
    y[:, :, 0] = -1  # ignored
    inputs = keras.Input((8, 8, 3))
    model = keras.Model(inputs, keras.layers.Conv2D(3, 1, activation="softmax")(inputs))
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(ignore_class=-1),
                  metrics=[seg.MeanIoU(3, ignore_index=-1)])
    model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    logged = model.evaluate(x, y, batch_size=3, verbose=0, return_dict=True)["mean_iou"]
    expected = seg.mean_iou(y, model.predict(x, verbose=0), 3, ignore_index=-1)
    assert logged == pytest.approx(expected, abs=1e-5)


def test_bad_input_names_the_sample():
    truth = np.zeros((4, 6, 6), int)
    truth[2, 1, 1] = 7
    with pytest.raises(ValueError, match=r"y_true: sample 2 holds labels \[7\].*\[0, 5\)"):
        seg.confusion_matrix(truth, np.zeros_like(truth), C)
    with pytest.raises(ValueError, match=r"y_true \(4, 6, 6\), y_pred \(4, 5, 6\)"):
        seg.mean_iou(np.zeros((4, 6, 6), int), np.zeros((4, 5, 6), int), C)
    with pytest.raises(ValueError, match="3 class scores.*num_classes=5"):
        seg.mean_iou(np.zeros((4, 6, 6), int), np.zeros((4, 6, 6, 3)), C)
    with pytest.raises(ValueError, match=r"y_pred: position \(0, 0\) holds labels \[-2\]"):
        seg.pixel_accuracy(np.zeros((6, 6), int), np.full((6, 6), -2), C)
    with pytest.raises(ValueError, match="num_classes"):
        seg.MeanIoU(0)
