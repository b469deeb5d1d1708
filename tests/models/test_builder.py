"""The shared builder: input checks, top, pooling, errors that say what was expected."""

import keras
import numpy as np
import pytest

import kvision


def test_input_tensor_is_used_as_the_input():
    inputs = keras.Input((40, 40, 3))
    model = kvision.create("vgg11", include_top=False, input_tensor=inputs, pooling="max")
    assert model.inputs[0] is inputs and model.output_shape == (None, 512)


@pytest.mark.parametrize("bad, match", [
    (dict(classes=0), "classes"),
    (dict(classes=2.5), "classes"),
    (dict(pooling="mean", include_top=False), "pooling"),
    (dict(input_shape=(32, 32)), "3 entries"),
    (dict(input_shape=(31, 64, 3)), "at least 32"),
    (dict(input_shape=(None, None, 3)), "fixed input size"),
    (dict(input_tensor=np.zeros((1, 32, 32, 3))), "symbolic tensor"),
    (dict(weights=3), "weights"),
    (dict(weights="imagenet", classes=10), "classes=1000"),
    (dict(weights="imagenet", classifier_activation="sigmoid"), "classifier_activation"),
    (dict(weights="imagenet", input_shape=(224, 224, 1)), "3 input channels"),
])
def test_bad_arguments_raise_value_error(bad, match):
    with pytest.raises(ValueError, match=match):
        kvision.create("vgg11" if "imagenet" not in str(bad) else "vgg16", **bad)


def test_flatten_head_takes_other_fixed_sizes_and_channels():
    model = kvision.create("vgg11", input_shape=(64, 48, 1), classes=4)
    assert model.output_shape == (None, 4)
    assert model.get_layer("fc1").kernel.shape == (512 * 2 * 1, 4096)


def test_features_without_top_take_any_size():
    model = kvision.create("vgg11", include_top=False)
    for size in (32, 77):
        out = model(np.zeros((1, size, size, 3), "float32"))
        assert out.shape == (1, size // 32, size // 32, 512)


@pytest.mark.parametrize("pooling, rank", [(None, 4), ("avg", 2), ("max", 2)])
def test_pooling_options(pooling, rank):
    model = kvision.create("squeezenet1_1", include_top=False, pooling=pooling,
                           input_shape=(64, 64, 3))
    x = np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    out = np.asarray(model(x))
    assert out.ndim == rank
    if pooling:
        base = kvision.create("squeezenet1_1", include_top=False, input_shape=(64, 64, 3))
        base.set_weights(model.get_weights())
        unpooled = np.asarray(base(x))
        reduce = np.mean if pooling == "avg" else np.max
        np.testing.assert_allclose(out, reduce(unpooled, axis=(1, 2)), rtol=1e-5, atol=1e-5)
