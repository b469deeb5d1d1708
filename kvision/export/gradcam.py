"""Grad-CAM inside an exported classifier: the class map served with the prediction.

The signature ``serve_gradcam`` takes ``images`` ``[None, H, W, C]`` raw pixels 0..255
(float32, or the dtype of ``serving_default``'s ``images``) and answers

- ``probabilities`` ``[None, classes]`` float32: the model's output;
- ``class`` ``[None]`` int32: each image's top class, the one explained;
- ``gradcam`` ``[None, H, W]`` float32 in [0, 1]: its Grad-CAM map at the input's
  resolution, what :func:`kvision.visualization.attribution.gradcam` gives in Keras.

Two ways to get it: ``kvision.export.saved_model(model, dir, gradcam=True)`` (or
``kvision export MODEL --gradcam``) adds it to the served SavedModel beside
``serving_default`` and ``serve_image_bytes``; :func:`gradcam_saved_model` writes a
SavedModel with this one signature.

Why it is built this way: the map needs ``d logit / d A`` for an inner layer ``A``, so
the signature's graph holds the gradient ops. The model is evaluated step by step with
nested models inlined (:func:`kvision.visualization.attribution.forward`), the same
path the Keras function takes, so a layer inside a nested backbone is on the path
from the input to the score and the map is the same computation, not a re-derivation.
The export is written to a temporary directory beside the target, run with TF
Serving's session-based loader, compared with the Keras maps (:func:`check_signature`)
and only then renamed into place.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import numpy as np

from kvision.export.parity import ExportResult, as_float32, compare, size_mb

SIGNATURE = "serve_gradcam"
IMAGES = "images"
OUTPUTS = ("probabilities", "class", "gradcam")


def gradcam_graph(model, layer):
    """``f(images) -> {"probabilities", "class", "gradcam"}`` in TensorFlow ops, for
    a ``tf.function``: Grad-CAM of each image's top class at ``layer`` (a path)."""
    import tensorflow as tf

    from kvision.visualization.attribution import forward

    def explain(images):
        images = tf.cast(images, tf.float32)
        with tf.GradientTape() as tape:
            outputs, watched = forward(model, images, watch=layer, tape=tape)
            logits = outputs[0] if isinstance(outputs, (list, tuple)) else outputs
            top = tf.argmax(logits, axis=-1, output_type=tf.int32)
            score = tf.reduce_sum(tf.gather(logits, top, batch_dims=1))
        grads = tape.gradient(score, watched)
        weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
        cam = tf.nn.relu(tf.reduce_sum(weights * watched, axis=-1))
        cam = tf.image.resize(cam[..., None], images.shape[1:3], method="bilinear")
        cam = tf.nn.relu(cam[..., 0])  # bilinear keeps >= 0; as attribution._to_unit
        peak = tf.reduce_max(cam, axis=(1, 2), keepdims=True)
        cam = tf.where(peak > 0, cam / tf.where(peak > 0, peak, 1.0), 0.0)
        probabilities = tf.cast(model(images, training=False), tf.float32)
        return {"probabilities": probabilities, "class": top, "gradcam": cam}
    return explain


def gradcam_layer(model, gradcam):
    """The layer path the signature weights, from ``saved_model``'s ``gradcam``
    argument: None or False (no signature: None), True (the last layer with a
    spatial map, as ``vis.gradcam``'s default) or a layer path. ``ValueError`` for a
    model that is not a classifier or a path it does not hold."""
    from kvision.visualization import layers as _layers

    if gradcam is None or gradcam is False:
        return None
    if gradcam is not True and (not isinstance(gradcam, str) or not gradcam):
        raise ValueError(f"gradcam must be True (the last spatial layer) or a layer "
                         f"path, got {gradcam!r}.")
    _check_classifier(model)
    layer = _layers.last_spatial_layer(model) if gradcam is True else gradcam
    _layers.resolve(model, layer)  # a ValueError naming the close layers
    return layer


def add_signature(archive, model, layer, shape, dtype="float32"):
    """Add ``serve_gradcam`` at ``layer`` to a ``keras.export.ExportArchive`` that
    tracks ``model``; ``images`` ``[None, *shape]`` of ``dtype``."""
    import tensorflow as tf

    archive.add_endpoint(SIGNATURE, gradcam_graph(model, layer), input_signature=[
        tf.TensorSpec((None, *shape), dtype, name=IMAGES)])


def check_signature(model, layer, got, x, atol=1e-4) -> dict:
    """``got``, what ``serve_gradcam`` of an export answered on images ``x`` (run
    in the session-based loader), beside Keras (``model.predict`` and
    :func:`kvision.visualization.attribution.gradcam`, run outside that session's
    graph).

    Returns ``{"gradcam_max_abs_diff", "gradcam_class_agreement",
    "gradcam_probabilities_max_abs_diff"}``; ``ValueError`` with them when a map or
    a probability differs by more than ``atol`` or a class differs.
    """
    from kvision.visualization.attribution import gradcam

    x = np.asarray(x, "float32")
    probabilities = np.asarray(model(x, training=False), "float32")
    expected_map = gradcam(model, x, layer=layer)
    figures = {
        "gradcam_max_abs_diff": float(np.max(np.abs(expected_map - got["gradcam"]))),
        "gradcam_class_agreement": float(np.mean(
            got["class"] == np.argmax(probabilities, axis=-1))),
        "gradcam_probabilities_max_abs_diff": compare(
            probabilities, got["probabilities"])["max_abs_diff"]}
    if figures["gradcam_max_abs_diff"] > atol or figures["gradcam_class_agreement"] < 1 \
            or figures["gradcam_probabilities_max_abs_diff"] > atol:
        raise ValueError(f"The SavedModel's {SIGNATURE} does not answer as Keras does "
                         f"at layer {layer!r} (atol {atol}): {figures}. Nothing was "
                         f"written.")
    return figures


def gradcam_saved_model(model, path, *, layer=None, check_inputs=None,
                        atol=1e-4) -> ExportResult:
    """Export ``model`` (a classifier: one image input, one ``(None, classes)``
    output) with the one signature ``serve_gradcam`` (module docstring) to ``path``.

    Args:
        model: the Keras classifier; a mixed-precision one is exported as its
            float32 twin.
        path: the SavedModel directory to create; it must not exist yet.
        layer: the layer whose map is weighted (a name or a path through nested
            models); default the last with a spatial map, as in Keras' gradcam.
        check_inputs: ``(N, H, W, C)`` pixels run through the export (TF Serving's
            session-based loader) and through Keras; default 2 random images.
        atol: the largest difference allowed in the probabilities and the maps
            (both in [0, 1]).
    Returns:
        :class:`~kvision.export.ExportResult` with ``parity``: ``max_abs_diff``
        (probabilities) and :func:`check_signature`'s figures.
    Raises:
        ValueError: not a classifier, an existing ``path``, bad ``check_inputs``,
            or an export whose maps or classes differ from Keras' (nothing written).
    """
    from kvision.export.savedmodel import _image_shape

    path = os.fspath(path)
    if os.path.exists(path):
        raise ValueError(f"{path!r} already exists; expected a new directory for the "
                         f"SavedModel (exports never overwrite).")
    shape = _image_shape(model)
    layer = gradcam_layer(model, True if layer is None else layer)
    check_inputs = _inputs(check_inputs, shape)
    model = as_float32(model)
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".tmp-gradcam-", dir=parent)
    try:
        written = os.path.join(staging, "model")
        _write(model, layer, shape, written)
        figures = _verify(model, layer, written, check_inputs, atol)
        os.rename(written, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return ExportResult(path=path, format="savedmodel", size_mb=size_mb(path),
                        parity=figures)


def _check_classifier(model):
    outputs = list(getattr(model, "outputs", None) or [])
    if len(outputs) != 1 or len(outputs[0].shape) != 2:
        raise ValueError(f"Grad-CAM export needs a classifier with one output of shape "
                         f"(None, classes); {model.name!r} has outputs "
                         f"{[tuple(o.shape) for o in outputs]}.")


def _inputs(check_inputs, shape):
    if check_inputs is None:
        check_inputs = np.random.default_rng(0).uniform(0, 255, (2, *shape))
    x = np.asarray(check_inputs, "float32")
    if x.ndim != 4 or tuple(x.shape[1:]) != tuple(shape) or len(x) == 0:
        raise ValueError(f"check_inputs must be images of shape (N, "
                         f"{', '.join(map(str, shape))}), got {x.shape}.")
    return x


def _write(model, layer, shape, export_path):
    import keras

    from kvision.export.savedmodel import _quiet_tf

    archive = keras.export.ExportArchive()
    archive.track(model)
    add_signature(archive, model, layer, shape)
    with _quiet_tf():
        archive.write_out(export_path, verbose=False)


def _verify(model, layer, export_path, x, atol):
    """The export's answers beside Keras' (:func:`check_signature`), or
    ``ValueError``; ``max_abs_diff`` is the probabilities'."""
    from kvision.export.savedmodel import _session

    with _session(export_path) as run:
        got = run(SIGNATURE, {IMAGES: x})
    figures = check_signature(model, layer, got, x, atol)
    figures["max_abs_diff"] = figures["gradcam_probabilities_max_abs_diff"]
    figures["num_images"] = len(x)
    return figures
