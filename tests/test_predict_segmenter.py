"""``kvision predict SEGMENTER image.png --out overlay.png``: a segmenter's classes (or
instances) as JSON and drawn as a coloured overlay, checked against a recomputation
from the image itself.

The segmenters are hand-set 1x1 convolutions, so the right answer is known without
running them: a pixel whose red channel is bright is class 1 ("red"), one whose green
channel is bright class 2 ("green"), anything else background (0). The scenes are
made of 2x2 blocks of one colour, so resizing them to the model's half-size input
(bilinear, half-pixel centres) keeps every block's colour exactly.
"""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf
from scipy import ndimage

from kvision import cli
from kvision.models.segmentation import instance
from kvision.visualization.masks import palette

SIZE, ORIGINAL = 16, 32  # model input; the files are twice as large
NAMES = ["background", "red", "green"]
GREY, RED, GREEN = (60, 60, 60), (200, 30, 30), (30, 200, 30)


def _classify(image):
    """The hand-set rule the networks encode, evaluated on the pixels directly."""
    r, g = image[..., 0].astype(int), image[..., 1].astype(int)
    return np.where(r > 100, 1, np.where(g > 100, 2, 0))


def _semantic_network(name="semantic"):
    """Logits (100, R, G): background unless red or green exceeds 100."""
    inputs = keras.Input((SIZE, SIZE, 3), name="image")
    conv = keras.layers.Conv2D(3, 1, name="logits")
    x = conv(inputs)
    kernel = np.zeros((1, 1, 3, 3), "float32")
    kernel[0, 0, 0, 1] = kernel[0, 0, 1, 2] = 1.0
    conv.set_weights([kernel, np.array([100.0, 0.0, 0.0], "float32")])
    outputs = keras.layers.Activation("softmax", name="predictions")(x)
    return keras.Model(inputs, outputs, name=name)


def _never_touching():
    """A separation network that never cuts (sigmoid(-10) everywhere)."""
    inputs = keras.Input((SIZE, SIZE, 3))
    conv = keras.layers.Conv2D(1, 1, activation="sigmoid")
    outputs = conv(inputs)
    conv.set_weights([np.zeros((1, 1, 3, 1), "float32"), np.array([-10.0], "float32")])
    return keras.Model(inputs, outputs, name="separation")


def _scene(squares):
    """A 32x32 grey scene with ``(row, col, side, colour)`` squares, all on even
    pixels (2x2 blocks)."""
    image = np.zeros((ORIGINAL, ORIGINAL, 3), "uint8")
    image[...] = GREY
    for row, col, side, colour in squares:
        image[row:row + side, col:col + side] = colour
    return image


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict_segmenter")
    semantic_dir, instance_dir = root / "semantic", root / "instances"
    semantic_dir.mkdir()
    instance_dir.mkdir()
    _semantic_network().save(semantic_dir / "seg.keras")
    keras.utils.set_random_seed(0)
    two = instance.TwoNetworkInstance(3, (SIZE, SIZE, 3), network=_semantic_network(),
                                      separation_network=_never_touching())
    two.save(instance_dir / "inst.keras")
    # The same as an instance model (decoding in its graph), saved on its own.
    instance.inference_model(two, score_threshold=0.0).save(instance_dir / "runner.keras")
    for directory in (semantic_dir, instance_dir):
        (directory / "class_names.txt").write_text("\n".join(NAMES) + "\n")
    # Two red squares apart and one green one, on one row (captions go above them).
    image = _scene([(12, 2, 8, RED), (12, 12, 6, GREEN), (12, 22, 8, RED)])
    (root / "scene.png").write_bytes(tf.io.encode_png(image).numpy())
    return root, image


def _read(path):
    return tf.io.decode_png(path.read_bytes()).numpy()


def test_json_lists_the_classes_in_the_files_pixels(files, capsys):
    root, image = files
    code = cli.main(["predict", str(root / "semantic" / "seg.keras"),
                     str(root / "scene.png"), "--json"])
    assert code == 0
    (result,) = json.loads(capsys.readouterr().out)
    assert result["image_size"] == [ORIGINAL, ORIGINAL]
    expected = _classify(image)
    got = {c["label"]: (c["class"], c["pixels"]) for c in result["classes"]}
    assert got == {NAMES[c]: (c, int((expected == c).sum())) for c in range(3)}
    assert [c["pixels"] for c in result["classes"]] == sorted(
        [c["pixels"] for c in result["classes"]], reverse=True)


def test_out_writes_the_coloured_label_map_overlay(files, capsys):
    root, image = files
    out = root / "overlay.png"
    code = cli.main(["predict", str(root / "semantic" / "seg.keras"),
                     str(root / "scene.png"), "--out", str(out)])
    assert code == 0
    assert str(out) in capsys.readouterr().out
    written = _read(out)
    scale = written.shape[1] // ORIGINAL
    assert scale >= 1 and written.shape[1] == ORIGINAL * scale
    assert written.shape[0] > ORIGINAL * scale  # the legend strip below
    top = written[:ORIGINAL * scale].astype(float)
    big = image.repeat(scale, 0).repeat(scale, 1).astype(float)
    labels = _classify(image).repeat(scale, 0).repeat(scale, 1)
    colours = palette(3).astype(float)
    foreground = labels > 0
    # Each class in its own colour, blended at alpha 0.6; the background untouched.
    expected = 0.4 * big[foreground] + 0.6 * colours[labels[foreground]]
    np.testing.assert_allclose(top[foreground], expected, atol=1.0)
    np.testing.assert_array_equal(top[~foreground], big[~foreground])


@pytest.mark.parametrize("model", ["inst.keras", "runner.keras"])
def test_instance_output_draws_each_instance(files, model, capsys):
    root, image = files
    out = root / f"instances-{model}.png"
    code = cli.main(["predict", str(root / "instances" / model),
                     str(root / "scene.png"), "--out", str(out), "--json"])
    assert code == 0
    (result,) = json.loads(capsys.readouterr().out)
    # The object classes: background left out, so "red" is 0 and "green" 1.
    pieces, count = ndimage.label(_classify(image) > 0)
    assert count == 3
    found = sorted((d["box"][0], d["label"], d["class"], d["pixels"])
                   for d in result["instances"])
    expected = []
    for k in range(1, count + 1):
        rows, cols = np.nonzero(pieces == k)
        label = NAMES[_classify(image)[rows[0], cols[0]]]
        expected.append((float(cols.min()), label, NAMES.index(label) - 1, len(rows)))
    assert found == sorted(expected)
    for d in result["instances"]:  # boxes in the file's pixels, xyxy right-exclusive
        mask = np.zeros(image.shape[:2], bool)
        x0, y0, x1, y1 = (int(v) for v in d["box"])
        mask[y0:y1, x0:x1] = True
        assert mask.sum() == d["pixels"] and d["score"] > 0.99
    written = _read(out)
    scale = written.shape[1] // ORIGINAL
    assert written.shape[:2] == (ORIGINAL * scale, ORIGINAL * scale)
    big = image.repeat(scale, 0).repeat(scale, 1).astype(float)
    colours = palette(3).astype(float)
    used = []
    for k in range(1, count + 1):
        # Inside each instance (its outline left out) one of the instance colours.
        inside = ndimage.binary_erosion(pieces == k, np.ones((3, 3)))
        inside = inside.repeat(scale, 0).repeat(scale, 1)
        pixels = written[inside].astype(float)
        blends = [0.4 * big[inside] + 0.6 * c for c in colours]
        matches = [j for j, blend in enumerate(blends)
                   if np.abs(pixels - blend).max() <= 1.0]
        assert len(matches) == 1, k
        used.append(matches[0])
    assert sorted(used) == [0, 1, 2]  # three instances, three colours
    # Below the squares nothing is drawn.
    np.testing.assert_array_equal(written[24 * scale:], big[24 * scale:])


def test_a_non_segmenter_out_is_still_a_clear_error(tmp_path, capsys):
    inputs = keras.Input((SIZE, SIZE, 3))
    flat = keras.layers.GlobalAveragePooling2D()(inputs)
    keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(flat)).save(
        tmp_path / "clf.keras")
    image = tmp_path / "x.png"
    image.write_bytes(tf.io.encode_png(np.zeros((SIZE, SIZE, 3), "uint8")).numpy())
    code = cli.main(["predict", str(tmp_path / "clf.keras"), str(image), "--out",
                     str(tmp_path / "drawn.png")])
    assert code == 2
    assert "is a classifier" in capsys.readouterr().err


def test_a_valid_padding_border_is_left_unlabelled(files, tmp_path, capsys):
    """A segmenter whose output is smaller than its input (valid convolutions, as the
    paper's U-Net) labels the centre of the image; the border counts for no class."""
    root, _ = files
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Conv2D(3, 5, padding="valid")(inputs)  # 16 -> 12: 2 pixels a side
    model = keras.Model(inputs, keras.layers.Activation("softmax")(x))
    model.save(tmp_path / "valid.keras")
    code = cli.main(["predict", str(tmp_path / "valid.keras"), str(root / "scene.png"),
                     "--json"])
    assert code == 0
    (result,) = json.loads(capsys.readouterr().out)
    side = ORIGINAL * 12 // SIZE  # the labelled centre in the file's pixels
    assert sum(c["pixels"] for c in result["classes"]) == side * side
