import io
import os
import warnings

import numpy as np
import pytest
from skimage import data as photos

from kvision.data import CorruptImageWarning, list_images, load, load_image

SIZE = (40, 56)


def _encode(array, ext):
    """Real image bytes: TensorFlow's encoders for JPEG/PNG, Pillow for GIF/BMP."""
    import tensorflow as tf

    if ext in (".jpg", ".jpeg"):
        return tf.io.encode_jpeg(array, quality=92).numpy()
    if ext == ".png":
        return tf.io.encode_png(array if array.ndim == 3 else array[..., None]).numpy()
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, {".gif": "GIF", ".bmp": "BMP"}[ext])
    return buffer.getvalue()


def _write(path, array):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(_encode(array, os.path.splitext(path)[1].lower()))


def _variants(image):
    """Four views of one photo at a quarter size: whole, mirrored, two crops."""
    small = np.ascontiguousarray(image[::4, ::4])
    h, w = small.shape[:2]
    return [small, small[:, ::-1].copy(), small[:h * 3 // 4, :w * 3 // 4].copy(),
            small[h // 4:, w // 4:].copy()]


@pytest.fixture(scope="module")
def photo_root(tmp_path_factory):
    """root/<class>/ of real photos in every supported format and some odd files."""
    root = str(tmp_path_factory.mktemp("photos"))
    sources = {"astronaut": photos.astronaut(), "cat": photos.chelsea(),
               "coffee": photos.coffee(), "rocket": photos.rocket()}
    for name, image in sources.items():
        for view, ext in zip(_variants(image), (".jpg", ".png", ".jpeg", ".JPG")):
            _write(os.path.join(root, name, f"{name}_{ext[1:]}{ext}"), view)
    cat = _variants(photos.chelsea())[2]
    rgba = np.concatenate([cat, np.full(cat.shape[:2] + (1,), 128, np.uint8)], axis=-1)
    _write(os.path.join(root, "cat", "cat_rgba.png"), rgba)
    _write(os.path.join(root, "astronaut", "camera_gray.png"), photos.camera()[::4, ::4])
    _write(os.path.join(root, "coffee", "coffee.bmp"), _variants(photos.coffee())[3])
    _write(os.path.join(root, "rocket", "more", "rocket.gif"), _variants(photos.rocket())[1])
    with open(os.path.join(root, "cat", "notes.txt"), "w") as f:     # not an image name
        f.write("ignored")
    _write(os.path.join(root, ".cache", "hidden.jpg"), cat)           # hidden: no class
    return root


def test_listing_and_pixels_match_keras_image_dataset_from_directory(photo_root):
    import keras

    paths, labels, class_names = list_images(photo_root)
    reference = keras.utils.image_dataset_from_directory(
        photo_root, image_size=SIZE, shuffle=False, batch_size=None)
    assert class_names == tuple(reference.class_names) == (
        "astronaut", "cat", "coffee", "rocket")
    assert [os.path.normpath(p) for p in paths] == [
        os.path.normpath(p) for p in reference.file_paths]
    assert len(paths) == 20 and not any(p.endswith((".txt", "hidden.jpg")) for p in paths)
    ref_images, ref_labels = zip(*reference.as_numpy_iterator())
    np.testing.assert_array_equal(labels, np.array(ref_labels))
    assert labels.dtype == np.int64
    for path, expected in zip(paths, ref_images):
        image = load_image(path, SIZE)
        assert image.dtype == np.float32 and image.shape == SIZE + (3,)
        np.testing.assert_array_equal(image, expected, err_msg=path)
    assert load_image(paths[0], 33).shape == (33, 33, 3)


def test_channel_conversion_against_the_original_pixels(photo_root):
    # at the file's own size the bilinear resize is the identity, so lossless files
    # must give back exactly the pixels that were written
    gray = photos.camera()[::4, ::4]
    loaded = load_image(os.path.join(photo_root, "astronaut", "camera_gray.png"),
                        gray.shape, channels=3)
    np.testing.assert_array_equal(loaded, np.repeat(gray[..., None], 3, axis=-1))
    cat = _variants(photos.chelsea())[2]
    rgba_path = os.path.join(photo_root, "cat", "cat_rgba.png")
    np.testing.assert_array_equal(load_image(rgba_path, cat.shape[:2]), cat)
    # RGB -> gray: ITU-R 601 luma, also for BMP, whose TF decoder gives only colour
    for path, rgb in ((rgba_path, cat),
                      (os.path.join(photo_root, "coffee", "coffee.bmp"),
                       _variants(photos.coffee())[3])):
        luma = rgb.astype("float64") @ np.array([0.299, 0.587, 0.114])
        gray_loaded = load_image(path, rgb.shape[:2], channels=1)
        assert gray_loaded.shape == rgb.shape[:2] + (1,)
        np.testing.assert_allclose(gray_loaded[..., 0], luma, atol=1.01, err_msg=path)


def test_corrupt_files_are_reported_by_path(tmp_path):
    import tensorflow as tf

    root = str(tmp_path)
    for name, image in (("cat", photos.chelsea()), ("coffee", photos.coffee())):
        for i, view in enumerate(_variants(image)[:2]):
            _write(os.path.join(root, name, f"{i}.jpg"), view)
    whole = tf.io.encode_jpeg(_variants(photos.rocket())[0]).numpy()
    truncated = os.path.join(root, "cat", "truncated.jpg")
    with open(truncated, "wb") as f:
        f.write(whole[:len(whole) // 2])
    text = os.path.join(root, "coffee", "readme.jpg")       # a text file named .jpg
    with open(text, "w") as f:
        f.write("this is not a picture\n")

    with pytest.warns(CorruptImageWarning) as caught:
        paths, labels, _ = list_images(root)
    message = str(caught[0].message)
    assert truncated in message and text in message
    assert len(paths) == 4 and truncated not in paths and text not in paths
    np.testing.assert_array_equal(labels, [0, 0, 1, 1])

    with pytest.raises(ValueError) as error:
        list_images(root, on_corrupt="error")
    assert truncated in str(error.value) and text in str(error.value)

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dataset = load(root, image_size=24, on_corrupt="skip", validation_split=0.5)
    examples = list(dataset.train.concatenate(dataset.test).as_numpy_iterator())
    assert len(examples) == dataset.num_train + dataset.num_test == 4

    for bad in (truncated, text):
        with pytest.raises(ValueError, match="Cannot decode") as error:
            load_image(bad, 24)
        assert bad in str(error.value)


def test_bad_layouts_and_arguments_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="root/<class_name>/<image>"):
        list_images(tmp_path / "missing")
    with pytest.raises(ValueError, match="No class folders"):
        list_images(tmp_path)
    _write(str(tmp_path / "loose.png"), _variants(photos.coffee())[0])
    with pytest.raises(ValueError, match="No class folders"):     # images, no classes
        list_images(tmp_path)
    with pytest.raises(ValueError, match="is a file"):
        list_images(tmp_path / "loose.png")
    (tmp_path / "empty_class").mkdir()
    (tmp_path / "empty_class" / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="No images in the class folders"):
        list_images(tmp_path)
    with pytest.raises(ValueError, match="on_corrupt"):
        list_images(tmp_path, on_corrupt="ignore")
    with pytest.raises(FileNotFoundError, match="nothing.jpg"):
        load_image(tmp_path / "nothing.jpg", 32)
    for size in (0, (3, 4, 5), "big"):
        with pytest.raises(ValueError, match="image_size"):
            load_image(tmp_path / "loose.png", size)
    with pytest.raises(ValueError, match="channels"):
        load_image(tmp_path / "loose.png", 32, channels=4)


def test_split_counts_and_a_warning_for_classes_too_small_to_split(tmp_path):
    """5 images split 0.2 -> 4 train, 1 test (round(5 * 0.2) = 1); 2 images -> 2 and
    0 (round(0.4) = 0): that class, and one with no image at all, are named."""
    from kvision.data import TooFewImagesWarning

    root = str(tmp_path)
    views = _variants(photos.coffee()) + _variants(photos.rocket())
    for name, count in (("many", 5), ("few", 2)):
        for i in range(count):
            _write(os.path.join(root, name, f"{i}.png"), views[i])
    os.makedirs(os.path.join(root, "none"))
    with pytest.warns(TooFewImagesWarning) as caught:
        dataset = load(root, image_size=16)
    assert dataset.class_names == ("few", "many", "none")
    assert dataset.train_counts == (2, 4, 0) and dataset.test_counts == (0, 1, 0)
    message = str(caught[0].message)
    assert "'few' (2 train, 0 test)" in message and "'none' (0 train, 0 test)" in message
    assert "'many'" not in message and root in message
