"""Attribution maps: which pixels and which regions a network's answer rests on.

- :func:`saliency`: ``|d score / d pixel|``, the largest over colour channels
  (Simonyan et al., 2013); ``smoothgrad=n`` averages it over ``n`` copies of the
  image with Gaussian noise (Smilkov et al., 2017).
- :func:`guided_backprop` (Springenberg et al., 2014) and :func:`deconvnet` (Zeiler &
  Fergus, 2013): the gradient with every activation's backward pass replaced (below).
- :func:`gradcam` (Selvaraju et al., 2017), :func:`gradcam_plus_plus` (Chattopadhay et
  al., 2018) and :func:`occlusion` (Zeiler & Fergus): ``(N, H, W)`` float32 maps in
  [0, 1] at the input's resolution.

**The score.** For a classifier, the logit of ``class_index`` (default: each image's
top class): when the model ends in a softmax or sigmoid (an ``Activation`` or
``Softmax`` layer, or a ``Dense``/``Conv2D`` with that activation), the score is read
before it, as the Grad-CAM paper asks (a probability saturates). For a segmenter
(:func:`kvision.tasks.task_of`), the sum of the class's logits over the pixels the
model assigns to that class (over every pixel if it assigns none). For a detector's
inference model, ``scores[:, detection]`` of its outputs (detections come sorted,
best first; an image with fewer detections gets an all-zero map). ``target=`` takes
any ``f(outputs) -> (N,)`` instead.

**How it runs.** The model's graph is evaluated step by step, nested models inlined
(:func:`kvision.features.graph`), so a layer inside a nested backbone is a tensor on
the path from the input to the score, where ``GradientTape`` can watch it; building a
sub-model to it would fail ("Graph disconnected", tensorflow#44462) or branch off the
path. The user's model is not changed: the activation of a ``Dense``/``Conv2D`` layer
is taken off for one call and put back in a ``finally``.

**The backward rules** of guided backpropagation and the deconvnet, for an
activation ``y = f(x)`` receiving gradient ``g`` from above:

- guided: ``f'(x) * g * [x > 0] * [g > 0]``, which for ReLU is Springenberg's rule
  (pass the gradient where the input and the gradient are positive);
- deconvnet: ``g * [g > 0]`` (the reconstruction is rectified, whatever the forward
  input was), Zeiler & Fergus's rule.

Any activation in :data:`RECTIFIERS` gets the rule, not only ReLU (MONAI#6057,
keras-vis#177): for GELU, SiLU/swish, ELU, leaky ReLU... guided backpropagation keeps
the activation's own derivative ``f'(x)`` where ``x > 0`` and drops the negative
side (where those functions differ from ReLU). Gates (sigmoid, tanh, softmax, hard
sigmoid, as in squeeze-and-excitation blocks) keep their ordinary gradient: they
scale a signal rather than rectify it. Activations computed inside a custom layer's
``call`` (``keras.ops.relu``) are not seen; ``PReLU`` (it holds a weight) keeps its
ordinary gradient.
"""

from __future__ import annotations

import contextlib

import keras
import numpy as np

from kvision import features
from kvision.visualization import layers as _layers

__all__ = ["RECTIFIERS", "deconvnet", "deletion_insertion", "forward", "gradcam",
           "gradcam_plus_plus",
           "guided_backprop", "occlusion", "overlay", "projection_image",
           "randomization_check", "rank_correlation", "saliency", "score_target"]

# Activation functions (by keras.activations name) that the guided / deconvnet rules
# replace; keras.activations.get("swish") is silu, "hard_swish" is hard_silu.
RECTIFIERS = frozenset({"relu", "relu6", "leaky_relu", "elu", "selu", "celu", "gelu",
                        "silu", "hard_silu", "mish", "softplus", "squareplus"})
_RECTIFIER_LAYERS = (keras.layers.ReLU, keras.layers.LeakyReLU, keras.layers.ELU)
_OUTPUT_SQUASH = ("softmax", "sigmoid")
RULES = (None, "guided", "deconvnet")


# --- evaluating the graph -------------------------------------------------------------

def _tf():
    import tensorflow as tf

    return tf


def _name(fn) -> str:
    return getattr(fn, "__name__", "") if fn is not None else ""


def _override(fn, rule):
    """``fn`` (elementwise) with its backward pass replaced by ``rule``."""
    tf = _tf()

    @tf.custom_gradient
    def call(x):
        def grad(g):
            if rule == "deconvnet":
                return tf.nn.relu(g)
            with tf.GradientTape() as tape:  # f'(x) * relu(g), for any f
                tape.watch(x)
                y = fn(x)
            local = tape.gradient(y, x, output_gradients=tf.nn.relu(g))
            return local * tf.cast(x > 0, local.dtype)
        return fn(x), grad

    return call


@contextlib.contextmanager
def _without_activation(layer):
    """``layer.activation`` set to linear for one call, restored whatever happens."""
    original = layer.activation
    layer.activation = keras.activations.linear
    try:
        yield original
    finally:
        layer.activation = original


def _call(op, args, kwargs, rule, logits):
    """One step of the graph under ``rule``; ``logits``: read before a final squash."""
    activation = getattr(op, "activation", None)
    name = _name(activation)
    if logits and (isinstance(op, keras.layers.Softmax) or (
            isinstance(op, keras.layers.Activation) and name in _OUTPUT_SQUASH)):
        return args[0]
    if isinstance(op, keras.layers.Activation) and rule and name in RECTIFIERS:
        return _override(lambda x: op(x), rule)(args[0])
    if isinstance(op, _RECTIFIER_LAYERS) and rule:
        return _override(lambda x: op(x), rule)(args[0])
    if not isinstance(op, keras.layers.Activation) and (
            (logits and name in _OUTPUT_SQUASH) or (rule and name in RECTIFIERS)):
        with _without_activation(op) as original:
            z = op(*args, **kwargs)
        return z if name in _OUTPUT_SQUASH else _override(original, rule)(z)
    return op(*args, **kwargs)


def _single_image_input(g):
    if len(g.inputs) != 1:
        raise ValueError(f"Attribution needs a model with one image input; "
                         f"{g.model.name!r} has {len(g.inputs)} inputs.")


def forward(model, images, *, watch=None, rule=None, logits=True, tape=None):
    """``(outputs, watched)``: ``model``'s outputs for ``images`` computed step by
    step (nested models inlined), and the output of the layer at path ``watch``
    (None if not asked), watched by ``tape``. ``rule``: None, "guided" or
    "deconvnet" (the module docstring); ``logits``: the final softmax/sigmoid is
    left out. Outputs are a list in the model's output order, or a dict for a model
    with dict outputs."""
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}.")
    g = features.graph(model)
    _single_image_input(g)
    watch_id = None if watch is None else _tensor_id(model, g, watch)
    final = {t for t in g.outputs}
    values = {g.inputs[0]: images}
    watched = None
    for step in g.steps:
        feed = {raw: values[outer] for raw, outer in step.alias.items()}
        args, kwargs = step.node.arguments.fill_in(feed)
        squash = logits and any(t in final for t in step.outputs)
        result = _call(step.op, args, kwargs, rule, squash)
        for t, value in zip(step.outputs, keras.tree.flatten(result)):
            values[t] = value
        if watch_id in step.outputs:
            watched = values[watch_id]
            if tape is not None:
                tape.watch(watched)
    outputs = [values[t] for t in g.outputs]
    structure = features.functional(model)._outputs_struct
    if isinstance(structure, dict):
        outputs = keras.tree.pack_sequence_as(structure, outputs)
    return outputs, watched


def _tensor_id(model, g, watch):
    """The id, in ``g``'s numbering, of the output of the layer at path ``watch``:
    a layer's own output, or a top-level nested model's (its last inner step's)."""
    target = _layers.resolve(model, watch)
    for step in g.steps:
        if tuple(step.path) == target and len(step.outputs) == 1:
            return step.outputs[0]
    fn = features.functional(model)
    if len(target) == 1:
        for node in features.ordered_nodes(fn):
            if node.operation.name == target[0] and len(node.outputs) == 1:
                return id(node.outputs[0])
    raise ValueError(f"Layer {watch!r} of {model.name!r} has no single output to "
                     f"explain (a model nested deeper, or several outputs): name a "
                     f"layer inside it.")


# --- what is explained ---------------------------------------------------------------

def _task(model):
    from kvision.tasks import task_of

    try:
        return task_of(model)
    except ValueError:
        return "classification"


def score_target(model, class_index=None, detection=None):
    """``f(outputs) -> (N,)``: the score explained (module docstring) and the classes
    chosen, for ``model``'s task. ``class_index``: None (each image's top class), an
    int, or one per image."""
    task = _task(model)
    tf = _tf()
    if task in ("detection", "localization"):
        index = 0 if detection is None else int(detection)

        def detected(outputs):
            scores = outputs["scores"] if isinstance(outputs, dict) else outputs[1]
            if not 0 <= index < scores.shape[1]:
                raise ValueError(f"detection must be in [0, {scores.shape[1]}) (the "
                                 f"detector keeps {scores.shape[1]}), got {index}.")
            return scores[:, index]
        return detected

    def classes_of(scores):
        top = tf.argmax(tf.reshape(scores, (-1, scores.shape[-1])), axis=-1)
        if class_index is None:
            return tf.cast(top, tf.int32) if scores.shape.rank == 2 else None
        count = scores.shape[-1]
        chosen = np.broadcast_to(np.asarray(class_index), (scores.shape[0],))
        if chosen.min() < 0 or chosen.max() >= count:
            raise ValueError(f"class_index must be in [0, {count}) (the model has "
                             f"{count} classes), got {class_index!r}.")
        return tf.constant(chosen, tf.int32)

    def classified(outputs):
        scores = outputs[0] if isinstance(outputs, (list, tuple)) else outputs
        if scores.shape.rank == 4:
            return _segment_score(scores, classes_of(scores))
        if scores.shape.rank != 2:
            raise ValueError(f"Cannot tell which score to explain in outputs of shape "
                             f"{tuple(scores.shape)}: pass target=f(outputs) -> (N,).")
        return tf.gather(scores, classes_of(scores), batch_dims=1)
    return classified


def _segment_score(logits, chosen):
    """Sum of each image's class logit over the pixels predicted as that class."""
    tf = _tf()
    labels = tf.argmax(logits, axis=-1, output_type=tf.int32)
    if chosen is None:  # the most frequent predicted class of each image
        counts = tf.math.bincount(labels, minlength=logits.shape[-1], axis=-1)
        chosen = tf.argmax(counts, axis=-1, output_type=tf.int32)
    mask = tf.cast(labels == chosen[:, None, None], logits.dtype)
    mask = tf.where(tf.reduce_sum(mask, axis=(1, 2), keepdims=True) > 0, mask, 1.0)
    picked = tf.gather(logits, chosen, axis=-1, batch_dims=1)
    return tf.reduce_sum(picked * tf.stop_gradient(mask), axis=(1, 2))


def _images(model, images):
    array = np.asarray(keras.ops.convert_to_numpy(images), "float32")
    expected = features.functional(model).inputs[0].shape
    if array.ndim == len(expected) - 1:
        array = array[None]
    if array.ndim != len(expected) or any(
            e is not None and e != a for e, a in zip(expected[1:], array.shape[1:])):
        raise ValueError(f"images must be shaped {('N',) + tuple(expected[1:])} for "
                         f"model {model.name!r}, got {array.shape}.")
    return array


def _gradients(model, images, target, *, layer=None, rule=None):
    """``(layer output or images, d score / d it)`` as NumPy arrays."""
    tf = _tf()
    x = tf.convert_to_tensor(images)
    with tf.GradientTape() as tape:
        tape.watch(x)
        outputs, watched = forward(model, x, watch=layer, rule=rule, tape=tape)
        score = tf.reduce_sum(target(outputs))
    wrt = x if layer is None else watched
    grad = tape.gradient(score, wrt)
    if grad is None:
        raise ValueError(f"The score of {model.name!r} does not depend on "
                         f"{layer or 'its input'!r}: choose a layer before the output.")
    return wrt.numpy(), grad.numpy()


# --- maps ----------------------------------------------------------------------------

def _to_unit(maps):
    """Per map: negative values to 0, then divided by the largest (all 0 stays 0)."""
    maps = np.maximum(maps, 0).astype("float32")
    top = maps.reshape(len(maps), -1).max(axis=1).reshape(-1, *[1] * (maps.ndim - 1))
    return np.where(top > 0, maps / np.where(top > 0, top, 1), 0).astype("float32")


def _upsample(maps, size):
    """``(N, h, w)`` -> ``(N, H, W)`` bilinear (``keras.ops.image.resize``)."""
    resized = keras.ops.image.resize(maps[..., None], size, interpolation="bilinear")
    return keras.ops.convert_to_numpy(resized)[..., 0]


def _target(model, class_index, detection, target):
    return target or score_target(model, class_index, detection)


def _cam_inputs(model, images, class_index, layer, detection, target):
    images = _images(model, images)
    layer = layer or _layers.last_spatial_layer(model)
    activations, grads = _gradients(model, images, _target(model, class_index, detection,
                                                           target), layer=layer)
    if activations.ndim != 4:
        raise ValueError(f"Layer {layer!r} gives {activations.shape}: Grad-CAM needs a "
                         f"spatial map (N, H, W, C).")
    return images, activations, grads


def gradcam(model, images, class_index=None, layer=None, *, detection=None, target=None):
    """Grad-CAM maps, ``(N, H, W)`` float32 in [0, 1] at the input's resolution.

    ``L = ReLU(sum_k a_k A^k)`` with ``a_k`` the spatial mean of ``d score / d A^k``,
    ``A`` the output of ``layer`` (a name or path through nested models; default the
    last layer with a spatial map, :func:`kvision.visualization.layers.
    last_spatial_layer`), resized bilinearly to the input and divided by its maximum.
    The score: the module docstring (``class_index``, ``detection``, ``target``).
    """
    images, a, g = _cam_inputs(model, images, class_index, layer, detection, target)
    weights = g.mean(axis=(1, 2), keepdims=True)
    cam = np.maximum((weights * a).sum(axis=-1), 0)
    return _to_unit(_upsample(cam, images.shape[1:3]))


def gradcam_plus_plus(model, images, class_index=None, layer=None, *, detection=None,
                      target=None):
    """Grad-CAM++ maps, as :func:`gradcam` with the weights of Chattopadhay et al.
    (the closed form for an exponential score, as pytorch-grad-cam computes it):
    ``a_kij = g^2 / (2 g^2 + sum_ab A^k_ab g^3)``, ``w_k = sum_ij a_kij ReLU(g_kij)``.
    """
    images, a, g = _cam_inputs(model, images, class_index, layer, detection, target)
    g2, g3 = g ** 2, g ** 3
    denominator = 2 * g2 + a.sum(axis=(1, 2), keepdims=True) * g3
    alpha = np.where(g != 0, g2 / np.where(denominator != 0, denominator, 1e-7), 0)
    weights = (alpha * np.maximum(g, 0)).sum(axis=(1, 2), keepdims=True)
    cam = np.maximum((weights * a).sum(axis=-1), 0)
    return _to_unit(_upsample(cam, images.shape[1:3]))


def saliency(model, images, class_index=None, smoothgrad=0, noise=0.15, *,
             detection=None, target=None, seed=0):
    """Saliency maps, ``(N, H, W)`` float32 in [0, 1]: ``|d score / d pixel|``, the
    largest over channels, divided by its maximum.

    ``smoothgrad``: 0 for the vanilla gradient, else the number of noisy copies whose
    maps are averaged; their noise is Gaussian with standard deviation ``noise``
    times each image's value range (Smilkov et al. find 10-20% best). The class is
    chosen on the clean image, so every copy explains the same one.
    """
    images = _images(model, images)
    target = _fixed_target(model, images, class_index, detection, target)
    if not smoothgrad:
        return _to_unit(_pixel_map(_gradients(model, images, target)[1]))
    if int(smoothgrad) < 1 or noise < 0:
        raise ValueError(f"smoothgrad must be 0 or a number of samples >= 1 and noise "
                         f">= 0, got {smoothgrad!r} and {noise!r}.")
    rng = np.random.default_rng(seed)
    spread = (images.max(axis=(1, 2, 3)) - images.min(axis=(1, 2, 3))) * noise
    total = 0.0
    for _ in range(int(smoothgrad)):
        noisy = images + rng.normal(size=images.shape) * spread[:, None, None, None]
        total += _pixel_map(_gradients(model, noisy.astype("float32"), target)[1])
    return _to_unit(total / int(smoothgrad))


def _top_classes(model, images):
    """Each image's class as the default score picks it on ``images`` (a
    classifier's top logit, a segmenter's most frequent predicted class), or None
    for a detector: so that noisy or occluded copies explain the same class."""
    tf = _tf()
    if _task(model) in ("detection", "localization"):
        return None
    outputs, _ = forward(model, tf.convert_to_tensor(images))
    scores = outputs[0] if isinstance(outputs, (list, tuple)) else outputs
    if len(scores.shape) == 2:
        return np.argmax(scores.numpy(), axis=-1)
    if len(scores.shape) == 4:
        labels = np.argmax(scores.numpy(), axis=-1).reshape(len(images), -1)
        return np.array([np.bincount(row, minlength=scores.shape[-1]).argmax()
                         for row in labels])
    return None


def _pixel_map(grads):
    """``|grads|``, the largest over colour channels for images (N, H, W, C)."""
    grads = np.abs(grads)
    return grads.max(axis=-1) if grads.ndim == 4 else grads


def _fixed_target(model, images, class_index, detection, target):
    """The score to explain, with the class fixed on the clean ``images``."""
    if target is not None:
        return target
    if class_index is None:
        class_index = _top_classes(model, images)
    return score_target(model, class_index, detection)


def _unit_target(model, layer, unit):
    """``f`` for the Zeiler-Fergus projection: the largest activation of channel
    ``unit`` of ``layer`` (default: each image's most active channel)."""
    tf = _tf()

    def strongest(watched):
        flat = tf.reshape(watched, (tf.shape(watched)[0], -1, watched.shape[-1]))
        peaks = tf.reduce_max(flat, axis=1)
        chosen = (tf.argmax(peaks, axis=-1, output_type=tf.int32) if unit is None
                  else tf.fill([tf.shape(peaks)[0]], int(unit)))
        return tf.gather(peaks, chosen, batch_dims=1)
    return strongest


def _projection(model, images, rule, class_index, layer, unit, detection, target):
    tf = _tf()
    images = _images(model, images)
    x = tf.convert_to_tensor(images)
    if layer is not None:
        channels = _layers.find_layer(model, layer).output.shape[-1]
        if unit is not None and not 0 <= int(unit) < channels:
            raise ValueError(f"unit must be in [0, {channels}) for layer {layer!r}, "
                             f"got {unit}.")
        explain = _unit_target(model, layer, unit)
    else:
        explain = _target(model, class_index, detection, target)
    with tf.GradientTape() as tape:
        tape.watch(x)
        outputs, watched = forward(model, x, watch=layer, rule=rule, tape=tape)
        score = tf.reduce_sum(explain(watched if layer is not None else outputs))
    return tape.gradient(score, x).numpy()


def guided_backprop(model, images, class_index=None, *, layer=None, unit=None,
                    detection=None, target=None):
    """Guided backpropagation: ``d score / d pixel`` ``(N, H, W, C)`` float32 (signed,
    unscaled) with the guided rule at every activation (module docstring). With
    ``layer``, the score is the largest activation of channel ``unit`` of that layer
    (default: its most active channel) instead of a class."""
    return _projection(model, images, "guided", class_index, layer, unit, detection,
                       target)


def deconvnet(model, images, layer=None, unit=None, *, class_index=None, detection=None,
              target=None):
    """Zeiler & Fergus's deconvnet projection ``(N, H, W, C)`` float32 (signed,
    unscaled): the largest activation of channel ``unit`` of ``layer`` (default:
    its most active channel; without ``layer``, the class score) taken back to the
    pixels with the deconvnet rule at every activation (module docstring)."""
    return _projection(model, images, "deconvnet", class_index, layer, unit, detection,
                       target)


def occlusion(model, images, class_index=None, patch=None, stride=None, *,
              detection=None, target=None, fill=None, batch_size=64):
    """Occlusion sensitivity ``(N, H, W)`` float32 in [0, 1] (Zeiler & Fergus).

    A ``patch`` x ``patch`` square (default an eighth of the image side, at least 2)
    of ``fill`` (default each image's mean value) slides with ``stride`` (default
    half the patch); each pixel gets the mean drop of the score over the squares
    that cover it. Drops below 0 (hiding the region raised the score) count as 0.
    The score is fixed on the clean image (its top class when ``class_index`` is
    None).
    """
    images = _images(model, images)
    n, h, w, _ = images.shape
    patch = int(patch or max(2, min(h, w) // 8))
    stride = int(stride or max(1, patch // 2))
    if patch < 1 or stride < 1 or patch > min(h, w):
        raise ValueError(f"patch must be in [1, {min(h, w)}] and stride >= 1, got "
                         f"patch={patch}, stride={stride}.")
    classes = None if class_index is not None or target is not None else \
        _top_classes(model, images)
    score = _scorer(model)
    corners = [(y, x) for y in _starts(h, patch, stride)
               for x in _starts(w, patch, stride)]
    maps = np.zeros((n, h, w), "float32")
    for i in range(n):
        chosen = classes if class_index is None else class_index
        if chosen is not None and np.ndim(chosen):
            chosen = np.asarray(chosen)[i]  # one class per image
        explain = target or score_target(model, chosen, detection)
        base = score(images[i:i + 1], explain)[0]
        value = images[i].mean() if fill is None else fill
        drops, counts = np.zeros((h, w), "float32"), np.zeros((h, w), "float32")
        for start in range(0, len(corners), batch_size):
            chunk = corners[start:start + batch_size]
            batch = np.repeat(images[i:i + 1], len(chunk), axis=0)
            for b, (y, x) in enumerate(chunk):
                batch[b, y:y + patch, x:x + patch] = value
            for drop, (y, x) in zip(base - score(batch, explain), chunk):
                drops[y:y + patch, x:x + patch] += drop
                counts[y:y + patch, x:x + patch] += 1
        maps[i] = drops / np.maximum(counts, 1)
    return _to_unit(maps)


def _starts(size, patch, stride):
    """Window starts covering ``[0, size)``, the last one flush with the end."""
    starts = list(range(0, size - patch + 1, stride))
    return starts if starts[-1] == size - patch else starts + [size - patch]


def _scorer(model):
    """``score(batch, target) -> (B,)`` NumPy, the model's forward pass compiled
    once (``tf.function``) for every occluded batch."""
    tf = _tf()

    @tf.function(reduce_retracing=True)
    def outputs_of(batch):
        return forward(model, batch)[0]

    def score(batch, target):
        outputs = outputs_of(tf.convert_to_tensor(batch, tf.float32))
        return np.asarray(target(outputs))
    return score


# --- sanity ----------------------------------------------------------------------------

def _ranks(values):
    """Ranks 0..n-1 of ``values``, ties given their mean rank (as Spearman's rho)."""
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    first = np.cumsum(counts) - counts
    return (first + (counts - 1) / 2.0)[inverse]


def rank_correlation(maps, others) -> float:
    """Mean over images of Spearman's rank correlation between two sets of maps
    (NaN where a map is constant: its ranks say nothing)."""
    rhos = []
    for a, b in zip(np.asarray(maps), np.asarray(others)):
        ra, rb = _ranks(a.ravel()), _ranks(b.ravel())
        if ra.std() == 0 or rb.std() == 0:
            rhos.append(np.nan)
            continue
        rhos.append(np.corrcoef(ra, rb)[0, 1])
    return float(np.mean(rhos))


def randomization_check(model, images, method, threshold=0.75, seed=None,
                        **kwargs) -> dict:
    """Adebayo et al. (2018)'s model-randomization test of an attribution method.

    ``method(model, images, **kwargs)`` (:func:`gradcam`, :func:`saliency`...; signed
    projections count by ``max_c |.|``) is run on ``model`` and on a copy whose
    weights are freshly initialized (``keras.models.clone_model``; ``seed``, if
    given, seeds Keras' global generator first). A map
    that shows what the model learned changes: the mean rank correlation must be
    below ``threshold``. One near 1 means the method draws the image (its edges, its
    ink) rather than the model, and is flagged: ``passed`` is False.

    Returns ``{"rank_correlation", "repeatable" (the same maps twice), "passed"}``.
    """
    def pixels(found):
        found = np.asarray(found)
        return _pixel_map(found) if found.ndim == 4 else found

    images = _images(model, images)
    maps = pixels(method(model, images, **kwargs))
    repeatable = bool(np.array_equal(maps, pixels(method(model, images, **kwargs))))
    if seed is not None:
        keras.utils.set_random_seed(seed)
    randomized = keras.models.clone_model(model)  # new layers, initial weights
    rho = rank_correlation(maps, pixels(method(randomized, images, **kwargs)))
    return {"rank_correlation": rho, "repeatable": repeatable,
            "passed": bool(repeatable and rho < threshold)}


# --- faithfulness ----------------------------------------------------------------------

def _pixel_order(maps, rng):
    """Per image, the flat pixel indices from the most to the least important; ties
    (Grad-CAM's zeros, occlusion's flat regions) in a seeded random order, not the
    raster order that would favour the image's top rows."""
    flat = maps.reshape(len(maps), -1)
    return np.stack([np.lexsort((rng.random(row.size), -row)) for row in flat])


def _class_probability(model, batch, classes, batch_size):
    """The model's output for ``classes`` (one per image of ``batch``)."""
    found = [np.asarray(model(batch[i:i + batch_size], training=False))
             for i in range(0, len(batch), batch_size)]
    return np.take_along_axis(np.concatenate(found), classes[:, None], axis=1)[:, 0]


def deletion_insertion(model, images, maps, class_index=None, steps=16, fill=None, *,
                       seed=0, batch_size=64) -> dict:
    """Deletion and insertion AUC of attribution ``maps`` (Petsiuk et al., 2018).

    Deletion: the pixels are set to ``fill`` (default each image's mean value) from
    the most to the least important in ``steps`` equal steps; the model's output for
    the class (``class_index``, default each clean image's top class) falls, and the
    area under that curve over the fraction deleted (0..1, trapezoids) is the
    deletion AUC: lower is more faithful. Insertion starts from the all-``fill``
    image and puts the pixels back in the same order: higher is more faithful. The
    output is the model's own (probabilities for a softmax classifier).

    ``maps``: ``(N, H, W)``, or ``(N, H, W, C)`` signed projections counted by
    ``max_c |.|``. Returns ``{"deletion": (N,), "insertion": (N,)}`` float64 and
    ``"curves"``: ``{"deletion", "insertion"}`` each ``(N, steps + 1)``.
    """
    images = _images(model, images)
    maps = np.asarray(maps, "float32")
    maps = _pixel_map(maps) if maps.ndim == 4 else maps
    if maps.shape != images.shape[:3]:
        raise ValueError(f"maps must be shaped {images.shape[:3]} (one (H, W) map per "
                         f"image), got {maps.shape}.")
    if int(steps) < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}.")
    n, h, w, c = images.shape
    classes = _top_classes(model, images) if class_index is None else \
        np.broadcast_to(np.asarray(class_index), (n,))
    classes = np.asarray(classes, "int64")
    order = _pixel_order(maps, np.random.default_rng(seed))
    filled = np.broadcast_to(images.mean(axis=(1, 2, 3)) if fill is None else
                             np.asarray(fill, "float32"), (n,))
    counts = np.round(np.linspace(0, h * w, int(steps) + 1)).astype(int)
    curves = {"deletion": [], "insertion": []}
    for i in range(n):
        pixels = images[i].reshape(h * w, c)
        removed = np.zeros((len(counts), h * w), bool)
        for s, count in enumerate(counts):
            removed[s, order[i, :count]] = True
        for kind, hide in (("deletion", removed), ("insertion", ~removed)):
            batch = np.where(hide[..., None], filled[i], pixels[None])
            batch = batch.reshape(len(counts), h, w, c).astype("float32")
            curves[kind].append(_class_probability(
                model, batch, np.full(len(counts), classes[i]), batch_size))
    fractions = counts / (h * w)
    result = {"curves": {k: np.array(v) for k, v in curves.items()}}
    for kind, values in result["curves"].items():
        result[kind] = np.trapezoid(values, fractions, axis=1)
    return result


# --- pictures ------------------------------------------------------------------------

def _rgb(image):
    """``image`` (H, W, 1 or 3), values 0..255 -> float32 (H, W, 3) in [0, 1]."""
    image = np.asarray(image, "float32")
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[-1] not in (1, 3):
        raise ValueError(f"image must be (H, W, 1) or (H, W, 3), got {image.shape}.")
    return np.clip(np.repeat(image, 3 // image.shape[-1], axis=-1) / 255.0, 0, 1)


def overlay(image, heatmap, alpha=0.5, colormap="inferno") -> np.ndarray:
    """``heatmap`` (H, W) in [0, 1] coloured with matplotlib's ``colormap`` and
    blended over ``image`` (H, W, 1 or 3, 0..255): uint8 (H, W, 3)."""
    from matplotlib import colormaps

    heatmap = np.asarray(heatmap, "float32")
    if heatmap.shape != np.shape(image)[:2]:
        raise ValueError(f"heatmap {heatmap.shape} and image {np.shape(image)[:2]} "
                         f"differ in size.")
    coloured = colormaps[colormap](np.clip(heatmap, 0, 1))[..., :3]
    return np.round(((1 - alpha) * _rgb(image) + alpha * coloured) * 255).astype("uint8")


def projection_image(gradients, percentile=99.5) -> np.ndarray:
    """A signed projection (H, W, C) as uint8 (H, W, 3): grey 128 is zero, each
    pixel ``128 + 127 * g / s`` clipped, ``s`` the ``percentile`` of ``|g|`` (the
    largest value alone would leave a few pixels visible and the rest grey)."""
    g = np.asarray(gradients, "float32")
    top = np.percentile(np.abs(g), percentile)
    g = np.clip(g / top, -1, 1) if top > 0 else g
    return np.round(_rgb(127.5 + 127.5 * g) * 255).astype("uint8")
