"""Box regression losses against keras' own losses, numpy formulas and the GIoU paper."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from kvision.losses.detection import CIoULoss, GIoULoss, IoULoss, L2Loss, SmoothL1Loss


def boxes(rng, n):
    xy = rng.uniform(0, 20, (n, 2))
    return np.concatenate([xy, xy + rng.uniform(2, 10, (n, 2))], 1).astype("float32")


def np_aligned(a, b, mode):
    """GIoU / CIoU of box pairs written from the papers, float64."""
    a, b = a.astype("float64"), b.astype("float64")
    iw = np.clip(np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]), 0, None)
    ih = np.clip(np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]), 0, None)
    wa, ha = a[:, 2] - a[:, 0], a[:, 3] - a[:, 1]
    wb, hb = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    union = wa * ha + wb * hb - iw * ih
    iou = iw * ih / union
    cw = np.maximum(a[:, 2], b[:, 2]) - np.minimum(a[:, 0], b[:, 0])
    ch = np.maximum(a[:, 3], b[:, 3]) - np.minimum(a[:, 1], b[:, 1])
    if mode == "giou":
        return iou - (cw * ch - union) / (cw * ch)
    rho2 = ((a[:, :2] + a[:, 2:]) / 2 - (b[:, :2] + b[:, 2:]) / 2) ** 2
    v = 4 / math.pi ** 2 * (np.arctan(wa / ha) - np.arctan(wb / hb)) ** 2
    return iou - rho2.sum(1) / (cw ** 2 + ch ** 2) - v ** 2 / (1 - iou + v)


def test_coordinate_losses_match_keras_losses():
    rng = np.random.default_rng(0)
    y_true, y_pred = rng.normal(size=(2, 6, 4)), rng.normal(scale=2, size=(2, 6, 4))
    # Keras averages over the last axis; the box losses sum the 4 coordinates.
    mse = keras.losses.MeanSquaredError()(y_true, y_pred)
    np.testing.assert_allclose(L2Loss()(y_true, y_pred), 4 * mse, rtol=1e-5)
    for beta in (1.0, 0.5):  # smooth-L1(beta) = Huber(delta=beta) / beta
        huber = keras.losses.Huber(delta=beta)(y_true, y_pred)
        np.testing.assert_allclose(SmoothL1Loss(beta)(y_true, y_pred), 4 * huber / beta,
                                   rtol=1e-5)
    # sample_weight keeps the positives only; mean_with_sample_weight divides by them.
    weight = (rng.uniform(size=(2, 6)) > 0.5).astype("float32")
    smooth = np.where(np.abs(y_pred - y_true) < 1, 0.5 * (y_pred - y_true) ** 2,
                      np.abs(y_pred - y_true) - 0.5).sum(-1)
    loss = SmoothL1Loss(reduction="mean_with_sample_weight")(y_true, y_pred, weight)
    np.testing.assert_allclose(loss, (smooth * weight).sum() / weight.sum(), rtol=1e-5)


@pytest.mark.parametrize("loss, mode", [(GIoULoss(), "giou"), (CIoULoss(), "ciou")])
def test_iou_losses_match_paper_formulas(loss, mode):
    rng = np.random.default_rng(1)
    y_true, y_pred = boxes(rng, 16), boxes(rng, 16)
    expected = 1 - np_aligned(y_true, y_pred, mode)
    np.testing.assert_allclose(loss(y_true, y_pred), expected.mean(), rtol=1e-5)
    per_box = type(loss).from_config(loss.get_config() | {"reduction": None})
    np.testing.assert_allclose(per_box(y_true, y_pred), expected, atol=1e-5)


def test_giou_trains_disjoint_boxes_where_iou_has_no_gradient():
    target = tf.constant([[10.0, 10.0, 20.0, 20.0]])
    for loss, expect_gradient in ((IoULoss("iou"), False), (GIoULoss(), True)):
        box = tf.Variable([[0.0, 0.0, 4.0, 4.0]])  # far from the target
        with tf.GradientTape() as tape:
            value = loss(target, box)
        gradient = tape.gradient(value, box).numpy()
        assert bool(np.any(gradient != 0)) == expect_gradient
    optimizer = keras.optimizers.Adam(0.5)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            value = GIoULoss()(target, box)
        optimizer.apply_gradients([(tape.gradient(value, box), box)])
        return value

    for _ in range(60):
        value = step()
    assert float(value) < 0.1  # GIoU loss < 0.1: the box found the target


def test_degenerate_boxes_give_finite_losses_and_gradients():
    target = tf.constant([[5.0, 5.0, 15.0, 15.0], [0, 0, 0, 0]])
    box = tf.Variable([[5.0, 5.0, 5.0, 5.0], [0, 0, 0, 0]])  # zero-size predictions
    for loss in (GIoULoss(), CIoULoss(), IoULoss("diou")):
        with tf.GradientTape() as tape:
            value = loss(target, box)
        assert np.isfinite(float(value))
        assert np.all(np.isfinite(tape.gradient(value, box).numpy()))


def test_losses_serialize_and_load_in_safe_mode(tmp_path):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(4)])
    model.compile("sgd", loss=CIoULoss(format="center_xywh"))
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert isinstance(loaded.loss, CIoULoss) and loaded.loss.format == "center_xywh"
    restored = keras.losses.deserialize(keras.losses.serialize(SmoothL1Loss(beta=0.25)))
    assert restored.beta == 0.25
    with pytest.raises(ValueError, match="mode must be one of"):
        IoULoss("eiou")
    with pytest.raises(ValueError, match=r"shape \(\.\.\., 4\)"):
        L2Loss()(np.zeros((2, 3)), np.zeros((2, 3)))
