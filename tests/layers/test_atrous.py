"""AtrousConv2D against keras.layers.Conv2D with the same weights: outputs and
gradients equal whether taps are trimmed (rate >= the map's side) or not, a
.keras round trip with safe_mode, and the live-tap rule itself."""

import numpy as np
import pytest
import tensorflow as tf

import keras
from kvision.layers import AtrousConv2D
from kvision.layers import atrous
from kvision.layers.atrous import live_taps


def test_live_taps_keep_offsets_inside_the_map():
    assert live_taps(3, 24, 8) == (1, 2)      # only the centre of a 3x3 at rate 24
    assert live_taps(3, 7, 8) == (0, 3)       # offset 7 < 8: all taps see pixels
    assert live_taps(5, 3, 7) == (0, 5)       # outer offsets +-6 < 7: all live
    assert live_taps(5, 4, 7) == (1, 4)       # 2*4 = 8 >= 7: outer taps dead
    assert live_taps(3, 2, None) == (0, 3)    # unknown side: keep everything


def _pair(kernel_size, rate, shape):
    keras.utils.set_random_seed(0)
    inputs = keras.Input(shape[1:])
    atrous = AtrousConv2D(6, kernel_size, padding="same", dilation_rate=rate)
    plain = keras.layers.Conv2D(6, kernel_size, padding="same", dilation_rate=rate)
    atrous_model = keras.Model(inputs, atrous(inputs))
    plain_model = keras.Model(inputs, plain(inputs))
    plain.set_weights(atrous.get_weights())
    return atrous_model, plain_model, atrous


@pytest.mark.parametrize("kernel_size,rate,shape,used", [
    (3, 24, (2, 8, 8, 4), (1, 1)),       # ASPP at output stride 8 on a 64-pixel input
    (3, (12, 2), (2, 8, 5, 3), (1, 3)),  # rows trimmed, columns kept
    (5, 4, (1, 7, 9, 2), (3, 5)),        # 5x5: outer taps dead along rows only
    (3, 2, (2, 6, 6, 3), (3, 3)),        # nothing to trim
])
def test_equal_to_conv2d_values_and_gradients(kernel_size, rate, shape, used,
                                               monkeypatch):
    atrous_model, plain_model, layer = _pair(kernel_size, rate, shape)
    kernels = []
    conv = atrous.ops.conv

    def recording_conv(x, kernel, **kwargs):
        kernels.append(tuple(kernel.shape[:2]))
        return conv(x, kernel, **kwargs)

    monkeypatch.setattr(atrous.ops, "conv", recording_conv)
    x = tf.constant(np.random.default_rng(1).normal(size=shape).astype("float32"))
    np.testing.assert_allclose(np.asarray(atrous_model(x)), np.asarray(plain_model(x)),
                               rtol=1e-5, atol=1e-5)
    grads = []
    for model in (atrous_model, plain_model):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(model(x) ** 2)
        grads.append([g.numpy() for g in tape.gradient(loss, model.trainable_weights)])
    for a, b in zip(*grads):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    assert set(kernels) == {used}  # the taps actually convolved


def test_unknown_sizes_fall_back_to_conv2d():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((None, None, 2))
    layer = AtrousConv2D(3, 3, padding="same", dilation_rate=9)
    model = keras.Model(inputs, layer(inputs))
    plain = keras.layers.Conv2D(3, 3, padding="same", dilation_rate=9)
    plain.build((None, None, None, 2))
    plain.set_weights(layer.get_weights())
    x = np.random.default_rng(2).normal(size=(1, 5, 11, 2)).astype("float32")
    np.testing.assert_allclose(np.asarray(model(x)), np.asarray(plain(x)), rtol=1e-5,
                               atol=1e-5)


def test_keras_round_trip_in_safe_mode(tmp_path):
    model, _, layer = _pair(3, 16, (1, 4, 4, 2))
    assert layer.count_params() == 3 * 3 * 2 * 6 + 6  # the full kernel is kept
    path = str(tmp_path / "atrous.keras")
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert isinstance(loaded.layers[-1], AtrousConv2D)
    x = np.ones((1, 4, 4, 2), "float32")
    np.testing.assert_allclose(np.asarray(loaded(x)), np.asarray(model(x)), rtol=1e-6)
