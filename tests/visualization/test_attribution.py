"""kvision.visualization.attribution against direct computations of the papers'
formulas, the Adebayo et al. (2018) randomization check, the guided / deconvnet
rules on a non-ReLU activation, and localization on digit scenes."""

import math

import numpy as np
import pytest
import tensorflow as tf
from scipy.stats import spearmanr

import keras

from kvision.data.synthetic import digit_scenes
from kvision.testing import float32_atol
from kvision.visualization import attribution as A


def _nested(seed=0):
    """Conv layers in a nested "backbone" model under a flattening softmax head (a
    pooled head would make d y / d A the same at every position)."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((12, 12, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="c1")(inputs)
    x = keras.layers.Conv2D(6, 3, strides=2, padding="same", name="c2")(x)
    x = keras.layers.ReLU(name="r2")(x)
    backbone = keras.Model(inputs, x, name="backbone")
    images = keras.Input((12, 12, 3))
    y = keras.layers.Flatten(name="flatten")(backbone(images))
    y = keras.layers.Dense(3, activation="softmax", name="predictions")(y)
    return keras.Model(images, y, name="outer"), backbone


def _direct(model, backbone, x):
    """The feature map A and d logit_c / dA for each image's top class, by hand:
    the layers called one by one, the softmax left out (the paper's y^c)."""
    dense = model.get_layer("predictions")
    with tf.GradientTape() as tape:
        a = backbone.get_layer("c1")(x)
        a = backbone.get_layer("r2")(backbone.get_layer("c2")(a))
        tape.watch(a)
        logits = tf.reshape(a, (len(x), -1)) @ dense.kernel + dense.bias
        top = tf.argmax(logits, axis=-1)
        score = tf.reduce_sum(tf.gather(logits, top, batch_dims=1))
    return a.numpy(), tape.gradient(score, a).numpy()


def _resized_unit(cam, size):
    cam = tf.image.resize(cam[..., None], size, method="bilinear").numpy()[..., 0]
    return cam / cam.max(axis=(1, 2), keepdims=True)


def test_gradcam_is_the_papers_formula_through_a_nested_backbone():
    model, backbone = _nested()
    x = np.random.default_rng(1).uniform(0, 255, (3, 12, 12, 3)).astype("float32")
    a, g = _direct(model, backbone, x)
    alpha = g.mean(axis=(1, 2))  # (N, K): global-average-pooled gradients
    cam = np.maximum(np.einsum("nk,nhwk->nhw", alpha, a), 0)
    expected = _resized_unit(cam, (12, 12))
    got = A.gradcam(model, x)  # default layer: backbone/r2, the last spatial map
    assert got.shape == (3, 12, 12) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=float32_atol(expected, terms=108,
                                                                depth=3))
    np.testing.assert_allclose(A.gradcam(model, x, layer="backbone/r2"), got)
    # The nested model named alone is its output: the same map.
    np.testing.assert_allclose(A.gradcam(model, x, layer="backbone"), got)


def test_gradcam_plus_plus_is_the_papers_weighting():
    model, backbone = _nested()
    x = np.random.default_rng(2).uniform(0, 255, (2, 12, 12, 3)).astype("float32")
    a, g = _direct(model, backbone, x)
    expected = np.zeros(a.shape[:3])
    for n, k in np.ndindex(a.shape[0], a.shape[3]):  # eq. 19 of the paper, per map
        gk, ak = g[n, ..., k].astype("float64"), a[n, ..., k].astype("float64")
        denominator = 2 * gk ** 2 + ak.sum() * gk ** 3
        alpha = np.divide(gk ** 2, denominator, out=np.zeros_like(gk),
                          where=denominator != 0)
        expected[n] += (alpha * np.maximum(gk, 0)).sum() * ak
    expected = _resized_unit(np.maximum(expected, 0).astype("float32"), (12, 12))
    np.testing.assert_allclose(A.gradcam_plus_plus(model, x), expected,
                               atol=float32_atol(expected, terms=108, depth=4))


def _one_layer(activation, fused):
    """x (6,) -> f(x) -> w . f(x): identity weights, so d score / d f(x) = w."""
    inputs = keras.Input((6,))
    if fused:
        h = keras.layers.Dense(6, activation=activation, name="act")(inputs)
    elif isinstance(activation, keras.layers.Layer):  # ReLU, LeakyReLU, ELU layers
        h = activation(keras.layers.Dense(6, name="linear")(inputs))
    else:
        h = keras.layers.Activation(activation, name="act")(
            keras.layers.Dense(6, name="linear")(inputs))
    y = keras.layers.Dense(2, use_bias=False, name="score")(h)
    model = keras.Model(inputs, y)
    for layer in model.layers[1:-1]:
        if layer.weights:
            layer.set_weights([np.eye(6, dtype="float32"), np.zeros(6, "float32")])
    w = np.array([[1.5, 0], [-2.0, 0], [0.5, 0], [-1.0, 0], [2.0, 0], [-0.5, 0]],
                 "float32")
    model.get_layer("score").set_weights([w])
    return model, w[:, 0]


def _gelu(x):
    return x * 0.5 * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))


def _silu(x):
    return x / (1 + np.exp(-x))


def _leaky(x):
    return np.where(x > 0, x, 0.1 * x)


@pytest.mark.parametrize("activation, f, fused", [
    ("gelu", _gelu, True), ("swish", _silu, False), ("leaky", _leaky, False)])
def test_guided_and_deconvnet_rules_on_a_non_relu_activation(activation, f, fused):
    if activation == "leaky":
        activation = keras.layers.LeakyReLU(negative_slope=0.1, name="act")
    model, w = _one_layer(activation, fused)
    x = np.array([[1.2, 0.7, -0.8, -1.5, 0.3, 2.0]], "float32")  # every sign pairing
    h = 1e-4  # central difference in float64: f'(x) independent of TensorFlow
    x64 = x[0].astype("float64")
    fprime = (f(x64 + h) - f(x64 - h)) / (2 * h)
    guided = A.guided_backprop(model, x, class_index=0)[0]
    np.testing.assert_allclose(guided, fprime * w * (x64 > 0) * (w > 0), atol=1e-5)
    assert np.count_nonzero(guided) == 2  # x > 0 and w > 0: inputs 0 and 4
    np.testing.assert_allclose(A.deconvnet(model, x, class_index=0)[0],
                               np.maximum(w, 0), atol=1e-6)
    # The ordinary gradient is untouched: the model was not edited.
    vanilla = np.abs(fprime * w)
    np.testing.assert_allclose(A.saliency(model, x, class_index=0)[0],
                               vanilla / vanilla.max(), atol=1e-5)
    if isinstance(activation, str):
        assert model.get_layer("act").activation.__name__ == keras.activations.get(
            activation).__name__


def test_smoothgrad_averages_the_gradients_of_its_noisy_copies():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6, 6, 2))
    x = keras.layers.Conv2D(3, 3, activation="tanh")(inputs)
    y = keras.layers.Dense(2)(keras.layers.Flatten()(x))  # logits: no softmax
    model = keras.Model(inputs, y)
    images = np.random.default_rng(7).uniform(0, 1, (2, 6, 6, 2)).astype("float32")
    chosen = model(images).numpy().argmax(axis=-1)  # fixed on the clean images
    rng = np.random.default_rng(0)  # the draws saliency(seed=0) makes, in order
    spread = 0.2 * (images.max(axis=(1, 2, 3)) - images.min(axis=(1, 2, 3)))
    total = 0
    for _ in range(4):
        noisy = tf.constant(images + rng.normal(size=images.shape)
                            * spread[:, None, None, None], tf.float32)
        with tf.GradientTape() as tape:
            tape.watch(noisy)
            score = tf.reduce_sum(tf.gather(model(noisy), chosen, batch_dims=1))
        total = total + np.abs(tape.gradient(score, noisy).numpy()).max(axis=-1)
    expected = total / total.max(axis=(1, 2), keepdims=True)
    got = A.saliency(model, images, smoothgrad=4, noise=0.2, seed=0)
    np.testing.assert_allclose(got, expected, atol=float32_atol(expected, terms=18,
                                                                depth=3))
    assert np.abs(got - A.saliency(model, images)).max() > 0.01  # not the plain map


def test_occlusion_finds_the_only_pixels_the_score_reads():
    inputs = keras.Input((8, 8, 1))
    y = keras.layers.Dense(1, use_bias=False)(keras.layers.Flatten()(inputs))
    model = keras.Model(inputs, y)
    kernel = np.zeros((64, 1), "float32")
    kernel[[2 * 8 + 5, 3 * 8 + 5]] = 1.0  # pixels (2, 5) and (3, 5)
    model.layers[-1].set_weights([kernel])
    maps = A.occlusion(model, np.ones((1, 8, 8, 1), "float32"), patch=2, stride=1,
                       fill=0.0)[0]
    # Only squares covering a read pixel lower the score: rows 1-4, columns 4-6.
    assert maps[2, 5] == maps[3, 5] == 1.0
    assert maps[:1].max() == maps[5:].max() == maps[:, :4].max() == maps[:, 7:].max() == 0


# --- detectors, segmenters, transfer models ---------------------------------------------

def test_a_detections_saliency_is_the_gradient_of_its_score_through_three_models():
    """A localizer's inference model nests the localizer, which nests its backbone;
    the score of detection k is its ``scores[:, k]``, differentiated here through
    Keras' own call of the detector (decode and NMS included). Image 0 has one
    detection, image 1 two."""
    import kvision
    from kvision.models.detection import localization
    from kvision.visualization import layers

    keras.utils.set_random_seed(0)
    model = kvision.create("localizer", backbone="lenet5", classes=10, objects=2,
                           input_shape=(32, 32, 1), hidden_units=16)
    detector = localization.inference_model(model, score_threshold=0.0, max_detections=4)
    x = tf.constant(np.random.default_rng(3).uniform(0, 255, (2, 32, 32, 1)), tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(x)
        found = detector(x)
        score = tf.reduce_sum(found["scores"][:, 0])
    np.testing.assert_array_equal(found["num_detections"], [1, 2])
    expected = np.abs(tape.gradient(score, x).numpy()).max(axis=-1)
    expected /= expected.max(axis=(1, 2), keepdims=True)
    got = A.saliency(detector, x.numpy(), detection=0)
    np.testing.assert_allclose(got, expected, atol=float32_atol(expected, terms=400,
                                                                depth=6))
    assert layers.last_spatial_layer(detector) == "localizer/backbone/s4_pool"
    cam = A.gradcam(detector, x.numpy(), detection=1, layer="localizer/backbone/c3_conv")
    assert cam.shape == (2, 32, 32) and cam[1].max() == 1.0
    assert cam[0].max() == 0.0  # no second detection: nothing to explain
    with pytest.raises(ValueError, match=r"detection must be in \[0, 4\)"):
        A.gradcam(detector, x.numpy(), detection=4)


def test_a_segmenters_score_is_one_class_summed_over_its_pixels():
    from kvision.tasks import with_task

    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="c1")(inputs)
    logits = keras.layers.Conv2D(3, 1, name="logits")(x)
    probabilities = keras.layers.Activation("softmax", name="softmax")(logits)
    model = with_task(keras.Model(inputs, probabilities), "segmentation")
    images = np.random.default_rng(4).uniform(0, 1, (2, 8, 8, 3)).astype("float32")
    raw = keras.Model(inputs, logits)(images).numpy()  # Keras' call, before softmax
    labels = raw.argmax(axis=-1)
    for c in range(3):
        mask = labels == c
        expected = np.where(mask.any(axis=(1, 2)), (raw[..., c] * mask).sum(axis=(1, 2)),
                            raw[..., c].sum(axis=(1, 2)))
        outputs, _ = A.forward(model, tf.constant(images))
        got = A.score_target(model, c)(outputs).numpy()
        np.testing.assert_allclose(got, expected, atol=float32_atol(expected, terms=64))
    assert A.gradcam(model, images, class_index=1, layer="c1").shape == (2, 8, 8)


def test_one_class_of_a_segmenter_through_its_nested_backbone_is_the_formula():
    """Grad-CAM of class c of a segmenter at a layer inside its nested backbone:
    the score is c's logits summed over the pixels predicted c (the mask held
    constant), computed here with the layers called one by one."""
    from kvision.tasks import with_task

    keras.utils.set_random_seed(2)
    inputs = keras.Input((12, 12, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="c1")(inputs)
    x = keras.layers.Conv2D(6, 3, strides=2, padding="same", activation="relu",
                            name="c2")(x)
    backbone = keras.Model(inputs, x, name="backbone")
    images = keras.Input((12, 12, 3))
    y = keras.layers.Conv2D(3, 3, padding="same", name="logits")(backbone(images))
    y = keras.layers.UpSampling2D(2, name="up")(y)
    y = keras.layers.Activation("softmax", name="softmax")(y)
    model = with_task(keras.Model(images, y), "segmentation")
    x = np.random.default_rng(6).uniform(0, 255, (2, 12, 12, 3)).astype("float32")
    head = [model.get_layer("logits"), model.get_layer("up")]
    for c in range(3):
        with tf.GradientTape() as tape:
            a = backbone.get_layer("c2")(backbone.get_layer("c1")(x))
            tape.watch(a)
            logits = head[1](head[0](a))
            mask = tf.cast(tf.argmax(logits, axis=-1) == c, tf.float32)
            mask = tf.where(tf.reduce_sum(mask, axis=(1, 2), keepdims=True) > 0,
                            mask, 1.0)
            score = tf.reduce_sum(logits[..., c] * tf.stop_gradient(mask))
        g = tape.gradient(score, a).numpy()
        cam = np.maximum(np.einsum("nk,nhwk->nhw", g.mean(axis=(1, 2)), a.numpy()), 0)
        expected = _resized_unit(cam, (12, 12))
        got = A.gradcam(model, x, class_index=c, layer="backbone/c2")
        np.testing.assert_allclose(got, expected, atol=float32_atol(expected, terms=54,
                                                                    depth=3))


def test_gradcam_runs_on_a_transfer_model_by_its_backbones_path():
    from kvision import transfer

    keras.utils.set_random_seed(0)
    model = transfer.build_classifier("lenet5", classes=3, weights=None,
                                      input_shape=(32, 32, 1))
    x = np.random.default_rng(5).uniform(0, 255, (2, 32, 32, 1)).astype("float32")
    by_path = A.gradcam(model, x, class_index=0, layer="backbone/c3_conv")
    by_name = A.gradcam(model, x, class_index=0, layer="c3_conv")
    np.testing.assert_array_equal(by_path, by_name)
    assert by_path.shape == (2, 32, 32) and by_path.max() == 1.0


# --- a classifier trained on digit scenes ---------------------------------------------

SIZE = 32


def _digit_classifier(seed=0):
    inputs = keras.Input((SIZE, SIZE, 1))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="conv1")(x)
    x = keras.layers.MaxPooling2D(name="pool1")(x)
    x = keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="conv2")(x)
    x = keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="conv3")(x)
    backbone = keras.Model(inputs, x, name="backbone")
    images = keras.Input((SIZE, SIZE, 1))
    y = keras.layers.GlobalAveragePooling2D()(backbone(images))
    y = keras.layers.Dense(10, activation="softmax", name="predictions")(y)
    return keras.Model(images, y, name="digits")


def _scenes(count, subset, seed):
    scenes = digit_scenes(count, image_size=SIZE, objects=1, digit_size=(10, 14),
                          channels=1, subset=subset, seed=seed)
    return scenes.images.astype("float32"), np.array([c[0] for c in scenes.classes]), \
        np.array([b[0] for b in scenes.boxes])


@pytest.fixture(scope="module")
def trained():
    """(classifier, held-out images, labels, boxes): 3,000 scenes, 6 epochs."""
    keras.utils.set_random_seed(0)
    x, y, _ = _scenes(3000, "train", 0)
    model = _digit_classifier()
    model.compile(keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.fit(x, y, epochs=6, batch_size=64, verbose=0)
    return (model, *_scenes(60, "test", 1))


@pytest.mark.slow
def test_gradcam_mass_falls_inside_the_digits_box(trained):
    model, x, y, boxes = trained
    assert model.evaluate(x, y, verbose=0)[1] > 0.5  # it learned something
    cam = A.gradcam(model, x)
    inside = np.zeros(cam.shape, bool)
    for mask, (x0, y0, x1, y1) in zip(inside, np.round(boxes).astype(int)):
        mask[y0:y1, x0:x1] = True
    share = (cam * inside).sum(axis=(1, 2)) / cam.sum(axis=(1, 2))
    uniform = inside.mean(axis=(1, 2))  # a uniform map's share: the box's area
    # Measured: 0.53 of the mass inside boxes that cover 0.10 of the image.
    assert share.mean() > 3 * uniform.mean()
    assert np.mean(share > uniform) > 0.9


@pytest.mark.slow
def test_randomized_weights_change_the_maps_and_the_same_model_does_not(trained):
    model, x, _, _ = trained
    x = x[:20]
    for method in (A.gradcam, A.saliency):
        found = A.randomization_check(model, x, method, seed=1)
        # Measured 0.40-0.63 (Grad-CAM) and 0.56-0.60 (saliency) over seeds 0-2.
        assert found["passed"] and found["repeatable"], (method.__name__, found)
        assert found["rank_correlation"] < 0.75
    # A "method" that draws the image whatever the weights is flagged.
    brightness = A.randomization_check(model, x, lambda m, images: images[..., 0])
    assert brightness["rank_correlation"] == pytest.approx(1.0)
    assert not brightness["passed"]


def test_rank_correlation_is_spearmans():
    rng = np.random.default_rng(6)
    maps = rng.integers(0, 5, (3, 6, 6)).astype("float32")  # ties on purpose
    others = maps + rng.normal(0, 2, maps.shape)
    expected = np.mean([spearmanr(p.ravel(), q.ravel())[0] for p, q in zip(maps, others)])
    assert A.rank_correlation(maps, others) == pytest.approx(expected, abs=1e-12)
