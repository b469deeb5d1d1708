"""Segmentation losses against Keras' own losses and scikit-learn's F1 (= Dice)."""

import numpy as np
import pytest
from sklearn.metrics import f1_score

import keras
from kvision.losses.segmentation import (DiceLoss, FocalLoss, PixelCrossEntropy,
                                         check_label_maps)

def _fixed_inputs(seed=0):
    """Labels, logits and probabilities every test shares, drawn once from their own
    generator; a test that needs more draws from its own seeded one, so what any test
    sees does not depend on which tests ran before it."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, (2, 6, 5))
    logits = rng.normal(size=(2, 6, 5, 4)).astype("float32")
    return labels, logits, np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)


LABELS, LOGITS, PROBS = _fixed_inputs()


def test_pixel_cross_entropy_is_sparse_categorical_cross_entropy():
    expected = keras.losses.SparseCategoricalCrossentropy()(LABELS, PROBS)
    np.testing.assert_allclose(PixelCrossEntropy()(LABELS, PROBS), expected, rtol=1e-5)
    logits = PixelCrossEntropy(from_logits=True)(LABELS[..., None], LOGITS)
    np.testing.assert_allclose(logits, expected, rtol=1e-5)


def test_class_weights_weight_each_pixel_by_its_true_class():
    weights = np.array([0.5, 2.0, 1.0, 3.0], "float32")
    expected = keras.losses.SparseCategoricalCrossentropy()(
        LABELS, PROBS, sample_weight=weights[LABELS])
    got = PixelCrossEntropy(class_weights=weights)(LABELS, PROBS)
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_ignored_pixels_add_nothing():
    labels = LABELS.copy()
    labels[0, :3] = 255
    got = PixelCrossEntropy(ignore_index=255)(labels, PROBS)
    valid = labels != 255
    per_image = []
    for b in range(2):  # Keras' loss on the valid pixels of each image, then the mean
        per_image.append(keras.losses.SparseCategoricalCrossentropy()(
            labels[b][valid[b]], PROBS[b][valid[b]]))
    np.testing.assert_allclose(got, np.mean(per_image), rtol=1e-5)
    changed = PROBS.copy()
    changed[0, :3] = np.roll(changed[0, :3], 1, axis=-1)  # predictions there do not count
    np.testing.assert_allclose(PixelCrossEntropy(ignore_index=255)(labels, changed), got,
                               rtol=1e-6)


def test_binary_sigmoid_output_is_binary_cross_entropy():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, (2, 4, 4))
    probs = rng.uniform(0.05, 0.95, (2, 4, 4, 1)).astype("float32")
    expected = keras.losses.BinaryCrossentropy()(labels[..., None].astype("float32"), probs)
    np.testing.assert_allclose(PixelCrossEntropy()(labels, probs), expected, rtol=1e-5)


def test_dice_of_hard_predictions_is_one_minus_mean_f1():
    predicted = np.random.default_rng(2).integers(0, 4, LABELS.shape)
    onehot = np.eye(4, dtype="float32")[predicted]
    got = DiceLoss(smooth=1e-6)(LABELS, onehot)
    f1 = [f1_score(LABELS[b].ravel(), predicted[b].ravel(), labels=range(4), average=None,
                   zero_division=1.0).mean() for b in range(2)]
    np.testing.assert_allclose(got, 1 - np.mean(f1), atol=1e-5)
    perfect = np.eye(4, dtype="float32")[LABELS]
    assert float(DiceLoss()(LABELS, perfect)) < 1e-6


def test_focal_loss_is_keras_categorical_focal_cross_entropy():
    onehot = np.eye(4, dtype="float32")[LABELS]
    expected = keras.losses.CategoricalFocalCrossentropy(alpha=1.0, gamma=2.0)(onehot, PROBS)
    np.testing.assert_allclose(FocalLoss(gamma=2.0)(LABELS, PROBS), expected, rtol=1e-5)
    np.testing.assert_allclose(FocalLoss(gamma=0.0)(LABELS, PROBS),
                               PixelCrossEntropy()(LABELS, PROBS), rtol=1e-6)


def test_losses_serialize():
    loss = PixelCrossEntropy(class_weights=[1, 2, 3, 4], ignore_index=255)
    again = keras.losses.deserialize(keras.losses.serialize(loss))
    assert again.class_weights == [1.0, 2.0, 3.0, 4.0] and again.ignore_index == 255


def test_bad_label_maps_name_the_sample():
    with pytest.raises(ValueError, match=r"\(2, 6, 5\) do not match predictions"):
        PixelCrossEntropy()(LABELS, PROBS[:, :5])
    labels = LABELS.copy()
    labels[1, 2, 2] = 7
    with pytest.raises(ValueError, match=r"sample 1 has labels \[7\] outside \[0, 4\)"):
        DiceLoss()(labels, PROBS)
    labels[1, 2, 2] = 255
    with pytest.raises(ValueError, match="sample 1 has labels"):
        FocalLoss()(labels, PROBS)
    FocalLoss(ignore_index=255)(labels, PROBS)  # the ignore label is allowed
    images = [np.zeros((6, 5, 3)), np.zeros((6, 4, 3))]
    with pytest.raises(ValueError, match=r"sample 1 has a mask of \(6, 5\) for an image of "
                                         r"\(6, 4\)"):
        check_label_maps(LABELS, 4, images=images)
    images = [np.zeros((6, 5, 3)), np.zeros((6, 5, 1))]
    with pytest.raises(ValueError, match="sample 1's image has 1 channel"):
        check_label_maps(LABELS, 4, images=images, channels=3)


def test_bad_labels_stop_fit_instead_of_becoming_zero_targets():
    """In fit's compiled step the labels are symbolic: an out-of-range label must still
    stop training (it would otherwise be an all-zero one-hot row, a silent wrong
    target), while the ignore label trains."""
    import tensorflow as tf

    inputs = keras.Input((6, 5, 3))
    model = keras.Model(inputs, keras.layers.Conv2D(4, 1, activation="softmax")(inputs))
    x = np.random.default_rng(3).normal(size=(2, 6, 5, 3)).astype("float32")
    labels = LABELS.copy()
    labels[1, 3, 1] = 9
    model.compile("sgd", loss=PixelCrossEntropy())
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"labels outside \[0, 4\)[\s\S]*9"):
        model.fit(x, labels, batch_size=2, epochs=1, verbose=0)
    labels[1, 3, 1] = 255
    model.compile("sgd", loss=PixelCrossEntropy(ignore_index=255))
    history = model.fit(x, labels, batch_size=2, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
