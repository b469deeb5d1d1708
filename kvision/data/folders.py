"""Image folders: ``root/class_name/*.jpg`` listed, checked, decoded and resized.

The layout, class order and pixel values follow
``keras.utils.image_dataset_from_directory`` (``shuffle=False``, bilinear resize, no
aspect-preserving crop): class names are the sorted subfolder names (hidden ones
skipped), files are found recursively inside each class folder in sorted order, and
the extensions are .jpg .jpeg .png .gif .bmp in any case. Unlike Keras, every file is
decoded once while listing, so a corrupt or non-image file is reported by its path
instead of stopping a training run with a bare TensorFlow decode error.
"""

from __future__ import annotations

import os
import warnings

import numpy as np

IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".png")
ON_CORRUPT = ("warn", "error", "skip")
LAYOUT = ("root/<class_name>/<image> with one subfolder per class, images ending in "
          + " ".join(IMAGE_EXTENSIONS))


class CorruptImageWarning(UserWarning):
    """Some files in an image folder could not be decoded and were skipped."""


class TooFewImagesWarning(UserWarning):
    """A class has no image on one side of the train/test split."""


def as_size(image_size):
    """``image_size`` as ``(height, width)``: an int means a square."""
    try:
        size = (image_size, image_size) if np.isscalar(image_size) else tuple(image_size)
        valid = len(size) == 2 and all(int(s) == s and s > 0 for s in size)
    except (TypeError, ValueError):
        valid = False
    if not valid or isinstance(image_size, (str, bytes)):
        raise ValueError(f"image_size must be a positive int or (height, width), "
                         f"got {image_size!r}.")
    return int(size[0]), int(size[1])


def _check_channels(channels):
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels!r}.")


# -- listing -----------------------------------------------------------------------
def class_folders(root):
    """Sorted names of the non-hidden subfolders of ``root``."""
    return sorted(name for name in os.listdir(root)
                  if os.path.isdir(os.path.join(root, name)) and not name.startswith("."))


def _files_under(folder):
    """Image files under ``folder``, recursively, in Keras' order."""
    found = []
    for dirpath, _, files in sorted(os.walk(folder), key=lambda entry: entry[0]):
        found += [os.path.join(dirpath, name) for name in sorted(files)
                  if name.lower().endswith(IMAGE_EXTENSIONS)]
    return found


def list_images(root, on_corrupt="warn", *, class_names=None, verbose=False):
    """Every image under ``root/<class_name>/``, checked to decode.

    Returns ``(paths, labels, class_names)``: a list of file paths, an int64 array of
    labels (indices into ``class_names``) and the tuple of class names, which are
    the sorted subfolder names unless ``class_names`` gives them (then a class may
    have no folder, and a folder not named there is an error).
    ``on_corrupt``: "warn" skips files that do not decode with a
    :class:`CorruptImageWarning` listing their paths, "skip" skips them silently,
    "error" raises ``ValueError`` listing them.
    """
    if on_corrupt not in ON_CORRUPT:
        raise ValueError(f"on_corrupt must be one of {ON_CORRUPT}, got {on_corrupt!r}.")
    root = os.fspath(root)
    if not os.path.exists(root):
        raise FileNotFoundError(f"No image folder at {root!r}; expected {LAYOUT}.")
    if not os.path.isdir(root):
        raise ValueError(f"{root!r} is a file, not a folder; expected {LAYOUT}.")
    folders = class_folders(root)
    if class_names is None:
        class_names = folders
    elif set(folders) - set(class_names):
        raise ValueError(f"Class folders {sorted(set(folders) - set(class_names))} in "
                         f"{root!r} are not among the class names {list(class_names)}.")
    if not folders:
        raise ValueError(f"No class folders in {root!r}; expected {LAYOUT}.")
    paths, labels = [], []
    for label, name in enumerate(class_names):
        files = _files_under(os.path.join(root, name)) if name in folders else []
        paths += files
        labels += [label] * len(files)
    if not paths:
        raise ValueError(f"No images in the class folders {folders} of {root!r}; "
                         f"expected {LAYOUT}.")
    bad = set(find_corrupt(paths, verbose=verbose))
    if bad:
        _report_corrupt(sorted(bad), root, on_corrupt)
        keep = [i for i, path in enumerate(paths) if path not in bad]
        paths, labels = [paths[i] for i in keep], [labels[i] for i in keep]
        if not paths:
            raise ValueError(f"None of the images under {root!r} could be decoded.")
    return paths, np.asarray(labels, dtype="int64"), tuple(class_names)


def find_corrupt(paths, verbose=False):
    """The paths among ``paths`` that cannot be read and decoded as an image.

    One parallel ``tf.data`` pass: a file that fails is dropped by ``ignore_errors``,
    so the corrupt ones are those missing from the output.
    """
    import tensorflow as tf

    def decodes(path):
        image = tf.io.decode_image(tf.io.read_file(path), expand_animations=False)
        return path, tf.shape(image)   # using the shape keeps the decode in the graph

    dataset = (tf.data.Dataset.from_tensor_slices(list(paths))
               .map(decodes, num_parallel_calls=tf.data.AUTOTUNE)
               .ignore_errors())
    iterator = dataset.as_numpy_iterator()
    if verbose:
        from tqdm.auto import tqdm

        iterator = tqdm(iterator, total=len(paths), desc="checking images", unit="img")
    good = {path.decode() for path, _ in iterator}
    return [path for path in paths if path not in good]


def _report_corrupt(bad, root, on_corrupt):
    listing = "\n  ".join(bad)
    message = f"{len(bad)} file(s) under {root!r} are not decodable images:\n  {listing}"
    if on_corrupt == "error":
        raise ValueError(message + "\n(pass on_corrupt='warn' or 'skip' to leave them out)")
    if on_corrupt == "warn":
        warnings.warn(message + "\nThey were skipped.", CorruptImageWarning, stacklevel=3)


# -- the split ---------------------------------------------------------------------
def class_counts(labels, num_classes):
    """Images per class: a tuple of ``num_classes`` ints (labels are indices)."""
    return tuple(int(n) for n in np.bincount(np.asarray(labels, dtype="int64"),
                                             minlength=num_classes))


def warn_unsplit_classes(class_names, train_counts, test_counts, root, how):
    """A :class:`TooFewImagesWarning` naming every class left with no training or
    no test image by the split (``how`` says which split, for the message)."""
    short = [f"{name!r} ({train} train, {test} test)"
             for name, train, test in zip(class_names, train_counts, test_counts)
             if train == 0 or test == 0]
    if short:
        warnings.warn(f"{len(short)} class(es) under {root!r} have too few images to "
                      f"split into train and test (test split: {how}): "
                      f"{', '.join(short)}. A class with no training image cannot be "
                      f"learnt; one with no test image is not measured.",
                      TooFewImagesWarning, stacklevel=4)


# -- decoding ----------------------------------------------------------------------
def decode(contents, channels=3):
    """Encoded bytes (a scalar string tensor) -> uint8 ``(H, W, channels)``.

    The same ``tf.io.decode_image`` call as Keras' directory loader. TensorFlow's GIF
    and BMP decoders only give colour, so those are converted to grayscale after.
    """
    import tensorflow as tf

    _check_channels(channels)
    if channels == 3:
        image = tf.io.decode_image(contents, channels=3, expand_animations=False)
    else:
        colour_only = tf.logical_or(tf.strings.substr(contents, 0, 3) == "GIF",
                                    tf.strings.substr(contents, 0, 2) == "BM")
        image = tf.cond(
            colour_only,
            lambda: tf.image.rgb_to_grayscale(
                tf.io.decode_image(contents, channels=3, expand_animations=False)),
            lambda: tf.io.decode_image(contents, channels=1, expand_animations=False))
    image.set_shape([None, None, channels])
    return image


def resize(image, image_size):
    """An ``(H, W, C)`` image -> float32 ``(height, width, C)``, bilinear, no crop:
    what ``image_dataset_from_directory`` does with its default ``interpolation``."""
    import tensorflow as tf

    size = as_size(image_size)
    image = tf.image.resize(image, size, method="bilinear")
    image.set_shape([size[0], size[1], image.shape[-1]])
    return tf.cast(image, tf.float32)


def decode_and_resize(contents, image_size, channels=3):
    """Encoded bytes -> float32 ``(height, width, channels)`` pixels in [0, 255]."""
    return resize(decode(contents, channels), image_size)


def load_image(path, image_size, channels=3):
    """One image file as float32 ``(height, width, channels)`` in [0, 255], decoded
    and resized exactly as :func:`image_dataset` does. ``image_size``: int or (h, w).
    Raises ``FileNotFoundError`` for a missing file, ``ValueError`` for one that does
    not decode."""
    import tensorflow as tf

    path = os.fspath(path)
    size = as_size(image_size)
    _check_channels(channels)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No image file at {path!r}.")
    try:
        image = decode_and_resize(tf.io.read_file(path), size, channels)
    except tf.errors.OpError as err:
        raise ValueError(f"Cannot decode {path!r}: expected a JPEG, PNG, GIF or BMP "
                         f"image ({_plain_reason(err)}).") from None
    return image.numpy()


def _plain_reason(err):
    """The first sentence of a TensorFlow error, without its ``{{function_node …}}``
    and ``[Op:…]`` internals: "Unknown image file format"."""
    import re

    text = re.sub(r"\{\{.*?\}\}|\[Op:.*", "", err.message or "").strip()
    return text.split(". ")[0].rstrip(".") or type(err).__name__


def image_dataset(paths, labels, image_size, channels=3):
    """A ``tf.data.Dataset`` of ``(float32 (height, width, channels) image, int64
    label)`` pairs, one per file, in the order given, decoded in parallel."""
    import tensorflow as tf

    size = as_size(image_size)
    _check_channels(channels)

    def load(path, label):
        return decode_and_resize(tf.io.read_file(path), size, channels), label

    dataset = tf.data.Dataset.from_tensor_slices(
        (tf.constant(list(paths), tf.string), tf.constant(np.asarray(labels), tf.int64)))
    return dataset.map(load, num_parallel_calls=tf.data.AUTOTUNE)
