"""Outputs of the task networks (YOLO v1, YOLOv3, YOLOv3-tiny, the stacked hourglass,
the localizer, embedding_net) compared with NumPy forwards written from their
references' own definitions (``reference/task_nets.py``: the YOLO v1 paper's Figure 3
with darknet's conventions, qqwweee/keras-yolo3's ``yolo_body``, darknet's
cfg/yolov3-tiny.cfg, bearpaw/pytorch-pose's hourglass.py, kvision's documented
localizer and embedding layouts).

Each model is built small, gets random weights (BatchNorm statistics included, so no
normalization is the identity); the reference runs on the same weights moved to
torch's layouts and, for the hourglass, renamed to bearpaw's state-dict keys. Every
weight must be read by the reference (a layer kvision has and the reference lacks
fails the test).
"""

import re

import keras
import numpy as np
import pytest

import kvision
from kvision.testing import float32_atol, randomize_weights
from reference import task_nets


class Tracked(dict):
    """A state dict that remembers which keys the reference read."""

    def __init__(self, *args):
        super().__init__(*args)
        self.read = set()

    def __getitem__(self, key):
        self.read.add(key)
        return super().__getitem__(key)

    def get(self, key, default=None):
        if key in self:
            self.read.add(key)
        return super().get(key, default)

    def assert_all_read(self):
        unread = sorted(set(self) - self.read)
        assert not unread, f"weights the reference never used: {unread[:8]}"


def keras_state(model):
    """``{f"{layer}.{weight|bias|running_mean|running_var}": array}`` of every layer
    with weights, nested models included, in torch's layouts (Conv2D HWIO -> OIHW,
    Dense (in, out) -> (out, in))."""
    state = {}
    for layer in model._flatten_layers(include_self=False):
        if isinstance(layer, keras.Model) or not layer.weights:
            continue
        values = [np.asarray(v, np.float64) for v in layer.get_weights()]
        if isinstance(layer, keras.layers.BatchNormalization):
            keys = ("weight", "bias", "running_mean", "running_var")
        else:
            keys = ("weight", "bias")
            values[0] = (values[0].transpose(3, 2, 0, 1) if values[0].ndim == 4
                         else values[0].T)
        assert f"{layer.name}.weight" not in state, layer.name
        state |= {f"{layer.name}.{k}": v for k, v in zip(keys, values)}
    return state


def chw_columns(weight, channels):
    """A Dense kernel ``(out, H*W*C)`` reading Keras' (H, W, C) flatten -> the same
    kernel reading torch's / darknet's (C, H, W) flatten."""
    out, inputs = weight.shape
    side = int(round((inputs // channels) ** 0.5))
    assert side * side * channels == inputs
    return weight.reshape(out, side, side, channels).transpose(0, 3, 1, 2).reshape(out, -1)


def build(name, seed, **kwargs):
    """``kvision.create(name, **kwargs)`` with seeded kernels (reproducible runs) and
    :func:`randomize_weights`' biases and BatchNorm statistics."""
    keras.utils.set_random_seed(seed)
    return randomize_weights(kvision.create(name, **kwargs), seed=seed)


def images(size, seed, low=0.0, high=255.0, n=2):
    return np.random.default_rng(seed).uniform(low, high, (n, size, size, 3)).astype(
        "float32")


def nchw(x):
    return np.asarray(x, np.float64).transpose(0, 3, 1, 2)


def assert_close(got, expected, *, terms, depth, scale=None):
    got, expected = np.asarray(got), np.asarray(expected)
    assert got.shape == expected.shape, (got.shape, expected.shape)
    assert np.ptp(expected) > 0.1 * np.abs(expected).max() > 0  # not degenerate
    np.testing.assert_allclose(got, expected, rtol=0, atol=float32_atol(
        expected, terms=terms, depth=depth, scale=scale))


# --- YOLO v1 ----------------------------------------------------------------------

@pytest.mark.parametrize("batch_norm", [False, True])
def test_yolov1_follows_figure_3(batch_norm):
    """width 1/16 (4 .. 64 filters, FC 256) at 64x64: a 2x2 map enters the stride-2
    conv22, where darknet's pad 1 on every side and Keras' "same" (0 before, 1
    after) sample different pixels; S=2, B=2, C=3. Also with ``batch_norm`` (darknet's
    yolov1.cfg retraining)."""
    model = build("yolov1", 41, classes=3, input_shape=(64, 64, 3), grid=2,
                  width=1 / 16, batch_norm=batch_norm)
    state = {re.sub(r"^(conv\d+)_(conv|bn)\.", lambda m: f"{m[1]}." + (
        "bn." if m[2] == "bn" else ""), k): v for k, v in keras_state(model).items()}
    state["fc1.weight"] = chw_columns(state["fc1.weight"],
                                      state["conv24.weight"].shape[0])
    state = Tracked(state)
    x = images(64, seed=4)
    expected = task_nets.yolov1(state, nchw(x) / 255.0, grid=2, boxes=2, classes=3,
                                batch_norm=batch_norm)
    state.assert_all_read()
    assert_close(model(x, training=False), expected, terms=9 * 64, depth=26)


# --- YOLOv3 and YOLOv3-tiny --------------------------------------------------------

def _check_heads(got, expected, terms, depth):
    got = got if isinstance(got, (list, tuple)) else [got]
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert_close(g, e, terms=terms, depth=depth)


def test_yolov3_follows_keras_yolo3_yolo_body():
    """Darknet-53 + yolo_body, 3 classes at 32x32 (1, 2, 4 cells): the concat order,
    the upsampling and every head; raw pixels in (kvision's documented input)."""
    model = build("yolov3", 42, classes=3, input_shape=(32, 32, 3))
    state = Tracked(keras_state(model))
    x = images(32, seed=5)
    expected = task_nets.yolov3(state, nchw(x))
    state.assert_all_read()
    _check_heads(model(x, training=False), expected, terms=9 * 1024, depth=75)


def _decode(raw, anchors, size):
    """keras-yolo3's ``yolo_head`` in pixels: centre ``(sigmoid(t_xy) + cell) /
    grid * size``, size ``exp(t_wh) * anchor``; xyxy clipped to the image; score
    ``sigmoid(objectness) * sigmoid(class)`` of the best class."""
    n, rows, cols = raw.shape[:3]
    grid = np.stack(np.meshgrid(np.arange(cols), np.arange(rows)), -1)[:, :, None]
    sig = task_nets.sigmoid
    centre = (sig(raw[..., :2]) + grid) / [cols, rows] * size
    wh = np.exp(raw[..., 2:4]) * np.asarray(anchors)
    boxes = np.clip(np.concatenate([centre - wh / 2, centre + wh / 2], -1), 0, size)
    scores = (sig(raw[..., 4:5]) * sig(raw[..., 5:])).max(-1)
    return boxes.reshape(n, -1, 4), scores.reshape(n, -1)


def test_yolov3_tiny_follows_darknet_cfg():
    """width 1/4 at 64x64 (2x2 and 4x4 cells): the stride-1 max pool on a 2x2 map
    (darknet pads one row/column at the bottom/right), the route of layer 8; then
    the raw outputs decoded by kvision's YOLOv3Decode against keras-yolo3's
    yolo_head formula on the reference's outputs."""
    from kvision.layers.yolo import YOLOv3Decode

    model = build("yolov3_tiny", 43, classes=3, width=0.25, input_shape=(64, 64, 3))
    state = Tracked(keras_state(model))
    x = images(64, seed=6)
    expected = task_nets.yolov3_tiny(state, nchw(x) / 255.0)
    state.assert_all_read()
    raw = model(x, training=False)
    _check_heads(raw, expected, terms=9 * 256, depth=10)
    # darknet's masks: the 2x2 scale anchors 3, 4, 5, the 4x4 one 1, 2, 3.
    cfg = ((10, 14), (23, 27), (37, 58), (81, 82), (135, 169), (344, 319))
    for r, e, mask in zip(raw, expected, ((3, 4, 5), (1, 2, 3))):
        anchors = [cfg[i] for i in mask]
        boxes, scores, _ = YOLOv3Decode(anchors, (64, 64))(r)
        want_boxes, want_scores = _decode(e, anchors, 64)
        np.testing.assert_allclose(np.asarray(boxes), want_boxes, rtol=1e-4, atol=1e-3)
        np.testing.assert_allclose(np.asarray(scores), want_scores, rtol=1e-4, atol=1e-6)


# --- the stacked hourglass --------------------------------------------------------

_UNIT = {"0_conv": "downsample.0", "preact_bn": "bn1", "1_conv": "conv1", "1_bn": "bn2",
         "2_conv": "conv2", "2_bn": "bn3", "3_conv": "conv3"}
_BRANCH = {"skip": 0, "down": 1, "up": 2, "bottom": 3}  # Hourglass.hg[n-1][j]


def bearpaw_name(name):
    """A kvision layer name -> its module path in bearpaw's HourglassNet."""
    fixed = {"stem_conv": "conv1", "stem_bn": "bn1"}
    if name in fixed:
        return fixed[name]
    patterns = (
        (r"stem_res(\d)_(.+)", lambda m: f"layer{m[1]}.0.{_UNIT[m[2]]}"),
        (r"stack(\d+)_hg(\d+)_(skip|down|up|bottom)_block(\d+)_(.+)",
         lambda m: f"hg.{int(m[1]) - 1}.hg.{int(m[2]) - 1}.{_BRANCH[m[3]]}."
                   f"{int(m[4]) - 1}.{_UNIT[m[5]]}"),
        (r"stack(\d+)_res_block(\d+)_(.+)",
         lambda m: f"res.{int(m[1]) - 1}.{int(m[2]) - 1}.{_UNIT[m[3]]}"),
        (r"stack(\d+)_fc_conv", lambda m: f"fc.{int(m[1]) - 1}.0"),
        (r"stack(\d+)_fc_bn", lambda m: f"fc.{int(m[1]) - 1}.1"),
        (r"heatmaps_(\d+)", lambda m: f"score.{int(m[1]) - 1}"),
        (r"stack(\d+)_remap_features", lambda m: f"fc_.{int(m[1]) - 1}"),
        (r"stack(\d+)_remap_heatmaps", lambda m: f"score_.{int(m[1]) - 1}"))
    for pattern, make in patterns:
        match = re.fullmatch(pattern, name)
        if match:
            return make(match)
    raise AssertionError(f"no bearpaw module for kvision layer {name!r}")


def test_stacked_hourglass_follows_bearpaw_hourglass_py():
    """2 stacks of depth 2 with 2 bottlenecks per residual (the stem's stay single,
    as bearpaw's layer1-3), 16 channels, 3 joints, at 64x64 (16x16 heatmaps): both
    stacks' heatmaps, so the fc_/score_ re-injection between them counts."""
    model = build("stacked_hourglass", 44, keypoints=3, stacks=2, features=16, depth=2,
                  blocks=2, input_shape=(64, 64, 3))
    state = {}
    for key, value in keras_state(model).items():
        layer, _, what = key.rpartition(".")
        state[f"{bearpaw_name(layer)}.{what}"] = value
    state = Tracked(state)
    x = images(64, seed=7)
    expected = task_nets.hourglass_net(state, nchw(x) / 255.0, num_stacks=2, depth=2)
    state.assert_all_read()
    got = model(x, training=False)
    assert len(got) == 2
    for g, e in zip(got, expected):
        assert_close(g, e.transpose(0, 2, 3, 1), terms=9 * 8, depth=40)


# --- the localizer and embedding_net ----------------------------------------------

def test_localizer_follows_its_documented_layout():
    """VGG-16 body at 32x32 (a 1x1x512 map), 5 classes: class and box branches.
    The caffe preprocessing is keras.applications' vgg16.preprocess_input."""
    model = build("localizer", 45, classes=5, input_shape=(32, 32, 3))
    raw = keras_state(model)
    convs = sorted({k.rsplit(".", 1)[0] for k in raw
                    if re.match(r"block\d_conv\d\.", k)})  # block1_conv1 .. block5_conv3
    index, indices = 0, []
    for v in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
              512, 512, 512, "M"):  # torchvision's cfgs["D"]: features.<index>
        if v != "M":
            indices.append(index)
        index += 1 if v == "M" else 2
    rename = dict(zip(convs, (f"features.{i}" for i in indices)))
    assert len(rename) == 13
    state = {}
    for key, value in raw.items():
        layer, _, what = key.rpartition(".")
        state[f"{rename.get(layer, layer)}.{what}"] = value
    for branch in ("class_fc", "box_fc"):
        state[f"{branch}.weight"] = chw_columns(state[f"{branch}.weight"], 512)
    state = Tracked(state)
    x = images(32, seed=8)
    from keras.applications import vgg16

    classes, boxes = task_nets.localizer(state, nchw(vgg16.preprocess_input(x.copy())))
    state.assert_all_read()
    got = model(x, training=False)
    assert_close(got["classes"], classes, terms=9 * 512, depth=15)
    assert_close(got["boxes"], boxes, terms=9 * 512, depth=15)


def test_embedding_net_follows_its_documented_layout():
    """width 4 (4, 8, 16, 32 channels), 8 dimensions, 32x32 raw pixels: a 4x4x32 map
    flattened into the projection, then unit length."""
    model = build("embedding_net", 46, dim=8, width=4)
    state = keras_state(model)
    state["projection.weight"] = chw_columns(state["projection.weight"], 32)
    state = Tracked(state)
    x = images(32, seed=9)
    expected = task_nets.embedding_net(state, nchw(x))
    state.assert_all_read()
    got = model(x, training=False)
    np.testing.assert_allclose(np.linalg.norm(expected, axis=-1), 1.0, rtol=1e-12)
    assert_close(got, expected, terms=9 * 16, depth=8)
