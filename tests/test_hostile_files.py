"""Hostile and odd files (issue 21): ``.keras`` files that would run code or write
outside their folder, decompression bombs, and weights files that are not what they
say. Each is refused with a clear error that names the file, by the library and by
the command line (exit 2, one line on stderr, no traceback), and nothing is written.

The hostile files are built here: zip archives copied from a real ``.keras`` file with
one entry added, a PNG whose IHDR declares 20,000 x 20,000 pixels, a JPEG whose frame
header declares 30,000 x 30,000, and ``.weights.h5`` files cut short or renamed.
"""

import functools
import os
import struct
import zipfile
import zlib

import keras
import numpy as np
import pytest
import tensorflow as tf

import kvision.data
from kvision import cli, predict
from kvision.data import ImageTooLargeError, list_images, load, load_image
from kvision.saving import load_keras, save_model

NAMES = ["red", "blue"]
BOMB_SIDE = 20_000          # 400,000,000 pixels declared: 1.2 GB as RGB bytes


def _classifier():
    """Mean colour -> (red, blue) softmax, hand-set: an 8 x 8 x 3 input."""
    inputs = keras.Input((8, 8, 3))
    dense = keras.layers.Dense(2, activation="softmax")
    outputs = dense(keras.layers.GlobalAveragePooling2D()(inputs))
    dense.set_weights([np.array([[1, -1], [0, 0], [-1, 1]], "float32") / 50,
                       np.zeros(2, "float32")])
    return keras.Model(inputs, outputs)


@pytest.fixture(scope="module")
def good_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("hostile") / "good" / "colours.keras"
    save_model(_classifier(), path, class_names=NAMES)
    return path


def _with_entry(source, target, name, data=b"pwned\n"):
    """A copy of the zip ``source`` with one more entry called ``name``."""
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w") as dst:
        for info in src.infolist():
            dst.writestr(info, src.read(info))
        dst.writestr(zipfile.ZipInfo(name), data)
    return target


def _lambda_model(path):
    inputs = keras.Input((8, 8, 3))
    doubled = keras.layers.Lambda(lambda x: x * 2.0, name="doubles")(inputs)
    outputs = keras.layers.Dense(2, activation="softmax")(
        keras.layers.GlobalAveragePooling2D()(doubled))
    keras.Model(inputs, outputs).save(path)
    return path


def _png(path, colour=(200, 10, 10), size=(12, 16)):
    image = np.zeros((*size, 3), "uint8")
    image[...] = colour
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(tf.io.encode_png(image).numpy())
    return path


def _chunk(kind, data):
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


@functools.lru_cache(maxsize=None)
def _png_bomb(side=BOMB_SIDE):
    """A valid 1-bit grey PNG of ``side`` x ``side`` zeros: 48 KB that decode to
    ``side**2`` pixels (1.2 GB at 20,000 as three channels)."""
    compressor = zlib.compressobj(9)
    row = b"\0" * (1 + side // 8)
    data = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", data)
            + _chunk(b"IEND", b""))


def _jpeg_bomb(side=30_000):
    """A real 16 x 16 JPEG whose frame header (SOF0) says ``side`` x ``side``."""
    data = bytearray(tf.io.encode_jpeg(np.zeros((16, 16, 3), "uint8")).numpy())
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", side, side)
    return bytes(data)


def _run(capsys, *args):
    capsys.readouterr()
    code = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def _tree(root):
    """Every path under ``root`` with its size: what a command may not change."""
    return {os.path.join(d, f): os.path.getsize(os.path.join(d, f))
            for d, _, files in os.walk(root) for f in files}


# --- .keras files -----------------------------------------------------------------

ESCAPING = ["../evil.txt", "sub/../../evil.txt", "..\\evil.txt", "/tmp/kvision-evil.txt",
            "C:/evil.txt"]


def test_keras_files_that_run_code_or_escape_their_folder_are_refused(
        good_model, tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)  # a "../" entry extracted here would land in tmp_path
    hostile = {"Lambda layer": _lambda_model(tmp_path / "lambda.keras")}
    for i, name in enumerate(ESCAPING):
        hostile[name] = _with_entry(good_model, tmp_path / f"escape{i}.keras", name)
    not_zip = tmp_path / "text.keras"
    not_zip.write_text("not a zip")
    no_config = tmp_path / "empty.keras"
    with zipfile.ZipFile(no_config, "w") as archive:
        archive.writestr("model.weights.h5", b"")

    assert predict.load_trained(good_model).class_names == tuple(NAMES)  # a fair copy
    before = _tree(tmp_path)
    for what, path in hostile.items():
        with pytest.raises(ValueError, match="Refusing") as error:
            predict.load_trained(path)
        assert str(path) in str(error.value), what
        assert ("Lambda layer ('doubles')" if what == "Lambda layer"
                else f"entry {what!r}") in str(error.value)
    with pytest.raises(ValueError, match="not a zip archive"):
        load_keras(not_zip)
    with pytest.raises(ValueError, match="no config.json"):
        load_keras(no_config)
    assert _tree(tmp_path) == before
    assert not os.path.exists("/tmp/kvision-evil.txt")


@pytest.mark.parametrize("kind", ["Lambda", "escape"])
def test_every_command_refuses_a_hostile_keras_file_in_one_line(
        kind, good_model, tmp_path, capsys):
    path = (_lambda_model(tmp_path / "m.keras") if kind == "Lambda"
            else _with_entry(good_model, tmp_path / "m.keras", "../evil.txt"))
    photos = tmp_path / "photos"
    _png(photos / "red" / "r.png")
    _png(photos / "blue" / "b.png", (10, 10, 200))
    before = _tree(tmp_path)
    commands = [("predict", path, photos / "red" / "r.png"),
                ("evaluate", path, "--data", photos),
                ("sort", path, "--input", photos, "--output", tmp_path / "sorted"),
                ("export", path, "--out", tmp_path / "exported"),
                ("train", path, "--data", photos, "--out", tmp_path / "run",
                 "--epochs", "1")]
    for command in commands:
        code, out, err = _run(capsys, *command)
        assert code == 2, (command, out, err)
        assert len(err.strip().splitlines()) == 1, err
        assert "Refusing" in err and str(path) in err and "Traceback" not in err
    assert _tree(tmp_path) == before   # no output folder, no evil.txt


# --- decompression bombs ---------------------------------------------------------

def test_a_bomb_is_refused_before_decoding_by_the_loaders(tmp_path, monkeypatch):
    bomb = tmp_path / "photos" / "red" / "bomb.png"
    bomb.parent.mkdir(parents=True)
    bomb.write_bytes(_png_bomb())
    assert bomb.stat().st_size < 100_000
    jpeg = tmp_path / "photos" / "blue" / "bomb.jpg"
    jpeg.parent.mkdir(parents=True)
    jpeg.write_bytes(_jpeg_bomb())
    for i in range(2):
        _png(tmp_path / "photos" / "red" / f"r{i}.png")
        _png(tmp_path / "photos" / "blue" / f"b{i}.png", (10, 10, 200))

    with pytest.raises(ImageTooLargeError, match="400,000,000 pixels, more than the "
                                                 "limit of 178,956,970"):
        load_image(bomb, 8)
    with pytest.raises(ImageTooLargeError, match="declares 900,000,000 pixels"):
        load_image(jpeg, 8)
    with pytest.warns(kvision.data.CorruptImageWarning, match="refused before decoding"):
        paths, labels, _ = list_images(tmp_path / "photos")
    assert str(bomb) not in paths and str(jpeg) not in paths and len(paths) == 4
    with pytest.raises(ValueError, match="bomb.png: .* declares 400,000,000 pixels"):
        list_images(tmp_path / "photos", on_corrupt="error")
    with pytest.warns(kvision.data.CorruptImageWarning):
        data = load(tmp_path / "photos", image_size=8, validation_split=0.5)
    assert data.num_train + data.num_test == 4

    # The limit is kvision.data.MAX_PIXELS, else $KVISION_MAX_PIXELS.
    small = _png(tmp_path / "small.png", size=(20, 30))           # 600 pixels
    monkeypatch.setenv("KVISION_MAX_PIXELS", "599")
    with pytest.raises(ImageTooLargeError, match="30 x 20 = 600 pixels, more than the "
                                                 "limit of 599"):
        load_image(small, 8)
    monkeypatch.setattr(kvision.data, "MAX_PIXELS", 600)
    assert load_image(small, 8).shape == (8, 8, 3)
    # A GIF costs all its frames (TensorFlow decodes each): three of 600 pixels.
    from PIL import Image

    frames = [Image.fromarray(np.full((20, 30), 50 * i, "uint8")) for i in range(3)]
    frames[0].save(tmp_path / "three.gif", save_all=True, append_images=frames[1:])
    with pytest.raises(ImageTooLargeError, match="3 frames of 30 x 20 = 1,800 pixels"):
        load_image(tmp_path / "three.gif", 8)
    monkeypatch.setattr(kvision.data, "MAX_PIXELS", None)
    monkeypatch.setenv("KVISION_MAX_PIXELS", "lots")
    with pytest.raises(ValueError, match=r"\$KVISION_MAX_PIXELS must be a positive"):
        load_image(small, 8)


def test_a_bomb_whose_header_pillow_cannot_read_is_refused_in_the_graph(tmp_path,
                                                                        monkeypatch):
    """A PNG bomb with a broken checksum on an ancillary chunk: Pillow cannot open
    it, libpng (TensorFlow) skips the chunk and would decode it. At a limit of one
    megapixel, a 2,000 x 2,000 one stands for the 20,000 x 20,000 bomb (if the check
    failed, this one decodes to 12 MB, not 1.2 GB)."""
    from PIL import Image, UnidentifiedImageError

    broken = _chunk(b"tEXt", b"Comment\0hi")[:-4] + b"\0\0\0\0"
    bomb = _png_bomb(2000)
    bomb = bomb[:33] + broken + bomb[33:]      # after the IHDR chunk
    path = tmp_path / "photos" / "red" / "bomb.png"
    path.parent.mkdir(parents=True)
    path.write_bytes(bomb)
    _png(tmp_path / "photos" / "red" / "red.png")
    with pytest.raises(UnidentifiedImageError):
        Image.open(path)
    assert tf.io.decode_image(bomb).shape == (2000, 2000, 1)   # what is at stake
    monkeypatch.setattr(kvision.data, "MAX_PIXELS", 1_000_000)
    with pytest.raises(ImageTooLargeError, match="declares 4,000,000 pixels, more than "
                                                 "the limit of 1,000,000"):
        load_image(path, 8)
    with pytest.warns(kvision.data.CorruptImageWarning, match="bomb.png"):
        paths, _, _ = list_images(tmp_path / "photos")
    assert paths == [str(tmp_path / "photos" / "red" / "red.png")]


def test_a_bomb_is_an_error_inside_the_graph_of_every_decode(tmp_path, monkeypatch):
    """kvision.data's TensorFlow decode (tf.data pipelines) checks the size the bytes
    declare: PNG, JPEG, GIF, BMP and WebP headers, compared with the true sizes."""
    from PIL import Image

    from kvision.data.folders import declared_pixels, decode

    image = Image.fromarray(np.zeros((21, 34, 3), "uint8"))
    for kind in ("PNG", "JPEG", "GIF", "BMP", "WEBP"):
        encoded = tmp_path / f"x.{kind.lower()}"
        image.save(encoded, kind)
        assert int(declared_pixels(tf.io.read_file(str(encoded)))) == 21 * 34, kind
    assert int(declared_pixels(tf.constant(b"not an image"))) == 0
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match="Refused before decoding: the image declares more than "
                             "178,956,970 pixels"):
        decode(tf.constant(_png_bomb()))
    monkeypatch.setattr(kvision.data, "MAX_PIXELS", 21 * 34 - 1)
    with pytest.raises(tf.errors.InvalidArgumentError, match="more than 713 pixels"):
        decode(tf.io.read_file(str(tmp_path / "x.png")))


def test_predict_and_sort_name_a_bomb_and_answer_the_rest(good_model, tmp_path, capsys):
    folder = tmp_path / "in"
    red = _png(folder / "red.png")
    bomb = folder / "bomb.png"
    bomb.write_bytes(_png_bomb())
    code, out, err = _run(capsys, "predict", good_model, bomb, red, "--top-k", "1")
    assert code == 1 and out.startswith(f"{red}: red")
    assert f"kvision predict: {str(bomb)!r} declares 400,000,000 pixels" in err
    assert "Traceback" not in err
    code, out, err = _run(capsys, "sort", good_model, "--input", folder,
                          "--output", tmp_path / "out")
    assert code == 1 and os.listdir(tmp_path / "out" / "red") == ["red.png"]
    assert "bomb.png" in err and "declares 400,000,000 pixels" in err


def test_the_savedmodel_refuses_a_bomb_inside_its_graph(good_model, tmp_path):
    """The real ``serve_image_bytes`` signature of an export, given a 48 KB PNG and a
    JPEG header that declare hundreds of megapixels: an error naming the limit, while
    an ordinary PNG through the same signature answers as the Keras model."""
    from kvision.export import saved_model

    model = keras.saving.load_model(good_model)
    result = saved_model(model, tmp_path / "colours", class_names=NAMES, warmup=False)
    serve = tf.saved_model.load(result.path).signatures["serve_image_bytes"]
    red = np.zeros((8, 8, 3), "uint8")
    red[...] = (200, 10, 10)
    answer = serve(image_bytes=tf.constant([tf.io.encode_png(red).numpy()]))
    np.testing.assert_allclose(answer["probabilities"].numpy(),
                               model.predict(red[None].astype("float32"), verbose=0),
                               atol=1e-5)  # probabilities: float32 error of two graphs
    for bomb in (_png_bomb(), _jpeg_bomb()):
        with pytest.raises(tf.errors.InvalidArgumentError,
                           match="Refused before decoding: the image declares more than "
                                 "178,956,970 pixels"):
            serve(image_bytes=tf.constant([bomb]))


# --- weights files ---------------------------------------------------------------

def test_weights_files_that_are_cut_renamed_or_misshapen_are_named(tmp_path, capsys):
    from kvision.models import create

    model = create("lenet5", input_shape=(32, 32, 1), classes=10)
    good = tmp_path / "lenet5.weights.h5"
    model.save_weights(good)
    whole = good.read_bytes()
    cut = tmp_path / "cut.weights.h5"
    cut.write_bytes(whole[:len(whole) // 2])
    renamed = tmp_path / "photo.weights.h5"
    renamed.write_bytes(tf.io.encode_png(np.zeros((4, 4, 3), "uint8")).numpy())
    other = tmp_path / "wide.weights.h5"
    create("lenet5", input_shape=(32, 32, 1), classes=7).save_weights(other)

    expected = {cut: "is damaged or truncated: h5py cannot read it \\(.*truncated file",
                renamed: "is not an HDF5 file .*b'\\\\x89PNG",
                other: "the model expects \\(84, 10\\), the file has \\(84, 7\\)"}
    for path, why in expected.items():
        with pytest.raises(ValueError, match=why) as error:
            create("lenet5", input_shape=(32, 32, 1), classes=10, weights=str(path))
        assert str(path) in str(error.value)
    before = _tree(tmp_path)
    code, _, err = _run(capsys, "train", "squeezenet1_1", "--backbone-weights", cut,
                        "--data", "digits", "--image-size", "32", "--epochs", "1",
                        "--out", tmp_path / "run")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"{str(cut)!r} is damaged or truncated" in err and "Traceback" not in err
    assert _tree(tmp_path) == before
