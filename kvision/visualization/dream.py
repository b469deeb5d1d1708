"""DeepDream and class model visualization: images changed by gradient ascent until
they excite chosen layers, or one class, of a network.

``deep_dream(model, image)`` follows the keras.io DeepDream example (Chollet): the
loss is the mean square activation of chosen layers (border pixels left out, a weight
per layer; InceptionV3's ``mixed4``-``mixed7`` at 1.0, 1.5, 2.0, 2.5 is the reference
setting and the default when the model has them), raised by steps along the
gradient divided by its mean absolute value, over ``octaves`` successively larger
scales (``octave_scale`` apart), the detail that the shrinking lost put back after
each. ``jitter`` shifts the image by a random offset of up to that many pixels
before each step (Mordvintsev et al.'s *Inceptionism*), which keeps the pattern from
locking onto the pixel grid.

``class_model(model, class_index)`` is Simonyan et al.'s (2014) class model
visualization: from a grey image, gradient ascent on the class's score before the
softmax minus an L2 penalty on the image, with jitter.

Layers are addressed by name or by path through nested models (``"backbone/conv4"``,
:func:`kvision.visualization.layers.resolve`). Images are in the model's input units,
``value_range`` (``(0, 255)`` for kvision networks, which take raw pixels; ``(-1, 1)``
for keras.applications' InceptionV3 after its ``preprocess_input``), and stay inside
it. A model built for one input size (``input_shape=(224, 224, 3)``) sees each octave
resized to that size inside the gradient computation; one built with
``input_shape=(None, None, 3)`` sees each octave at its own size, as in keras.io.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from kvision import features
from kvision.visualization.layers import last_spatial_layer, resolve, save_png

#: keras.io's DeepDream layers of InceptionV3 and their weights: the reference setting.
INCEPTION_V3_LAYERS = {"mixed4": 1.0, "mixed5": 1.5, "mixed6": 2.0, "mixed7": 2.5}


# --- what is maximized --------------------------------------------------------------

def dream_layers(model, layers=None) -> dict:
    """``layers`` as ``{path: weight}``: a path, a list of paths (weight 1 each) or a
    dict of weights. None: InceptionV3's :data:`INCEPTION_V3_LAYERS` when the model
    has them, else its stride-16 stage output (mid-level parts), else its deepest
    stage output (:func:`kvision.features.stage_outputs`), else (a model without
    stage outputs) its last layer with a spatial map, where Grad-CAM looks."""
    if layers is None:
        names = {name for name, _ in features.layer_steps(model)}
        if set(INCEPTION_V3_LAYERS) <= names:
            return dict(INCEPTION_V3_LAYERS)
        stages = features.stage_outputs(model)
        if not stages:
            return {last_spatial_layer(model): 1.0}
        return {stages.get(16, stages[max(stages)]): 1.0}
    if isinstance(layers, str):
        layers = {layers: 1.0}
    elif isinstance(layers, (list, tuple)):
        layers = {name: 1.0 for name in layers}
    if not isinstance(layers, dict) or not layers:
        raise ValueError(f"layers must be a layer path, a non-empty list of them or a "
                         f"dict {{path: weight}}, got {layers!r}.")
    for name, weight in layers.items():
        resolve(model, name)  # a ValueError naming close paths
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) \
                or not np.isfinite(weight):
            raise ValueError(f"The weight of layer {name!r} must be a finite number, "
                             f"got {weight!r}.")
    return {name: float(weight) for name, weight in layers.items()}


def _tap_model(model, names):
    """One model from ``model``'s input to the outputs of the layers ``names``."""
    tensors = features.tap(model, [resolve(model, name) for name in names])
    return keras.Model(features.model_inputs(model), tensors, name=f"{model.name}_dream")


def _activation_loss(activations, weights):
    """keras.io's loss: per layer, the sum of squared activations two pixels in from
    the border (all pixels of a map 4 pixels wide or less), over the map's size."""
    total = 0.0
    for act, weight in zip(activations, weights):
        act = tf.cast(act, "float32")
        size = tf.cast(tf.reduce_prod(tf.shape(act)), "float32")
        if len(act.shape) == 4 and act.shape[1] and act.shape[1] > 4 \
                and act.shape[2] and act.shape[2] > 4:
            act = act[:, 2:-2, 2:-2, :]
        total += weight * tf.reduce_sum(tf.square(act)) / size
    return total


def dream_loss(model, image, layers=None) -> float:
    """The DeepDream loss of ``image`` (H, W, C) for ``layers`` (see
    :func:`dream_layers`): what :func:`deep_dream` raises."""
    weights = dream_layers(model, layers)
    tapped = _tap_model(model, list(weights))
    batch = _fit_input(tapped, tf.convert_to_tensor(_as_image(image)[None]))
    outputs = keras.tree.flatten(tapped(batch, training=False))
    return float(_activation_loss(outputs, list(weights.values())))


# --- images -------------------------------------------------------------------------

def _as_image(image):
    image = np.asarray(image, "float32")
    if image.ndim != 3:
        raise ValueError(f"Expected one image (H, W, C), got shape {image.shape}.")
    if not np.all(np.isfinite(image)):
        raise ValueError("The image holds NaN or infinite values.")
    return image


def _check_range(value_range):
    low, high = (float(v) for v in value_range)
    if not high > low:
        raise ValueError(f"value_range must be (low, high) with high > low, got "
                         f"{value_range!r}.")
    return low, high


def _fixed_size(model):
    """The (H, W) a model only takes, or None when it takes any size."""
    shape = features.model_inputs(model).shape
    return None if shape[1] is None or shape[2] is None else (shape[1], shape[2])


def _fit_input(model, batch):
    """``batch`` resized to the model's fixed input size, if it has one (inside the
    tape: the gradient flows back through the resize)."""
    size = _fixed_size(model)
    if size is None or tuple(batch.shape[1:3]) == size:
        return batch
    return tf.image.resize(batch, size)


def to_uint8(image, value_range=(0, 255)) -> np.ndarray:
    """An image in ``value_range`` as uint8 pixels (one channel as grey)."""
    low, high = _check_range(value_range)
    pixels = np.clip((np.asarray(image, "float32") - low) / (high - low), 0, 1) * 255
    pixels = pixels.round().astype("uint8")
    return pixels[..., 0] if pixels.shape[-1] == 1 else pixels


# --- gradient ascent ----------------------------------------------------------------

class _Ascent:
    """Normalized gradient steps on ``objective(model outputs, image)`` with jitter."""

    def __init__(self, model, objective, jitter, seed):
        self.model, self.objective = model, objective
        self.jitter = int(jitter)
        self.rng = np.random.default_rng(seed)
        self._grad = tf.function(self._gradient, reduce_retracing=True)

    def _gradient(self, image, shift):
        with tf.GradientTape() as tape:
            tape.watch(image)
            moved = tf.roll(image, shift, axis=[1, 2])
            outputs = keras.tree.flatten(self.model(_fit_input(self.model, moved),
                                                    training=False))
            value = self.objective(outputs, image)
        grads = tape.gradient(value, image)
        # keras.io: the step's size is set by step_size, not by the gradient's scale
        return value, grads / tf.maximum(tf.reduce_mean(tf.abs(grads)), 1e-12)

    def run(self, image, steps, step, low, high, max_loss=None):
        for _ in range(steps):
            shift = self.rng.integers(-self.jitter, self.jitter + 1, size=2) \
                if self.jitter else np.zeros(2, "int64")
            value, grads = self._grad(image, tf.constant(shift, "int32"))
            if max_loss is not None and float(value) > max_loss:
                break
            image = tf.clip_by_value(image + step * grads, low, high)
        return image


def _check_steps(steps, octaves, octave_scale, step_size, jitter):
    for name, value in (("steps", steps), ("octaves", octaves)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}.")
    if isinstance(jitter, bool) or not isinstance(jitter, int) or jitter < 0:
        raise ValueError(f"jitter must be an integer >= 0 (pixels), got {jitter!r}.")
    for name, value in (("octave_scale", octave_scale), ("step_size", step_size)):
        if not isinstance(value, (int, float)) or not value > 0 or not np.isfinite(value):
            raise ValueError(f"{name} must be a positive number, got {value!r}.")
    if not octave_scale > 1 and octaves > 1:
        raise ValueError(f"octave_scale must be > 1 for several octaves, got "
                         f"{octave_scale!r}.")


def deep_dream(model, image, layers=None, octaves=3, octave_scale=1.4, steps=20,
               step_size=0.01, jitter=0, max_loss=None, value_range=(0, 255), seed=0,
               out=None, progress=None) -> np.ndarray:
    """DeepDream ``image`` (H, W, C, in ``value_range``) through ``model``.

    Args:
        layers: a path, a list of paths or ``{path: weight}`` (:func:`dream_layers`;
            default InceptionV3's mixed4-mixed7 when present).
        octaves, octave_scale: the image is dreamed at ``octaves`` sizes, the
            smallest ``octave_scale ** (octaves - 1)`` times smaller than ``image``.
        steps: gradient ascent steps per octave.
        step_size: each step moves the image by ``step_size`` times half the width
            of ``value_range`` (keras.io's 0.01 on [-1, 1] images) times the
            gradient over its mean absolute value.
        jitter: random shift of up to this many pixels before each step (0: none).
        max_loss: an octave stops early once the loss exceeds it (keras.io: 15).
        out: write the result there as PNG too.
        progress: ``progress(octave, octaves, (h, w))`` called as each octave
            starts (octave counted from 1), for long runs.

    Returns:
        The dreamed image, float32 ``(H, W, C)`` in ``value_range``.
    """
    image = _as_image(image)
    low, high = _check_range(value_range)
    _check_steps(steps, octaves, octave_scale, step_size, jitter)
    weights = dream_layers(model, layers)
    tapped = _tap_model(model, list(weights))
    ascent = _Ascent(tapped, lambda outputs, _: _activation_loss(
        outputs, list(weights.values())), jitter, seed)
    original = tf.convert_to_tensor(image[None])
    full = image.shape[:2]
    shapes = [tuple(max(1, int(side / octave_scale ** i)) for side in full)
              for i in reversed(range(octaves))]
    shrunk = tf.image.resize(original, shapes[0])
    dreamed = original
    for octave, shape in enumerate(shapes, 1):
        if progress is not None:
            progress(octave, len(shapes), shape)
        dreamed = tf.image.resize(dreamed, shape)
        dreamed = ascent.run(dreamed, steps, step_size * (high - low) / 2, low, high,
                             max_loss)
        # put back the detail that shrinking the original to this octave lost
        detail = tf.image.resize(original, shape) - tf.image.resize(shrunk, shape)
        dreamed = tf.clip_by_value(dreamed + detail, low, high)
        shrunk = tf.image.resize(original, shape)
    result = dreamed[0].numpy()
    if out is not None:
        save_png(to_uint8(result, value_range), out)
    return result


# --- class model visualization ------------------------------------------------------

def class_scores(model) -> tuple:
    """``(features model, head)``: ``head(features model(x))`` is ``model``'s class
    scores before the softmax (Simonyan et al. maximize the score, not the
    probability, which can rise by lowering the other classes). A final softmax
    Activation / Softmax layer, or the softmax of a last Dense, is taken off."""
    fn = features.functional(model)
    output = fn.outputs[0]
    layer, node_index, _ = output._keras_history
    inputs = layer._inbound_nodes[node_index].input_tensors
    softmax = keras.activations.get("softmax")
    if isinstance(layer, keras.layers.Softmax) or (
            isinstance(layer, keras.layers.Activation) and layer.activation is softmax):
        return keras.Model(fn.inputs, inputs[0]), lambda scores: scores
    if isinstance(layer, keras.layers.Dense) and layer.activation is softmax:
        def head(x, dense=layer):
            return keras.ops.matmul(x, dense.kernel) + (dense.bias if dense.use_bias else 0)
        return keras.Model(fn.inputs, inputs[0]), head
    return model, lambda scores: scores


def class_model(model, class_index, size=None, steps=200, step_size=0.01, l2=0.01,
                jitter=4, value_range=(0, 255), seed=0, out=None) -> np.ndarray:
    """Simonyan et al.'s class model: the image ``I`` that maximizes
    ``S_c(I) - l2 * ||u||^2``, ``S_c`` the score of class ``class_index`` before the
    softmax and ``u`` the image centred on the middle of ``value_range`` and scaled
    to [-1, 1] (so ``l2`` means the same for every range), from a grey image (faint noise added) by
    ``steps`` normalized gradient steps (as :func:`deep_dream`) with ``jitter``.

    ``size``: (H, W) of the image; default the model's input size (required for a
    model that takes any size). Returns float32 ``(H, W, C)`` in ``value_range``;
    ``out``: written there as PNG too.
    """
    low, high = _check_range(value_range)
    _check_steps(steps, 1, 2.0, step_size, jitter)
    if not isinstance(l2, (int, float)) or not l2 >= 0:
        raise ValueError(f"l2 must be a number >= 0, got {l2!r}.")
    body, head = class_scores(model)
    classes = features.functional(model).outputs[0].shape[-1]
    if isinstance(class_index, bool) or not isinstance(class_index, (int, np.integer)) \
            or not 0 <= class_index < classes:
        raise ValueError(f"class_index must be an integer in [0, {classes}), got "
                         f"{class_index!r}.")
    size = tuple(size) if size is not None else _fixed_size(model)
    if size is None:
        raise ValueError(f"Model {model.name!r} takes any input size: give size=(H, W).")
    channels = features.model_inputs(model).shape[-1]
    middle, half = (high + low) / 2, (high - low) / 2

    def objective(outputs, image):
        score = head(outputs[0])[0, int(class_index)]
        return score - l2 * tf.reduce_sum(tf.square((image - middle) / half))

    ascent = _Ascent(body, objective, jitter, seed)
    # grey, plus faint noise: at an exactly uniform image a ReLU network can sit at
    # zero activations, where every gradient is zero
    noise = np.random.default_rng(seed).normal(0, 0.01 * half, (1, *size, channels))
    start = tf.constant(middle + noise, "float32")
    result = ascent.run(start, steps, step_size * half, low, high)[0].numpy()
    if out is not None:
        save_png(to_uint8(result, value_range), out)
    return result
