"""Where images come from: ``kvision.data.load(data)`` -> a :class:`Dataset`.

``data`` is one of

* ``"digits"``: the handwritten digits embedded in kvision, with their fixed
  stratified split (25% test; ``validation_split`` does not apply);
* a folder path, in one of two layouts:
  ``root/<class>/<image>`` (Keras' ``image_dataset_from_directory`` layout), split
  deterministically and stratified per class by ``validation_split`` and ``seed``; or
  ``root/<split>/<class>/<image>`` (TFDS' ``ImageFolder`` layout) with a ``train``
  split and a ``test``, ``validation`` or ``val`` split, used as they are, class names
  being the sorted union of the class folders of all splits, as ImageFolder's are
  (files are found recursively in either layout, as Keras does; ImageFolder itself
  looks only one level down);
* ``"tfds:NAME"`` or ``"tfds:NAME:SPLIT"``: a TensorFlow Datasets dataset, loaded as
  ``tfds.load(NAME, as_supervised=True)`` would, its ``train`` split for training and
  ``SPLIT`` (by default ``test``, else ``validation``, else the last
  ``validation_split`` of ``train``) held out. Downloading needs internet access.

Every example is ``(image, label)``: a float32 ``(height, width, channels)`` image with
pixels in [0, 255] (resized bilinearly, no crop) and an int64 label. ``image_size``
defaults to 32 for the digits, to the dataset's own size for a TFDS dataset whose
images all have one size, and otherwise to ``DEFAULT_IMAGE_SIZE`` (224, the usual
ImageNet backbone input).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np

from kvision.data import folders

DEFAULT_IMAGE_SIZE = 224
TEST_SPLITS = ("test", "validation", "val")
FORMS = ('"digits"',
         "the path of an image folder (root/<class>/<image> or root/<split>/<class>/<image>)",
         '"tfds:NAME" or "tfds:NAME:SPLIT" (a TensorFlow Datasets name)')


@dataclasses.dataclass(frozen=True)
class Dataset:
    """Train and test examples of one source, and what describes them.

    ``train`` and ``test`` are unbatched ``tf.data.Dataset`` s of ``(image, label)``:
    float32 ``(height, width, channels)`` pixels in [0, 255] and an int64 label.
    ``image_size`` is ``(height, width)``. ``train_files`` / ``test_files`` hold the
    file path of each example, in order, for folder sources (empty otherwise).
    ``train_counts`` / ``test_counts``: images per class, in ``class_names`` order,
    for folders and the digits (empty for TFDS, whose data would have to be read).
    """

    train: Any
    test: Any
    class_names: tuple
    num_train: int
    num_test: int
    source: str
    image_size: tuple
    channels: int = 3
    test_split: str = "test"
    train_files: tuple = ()
    test_files: tuple = ()
    train_counts: tuple = ()
    test_counts: tuple = ()

    @property
    def num_classes(self):
        return len(self.class_names)


def load(data, *, image_size=None, channels=3, validation_split=0.2, seed=0,
         on_corrupt="warn", max_examples=None, data_dir=None, verbose=False):
    """Load ``data`` (see the module docstring for its three forms) as a :class:`Dataset`.

    ``image_size``: int or ``(height, width)``. ``validation_split``/``seed``: the
    held-out fraction of each class for a one-level folder. ``on_corrupt``: what to do
    with undecodable files in a folder ("warn", "skip" or "error").
    ``max_examples``: keep at most this many examples of each split (a seeded random
    subset for folders and digits, the first ones for TFDS). ``data_dir``: where TFDS
    keeps its data.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels!r}.")
    if not 0.0 < validation_split < 1.0:
        raise ValueError(f"validation_split must be between 0 and 1, got {validation_split}.")
    if max_examples is not None and int(max_examples) < 1:
        raise ValueError(f"max_examples must be a positive int or None, got {max_examples}.")
    size = None if image_size is None else folders.as_size(image_size)
    if isinstance(data, str) and data == "digits":
        return _from_digits(size, channels, seed, max_examples)
    if isinstance(data, str) and data.startswith("tfds:"):
        return _from_tfds(data[len("tfds:"):], size, channels, validation_split,
                          max_examples, data_dir)
    if isinstance(data, (str, os.PathLike)) and os.path.isdir(data):
        return _from_folder(os.fspath(data), size or _default_size(), channels,
                            validation_split, seed, on_corrupt, max_examples, verbose)
    known = "\n  ".join(FORMS)
    raise ValueError(f"Unknown data {data!r}: it is not 'digits', not 'tfds:...', and no "
                     f"folder exists there. Expected one of:\n  {known}")


def _default_size():
    """The image size of sources whose images differ in size."""
    return (DEFAULT_IMAGE_SIZE, DEFAULT_IMAGE_SIZE)


def _subset(n, max_examples, seed):
    """Sorted positions of at most ``max_examples`` of ``n`` items, seeded."""
    if max_examples is None or n <= max_examples:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, int(max_examples), replace=False))


# -- digits ------------------------------------------------------------------------
def _from_digits(size, channels, seed, max_examples):
    import tensorflow as tf

    from kvision.data import digits

    size = size or (32, 32)
    if size[0] != size[1]:
        raise ValueError(f"The digits are square: image_size must be one int, got {size}.")
    (x_train, y_train), (x_test, y_test) = digits.load_digits(
        image_size=size[0], channels=channels, seed=seed)
    keep_train = _subset(len(x_train), max_examples, seed)
    keep_test = _subset(len(x_test), max_examples, seed)
    train = tf.data.Dataset.from_tensor_slices((x_train[keep_train], y_train[keep_train]))
    test = tf.data.Dataset.from_tensor_slices((x_test[keep_test], y_test[keep_test]))
    classes = len(digits.CLASS_NAMES)
    return Dataset(train, test, tuple(digits.CLASS_NAMES), len(keep_train), len(keep_test),
                   "digits", size, channels, "test (25% of each class, fixed)",
                   train_counts=folders.class_counts(y_train[keep_train], classes),
                   test_counts=folders.class_counts(y_test[keep_test], classes))


# -- folders -----------------------------------------------------------------------
def _from_folder(root, size, channels, validation_split, seed, on_corrupt, max_examples,
                 verbose):
    subfolders = folders.class_folders(root)
    test_name = next((name for name in TEST_SPLITS if name in subfolders), None)
    if "train" in subfolders and test_name is not None:
        # TFDS ImageFolder layout: every split's class folders name the classes
        names = sorted(set().union(*(folders.class_folders(os.path.join(root, split))
                                     for split in subfolders)))
        train_paths, train_labels, names = folders.list_images(
            os.path.join(root, "train"), on_corrupt, class_names=names, verbose=verbose)
        test_paths, test_labels, _ = folders.list_images(
            os.path.join(root, test_name), on_corrupt, class_names=names, verbose=verbose)
        described = f"{test_name} (its own folder)"
    else:
        from kvision.data.digits import split_indices

        paths, labels, names = folders.list_images(root, on_corrupt, verbose=verbose)
        train_idx, test_idx = split_indices(labels, validation_split, seed)
        train_paths, train_labels = [paths[i] for i in train_idx], labels[train_idx]
        test_paths, test_labels = [paths[i] for i in test_idx], labels[test_idx]
        described = f"{validation_split:g} of each class (seed {seed})"
        if not len(test_idx):
            counts = ", ".join(f"{name} {count}" for name, count in
                               zip(names, folders.class_counts(labels, len(names))))
            raise ValueError(f"No image of {root!r} is held out: {validation_split:g} of "
                             f"each class rounds to none ({counts} images). Add images, "
                             f"or give a folder with train/ and test/ class folders.")
    keep_train = _subset(len(train_paths), max_examples, seed)
    keep_test = _subset(len(test_paths), max_examples, seed)
    train_paths = tuple(train_paths[i] for i in keep_train)
    test_paths = tuple(test_paths[i] for i in keep_test)
    train_counts = folders.class_counts(train_labels[keep_train], len(names))
    test_counts = folders.class_counts(test_labels[keep_test], len(names))
    folders.warn_unsplit_classes(names, train_counts, test_counts, root, described)
    return Dataset(
        train=folders.image_dataset(train_paths, train_labels[keep_train], size, channels),
        test=folders.image_dataset(test_paths, test_labels[keep_test], size, channels),
        class_names=tuple(names), num_train=len(train_paths), num_test=len(test_paths),
        source=os.path.abspath(root), image_size=size, channels=channels,
        test_split=described, train_files=train_paths, test_files=test_paths,
        train_counts=train_counts, test_counts=test_counts)


# -- TensorFlow Datasets -----------------------------------------------------------
def _tfds_builder(name, data_dir):
    """``tfds.builder(name)`` with its data prepared; clear errors when it cannot be."""
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError as err:
        raise ValueError(f"Unknown TFDS dataset {name!r} ({str(err).splitlines()[0]}); "
                         f"see tfds.list_builders().") from None
    offline = ("Without internet access, put its images in a local folder "
               "(root/<class>/<image>.jpg) and pass that folder's path instead.")
    if not builder.is_prepared():
        hosts = _download_hosts(builder)
        if hosts and not any(_reachable(host) for host in hosts):
            # tfds would retry every file for minutes (3.5 min for mnist, measured).
            raise ConnectionError(
                f"The TFDS dataset {name!r} is not prepared in {builder.data_dir!r} and "
                f"its download hosts ({', '.join(hosts)}) cannot be reached. {offline}")
    try:
        builder.download_and_prepare()
    except Exception as err:  # offline: requests' ConnectionError, DNS, import errors
        raise ConnectionError(
            f"Could not download and prepare the TFDS dataset {name!r} "
            f"({type(err).__name__}: {str(err)[:300]}). {offline}") from err
    return builder


def _download_hosts(builder, limit=3):
    """The distinct hosts of ``builder``'s download URLs (its checksums), at most
    ``limit``; none when the builder does not list them."""
    from urllib.parse import urlsplit

    try:
        urls = list(builder.url_infos or ())
    except Exception:  # a builder without a checksums file
        return []
    hosts = dict.fromkeys(urlsplit(url).hostname for url in urls)
    return [host for host in hosts if host][:limit]


def _reachable(host, port=443, timeout=5.0) -> bool:
    """Whether a TCP connection to ``host:port`` opens within ``timeout`` seconds."""
    import socket

    try:
        socket.create_connection((host, port), timeout=timeout).close()
        return True
    except OSError:  # DNS failure, refused, unreachable, timed out
        return False


def _tfds_splits(available, requested, validation_split):
    """``(train_split, test_split)`` names for ``builder.as_dataset``."""
    if requested:
        base = requested.split("[")[0]
        if available and base not in available:
            raise ValueError(f"The dataset has no split {base!r}; it has {sorted(available)}.")
        return "train", requested
    if not available:   # split names not recorded (as when mocked): the usual ones
        return "train", "test"
    if "train" not in available:
        raise ValueError(f"The dataset has no 'train' split; it has {sorted(available)}. "
                         f"Use a folder instead.")
    test = next((name for name in TEST_SPLITS if name in available), None)
    if test is not None:
        return "train", test
    cut = 100 - int(round(validation_split * 100))
    return f"train[:{cut}%]", f"train[{cut}%:]"


def _to_channels(image, channels):
    """uint8 ``(H, W, c)`` with c in 1..4 -> ``(H, W, channels)``."""
    import tensorflow as tf

    have = image.shape[-1]
    if have in (2, 4):                       # drop the alpha channel
        image = image[..., :have - 1]
        have -= 1
    if have == channels:
        return image
    if channels == 3:
        return tf.image.grayscale_to_rgb(image)
    return tf.image.rgb_to_grayscale(image)


def _from_tfds(spec, size, channels, validation_split, max_examples, data_dir):
    import tensorflow as tf

    name, _, requested = spec.partition(":")
    if not name:
        raise ValueError(f"Expected 'tfds:NAME' or 'tfds:NAME:SPLIT', got 'tfds:{spec}'.")
    builder = _tfds_builder(name, data_dir)
    info = builder.info
    if not info.supervised_keys:
        raise ValueError(f"TFDS dataset {name!r} has no (image, label) supervised keys.")
    image_key, label_key = info.supervised_keys[:2]
    label_feature = info.features[label_key]
    if not hasattr(label_feature, "names"):
        raise ValueError(f"TFDS dataset {name!r}: its label {label_key!r} is not a "
                         f"class label.")
    image_shape = tuple(info.features[image_key].shape)
    if size is None:
        fixed = len(image_shape) == 3 and None not in image_shape[:2]
        size = tuple(int(s) for s in image_shape[:2]) if fixed else _default_size()
    train_split, test_split = _tfds_splits(list(info.splits.keys()), requested,
                                           validation_split)

    def prepare(image, label):
        image = folders.resize(_to_channels(image, channels), size)
        return image, tf.cast(label, tf.int64)

    def split(which):
        ds = builder.as_dataset(split=which, as_supervised=True, shuffle_files=False)
        if max_examples is not None:
            ds = ds.take(int(max_examples))
        ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
        count = int(ds.cardinality())
        if count < 0 and which in info.splits:
            count = min(info.splits[which].num_examples, max_examples or np.inf)
        return ds, int(count)

    train, num_train = split(train_split)
    test, num_test = split(test_split)
    return Dataset(train, test, tuple(label_feature.names), num_train, num_test,
                   f"tfds:{name}", size, channels, test_split)
