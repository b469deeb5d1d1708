"""Real photos that ship with scikit-image, as small datasets and augmented crops.

Nothing downloads: every image here is in scikit-image's wheel (``skimage.data``).

- :func:`load_textures`: a texture classification task. Each class is one
  single-texture photo (brick wall, grass, gravel, the moon's surface, the Hubble deep
  field), cut on a grid into non-overlapping square patches; the patches of the left
  half of each photo are the training set and those of the right half the test set,
  so no test patch shares a pixel with a training patch.
- :func:`load_faces`: faces against non-faces, the 200 25x25 crops of
  ``skimage.data.lfw_subset()`` (100 of each), split in halves stratified by class.
- :func:`photo_crops`: random crops, flips and colour jitter of the colour photos
  (astronaut, chelsea the cat, coffee, rocket, ...), resized to a square: real
  inputs for export checks and int8 calibration.
- :func:`photo_dataset`: either task as a :class:`kvision.data.Dataset` (tf.data),
  the form the rest of kvision takes.

Images are float32 pixels in ``[0, 255]``, ``(N, H, W, channels)``; labels int64.
The grey photos are repeated over 3 channels by default, so colour is no cue.
"""

from __future__ import annotations

import numpy as np

TEXTURES = ("brick", "grass", "gravel", "moon", "hubble_deep_field")
FACE_CLASSES = ("non-face", "face")
COLOUR_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field",
                 "immunohistochemistry", "retina")
DATASETS = ("textures", "faces")


def _skimage_data():
    try:
        import skimage.data
    except ImportError:
        raise ModuleNotFoundError("kvision.data.photos reads scikit-image's sample photos: "
                                  "pip install scikit-image") from None
    return skimage.data


def load_photo(name):
    """The scikit-image photo ``name`` as float32 ``(H, W, 3)`` pixels in [0, 255]
    (grey photos repeated over 3 channels, an alpha channel dropped)."""
    data = _skimage_data()
    if not isinstance(name, str) or name.startswith("_") or not callable(
            getattr(data, name, None)):
        raise ValueError(f"No photo {name!r} in skimage.data; photos used here: "
                         f"{', '.join(TEXTURES + COLOUR_PHOTOS)}.")
    image = np.asarray(getattr(data, name)())
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    if image.ndim != 3 or image.shape[-1] not in (3, 4):
        raise ValueError(f"skimage.data.{name}() is not an image (shape {image.shape}).")
    image = image[..., :3]
    if image.dtype.kind == "f":  # [0, 1] floats
        image = image * 255.0
    return image.astype("float32")


def _resize(images, size):
    """``(N, h, w, C)`` -> ``(N, size, size, C)`` float32, bilinear with antialiasing."""
    import keras

    if images.shape[1:3] == (size, size):
        return images.astype("float32")
    out = keras.ops.image.resize(images.astype("float32"), (size, size),
                                 interpolation="bilinear", antialias=True)
    return np.clip(keras.ops.convert_to_numpy(out), 0.0, 255.0).astype("float32")


def _channels(x, channels):
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (grey) or 3 (RGB), got {channels!r}.")
    if channels == 1:
        return x.mean(axis=-1, keepdims=True).astype("float32") if x.shape[-1] == 3 else x
    return np.repeat(x, 3, axis=-1) if x.shape[-1] == 1 else x


def _check_size(value, what, minimum=8):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) \
            or value < minimum:
        raise ValueError(f"{what} must be an integer >= {minimum}, got {value!r}.")
    return int(value)


# --- textures -------------------------------------------------------------------------

def _grid(photo, patch_size):
    """Non-overlapping ``patch_size`` squares of ``photo`` on a grid, as
    ``(patches, columns)``: the column index of each patch's grid cell."""
    rows, cols = photo.shape[0] // patch_size, photo.shape[1] // patch_size
    patches, columns = [], []
    for r in range(rows):
        for c in range(cols):
            patches.append(photo[r * patch_size:(r + 1) * patch_size,
                                 c * patch_size:(c + 1) * patch_size])
            columns.append(c)
    return np.stack(patches), np.asarray(columns), cols


def load_textures(*, patch_size=64, image_size=None, channels=3, classes=TEXTURES,
                  grey=True):
    """Texture patches of scikit-image photos, split by region.

    Each photo of ``classes`` is cut into non-overlapping ``patch_size`` squares on a
    grid; the grid columns of its left half give the training patches, those of the
    right half the test patches (a photo with an odd number of columns gives its
    middle column to neither), so train and test never overlap. Each class keeps as
    many patches per split as the smallest class has, taken in grid order.

    Args:
        patch_size: side of the square patches cut from the photos, in pixels.
        image_size: side the patches are resized to (default: ``patch_size``).
        channels: 3 (RGB) or 1.
        classes: names of ``skimage.data`` photos, one class each.
        grey: convert colour photos to grey first, so that no class is told apart
            by colour alone (brick, grass, gravel and moon are grey photos).
    Returns:
        ``(x_train, y_train), (x_test, y_test)``: float32 ``(N, S, S, channels)``
        pixels in ``[0, 255]`` and int64 labels indexing ``classes``.
    """
    patch_size = _check_size(patch_size, "patch_size")
    size = patch_size if image_size is None else _check_size(image_size, "image_size")
    classes = tuple(classes)
    if len(classes) < 2:
        raise ValueError(f"classes must name at least 2 photos, got {classes!r}.")
    splits = []
    for name in classes:
        photo = load_photo(name)
        if grey:
            photo = np.repeat(photo.mean(-1, keepdims=True), 3, axis=-1)
        if min(photo.shape[:2]) < 2 * patch_size:
            raise ValueError(f"patch_size={patch_size} is too large for {name!r} "
                             f"({photo.shape[0]}x{photo.shape[1]}): a split needs a patch.")
        patches, columns, cols = _grid(photo, patch_size)
        splits.append((patches[columns < cols // 2], patches[columns >= (cols + 1) // 2]))
    n_train = min(len(train) for train, _ in splits)
    n_test = min(len(test) for _, test in splits)
    x_train = np.concatenate([train[:n_train] for train, _ in splits])
    x_test = np.concatenate([test[:n_test] for _, test in splits])
    y_train = np.repeat(np.arange(len(classes), dtype="int64"), n_train)
    y_test = np.repeat(np.arange(len(classes), dtype="int64"), n_test)
    x_train = _channels(_resize(x_train, size), channels)
    x_test = _channels(_resize(x_test, size), channels)
    return (x_train, y_train), (x_test, y_test)


# --- faces ----------------------------------------------------------------------------

def load_faces(*, image_size=64, channels=3, test_fraction=0.5, seed=0):
    """Faces against non-faces: the 200 grey 25x25 crops of ``skimage.data.lfw_subset()``
    (the first 100 are faces from Labeled Faces in the Wild, the last 100 other crops).

    The split is stratified and fixed by ``seed``: ``test_fraction`` of each class is
    held out. Labels: 0 non-face, 1 face (:data:`FACE_CLASSES`).
    Returns ``(x_train, y_train), (x_test, y_test)`` as :func:`load_textures` does,
    images resized to ``image_size`` (bilinear).
    """
    from kvision.data.digits import split_indices

    size = _check_size(image_size, "image_size")
    raw = np.asarray(_skimage_data().lfw_subset(), dtype="float32")
    if raw.shape[0] != 200:
        raise ValueError(f"skimage.data.lfw_subset() has {raw.shape[0]} images; 200 "
                         f"expected (100 faces, then 100 non-faces).")
    labels = np.repeat(np.array([1, 0], dtype="int64"), 100)
    x = _resize(raw[..., None] * 255.0, size)
    x = _channels(x, channels)
    train, test = split_indices(labels, test_fraction, seed)
    return (x[train], labels[train]), (x[test], labels[test])


# --- crops of the colour photos ---------------------------------------------------------

def _jitter(crop, rng, brightness, contrast, saturation):
    """Random brightness (added), contrast and saturation (scaled) of a [0, 255] crop."""
    mean = crop.mean()
    crop = (crop - mean) * rng.uniform(1 - contrast, 1 + contrast) + mean
    grey = crop.mean(-1, keepdims=True)
    crop = (crop - grey) * rng.uniform(1 - saturation, 1 + saturation) + grey
    crop = crop + rng.uniform(-brightness, brightness) * 255.0
    return np.clip(crop, 0.0, 255.0)


def photo_crops(n, size=224, *, seed=0, photos=COLOUR_PHOTOS, scale=(0.25, 1.0),
                flip=True, brightness=0.1, contrast=0.2, saturation=0.2):
    """``n`` augmented crops of scikit-image's colour photos, ``(n, size, size, 3)``.

    Crop ``i`` comes from photo ``i % len(photos)``: a random square whose side is a
    fraction in ``scale`` of the photo's shorter side, flipped left-right with
    probability 1/2 (``flip``), with random brightness, contrast and saturation
    (``(1 - f, 1 + f)`` factors; brightness adds up to ``f * 255``), resized to
    ``size`` (bilinear, antialiased). Different seeds give different crops: use
    one seed to calibrate and another to check. Float32 whole-number pixels in
    ``[0, 255]`` (as decoded uint8 photos are).
    """
    n = _check_size(n, "n", minimum=1)
    size = _check_size(size, "size")
    if not 0.0 < scale[0] <= scale[1] <= 1.0:
        raise ValueError(f"scale must be (low, high) with 0 < low <= high <= 1, "
                         f"got {scale}.")
    from PIL import Image  # (scikit-image depends on Pillow)

    sources = [load_photo(name).astype("uint8") for name in photos]
    rng = np.random.default_rng(seed)
    crops = []
    for i in range(n):
        photo = sources[i % len(sources)]
        side = max(8, int(rng.uniform(*scale) * min(photo.shape[:2])))
        top = rng.integers(0, photo.shape[0] - side + 1)
        left = rng.integers(0, photo.shape[1] - side + 1)
        crop = Image.fromarray(photo[top:top + side, left:left + side])
        # Pillow's bilinear filter widens with the scale factor: antialiased.
        crop = np.asarray(crop.resize((size, size), Image.BILINEAR), dtype="float32")
        if flip and rng.random() < 0.5:
            crop = crop[:, ::-1]
        # Whole pixel values, as a decoded photo (uint8) has.
        crops.append(np.round(_jitter(crop, rng, brightness, contrast, saturation)))
    return np.stack(crops).astype("float32")


# --- as a kvision Dataset ---------------------------------------------------------------

def photo_dataset(name, **kwargs):
    """``"textures"`` (:func:`load_textures`) or ``"faces"`` (:func:`load_faces`) as a
    :class:`kvision.data.Dataset` of unbatched ``(image, label)`` tf.data examples;
    ``kwargs`` go to the loader."""
    import tensorflow as tf

    from kvision.data.sources import Dataset

    if name not in DATASETS:
        raise ValueError(f"Unknown photo dataset {name!r}; expected one of {DATASETS}.")
    loader, names = ((load_textures, tuple(kwargs.get("classes", TEXTURES)))
                     if name == "textures" else (load_faces, FACE_CLASSES))
    (x_train, y_train), (x_test, y_test) = loader(**kwargs)
    how = ("the right half of each photo (no overlap with training patches)"
           if name == "textures" else f"{kwargs.get('test_fraction', 0.5):g} of each class")
    return Dataset(train=tf.data.Dataset.from_tensor_slices((x_train, y_train)),
                   test=tf.data.Dataset.from_tensor_slices((x_test, y_test)),
                   class_names=names, num_train=len(x_train), num_test=len(x_test),
                   source=f"skimage.data:{name}", image_size=tuple(x_train.shape[1:3]),
                   channels=int(x_train.shape[-1]), test_split=how)


def per_class(x, y, n, *, seed=0):
    """A seeded subset of ``n`` examples of every class of ``(x, y)``."""
    rng = np.random.default_rng(seed)
    keep = []
    for label in np.unique(y):
        idx = np.flatnonzero(y == label)
        if len(idx) < n:
            raise ValueError(f"Class {label} has {len(idx)} examples, fewer than n={n}.")
        keep.extend(rng.choice(idx, n, replace=False))
    keep = np.sort(np.asarray(keep))
    return x[keep], y[keep]
