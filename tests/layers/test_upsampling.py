"""Argmax pooling / max unpooling against tf.nn.max_pool_with_argmax, resizing against
tf.image, TFLite (builtin ops only) and .keras round trips."""

import numpy as np
import pytest
import tensorflow as tf

import keras
from kvision.export import tflite
from kvision.export.litert import custom_ops
from kvision.layers import BilinearKernel, MaxPoolingWithArgmax2D, MaxUnpooling2D, ResizeLike
from kvision.layers.upsampling import flat_indices
from kvision.testing import assert_float32_close


def _reference(x, padding):
    values, argmax = tf.nn.max_pool_with_argmax(x, 2, 2, padding,
                                                include_batch_in_index=False)
    return values.numpy(), argmax.numpy()


@pytest.mark.parametrize("shape,padding", [((2, 6, 8, 3), "VALID"), ((2, 7, 5, 4), "SAME")])
def test_argmax_pooling_finds_what_tf_finds(shape, padding):
    x = np.random.default_rng(0).normal(size=shape).astype("float32")
    pooled, indices = MaxPoolingWithArgmax2D(2)(x)
    values, argmax = _reference(x, padding)
    np.testing.assert_array_equal(np.asarray(pooled), values)
    np.testing.assert_array_equal(flat_indices(indices, shape), argmax)


def test_unpooling_puts_values_back_where_the_maxima_were():
    x = np.random.default_rng(1).normal(size=(2, 7, 6, 3)).astype("float32")
    pooled, indices = MaxPoolingWithArgmax2D(2)(x)
    out = np.asarray(MaxUnpooling2D(2)([pooled, indices, x]))
    values, argmax = _reference(x, "SAME")
    expected = np.zeros((2, 7 * 6 * 3), "float32")
    for b in range(2):
        expected[b, argmax[b].ravel()] = values[b].ravel()
    np.testing.assert_array_equal(out, expected.reshape(x.shape))
    assert np.count_nonzero(out) == values.size  # zeros everywhere else


def _unpool_model(size=16, channels=4):
    inputs = keras.Input((size, size, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(channels, 3, padding="same", activation="relu")(x)
    pooled, indices = MaxPoolingWithArgmax2D(2, name="pool")(x)
    y = keras.layers.Conv2D(channels, 3, padding="same", name="mid")(pooled)
    y = MaxUnpooling2D(2, name="unpool")([y, indices, x])
    y = ResizeLike(name="resize")([keras.layers.Conv2D(2, 1)(y), inputs])
    return keras.Model(inputs, y)


def _litert_outputs(path, images):
    """The .tflite file run by LiteRT's own interpreter on a batch (not kvision's runner)."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    (given,) = interpreter.get_input_details()
    interpreter.resize_tensor_input(given["index"], images.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(given["index"], images)
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])


def test_unpooling_model_converts_to_tflite_with_builtin_ops_only(tmp_path):
    keras.utils.set_random_seed(0)
    model = _unpool_model()
    images = np.random.default_rng(2).uniform(0, 255, (8, 16, 16, 3)).astype("float32")
    tflite(model, tmp_path / "unpool.tflite", check_data=images)
    assert custom_ops((tmp_path / "unpool.tflite").read_bytes()) == []
    # The file's outputs against the Keras model's, here rather than the exporter's
    # verdict: three convolutions (at most 3x3x4 = 36 terms) in another order
    # (XNNPACK). Measured: 4.8e-7 at outputs of size 2.8.
    assert_float32_close(_litert_outputs(tmp_path / "unpool.tflite", images),
                         model.predict(images, verbose=0), terms=36, depth=3)


def test_keras_file_round_trip_in_safe_mode(tmp_path):
    model = _unpool_model(size=12)
    path = tmp_path / "unpool.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    x = np.random.default_rng(3).uniform(0, 255, (2, 12, 12, 3)).astype("float32")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0),
                               atol=1e-5)
    assert isinstance(loaded.get_layer("unpool"), MaxUnpooling2D)


def test_resize_like_is_tf_image_resize():
    x = np.random.default_rng(4).normal(size=(1, 5, 7, 2)).astype("float32")
    ref = np.zeros((1, 11, 9, 1), "float32")
    out = ResizeLike()([x, ref])
    np.testing.assert_allclose(out, tf.image.resize(x, (11, 9)).numpy(), atol=1e-6)


def test_bilinear_kernel_deconvolution_is_bilinear_upsampling_inside():
    """A stride-2 Conv2DTranspose with BilinearKernel (FCN's initial deconvolution)
    equals tf.image's bilinear 2x resize away from the border."""
    x = np.random.default_rng(5).normal(size=(1, 6, 6, 3)).astype("float32")
    layer = keras.layers.Conv2DTranspose(3, 4, strides=2, padding="same", use_bias=False,
                                         kernel_initializer=BilinearKernel())
    out = np.asarray(layer(x))
    expected = tf.image.resize(x, (12, 12)).numpy()
    np.testing.assert_allclose(out[:, 1:-1, 1:-1], expected[:, 1:-1, 1:-1], atol=1e-5)


def test_bad_inputs_are_clear_errors():
    with pytest.raises(ValueError, match="pool_size"):
        MaxPoolingWithArgmax2D(1)
    values = keras.Input((4, 4, 3))
    indices = keras.Input((4, 5, 3), dtype="int32")
    with pytest.raises(ValueError, match="same shape"):
        MaxUnpooling2D()([values, indices])
    with pytest.raises(ValueError, match="interpolation"):
        ResizeLike("cubic")
