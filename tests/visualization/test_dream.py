"""DeepDream and class model visualization (issue 20): each raises what it claims to
raise, measured before and after by an independent NumPy computation."""

import keras
import numpy as np
import pytest

from kvision.visualization import dream
from kvision.visualization.layers import layer_output

PNG = b"\x89PNG\r\n\x1a\n"


def _model(seed=0):
    """A transfer-like model: a nested "backbone" (any input size) called on a fixed
    32x32 input, pooled, and a softmax Dense over 5 classes."""
    keras.utils.set_random_seed(seed)
    inner_in = keras.Input((None, None, 3))
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(inner_in)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv1")(x)
    x = keras.layers.Conv2D(16, 3, strides=2, padding="same", activation="relu",
                            name="conv2")(x)
    backbone = keras.Model(inner_in, x, name="backbone")
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.GlobalAveragePooling2D()(backbone(inputs))
    outputs = keras.layers.Dense(5, activation="softmax", name="classifier")(x)
    return keras.Model(inputs, outputs)


def _numpy_loss(model, image, path):
    """keras.io's loss, in NumPy, from the layer's activations."""
    act = np.asarray(layer_output(model, path)(image[None]), "float64")
    return np.sum(act[:, 2:-2, 2:-2, :] ** 2) / act.size


def test_deep_dream_raises_the_chosen_layers_activation_through_a_nested_model(tmp_path):
    model = _model()
    rng = np.random.default_rng(0)
    image = rng.uniform(60, 200, (40, 40, 3)).astype("float32")
    path = "backbone/conv2"
    before = _numpy_loss(model, keras.ops.convert_to_numpy(
        keras.ops.image.resize(image[None], (32, 32)))[0], path)
    dreamed = dream.deep_dream(model, image, layers=path, octaves=2, steps=5, jitter=2,
                               out=tmp_path / "dream.png")
    after = _numpy_loss(model, keras.ops.convert_to_numpy(
        keras.ops.image.resize(dreamed[None], (32, 32)))[0], path)
    assert dreamed.shape == image.shape and dreamed.dtype == np.float32
    assert 0 <= dreamed.min() and dreamed.max() <= 255  # kept in the value range
    assert after > 1.5 * before, (before, after)
    # the library's own measure is the same loss (float32 against float64)
    assert dream.dream_loss(model, dreamed, path) == pytest.approx(after, rel=1e-4)
    assert (tmp_path / "dream.png").read_bytes()[:8] == PNG


def test_the_reference_setting_is_inception_v3_mixed4_to_mixed7():
    keras.utils.set_random_seed(0)
    model = keras.applications.InceptionV3(include_top=False, weights=None,
                                           input_shape=(None, None, 3))
    assert dream.dream_layers(model) == {"mixed4": 1.0, "mixed5": 1.5, "mixed6": 2.0,
                                         "mixed7": 2.5}
    # One octave (the octaves are checked above, on the small model): each octave's
    # size traces InceptionV3's gradient again, half of this test's time at two.
    image = np.random.default_rng(0).uniform(-0.3, 0.3, (80, 80, 3)).astype("float32")
    before = dream.dream_loss(model, image)
    dreamed = dream.deep_dream(model, image, octaves=1, steps=2, value_range=(-1, 1))
    assert dream.dream_loss(model, dreamed) > 2 * before


def test_class_model_raises_the_class_score_before_the_softmax(tmp_path):
    model = _model(seed=1)
    # a random network's scores lie ~0.03 apart: scaled, so that its softmax is not flat
    kernel, bias = model.get_layer("classifier").get_weights()
    model.get_layer("classifier").set_weights([kernel * 100, bias])
    kernel, bias = (np.asarray(w, "float64") for w in (kernel * 100, bias))
    body, head = dream.class_scores(model)
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (2, 32, 32, 3)).astype("float32")

    def scores(x):  # NumPy's Dense without the softmax, on the pooled features
        pooled = np.asarray(layer_output(model, "global_average_pooling2d")(x), "float64")
        return pooled @ kernel + bias

    # the head is the Dense without its softmax
    np.testing.assert_allclose(np.asarray(head(body(images)), "float64"), scores(images),
                               rtol=1e-5, atol=1e-5 * np.abs(scores(images)).max())
    grey = np.full((1, 32, 32, 3), 127.5, "float32")
    image = dream.class_model(model, 3, steps=30, out=tmp_path / "class3.png")
    after = scores(image[None])[0]
    assert after[3] > scores(grey)[0, 3] + 2.0 and after.argmax() == 3
    assert np.asarray(model(image[None]))[0].argmax() == 3
    assert (tmp_path / "class3.png").read_bytes()[:8] == PNG
    # the L2 penalty keeps the image nearer grey
    free = dream.class_model(model, 3, steps=30, l2=0.0)
    held = dream.class_model(model, 3, steps=30, l2=0.1)
    assert np.abs(held - 127.5).mean() < 0.7 * np.abs(free - 127.5).mean()


@pytest.mark.parametrize("call, message", [
    (lambda m: dream.deep_dream(m, np.zeros((32, 32))), r"one image \(H, W, C\)"),
    (lambda m: dream.deep_dream(m, np.zeros((32, 32, 3)), layers="conv3"),
     "No layer 'conv3'.*conv1"),
    (lambda m: dream.deep_dream(m, np.zeros((32, 32, 3)), steps=0), "steps must be"),
    (lambda m: dream.deep_dream(m, np.zeros((32, 32, 3)), value_range=(1, 0)),
     "value_range"),
    (lambda m: dream.class_model(m, 5), r"class_index must be an integer in \[0, 5\)"),
])
def test_bad_arguments_are_named(call, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        call(_model())
