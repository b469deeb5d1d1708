"""The handwritten digits embedded in kvision: the default data of ``kvision train``.

``digits.npz`` is a copy of the 1,797 8x8 digit images (10 classes, ink 0..16) that
scikit-learn ships as ``sklearn.datasets.load_digits`` (the UCI "Optical Recognition
of Handwritten Digits" test set, CC BY 4.0), embedded so that kvision's main job runs
with no download and no scikit-learn. A test checks the copy equals scikit-learn's.
"""

from __future__ import annotations

import os

import numpy as np

PATH = os.path.join(os.path.dirname(__file__), "digits.npz")
CLASS_NAMES = tuple(str(i) for i in range(10))


def load_raw():
    """``(images, labels)``: ``(1797, 8, 8)`` uint8 ink levels 0..16, ``(1797,)`` labels."""
    with np.load(PATH) as data:
        return data["images"], data["labels"].astype("int64")


def split_indices(labels, test_fraction, seed):
    """A fixed stratified split: the same ``test_fraction`` of every class is held out."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}.")
    rng = np.random.default_rng(seed)
    train, test = [], []
    for label in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == label))
        n_test = int(round(len(idx) * test_fraction))
        test.extend(idx[:n_test])
        train.extend(idx[n_test:])
    return np.sort(np.array(train, dtype=np.int64)), np.sort(np.array(test, dtype=np.int64))


def to_images(raw, image_size=32, channels=1):
    """Ink levels 0..16 at 8x8 -> float32 pixels 0..255 at ``image_size`` (bilinear)."""
    import keras

    if int(image_size) < 8:
        raise ValueError(f"image_size must be at least 8, got {image_size}.")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}.")
    x = raw.astype("float32")[..., None] * (255.0 / 16.0)
    if image_size != 8:
        x = keras.ops.convert_to_numpy(
            keras.ops.image.resize(x, (image_size, image_size), interpolation="bilinear",
                                   antialias=False))
    x = np.clip(x, 0.0, 255.0)
    if channels == 3:
        x = np.repeat(x, 3, axis=-1)
    return x.astype("float32")


def load_digits(image_size=32, channels=1, test_fraction=0.25, seed=0):
    """The digits as ``(x_train, y_train), (x_test, y_test)``.

    Images are float32 pixels in ``[0, 255]`` of shape ``(N, image_size, image_size,
    channels)``; labels int64 in ``0..9``. The split is stratified and fixed by
    ``seed`` (the default gives 1,347 training and 450 test images).
    """
    images, labels = load_raw()
    train, test = split_indices(labels, test_fraction, seed)
    x = to_images(images, image_size, channels)
    return (x[train], labels[train]), (x[test], labels[test])
