"""Augmentation with Keras' own preprocessing layers, applied in the tf.data pipeline."""

from __future__ import annotations

import keras


def geometric_augmentation(translation=0.1, rotation=0.04, zoom=0.1, seed=None):
    """Small random shifts, rotations and zooms (black fill): label-preserving for
    digits and most photos. ``rotation`` is a fraction of a full turn."""
    return keras.Sequential([
        keras.layers.RandomTranslation(translation, translation, fill_mode="constant",
                                       seed=seed),
        keras.layers.RandomRotation(rotation, fill_mode="constant", seed=seed),
        keras.layers.RandomZoom(zoom, fill_mode="constant", seed=seed),
    ], name="augmentation")


def photo_augmentation(flip=True, rotation=0.05, zoom=0.1, contrast=0.1, seed=None):
    """Label-preserving changes for photos: a horizontal flip (mirror images of cats
    are still cats; no vertical flip, the sky stays up), small rotations and zooms
    (reflected edges, as natural scenes continue past the frame) and a contrast
    change. Input and output: float pixels in [0, 255], ``(batch, H, W, C)``.
    ``rotation`` is a fraction of a full turn; a factor of 0 leaves its layer out.
    Only active when called with ``training=True``."""
    layers = []
    if flip:
        layers.append(keras.layers.RandomFlip("horizontal", seed=seed))
    if rotation:
        layers.append(keras.layers.RandomRotation(rotation, fill_mode="reflect", seed=seed))
    if zoom:
        layers.append(keras.layers.RandomZoom(zoom, fill_mode="reflect", seed=seed))
    if contrast:
        layers.append(keras.layers.RandomContrast(contrast, value_range=(0, 255), seed=seed))
    if not layers:
        raise ValueError("photo_augmentation needs at least one of flip, rotation, zoom, "
                         "contrast.")
    return keras.Sequential(layers, name="photo_augmentation")


def training_dataset(x, y, batch_size, augmentation=None, seed=0):
    """A shuffled, batched, augmented ``tf.data.Dataset`` of ``(x, y)`` arrays."""
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((x, y))
    ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True).batch(batch_size)
    if augmentation is not None:
        ds = ds.map(lambda images, labels: (augmentation(images, training=True), labels),
                    num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)
