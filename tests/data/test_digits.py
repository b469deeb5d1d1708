import numpy as np
import pytest

from kvision.data import digits


def test_embedded_copy_equals_scikit_learn():
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    reference = sklearn_datasets.load_digits()
    images, labels = digits.load_raw()
    np.testing.assert_array_equal(images, reference.images)
    np.testing.assert_array_equal(labels, reference.target)


def test_split_is_fixed_stratified_and_disjoint():
    (x_train, y_train), (x_test, y_test) = digits.load_digits()
    assert x_train.shape == (1347, 32, 32, 1) and x_test.shape == (450, 32, 32, 1)
    assert 0 <= x_train.min() and x_train.max() == 255.0
    counts = np.bincount(y_test, minlength=10)
    assert counts.min() >= 44 and counts.max() <= 46
    _, labels = digits.load_raw()
    train_idx, test_idx = digits.split_indices(labels, 0.25, 0)
    assert not set(train_idx) & set(test_idx)
    again = digits.split_indices(labels, 0.25, 0)
    np.testing.assert_array_equal(again[1], test_idx)
    assert not np.array_equal(digits.split_indices(labels, 0.25, 1)[1], test_idx)


def test_resize_keeps_the_digit():
    images, _ = digits.load_raw()
    big = digits.to_images(images[:5], image_size=32)[..., 0]
    # Block-averaging back to 8x8 recovers the original ink pattern.
    small = big.reshape(5, 8, 4, 8, 4).mean(axis=(2, 4)) * 16 / 255
    corr = np.corrcoef(small.ravel(), images[:5].ravel())[0, 1]
    assert corr > 0.95
    assert digits.to_images(images[:2], 32, channels=3).shape == (2, 32, 32, 3)
    with pytest.raises(ValueError, match="channels"):
        digits.to_images(images[:2], 32, channels=2)
