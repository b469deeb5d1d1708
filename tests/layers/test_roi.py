"""RoIPooling and RoIAlign against direct NumPy transcriptions of torchvision's CPU
kernels (torchvision/csrc/ops/cpu/roi_pool_kernel.cpp, roi_align_kernel.cpp and
roi_align_common.h), loop by loop, in float32 as the kernels compute; gradients, bad
input, .keras round trips and TFLite with builtin operators only."""

import math
import re

import numpy as np
import pytest
import tensorflow as tf

import keras
from kvision.export.litert import _interpreter_class, custom_ops
from kvision.layers import RoIAlign, RoIPooling

F32 = np.float32


def _c_round(x):
    """C's round(): halves away from zero."""
    return int(math.copysign(math.floor(abs(x) + 0.5), x))


def roi_pool_reference(features, boxes, output_size, spatial_scale):
    """roi_pool_forward_kernel_impl on (N, H, W, C) features and (N, R, 4) boxes."""
    n_img, height, width, channels = features.shape
    pooled_h, pooled_w = output_size
    scale = F32(spatial_scale)
    out = np.zeros((n_img, boxes.shape[1], pooled_h, pooled_w, channels), "float32")
    for n in range(n_img):
        for r, (x1, y1, x2, y2) in enumerate(boxes[n].astype("float32")):
            start_w, start_h = _c_round(x1 * scale), _c_round(y1 * scale)
            end_w, end_h = _c_round(x2 * scale), _c_round(y2 * scale)
            roi_w = max(end_w - start_w + 1, 1)
            roi_h = max(end_h - start_h + 1, 1)
            bin_h, bin_w = F32(roi_h) / F32(pooled_h), F32(roi_w) / F32(pooled_w)
            for ph in range(pooled_h):
                for pw in range(pooled_w):
                    hstart = int(np.floor(F32(ph) * bin_h))
                    wstart = int(np.floor(F32(pw) * bin_w))
                    hend = int(np.ceil(F32(ph + 1) * bin_h))
                    wend = int(np.ceil(F32(pw + 1) * bin_w))
                    hstart = min(max(hstart + start_h, 0), height)
                    hend = min(max(hend + start_h, 0), height)
                    wstart = min(max(wstart + start_w, 0), width)
                    wend = min(max(wend + start_w, 0), width)
                    if hend <= hstart or wend <= wstart:
                        continue  # an empty bin is 0
                    out[n, r, ph, pw] = features[n, hstart:hend, wstart:wend].max(axis=(0, 1))
    return out


def _bilinear(height, width, y, x):
    """pre_calc_for_bilinear_interpolate for one sample: [(row, col, weight)] * 4."""
    if not (-1.0 <= y <= height and -1.0 <= x <= width):
        return []
    y, x = max(y, F32(0)), max(x, F32(0))
    y_low, x_low = int(y), int(x)
    if y_low >= height - 1:
        y_high = y_low = height - 1
        y = F32(y_low)
    else:
        y_high = y_low + 1
    if x_low >= width - 1:
        x_high = x_low = width - 1
        x = F32(x_low)
    else:
        x_high = x_low + 1
    ly, lx = y - y_low, x - x_low
    hy, hx = 1 - ly, 1 - lx
    return [(y_low, x_low, hy * hx), (y_low, x_high, hy * lx),
            (y_high, x_low, ly * hx), (y_high, x_high, ly * lx)]


def roi_align_weights(shape, boxes, output_size, spatial_scale, sampling_ratio, aligned):
    """The kernel's weights: (N, R, out_h, out_w, H, W), one feature pixel's share in
    each output (the forward pass is their dot product with the features; the backward
    pass adds them up, as roi_align_backward_kernel_impl)."""
    n_img, height, width = shape[:3]
    pooled_h, pooled_w = output_size
    scale = F32(spatial_scale)
    offset = F32(0.5) if aligned else F32(0.0)
    weights = np.zeros((n_img, boxes.shape[1], pooled_h, pooled_w, height, width), "float32")
    for n in range(n_img):
        for r, (x1, y1, x2, y2) in enumerate(boxes[n].astype("float32")):
            start_w, start_h = x1 * scale - offset, y1 * scale - offset
            roi_w, roi_h = x2 * scale - offset - start_w, y2 * scale - offset - start_h
            if not aligned:
                roi_w, roi_h = max(roi_w, F32(1)), max(roi_h, F32(1))
            bin_h, bin_w = roi_h / F32(pooled_h), roi_w / F32(pooled_w)
            grid_h = sampling_ratio if sampling_ratio > 0 else math.ceil(roi_h / pooled_h)
            grid_w = sampling_ratio if sampling_ratio > 0 else math.ceil(roi_w / pooled_w)
            count = max(grid_h * grid_w, 1)
            for ph in range(pooled_h):
                for pw in range(pooled_w):
                    for iy in range(grid_h):
                        y = start_h + ph * bin_h + F32(iy + 0.5) * bin_h / F32(grid_h)
                        for ix in range(grid_w):
                            x = start_w + pw * bin_w + F32(ix + 0.5) * bin_w / F32(grid_w)
                            for row, col, w in _bilinear(height, width, y, x):
                                weights[n, r, ph, pw, row, col] += w / count
    return weights


def roi_align_reference(features, boxes, output_size, spatial_scale, sampling_ratio,
                        aligned):
    w = roi_align_weights(features.shape, boxes, output_size, spatial_scale,
                          sampling_ratio, aligned)
    return np.einsum("nrpqhw,nhwc->nrpqc", w, features.astype("float64")).astype("float32")


def _boxes(rng, n, image_size):
    """Random boxes plus the hard cases: on the border, partly and wholly outside,
    smaller than a bin, zero area, inverted, the whole image."""
    s = float(image_size)
    special = np.array([[0, 0, s, s], [0, 0, s - 1, s - 1], [-20, -12, s / 2, s / 3],
                        [s * 0.7, s * 0.6, s + 30, s + 9], [s + 5, 3, s + 40, 20],
                        [-50, -40, -10, -3], [9.3, 7.1, 10.2, 7.9], [12, 12, 12, 12],
                        [20.5, 8, 20.5, 30], [30, 25, 10, 5], [8, 24, 40, 25],
                        [0.5, 0.5, 15.5, 15.5]], "float32")
    random = np.zeros((0, 4), "float32")
    for _ in range(n):
        x = np.sort(rng.uniform(-0.2 * s, 1.2 * s, 2))
        y = np.sort(rng.uniform(-0.2 * s, 1.2 * s, 2))
        random = np.concatenate([random, [[x[0], y[0], x[1], y[1]]]])
    return np.concatenate([special, random]).astype("float32")


def _inputs(seed, batch=2, size=6, channels=3, stride=8, rois=8):
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(batch, size, size + 1, channels)).astype("float32")
    boxes = np.stack([_boxes(rng, rois, size * stride) for _ in range(batch)])
    return features, boxes


def _tolerance(features):
    return 1e-5 * float(np.abs(features).max())  # float32 rounding, relative to the values


@pytest.mark.parametrize("output_size,scale", [((2, 2), 1 / 8), (3, 1 / 8), ((3, 2), 1 / 4),
                                               ((1, 4), 0.5), (2, 1 / 16)])
def test_roi_pooling_is_torchvision_roi_pool(output_size, scale):
    features, boxes = _inputs(0)
    layer = RoIPooling(output_size, spatial_scale=scale)
    expected = roi_pool_reference(features, boxes, layer.output_size, scale)
    got = np.asarray(layer([features, boxes]))
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=0, atol=_tolerance(features))
    assert (expected == 0).any() and (expected != 0).any()  # empty and full bins both seen


def test_roi_pooling_rounds_halves_away_from_zero():
    # x1 * scale = 2.5 and 0.5: C's round gives 3 and 1 (round-half-even gives 2 and 0).
    features = np.arange(1 * 4 * 6 * 1, dtype="float32").reshape(1, 4, 6, 1)
    boxes = np.array([[[20, 4, 20, 4], [4, 4, 4, 4]]], "float32")
    got = np.asarray(RoIPooling(1, spatial_scale=1 / 8)([features, boxes]))[..., 0]
    np.testing.assert_array_equal(got[0, :, 0, 0], [features[0, 1, 3, 0], features[0, 1, 1, 0]])


def test_roi_pooling_in_a_graph_is_torchvision_roi_pool():
    """In a tf.function (as model.predict and a SavedModel run it) too: boxes 1 to 8
    feature pixels wide into 7 bins (3 pixels: ceil(7 * 3/7) is 3 in the kernel's float32;
    a graph's division by 7 made a product by float32 1/7 gave 4 before; issue 17)."""
    rng = np.random.default_rng(1)
    features = rng.normal(size=(1, 8, 8, 2)).astype("float32")
    boxes = np.array([[[0, 0, 16 * k - 1, 16 * (9 - k) - 1] for k in range(1, 9)]], "float32")
    layer = RoIPooling(7, spatial_scale=1 / 16)
    expected = roi_pool_reference(features, boxes, layer.output_size, 1 / 16)
    got = np.asarray(tf.function(lambda f, b: layer([f, b]))(features, boxes))
    np.testing.assert_allclose(got, expected, rtol=0, atol=_tolerance(features))


@pytest.mark.parametrize("output_size,scale,ratio,aligned", [
    ((2, 2), 1 / 8, 2, True), ((2, 2), 1 / 8, 2, False), ((3, 2), 1 / 4, 1, True),
    (2, 1 / 8, 0, True), (3, 1 / 8, 0, False), ((2, 3), 0.5, 3, False), (1, 1 / 16, -1, True)])
def test_roi_align_is_torchvision_roi_align(output_size, scale, ratio, aligned):
    features, boxes = _inputs(1)
    layer = RoIAlign(output_size, spatial_scale=scale, sampling_ratio=ratio, aligned=aligned)
    expected = roi_align_reference(features, boxes, layer.output_size, scale, ratio, aligned)
    got = np.asarray(layer([features, boxes]))
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=0, atol=_tolerance(features))
    assert (expected == 0).any() and (expected != 0).any()


def test_roi_align_gradient_is_the_kernels_bilinear_weights():
    features, boxes = _inputs(2, batch=1, rois=3)
    layer = RoIAlign(2, spatial_scale=1 / 8, sampling_ratio=0)
    upstream = np.random.default_rng(3).normal(size=(1, len(boxes[0]), 2, 2, 3)).astype("float32")
    x = tf.constant(features)
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = tf.reduce_sum(layer([x, tf.constant(boxes)]) * upstream)
    got = tape.gradient(loss, x).numpy()
    w = roi_align_weights(features.shape, boxes, (2, 2), 1 / 8, 0, True)
    expected = np.einsum("nrpqhw,nrpqc->nhwc", w, upstream)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5 * np.abs(expected).max())


def test_roi_pooling_gradient_goes_to_each_bins_argmax():
    features, boxes = _inputs(4, batch=1, rois=3)
    x = tf.constant(features)
    with tf.GradientTape() as tape:
        tape.watch(x)
        out = RoIPooling(2, spatial_scale=1 / 8)([x, tf.constant(boxes)])
        loss = tf.reduce_sum(out)
    got = tape.gradient(loss, x).numpy()
    # Random floats have no ties: each non-empty bin's max sits at one pixel per channel.
    expected = np.zeros_like(features)
    for value in out.numpy()[0].reshape(-1, 3):
        for c in range(3):
            if value[c] != 0:
                expected[0, ..., c] += features[0, ..., c] == value[c]
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("layer", [RoIPooling(3, 1 / 8), RoIAlign(3, 1 / 8, 0)],
                         ids=["pool", "align"])
def test_no_boxes_give_an_empty_batch(layer):
    features = np.ones((2, 5, 5, 4), "float32")
    out = layer([features, np.zeros((2, 0, 4), "float32")])
    assert tuple(out.shape) == (2, 0, 3, 3, 4)


@pytest.mark.parametrize("cls", [RoIPooling, RoIAlign])
@pytest.mark.parametrize("features,boxes,says", [
    ((2, 5, 5), (2, 3, 4), "features must be (N, H, W, C)"),
    ((2, 5, 5, 3), (2, 3, 5), "boxes must be (N, R, 4)"),
    ((2, 5, 5, 3), (6, 4), "boxes must be (N, R, 4)"),
    ((2, 5, 5, 3), (3, 3, 4), "same batch size")])
def test_bad_shapes_are_refused_naming_what_came(cls, features, boxes, says):
    with pytest.raises(ValueError, match=re.escape(says)) as error:
        cls(2)([np.zeros(features, "float32"), np.zeros(boxes, "float32")])
    assert str(boxes) in str(error.value) or str(features) in str(error.value)


@pytest.mark.parametrize("kwargs", [{"output_size": 0}, {"output_size": (2, 2.5)},
                                    {"output_size": (1, 2, 3)}, {"spatial_scale": 0},
                                    {"sampling_ratio": 1.5}, {"aligned": 1}])
def test_bad_arguments_are_refused(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        RoIAlign(**kwargs)


def _roi_model(layer, size=6, rois=5):
    features = keras.Input((size, size + 1, 3), name="features")
    boxes = keras.Input((rois, 4), name="boxes")
    x = keras.layers.Conv2D(4, 1, name="conv")(features)
    out = layer([x, boxes])
    assert tuple(out.shape) == (None, rois, *layer.output_size, 4)
    return keras.Model([features, boxes], out)


@pytest.mark.parametrize("layer", [RoIPooling((2, 3), 1 / 8),
                                   RoIAlign((3, 2), 1 / 8, 0, aligned=False)],
                         ids=["pool", "align"])
def test_keras_round_trip_in_safe_mode(layer, tmp_path):
    keras.utils.set_random_seed(0)
    model = _roi_model(layer)
    features, boxes = _inputs(5, rois=0)  # the 12 hard boxes only
    boxes = boxes[:, :5]
    model.save(tmp_path / "roi.keras")
    loaded = keras.saving.load_model(tmp_path / "roi.keras", safe_mode=True)
    np.testing.assert_array_equal(loaded.predict([features, boxes], verbose=0),
                                  model.predict([features, boxes], verbose=0))
    assert loaded.layers[-1].get_config() == layer.get_config()


@pytest.mark.parametrize("layer", [RoIPooling(2, 1 / 8), RoIAlign(2, 1 / 8)],
                         ids=["pool", "align"])
def test_trains_in_fit_with_any_number_of_boxes(layer):
    keras.utils.set_random_seed(0)
    model = _roi_model(layer, rois=None)  # R free: a batch of 12 boxes, then of 3
    model.compile("adam", "mse")
    for rois in (12, 3):
        features, boxes = _inputs(6, rois=0)
        boxes = boxes[:, :rois]
        target = np.ones((2, rois, 2, 2, 4), "float32")
        before = model.evaluate([features, boxes], target, verbose=0)
        model.fit([features, boxes], target, epochs=5, verbose=0)
        assert model.evaluate([features, boxes], target, verbose=0) < before


@pytest.mark.parametrize("layer", [RoIPooling((2, 3), 1 / 8), RoIAlign((3, 2), 1 / 8, 2),
                                   RoIAlign(2, 1 / 8, 0, aligned=False)],
                         ids=["pool", "align", "align-adaptive"])
def test_tflite_builtins_only_and_equal(layer, tmp_path):
    keras.utils.set_random_seed(0)
    model = _roi_model(layer, rois=12)
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    content = converter.convert()
    assert custom_ops(content) == []
    features, boxes = _inputs(7, batch=1, rois=0)
    interpreter = _interpreter_class()(model_content=content)
    runner = interpreter.get_signature_runner()
    got = runner(features=features, boxes=boxes)
    got = next(iter(got.values()))
    expected = model.predict([features, boxes], verbose=0)
    np.testing.assert_allclose(got, expected, rtol=0, atol=_tolerance(expected))
