"""Phone photos and odd image files (issue 21): what kvision sees is what a viewer
shows.

A phone stores a photo as the sensor read it and says in its EXIF orientation tag
(1..8) how to turn it; Keras' loader ignores the tag, kvision applies it. The
reference is Pillow's ``ImageOps.exif_transpose``. The end-to-end checks use a
hand-set classifier that answers "top" when the upper half of the image is redder
than the lower half: it gets every orientation right only if the photo is upright.
CMYK JPEGs, 16-bit PNGs, palette PNGs with transparency, animated GIFs and grey
photos load as the RGB arrays Pillow's conversions (or a NumPy formula) give.
"""

import json
import os
import struct
import zlib

import keras
import numpy as np
from PIL import Image, ImageOps

from kvision import cli
from kvision.data import load, load_image
from kvision.saving import save_model

# The transposition that stores an upright photo under each orientation: the inverse
# of what exif_transpose does to show it.
STORED_AS = {1: None, 2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
             4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
             6: Image.Transpose.ROTATE_90, 7: Image.Transpose.TRANSVERSE,
             8: Image.Transpose.ROTATE_270}
RED, BLUE = (200, 10, 10), (10, 10, 200)


def _blocks():
    """A 32 x 48 upright picture of six 16 x 16 blocks of different colours: every
    turn or mirror of it is a different array."""
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255),
               (255, 0, 255)]
    image = np.zeros((32, 48, 3), "uint8")
    for k, colour in enumerate(colours):
        image[16 * (k // 3):16 * (k // 3 + 1), 16 * (k % 3):16 * (k % 3 + 1)] = colour
    return image


def _phone_jpeg(path, upright, orientation):
    """``upright`` stored as a phone would under EXIF ``orientation``."""
    image = Image.fromarray(upright)
    if STORED_AS[orientation] is not None:
        image = image.transpose(STORED_AS[orientation])
    exif = Image.Exif()
    exif[0x0112] = orientation
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image.save(path, quality=95, exif=exif)
    return path


def _seen(path):
    """What a viewer shows: Pillow's exif_transpose, as RGB."""
    with Image.open(path) as image:
        return np.asarray(ImageOps.exif_transpose(image).convert("RGB"))


def test_each_exif_orientation_is_seen_upright(tmp_path):
    upright = _blocks()
    paths = [_phone_jpeg(str(tmp_path / "blocks" / "upright" / f"{o}.jpg"), upright, o)
             for o in range(1, 9)]
    for i in (1, 2):  # a second class, two photos: one each side of the split
        _phone_jpeg(str(tmp_path / "blocks" / "other" / f"{i}.jpg"), upright[::-1], 1)
    for o, path in enumerate(paths, start=1):
        seen = _seen(path)
        assert seen.shape == upright.shape
        with Image.open(path) as stored:  # the test means something: stored != seen
            assert stored.size != (48, 32) or np.abs(
                np.asarray(stored, "float32") - seen).mean() > 30 or o == 1
        loaded = load_image(path, (32, 48))   # at its own size: no resampling
        assert np.abs(loaded - seen).max() <= 2, o
        assert np.abs(loaded - upright).mean() < 8, o   # JPEG's error on the blocks

    # The training and evaluation pipeline (tf.data over the folder) turns them too.
    data = load(tmp_path / "blocks", image_size=(32, 48), validation_split=0.5)
    files = data.train_files + data.test_files
    examples = list(data.train.concatenate(data.test).as_numpy_iterator())
    for path, (image, _) in zip(files, examples):
        assert np.abs(image - _seen(path)).max() <= 2, path


def _top_or_bottom():
    """16 x 16 RGB -> softmax over ("bottom", "top"): the red of the upper half minus
    the red of the lower half, times 1/2000 (about +-12 for the test's photos)."""
    inputs = keras.Input((16, 16, 3))
    dense = keras.layers.Dense(2, activation="softmax")
    outputs = dense(keras.layers.Flatten()(inputs))
    red_up = np.zeros((16, 16, 3), "float32")
    red_up[:8, :, 0], red_up[8:, :, 0] = 1.0, -1.0
    column = red_up.reshape(-1) / 2000
    dense.set_weights([np.stack([-column, column], axis=1), np.zeros(2, "float32")])
    return keras.Model(inputs, outputs)


def _half_red(red_on_top):
    image = np.zeros((20, 30, 3), "uint8")
    image[:10], image[10:] = (RED, BLUE) if red_on_top else (BLUE, RED)
    return image


def _run(capsys, *args):
    capsys.readouterr()
    code = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_predict_sort_and_evaluate_see_phone_photos_upright(tmp_path, capsys):
    model = tmp_path / "model" / "halves.keras"
    save_model(_top_or_bottom(), model, class_names=["bottom", "top"])
    root = tmp_path / "photos"
    for name in ("top", "bottom"):
        upright = _half_red(name == "top")
        _phone_jpeg(str(root / "train" / name / "1.jpg"), upright, 1)
        for o in range(1, 9):
            _phone_jpeg(str(root / "test" / name / f"{o}.jpg"), upright, o)

    code, out, err = _run(capsys, "predict", model, root / "test", "--json")
    assert code == 0, err
    answers = json.loads(out)
    assert len(answers) == 16
    for answer in answers:
        truth = os.path.basename(os.path.dirname(answer["path"]))
        best = answer["predictions"][0]
        assert best["label"] == truth and best["probability"] > 0.99, answer

    code, _, err = _run(capsys, "sort", model, "--input", root / "test",
                        "--output", tmp_path / "sorted", "--threshold", "0.99")
    assert code == 0, err
    assert sorted(os.listdir(tmp_path / "sorted")) == ["bottom", "top"]  # none unsure
    for name in ("top", "bottom"):
        assert sorted(os.listdir(tmp_path / "sorted" / name)) == [
            f"{o}.jpg" for o in range(1, 9)]

    code, out, err = _run(capsys, "evaluate", model, "--data", root, "--json",
                          "--confusion", tmp_path / "confusion.png")
    assert code == 0, err
    report = json.loads(out)
    assert report["top1_accuracy"] == 1.0
    assert report["per_class"]["top"]["support"] == 8


# --- odd files --------------------------------------------------------------------

def _chunk(kind, data):
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def _png16_rgb(path, pixels):
    """A 48-bit (16 bits per channel) RGB PNG, which Pillow cannot write."""
    height, width, _ = pixels.shape
    rows = b"".join(b"\0" + row.astype(">u2").tobytes() for row in pixels)
    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header)
                     + _chunk(b"IDAT", zlib.compress(rows)) + _chunk(b"IEND", b""))
    return path


def _smooth(height=24, width=32):
    """A smooth colour picture (JPEG decoders agree on it within a few levels)."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x * 255 // (width - 1), y * 255 // (height - 1),
                     (x + y) * 255 // (width + height - 2)], -1).astype("uint8")


def _rgb(path):
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), "float32")


def test_odd_files_load_as_the_rgb_pillow_gives(tmp_path):
    picture = _smooth()
    size = picture.shape[:2]
    rng = np.random.default_rng(0)

    cmyk = tmp_path / "cmyk.jpg"
    Image.fromarray(picture).convert("CMYK").save(cmyk, quality=95)
    grey_jpeg = tmp_path / "grey.jpg"
    Image.fromarray(picture).convert("L").save(grey_jpeg, quality=95)
    for path in (cmyk, grey_jpeg):   # two JPEG decoders, two CMYK conversions:
        with Image.open(path) as image:   # a few levels apart (measured: 4 at most);
            assert image.mode in ("CMYK", "L")   # inverted ink would be ~100 apart
        difference = np.abs(load_image(path, size) - _rgb(path))
        assert difference.max() <= 6 and difference.mean() < 2.0, (path, difference.max())

    grey16 = rng.integers(0, 65536, size, dtype="uint16")
    grey16_png = tmp_path / "grey16.png"
    Image.fromarray(grey16).save(grey16_png)
    with Image.open(grey16_png) as image:
        assert image.mode == "I;16"
        high_bytes = (np.asarray(image).astype("uint16") >> 8).astype("float32")
    np.testing.assert_array_equal(load_image(grey16_png, size),
                                  np.repeat(high_bytes[..., None], 3, axis=-1))

    rgb16 = rng.integers(0, 65536, (*size, 3), dtype="uint16")
    rgb16_png = _png16_rgb(tmp_path / "rgb16.png", rgb16)
    np.testing.assert_array_equal(load_image(rgb16_png, size), _rgb(rgb16_png))
    np.testing.assert_array_equal(load_image(rgb16_png, size), rgb16 >> 8)

    palette = Image.fromarray(picture).convert("P", palette=Image.Palette.ADAPTIVE,
                                               colors=16)
    palette_png = tmp_path / "palette.png"
    palette.save(palette_png, transparency=3)
    rgba_png = tmp_path / "rgba.png"
    rgba = np.dstack([picture, rng.integers(0, 256, size, dtype="uint8")])
    Image.fromarray(rgba, "RGBA").save(rgba_png)
    grey_png = tmp_path / "grey.png"
    Image.fromarray(picture).convert("L").save(grey_png)
    for path in (palette_png, rgba_png, grey_png):
        np.testing.assert_array_equal(load_image(path, size), _rgb(path), err_msg=path)
    with Image.open(palette_png) as image:
        assert image.mode == "P" and "transparency" in image.info

    gif = tmp_path / "animated.gif"
    frames = [Image.fromarray(picture).quantize(16), Image.fromarray(255 - picture)
              .quantize(16)]
    frames[0].save(gif, save_all=True, append_images=frames[1:], duration=100)
    with Image.open(gif) as image:
        assert image.n_frames == 2
        first = np.asarray(image.convert("RGB"), "float32")
        image.seek(1)
        second = np.asarray(image.convert("RGB"), "float32")
    loaded = load_image(gif, size)
    np.testing.assert_array_equal(loaded, first)
    assert np.abs(loaded - second).mean() > 50
