"""ZFNet: the count and feature sizes of the paper's Fig. 3, ceil-mode pooling."""

import keras
import numpy as np
import pytest

import kvision
from kvision.models import get_info
from kvision.blocks.pooling import max_pool_ceil
from kvision.models.classification.zfnet import zfnet_body

# Fig. 3: (kernel, stride, pad, in, out) of layers 1-5; layers 6-8 fully connected.
CONVS = ((7, 2, 1, 3, 96), (5, 2, 0, 96, 256), (3, 1, 1, 256, 384),
         (3, 1, 1, 384, 384), (3, 1, 1, 384, 256))
FCS = ((6 * 6 * 256, 4096), (4096, 4096), (4096, 1000))


def test_count_from_the_paper_layout():
    convs = sum(k * k * cin * cout + cout for k, _, _, cin, cout in CONVS)
    fcs = sum(cin * cout + cout for cin, cout in FCS)
    assert (convs, fcs) == (3_726_464, 58_631_144)
    assert convs + fcs == 62_357_608 == get_info("zfnet").num_params


def _out(size, kernel, stride, pad=0, ceil=False):
    span = size + 2 * pad - kernel
    return (-(-span // stride) if ceil else span // stride) + 1


def test_feature_sizes_of_figure_3():
    """110 -> 55 -> 26 -> 13 -> 6, by formula and in the model."""
    size, expected = 224, {}
    for i, (kernel, stride, pad, _, _) in enumerate(CONVS, start=1):
        size = expected[f"conv{i}"] = _out(size, kernel, stride, pad)
        if i in (1, 2, 5):
            size = expected[f"pool{i}"] = _out(size, 3, 2, ceil=True)
    assert [expected[k] for k in ("conv1", "pool1", "conv2", "pool2", "pool5")] == \
        [110, 55, 26, 13, 6]
    model = kvision.models.ZFNet(include_top=False, input_shape=(224, 224, 3))
    for layer, side in expected.items():
        assert model.get_layer(layer).output.shape[1:3] == (side, side), layer
    assert model.output_shape == (None, 6, 6, 256)


def _numpy_ceil_pool(x, k=3, s=2):
    n, h, w, c = x.shape
    oh, ow = _out(h, k, s, ceil=True), _out(w, k, s, ceil=True)
    out = np.zeros((n, oh, ow, c), x.dtype)
    for i in range(oh):
        for j in range(ow):
            out[:, i, j] = x[:, i * s:i * s + k, j * s:j * s + k].max(axis=(1, 2))
    return out


@pytest.mark.parametrize("height, width", [(8, 8), (9, 9), (7, 10), (2, 3)])
def test_max_pool_ceil_matches_reference(height, width):
    x = np.random.default_rng(0).uniform(0, 1, (2, height, width, 3)).astype("float32")
    inputs = keras.Input((None, None, 3))
    model = keras.Model(inputs, max_pool_ceil(inputs, name="pool"))
    np.testing.assert_array_equal(np.asarray(model(x)), _numpy_ceil_pool(x))


def test_minimum_size_is_tight():
    assert zfnet_body(keras.Input((47, 47, 3))).shape[1:3] == (1, 1)
    with pytest.raises(ValueError):
        zfnet_body(keras.Input((46, 46, 3)))


def test_lrn_after_pools_and_dropout_after_fcs():
    model = kvision.models.ZFNet(input_shape=(64, 64, 3), classes=3)
    names = [layer.name for layer in model.layers]
    for i in (1, 2):
        assert names.index(f"pool{i}") + 1 == names.index(f"lrn{i}")
        assert names.index(f"fc{i}") + 1 == names.index(f"dropout{i}")
    assert model.get_layer("dropout1").rate == 0.5
