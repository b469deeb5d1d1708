"""OverFeat's fast model against a NumPy forward written from the paper
(tests/reference/overfeat_net.py): every window's class scores and box."""

import keras
import numpy as np
import pytest

from kvision.models.detection import overfeat as O
from kvision.testing import float32_atol, randomize_weights
from reference import overfeat_net

WINDOW = O.MIN_WINDOW  # 71: the smallest window the fast body maps to one cell


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(7)
    model = randomize_weights(O.OverFeat(classes=3, input_shape=(WINDOW, WINDOW, 3),
                                         units=(8, 8), box_units=(6,)), seed=7)
    # Glorot kernels shrink 1/255-scaled pixels ~10x a layer: the outputs would be
    # the biases' alone. He-scaled kernels (same seeded draws) keep the image in them.
    for layer in model._flatten_layers():
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)):
            kernel, bias = layer.get_weights()
            fan_in = kernel.size // kernel.shape[-1]
            layer.set_weights([kernel * (2.0 / fan_in) ** 0.5 / kernel.std(), bias])
    return model


def _params(model):
    """kvision's weights in the reference's layout: convs (O, C, kh, kw); each Dense
    after the flatten a conv whose kernel covers the pool-5 map of one window (Keras
    flattens (H, W, C) row-major), then 1x1."""
    body = model.get_layer("backbone")
    params = {}
    for name, *_ in overfeat_net.FAST_BODY:
        kernel, bias = body.get_layer(name).get_weights()
        params[name] = (kernel.transpose(3, 2, 0, 1), bias)
    channels = params["conv5"][0].shape[0]
    for prefix, count in (("fc", 3), ("box_fc", 2)):
        layers = []
        for i in range(1, count + 1):
            kernel, bias = model.get_layer(f"{prefix}{i}").get_weights()
            side = int(round((kernel.shape[0] / channels) ** 0.5)) if i == 1 else 1
            kernel = kernel.reshape(side, side, -1, kernel.shape[-1])
            layers.append((kernel.transpose(3, 2, 0, 1), bias))
        params[prefix] = layers
    return params


def _images(size, seed):
    return np.random.default_rng(seed).uniform(0, 255, (2, size, size, 3)).astype(
        "float32")


def _check(got, x, params, cells):
    classes, boxes = overfeat_net.overfeat_fast(x.transpose(0, 3, 1, 2), params)
    logits = overfeat_net.overfeat_fast(x.transpose(0, 3, 1, 2), params, activate=False)
    for key, expected, logit in (("classes", classes, logits[0]),
                                 ("boxes", boxes, logits[1])):
        expected = expected.transpose(0, 2, 3, 1)
        value = np.asarray(got[key]).reshape(expected.shape)  # (B, K) on one window
        assert expected.shape[1:3] == cells, (key, expected.shape)
        # The largest sum: conv5's 3x3 over 1024 channels; 8 layers in sequence.
        atol = float32_atol(expected, terms=9 * 1024, depth=8,
                            scale=max(1.0, np.abs(logit).max()))
        # The image, not the biases alone, sets the outputs: a wrong layer shows.
        assert np.abs(expected[0] - expected[1]).max() > 10 * atol, key
        np.testing.assert_allclose(value, expected, rtol=0, atol=atol, err_msg=key)


def test_window_classifier_matches_the_paper_forward(model):
    x = _images(WINDOW, 0)
    _check(model(x, training=False), x, _params(model), (1, 1))


def test_sliding_windows_match_the_paper_forward(model):
    x = _images(WINDOW + 2 * 32, 1)  # 135: 3x3 windows, 32 pixels apart
    _check(O.fully_convolutional(model)(x), x, _params(model), (3, 3))
