"""Image folders: ``root/class_name/*.jpg`` listed, checked, decoded and resized.

The layout, class order and pixel values follow
``keras.utils.image_dataset_from_directory`` (``shuffle=False``, bilinear resize, no
aspect-preserving crop): class names are the sorted subfolder names (hidden ones
skipped), files are found recursively inside each class folder in sorted order, and
the extensions are .jpg .jpeg .png .gif .bmp in any case. Unlike Keras, every file is
decoded once while listing, so a corrupt or non-image file is reported by its path
instead of stopping a training run with a bare TensorFlow decode error.

Two things Keras' loader does not do (issue 21, hostile and odd files):

- A phone photo is seen upright: the EXIF orientation tag (1..8) of each file is
  read from its header with Pillow and applied after TensorFlow decodes it, as
  ``PIL.ImageOps.exif_transpose`` does. Pixels stay TensorFlow's (JPEG decoders
  differ by a few levels), so training, ``load_image`` and the SavedModel agree.
- A decompression bomb (a small file whose header declares hundreds of megapixels)
  is refused before it is decoded: :func:`read_header` checks the size Pillow reads
  lazily against :func:`max_pixels`, and :func:`decode` checks the size the bytes
  declare inside the graph too (:func:`checked_size`), so every TensorFlow decode
  path, the tf.data pipelines and the SavedModel's ``serve_image_bytes`` included,
  refuses it with a clear error instead of allocating gigabytes.
"""

from __future__ import annotations

import os
import re
import warnings

import numpy as np

IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".png")
# Pillow's own refusal threshold (2 x PIL.Image.MAX_IMAGE_PIXELS): a 13,000 x 13,000
# photo, 537 MB as RGB bytes. Change it with kvision.data.MAX_PIXELS or
# $KVISION_MAX_PIXELS.
DEFAULT_MAX_PIXELS = 178_956_970
MAX_PIXELS_VARIABLE = "KVISION_MAX_PIXELS"
ORIENTATION_TAG = 0x0112   # EXIF "Orientation"
ON_CORRUPT = ("warn", "error", "skip")
LAYOUT = ("root/<class_name>/<image> with one subfolder per class, images ending in "
          + " ".join(IMAGE_EXTENSIONS))


class CorruptImageWarning(UserWarning):
    """Some files in an image folder could not be decoded and were skipped."""


class TooFewImagesWarning(UserWarning):
    """A class has no image on one side of the train/test split."""


class ImageTooLargeError(ValueError):
    """An image file declares more pixels than :func:`max_pixels`: refused before
    decoding."""


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


# -- headers: size and orientation, read without decoding ---------------------------
def max_pixels():
    """The most pixels (width x height) an image file may declare: kvision.data's
    ``MAX_PIXELS`` when set, else ``$KVISION_MAX_PIXELS``, else
    :data:`DEFAULT_MAX_PIXELS` (178,956,970)."""
    from kvision import data

    value = getattr(data, "MAX_PIXELS", None)
    where = "kvision.data.MAX_PIXELS"
    if value is None and os.environ.get(MAX_PIXELS_VARIABLE):
        value, where = os.environ[MAX_PIXELS_VARIABLE], f"${MAX_PIXELS_VARIABLE}"
    if value is None:
        return DEFAULT_MAX_PIXELS
    try:
        limit = int(value)
    except (TypeError, ValueError):
        limit = 0
    if limit < 1 or isinstance(value, bool):
        raise ValueError(f"{where} must be a positive number of pixels, got {value!r}.")
    return limit


def read_header(path):
    """``(height, width, orientation)`` of an image file, read lazily by Pillow from
    its header (nothing is decoded); orientation is the EXIF tag, 1 when absent.

    Raises :class:`ImageTooLargeError` when ``height * width`` exceeds
    :func:`max_pixels`, or, for a GIF, ``frames * height * width`` does (TensorFlow
    decodes every frame of a GIF even when only the first is kept: 100 frames of
    1,000 x 1,000 in a 261 KB file cost 103 MB, measured); returns None when Pillow
    cannot read the header (TensorFlow's decoder then says why the file is not an
    image). Pillow counts a GIF's frames by skipping their data, not decoding it.
    """
    from PIL import Image

    limit = max_pixels()
    if Image.MAX_IMAGE_PIXELS is not None and limit > 2 * Image.MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = limit  # Pillow would refuse first, with its own words
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
                exif = image.getexif() if "exif" in image.info else {}
                frames = image.n_frames if image.format == "GIF" else 1
    except Image.DecompressionBombError as error:  # over Pillow's own limit
        found = re.search(r"\((\d+) pixels\)", str(error))
        raise _too_large(path, f"{int(found[1]):,}" if found else "too many",
                         limit) from None
    except (OSError, SyntaxError, ValueError) as error:
        if isinstance(error, FileNotFoundError):
            raise
        return None  # not an image Pillow knows, or a broken one
    if width * height * frames > limit:
        raise _too_large(path, (f"{frames} frames of " if frames > 1 else "")
                         + f"{width} x {height} = {width * height * frames:,}", limit)
    orientation = exif.get(ORIENTATION_TAG, 1)
    return height, width, orientation if orientation in range(1, 9) else 1


def _too_large(path, pixels, limit):
    return ImageTooLargeError(
        f"{os.fspath(path)!r} declares {pixels} pixels, more than the limit of "
        f"{limit:,} (kvision.data.MAX_PIXELS or ${MAX_PIXELS_VARIABLE}): refused "
        f"before decoding, as a decompression bomb would be.")


def orientation_of(path):
    """The EXIF orientation (1..8) of an image file, 1 when it has none or Pillow
    cannot read it; :class:`ImageTooLargeError` for a decompression bomb."""
    header = read_header(path)
    return 1 if header is None else header[2]


def orient(image, orientation):
    """An ``(H, W, C)`` image as its EXIF ``orientation`` (1..8, a scalar tensor or
    int) says it is seen: the transposition ``PIL.ImageOps.exif_transpose`` makes
    (2 mirror, 3 rotate 180, 4 flip, 5 transpose, 6 rotate 90 clockwise,
    7 transverse, 8 rotate 90 anticlockwise). One transpose and one reverse with
    computed arguments, no branches: the tf.data graph stays small to trace."""
    import tensorflow as tf

    o = tf.cast(orientation, tf.int32)
    transposed = tf.transpose(image, tf.where(o >= 5, [1, 0, 2], [0, 1, 2]))
    flip_rows = tf.reduce_any(tf.equal(o, [3, 4, 7, 8]))      # upside down
    flip_columns = tf.reduce_any(tf.equal(o, [2, 3, 6, 7]))   # mirrored
    axes = tf.boolean_mask([0, 1], tf.stack([flip_rows, flip_columns]))
    oriented = tf.reverse(transposed, axes)
    oriented.set_shape([None, None, image.shape[-1]])
    return oriented


# The header fields read: (first byte, bytes, little-endian), within the first 32 bytes.
HEADER_FIELDS = {"png": ((16, 4, False), (20, 4, False)), "gif": ((6, 2, True), (8, 2, True)),
                 "bmp": ((18, 4, True), (22, 4, True)),
                 "vp8x": ((24, 3, True), (27, 3, True)), "vp8": ((26, 2, True), (28, 2, True)),
                 "vp8l": ((21, 4, True), (21, 4, True))}
# Leading bytes of each format (None: any byte), compared with the first 16.
MAGIC = {"png": b"\x89PNG", "jpeg": b"\xff\xd8", "gif": b"GIF", "bmp": b"BM",
         "vp8x": b"RIFF????WEBPVP8X", "vp8l": b"RIFF????WEBPVP8L",
         "vp8": b"RIFF????WEBPVP8 ", "jxl": b"\xff\x0a",
         "jxl_box": b"????JXL \r\n\x87\n"}


def _header_tables():
    """NumPy tables that read every field and match every magic in a few ops."""
    fields = [f for pair in HEADER_FIELDS.values() for f in pair]
    index, weight = np.zeros((len(fields), 4), "int64"), np.zeros((len(fields), 4), "int64")
    for k, (at, size, little) in enumerate(fields):
        index[k, :size] = range(at, at + size)
        weight[k, :size] = 256 ** (np.arange(size) if little else np.arange(size)[::-1])
    pattern, mask = np.zeros((len(MAGIC), 16), "int64"), np.zeros((len(MAGIC), 16), "int64")
    for k, magic in enumerate(MAGIC.values()):
        for i, byte in enumerate(magic):
            known = byte != ord("?")
            pattern[k, i], mask[k, i] = byte * known, known
    return index, weight, pattern, mask


def declared_pixels(contents):
    """Pixels (int64 scalar tensor) the header of encoded bytes declares, read inside
    the graph without decoding: PNG's IHDR, JPEG's frame header
    (``tf.io.extract_jpeg_shape``), GIF's screen, BMP's info header, WebP's VP8X,
    VP8 or VP8L header. 0 for bytes TensorFlow does not decode; -1 for JPEG XL,
    whose size is not read here. About sixty graph ops: every field is one gather."""
    import tensorflow as tf

    index, weight, pattern, mask = _header_tables()
    head = tf.strings.substr(tf.strings.join([tf.strings.substr(contents, 0, 32),
                                              b"\0" * 32]), 0, 32)
    b = tf.cast(tf.io.decode_raw(head, tf.uint8), tf.int64)
    value = dict(zip(HEADER_FIELDS, tf.unstack(tf.reshape(
        tf.reduce_sum(tf.gather(b, index) * weight, axis=1), (-1, 2)))))
    matches = dict(zip(MAGIC, tf.unstack(tf.reduce_all(
        tf.equal(b[:16] * mask, pattern), axis=1))))

    def signed(v):  # BMP's int32: a negative height means rows top-down
        return tf.abs(tf.where(v >= 2 ** 31, v - 2 ** 32, v))

    vp8l = value["vp8l"][0]
    pixels = {"png": value["png"][0] * value["png"][1],
              "gif": value["gif"][0] * value["gif"][1],
              "bmp": signed(value["bmp"][0]) * signed(value["bmp"][1]),
              "vp8x": (value["vp8x"][0] + 1) * (value["vp8x"][1] + 1),
              "vp8": (value["vp8"][0] % 16384) * (value["vp8"][1] % 16384),
              "vp8l": (vp8l % 16384 + 1) * (vp8l // 16384 % 16384 + 1),
              "jxl": tf.constant(-1, tf.int64), "jxl_box": tf.constant(-1, tf.int64),
              "jpeg": tf.cond(matches["jpeg"], lambda: tf.reduce_prod(tf.cast(
                  tf.io.extract_jpeg_shape(contents)[:2], tf.int64)),
                  lambda: tf.constant(0, tf.int64))}
    found = tf.constant(0, tf.int64)
    for name in MAGIC:
        found = tf.where(matches[name], pixels[name], found)
    return found


def checked_size(contents, limit=None):
    """``contents`` (encoded bytes, a scalar string tensor), passed on only when the
    size its header declares (:func:`declared_pixels`) is at most ``limit`` pixels
    (:func:`max_pixels` when None, fixed when traced); otherwise an
    ``InvalidArgumentError`` naming the limit, raised before anything is decoded."""
    import tensorflow as tf

    limit = max_pixels() if limit is None else int(limit)
    pixels = declared_pixels(contents)
    check = tf.debugging.Assert(
        tf.logical_and(pixels >= 0, pixels <= limit),
        [f"Refused before decoding: the image declares more than {limit:,} pixels "
         f"(kvision.data.MAX_PIXELS), or is JPEG XL whose size is not checked; "
         f"declared pixels:", pixels], name="max_pixels")
    with tf.control_dependencies([check]):
        return tf.identity(contents)


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
    "error" raises ``ValueError`` listing them. A file whose header declares more
    than :func:`max_pixels` pixels counts as one that does not decode: it is never
    decoded.
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
    bad, unread = refused_files(paths, verbose=verbose)  # bombs, before any decode
    bad.update(dict.fromkeys(find_corrupt([p for p in paths if p not in bad],
                                          verbose=verbose, check_size=bool(unread))))
    if bad:
        _report_corrupt(bad, root, on_corrupt)
        keep = [i for i, path in enumerate(paths) if path not in bad]
        paths, labels = [paths[i] for i in keep], [labels[i] for i in keep]
        if not paths:
            raise ValueError(f"None of the images under {root!r} could be decoded.")
    return paths, np.asarray(labels, dtype="int64"), tuple(class_names)


def refused_files(paths, verbose=False):
    """``({path: why}, [path])``: the files among ``paths`` whose header declares more
    than :func:`max_pixels` pixels (read by Pillow, nothing decoded), and those whose
    header Pillow could not read."""
    from tqdm.auto import tqdm

    refused, unread = {}, []
    for path in tqdm(paths, desc="reading headers", unit="img", disable=not verbose):
        try:
            if read_header(path) is None:
                unread.append(path)
        except ImageTooLargeError as error:
            refused[path] = str(error)
    return refused, unread


def find_corrupt(paths, verbose=False, check_size=True):
    """The paths among ``paths`` that cannot be read and decoded as an image.

    One parallel ``tf.data`` pass: a file that fails is dropped by ``ignore_errors``,
    so the corrupt ones are those missing from the output. ``check_size``: refuse
    in the graph, before decoding, bytes that declare more than :func:`max_pixels`
    pixels (:func:`checked_size`; for files whose header Pillow could not read).
    """
    import tensorflow as tf

    limit = max_pixels()

    @tf.autograph.experimental.do_not_convert  # plain graph code, nothing to convert
    def decodes(path):
        contents = tf.io.read_file(path)
        if check_size:
            contents = checked_size(contents, limit)
        image = tf.io.decode_image(contents, expand_animations=False)
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
    """``bad``: ``{path: why}``, why None for a file that did not decode."""
    listing = "\n  ".join(path if bad[path] is None else f"{path}: {bad[path]}"
                          for path in sorted(bad))
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
def decode(contents, channels=3, orientation=None, check_size=True):
    """Encoded bytes (a scalar string tensor) -> uint8 ``(H, W, channels)``.

    The same ``tf.io.decode_image`` call as Keras' directory loader, after
    :func:`checked_size` (a decompression bomb is an error, not gigabytes; skipped
    with ``check_size=False`` where Pillow already read the header), then turned
    upright by :func:`orient` when the file's EXIF ``orientation`` is given.
    TensorFlow's GIF and BMP decoders only give colour, so those are converted to
    grayscale after.
    """
    import tensorflow as tf

    _check_channels(channels)
    if check_size:
        contents = checked_size(contents)
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
    return image if orientation is None else orient(image, orientation)


def resize(image, image_size):
    """An ``(H, W, C)`` image -> float32 ``(height, width, C)``, bilinear, no crop:
    what ``image_dataset_from_directory`` does with its default ``interpolation``."""
    import tensorflow as tf

    size = as_size(image_size)
    image = tf.image.resize(image, size, method="bilinear")
    image.set_shape([size[0], size[1], image.shape[-1]])
    return tf.cast(image, tf.float32)


def decode_and_resize(contents, image_size, channels=3, orientation=None,
                      check_size=True):
    """Encoded bytes -> float32 ``(height, width, channels)`` pixels in [0, 255],
    upright when the EXIF ``orientation`` is given (:func:`decode`)."""
    return resize(decode(contents, channels, orientation, check_size), image_size)


def load_image(path, image_size, channels=3):
    """One image file as float32 ``(height, width, channels)`` in [0, 255], decoded
    and resized exactly as :func:`image_dataset` does, upright as its EXIF
    orientation says. ``image_size``: int or (h, w). Raises ``FileNotFoundError`` for
    a missing file, ``ValueError`` for one that does not decode, and
    :class:`ImageTooLargeError` (a ``ValueError``) for one whose header declares more
    than :func:`max_pixels` pixels, before decoding it."""
    import tensorflow as tf

    path = os.fspath(path)
    size = as_size(image_size)
    _check_channels(channels)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No image file at {path!r}.")
    orientation, unread = _header_facts(path)
    try:
        image = decode_and_resize(tf.io.read_file(path), size, channels, orientation,
                                  check_size=unread)
    except tf.errors.OpError as err:
        refused = re.search(r"Refused before decoding.*?declared pixels:\W*(-?\d+)",
                            err.message or "", re.DOTALL)
        if refused:  # a header Pillow could not read, checked in the graph
            raise _too_large(path, f"{int(refused[1]):,}", max_pixels()) from None
        raise ValueError(f"Cannot decode {path!r}: expected a JPEG, PNG, GIF or BMP "
                         f"image ({_plain_reason(err)}).") from None
    return image.numpy()


def _plain_reason(err):
    """The first sentence of a TensorFlow error, without its ``{{function_node …}}``
    and ``[Op:…]`` internals: "Unknown image file format"."""
    text = re.sub(r"\{\{.*?\}\}|\[Op:.*", "", err.message or "").strip()
    return text.split(". ")[0].rstrip(".") or type(err).__name__


def image_dataset(paths, labels, image_size, channels=3):
    """A ``tf.data.Dataset`` of ``(float32 (height, width, channels) image, int64
    label)`` pairs, one per file, in the order given, decoded in parallel, each
    upright as its EXIF orientation (read here from the headers) says."""
    import tensorflow as tf

    size = as_size(image_size)
    _check_channels(channels)
    paths = [os.fspath(path) for path in paths]
    headers = [read_header(path) for path in paths]   # a bomb raises here
    orientations = [1 if header is None else header[2] for header in headers]
    # The graph holds only what these files need (tracing it is most of the cost of
    # a small dataset): the size check where Pillow could not read a header, the
    # orientation where a file has one.
    unread = any(header is None for header in headers)
    turned = any(orientation != 1 for orientation in orientations)

    @tf.autograph.experimental.do_not_convert  # plain graph code, nothing to convert
    def load(path, orientation, label):
        return decode_and_resize(tf.io.read_file(path), size, channels,
                                 orientation if turned else None, unread), label

    dataset = tf.data.Dataset.from_tensor_slices(
        (tf.constant(paths, tf.string), tf.constant(orientations, tf.int32),
         tf.constant(np.asarray(labels), tf.int64)))
    return dataset.map(load, num_parallel_calls=tf.data.AUTOTUNE)


def read_image(path, channels=3):
    """One image file as uint8 ``(H, W, channels)`` at its own size, upright: what
    :func:`load_image` resizes (for drawing results on the original)."""
    import tensorflow as tf

    orientation, unread = _header_facts(path)
    return decode(tf.io.read_file(os.fspath(path)), channels, orientation,
                  check_size=unread).numpy()


def _header_facts(path):
    """``(orientation or None when upright, whether Pillow could not read the
    header)`` of an image file: what its decode needs beyond TensorFlow's; a bomb
    raises :class:`ImageTooLargeError` here."""
    header = read_header(path)
    if header is None:
        return None, True  # the graph checks the size the bytes declare
    return (None if header[2] == 1 else header[2]), False


def seen_size(path):
    """``(height, width)`` of an image file as it is seen (EXIF orientation applied),
    read from its header without decoding; :func:`load_image`'s error when the file
    does not decode."""
    header = read_header(path)
    if header is None:
        load_image(path, 1)  # raises its FileNotFoundError or ValueError
        import tensorflow as tf

        shape = tf.io.decode_image(tf.io.read_file(path), expand_animations=False).shape
        return int(shape[0]), int(shape[1])
    height, width, orientation = header
    return (width, height) if orientation >= 5 else (height, width)
