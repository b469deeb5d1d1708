"""SavedModel in TensorFlow Serving's layout: ``<base>/<name>/<version>/``.

:func:`saved_model` writes one version of one model, :func:`serving_config` a
``models.config`` naming every model under a base path.

Why it is built this way:

- Written through Keras' own exporter (``keras.export.ExportArchive``). A plain
  ``tf.saved_model.save`` of functions that close over a Keras 3 model loads with
  ``tf.saved_model.load`` but fails in the session-based loader ("Could not find
  variable"), which is the path TF Serving's C++ ``LoadSavedModel`` takes.
- So every export is checked with that session-based loader
  (``tf.compat.v1.saved_model.loader.load``), not only with ``tf.saved_model.load``.
- Written into a temporary directory beside the target, checked against the Keras
  model, then renamed into place: a failed export leaves nothing behind and never
  touches an existing version (TF Serving ignores the non-numeric temp directory).

Signatures of an export (``H, W, C`` the model's input shape):

- ``serving_default``: ``images`` ``[None, H, W, C]`` float32 or uint8 raw pixels
  0..255 (the model's preprocessing is inside the Keras model). A classifier
  (one 2-D output) answers ``probabilities`` ``[None, classes]``, ``top_k_scores``
  ``[None, k]`` float32, ``top_k_classes`` ``[None, k]`` int32 and, with class names,
  ``top_k_labels`` ``[None, k]`` string. A detector (outputs ``boxes``, ``scores``,
  ``classes``, ``num_detections``: decoding and NMS in its graph) answers those four
  (``boxes`` ``[None, K, 4]`` float32 xyxy pixels, ``scores`` ``[None, K]``,
  ``classes`` ``[None, K]`` int32, -1 padded, ``num_detections`` ``[None]`` int32)
  and, with class names, ``labels`` ``[None, K]`` string ("" for padding); any other
  model answers its own named outputs.
- ``serve_image_bytes``: ``image_bytes`` ``[None]`` string of encoded JPEG/PNG (what a
  REST client sends as ``{"b64": ...}``), decoded to C channels and resized bilinear
  to ``H, W`` as ``kvision.data.load_image`` does, then the same outputs.
- A detector whose proposals are an input (:func:`kvision.export.proposals.
  proposal_model`: Fast R-CNN, R-CNN) takes ``images`` and ``proposals`` ``[None,
  None, 4]`` float32 xyxy pixels of the image (any count: the first ``P`` are read,
  zero rows pad) in ``serving_default``, and has no ``serve_image_bytes``: the
  caller computes the proposals on the pixels it sends.
- ``serve_gradcam`` (classifiers, with ``gradcam=``): ``images`` as
  ``serving_default``'s, answering ``probabilities``, ``class`` and the ``gradcam``
  map of that class (:mod:`kvision.export.gradcam`).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
import time

import numpy as np

from kvision._files import write_text_atomically
from kvision.export.gradcam import SIGNATURE as GRADCAM_SIGNATURE
from kvision.export.gradcam import add_signature, check_signature, gradcam_layer
from kvision.export.proposals import PROPOSALS, fit_count, proposal_count
from kvision.export.parity import (DETECTION_OUTPUTS, ExportResult, as_float32, check,
                                   check_detections, check_keypoints, compare,
                                   compare_detections, compare_keypoints, export_kind,
                                   is_detector, keypoint_strides, size_mb)

IMAGES = "images"
IMAGE_BYTES = "image_bytes"
DEFAULT_SIGNATURE = "serving_default"
BYTES_SIGNATURE = "serve_image_bytes"
LABELS_FILE = "labels.txt"
WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
_INPUT_DTYPES = ("float32", "uint8")


def next_version(model_dir) -> int:
    """The next free integer version under ``model_dir`` (1 when there is none)."""
    if not os.path.isdir(model_dir):
        return 1
    versions = [int(d) for d in os.listdir(model_dir) if re.fullmatch(r"\d+", d)]
    return max(versions, default=0) + 1


def saved_model(model, model_dir, version=None, *, class_names=None, top_k=5,
                input_dtype="float32", image_bytes=True, warmup=True, check_inputs=None,
                atol=1e-4, gradcam=None, check_proposals=None) -> ExportResult:
    """Export ``model`` to ``model_dir/<version>/`` for TensorFlow Serving.

    Args:
        model: a Keras model with one image input of fixed ``(H, W, C)`` (batch size
            free). Mixed-precision models are exported as their float32 twin.
        model_dir: the model's directory in the serving base path
            (``saved_models/<name>``); created if missing.
        version: integer version; default the next free one. An existing version
            is a ``ValueError``: versions are never overwritten.
        class_names: one name per class (classifiers, detectors): adds
            ``top_k_labels`` (``labels`` for detectors) and the asset
            ``assets/labels.txt``.
        top_k: how many best classes the ``top_k_*`` outputs give
            (``min(top_k, classes)``).
        input_dtype: dtype of ``serving_default``'s ``images``: ``"float32"`` or
            ``"uint8"``.
        image_bytes: add the ``serve_image_bytes`` signature.
        warmup: write ``assets.extra/tf_serving_warmup_requests`` (needs
            ``tensorflow-serving-api``).
        check_inputs: ``(N, H, W, C)`` pixels 0..255 run through the export (with
            TF Serving's session-based loader) and the Keras model; default 2 random
            images. The outputs must agree to ``atol`` or nothing is written.
        atol: the largest max abs difference allowed.
        gradcam: add ``serve_gradcam`` (a classifier's Grad-CAM map with its
            prediction, :mod:`kvision.export.gradcam`): True for the last layer with
            a spatial map, or a layer path; checked against ``vis.gradcam`` too.
        check_proposals: a two-input detector's proposals for ``check_inputs``
            (``(N, M, 4)``); default selective search's of each check image, less
            those the model pools exactly as an earlier one (their scores tie and NMS
            may keep either: :func:`kvision.export.proposals.distinct_pooling`; how
            many in ``parity["proposals_tied"]``).
    Returns:
        :class:`~kvision.export.ExportResult` with ``path`` the version directory,
        ``format="savedmodel"``, the batch-1 latency of ``serving_default`` in the
        session, and ``parity``: ``max_abs_diff`` (over the probabilities and top-k
        scores of a classifier, or over every output), ``top1_agreement`` and
        ``top_k_max_abs_diff`` (classifiers; for a segmenter's ``(N, H, W,
        classes)`` output, ``top1_agreement`` is per pixel),
        ``image_bytes_max_abs_diff`` (the check images sent as PNG to
        ``serve_image_bytes``). The reference of a
        mixed-precision model is its float32 twin, which is what is exported. A
        detector's figures are :func:`~kvision.export.parity.compare_detections`':
        every detection matched (same class, IoU >= 0.99), scores within 1e-3.
    Raises:
        ValueError: bad arguments, an existing version, or an export that does not
            answer as the Keras model does (with the figures).
    """
    model_dir = os.fspath(model_dir)
    if os.path.exists(model_dir) and not os.path.isdir(model_dir):
        raise ValueError(f"Cannot export into {model_dir!r}: it exists and is a file, "
                         f"expected a directory (or a path that does not exist yet).")
    version = _version(model_dir, version)
    target = os.path.join(model_dir, str(version))
    if os.path.exists(target):
        raise ValueError(f"Version {version} already exists at {target!r}; versions are "
                         f"never overwritten (omit version= to take the next free one).")
    spec = _ExportSpec.of(model, class_names, top_k, input_dtype, image_bytes)
    spec.gradcam = gradcam_layer(model, gradcam)
    check_inputs = _check_inputs(check_inputs, spec)
    proposals = tied = None
    if spec.proposals is not None:
        from kvision.export.proposals import distinct_pooling, search_proposals

        if check_proposals is None:  # no two pooling alike: exact ties (issue 17)
            proposals, tied = distinct_pooling(
                model, search_proposals(check_inputs, spec.proposals))
        else:
            proposals, tied = np.asarray(check_proposals, "float32"), None
        if proposals.ndim != 3 or proposals.shape[-1] != 4 \
                or len(proposals) != len(check_inputs):
            raise ValueError(f"check_proposals must be (N, M, 4) for the {len(check_inputs)} "
                             f"check images, got shape {proposals.shape}.")
    if warmup:
        _require_serving_api()
    model = as_float32(model)

    created = not os.path.isdir(model_dir)
    os.makedirs(model_dir, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".tmp-{version}-", dir=model_dir)
    try:
        export_path = os.path.join(staging, str(version))
        _write(model, spec, export_path, staging)
        if warmup:
            _write_warmup(export_path, spec, check_inputs[:1], os.path.basename(
                os.path.abspath(model_dir)),
                None if proposals is None else proposals[:1])
        figures, latency_ms = _verify(model, spec, export_path, check_inputs, atol,
                                      proposals)
        if tied is not None:
            figures["proposals_tied"] = tied
        os.rename(export_path, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if created:
            with contextlib.suppress(OSError):
                os.rmdir(model_dir)  # only if empty: it was ours
        raise
    shutil.rmtree(staging, ignore_errors=True)
    return ExportResult(path=target, format="savedmodel", size_mb=size_mb(target),
                        parity=figures, latency_ms=latency_ms)


def serving_config(base_path, output=None) -> str:
    """Write TF Serving's ``models.config`` for every model under ``base_path``.

    A model is a directory of ``base_path`` holding at least one integer version
    directory with a ``saved_model.pb``; its name is the directory's name and its
    ``base_path`` in the file is absolute.

    Args:
        base_path: the serving base directory (``saved_models/``).
        output: where to write; default ``base_path/models.config``.
    Returns:
        The path written (atomically: a temporary file beside it, then renamed).
    Raises:
        FileNotFoundError: ``base_path`` is not a directory.
        ValueError: no model under ``base_path``.
    """
    from google.protobuf import text_encoding

    base = os.path.abspath(os.fspath(base_path))
    if not os.path.isdir(base):
        raise FileNotFoundError(f"Serving base path {base!r} is not a directory; expected "
                                f"one holding <model>/<version>/saved_model.pb.")
    models = [name for name in sorted(os.listdir(base))
              if not name.startswith(".") and _has_version(os.path.join(base, name))]
    if not models:
        raise ValueError(f"No model under {base!r}: expected directories "
                         f"<model>/<integer version>/saved_model.pb (export with "
                         f"kvision.export.saved_model first).")
    def quoted(text):
        return '"' + text_encoding.CEscape(text, as_utf8=True) + '"'

    lines = ["model_config_list {"]
    for name in models:
        lines += ["  config {",
                  f"    name: {quoted(name)}",
                  f"    base_path: {quoted(os.path.join(base, name))}",
                  '    model_platform: "tensorflow"',
                  "  }"]
    lines.append("}")
    output = os.path.join(base, "models.config") if output is None else os.fspath(output)
    write_text_atomically(output, "\n".join(lines) + "\n")
    return output


# --- arguments -------------------------------------------------------------------

def _version(model_dir, version) -> int:
    """``version`` checked, or the next free one."""
    if version is None:
        return next_version(model_dir)
    if isinstance(version, str) and re.fullmatch(r"\d+", version):
        version = int(version)
    if not isinstance(version, (int, np.integer)) or isinstance(version, bool) \
            or version < 1:
        raise ValueError(f"version must be an integer >= 1, got {version!r}.")
    return int(version)


class _ExportSpec:
    """What the signatures look like: image shape, dtypes, outputs, labels."""

    def __init__(self, image_shape, input_dtype, classes, top_k, class_names,
                 image_bytes, detector=False):
        self.detector = detector            # the four detection outputs
        self.image_shape = image_shape      # (H, W, C)
        self.input_dtype = input_dtype      # "float32" | "uint8"
        self.classes = classes              # None: not a classifier
        self.top_k = top_k                  # min(top_k, classes) for classifiers
        self.class_names = class_names      # list of str or None
        self.image_bytes = image_bytes
        self.keypoint_strides = None        # (y, x) of a keypoint model's heatmaps
        self.gradcam = None                 # the layer path of serve_gradcam, if any
        self.proposals = None               # P of a detector whose proposals are an input

    @classmethod
    def of(cls, model, class_names, top_k, input_dtype, image_bytes):
        """The spec of ``model`` with the arguments checked (``ValueError``)."""
        image_shape = _image_shape(model)
        input_dtype = _input_dtype(input_dtype)
        kind = export_kind(model)  # the model's task says how it is exported
        detector = kind == "detector" and is_detector(model)
        classes = _classes(model) if kind == "classifier" else None
        if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) \
                or top_k < 1:
            raise ValueError(f"top_k must be an integer >= 1, got {top_k!r}.")
        if class_names is not None:
            class_names = _class_names(class_names, classes, detector)
        proposals = proposal_count(model) if detector else None
        spec = cls(image_shape, input_dtype, classes,
                   None if classes is None else min(int(top_k), classes),
                   class_names, bool(image_bytes) and proposals is None, detector)
        spec.proposals = proposals
        if kind == "keypoints":  # held to its keypoints, as its TFLite files are
            spec.keypoint_strides = keypoint_strides(model)
        return spec


def _image_shape(model):
    """``(H, W, C)`` of the model's one image input, or ``ValueError``."""
    try:
        inputs = model.inputs
    except (AttributeError, ValueError):
        inputs = None
    if not inputs:
        raise ValueError("The model has no known input shape: build it with "
                         "input_shape=(H, W, C) (or from keras.Input) before exporting.")
    if len(inputs) != 1 and proposal_count(model) is None:
        raise ValueError(f"Expected a model with one image input (or a detector's images "
                         f"and proposals), got {len(inputs)} inputs.")
    shape = tuple(inputs[0].shape)
    if len(shape) != 4 or any(d is None for d in shape[1:]):
        raise ValueError(f"Expected a fixed image input shape (None, H, W, C), got "
                         f"{shape}: build the model with input_shape=(H, W, C) so the "
                         f"serving signature and the image-bytes resize know the size.")
    return tuple(int(d) for d in shape[1:])


def _input_dtype(input_dtype) -> str:
    name = getattr(input_dtype, "name", None) or getattr(input_dtype, "__name__", None) \
        or str(input_dtype)
    if name not in _INPUT_DTYPES:
        raise ValueError(f"input_dtype must be one of {_INPUT_DTYPES}, got "
                         f"{input_dtype!r}.")
    return name


def _classes(model):
    """Number of classes if the model is a classifier (one 2-D output), else None."""
    outputs = getattr(model, "outputs", None) or []
    if len(outputs) == 1 and len(outputs[0].shape) == 2 and outputs[0].shape[-1]:
        return int(outputs[0].shape[-1])
    return None


def _class_names(class_names, classes, detector=False):
    """``class_names`` as a list of one-line strings, one per class (a detector's
    class count is not in its outputs: any number)."""
    if classes is None and not detector:
        raise ValueError("class_names were given but the model is not a classifier "
                         "(expected one output of shape (None, classes)) nor a "
                         "detector (outputs boxes, scores, classes, num_detections).")
    if isinstance(class_names, str):
        raise ValueError(f"class_names must be a list of names, got the string "
                         f"{class_names!r}.")
    names = [str(n) for n in class_names]
    if not detector and len(names) != classes:
        raise ValueError(f"Expected {classes} class_names (one per model output), got "
                         f"{len(names)}.")
    bad = [n for n in names if not n or "\n" in n or "\r" in n]
    if bad:
        raise ValueError(f"Class names must be non-empty single lines (they are written "
                         f"one per line to {LABELS_FILE}), got {bad[:3]!r}.")
    return names


def _check_inputs(check_inputs, spec):
    """``(N, H, W, C)`` pixels in ``spec.input_dtype``; default 2 random images."""
    if check_inputs is None:
        rng = np.random.default_rng(0)
        check_inputs = rng.uniform(0, 255, size=(2, *spec.image_shape))
    x = np.asarray(check_inputs)
    if x.ndim != 4 or tuple(x.shape[1:]) != spec.image_shape or len(x) == 0:
        raise ValueError(f"check_inputs must be images of shape (N, "
                         f"{', '.join(map(str, spec.image_shape))}), got {x.shape}.")
    if spec.input_dtype == "uint8":
        # Exactly what a uint8 client can send; the Keras model sees the same pixels.
        return np.clip(np.round(x), 0, 255).astype("uint8")
    return x.astype("float32")


def _require_serving_api():
    try:
        import tensorflow_serving.apis.prediction_log_pb2  # noqa: F401
    except ImportError as error:
        raise ImportError("warmup=True writes TF Serving warm-up requests, which needs "
                          "tensorflow-serving-api (pip install tensorflow-serving-api); "
                          "or pass warmup=False.") from error


# --- writing ---------------------------------------------------------------------

def _write(model, spec, export_path, scratch):
    """Write the SavedModel of ``model`` with ``spec``'s signatures to ``export_path``.

    ``scratch`` is a directory for the labels file before the exporter copies it
    into ``assets/``.
    """
    import keras
    import tensorflow as tf

    archive = keras.export.ExportArchive()
    archive.track(model)
    table = None
    if spec.class_names is not None:
        table = _labels_table(spec.class_names, scratch)
        archive.track(table)  # its initializer carries assets/labels.txt
    height, width, channels = spec.image_shape

    def outputs(images):
        return _serving_outputs(model, images, spec, table)

    def serve_images(images):
        return outputs(tf.cast(images, "float32"))

    def serve_proposals(images, proposals):
        return outputs([tf.cast(images, "float32"), fit_count(proposals, spec.proposals)])

    def serve_image_bytes(image_bytes):
        images = tf.map_fn(lambda b: _decode_resize(b, height, width, channels),
                           image_bytes,
                           fn_output_signature=tf.TensorSpec((height, width, channels),
                                                             tf.float32))
        return outputs(images)

    image_spec = tf.TensorSpec((None, height, width, channels), spec.input_dtype,
                               name=IMAGES)
    if spec.proposals is None:
        archive.add_endpoint(DEFAULT_SIGNATURE, serve_images, input_signature=[image_spec])
    else:
        archive.add_endpoint(DEFAULT_SIGNATURE, serve_proposals, input_signature=[
            image_spec, tf.TensorSpec((None, None, 4), tf.float32, name=PROPOSALS)])
    if spec.image_bytes:
        archive.add_endpoint(BYTES_SIGNATURE, serve_image_bytes, input_signature=[
            tf.TensorSpec((None,), tf.string, name=IMAGE_BYTES)])
    if spec.gradcam is not None:
        add_signature(archive, model, spec.gradcam, spec.image_shape, spec.input_dtype)
    with _quiet_tf():
        archive.write_out(export_path, verbose=False)


def _labels_table(class_names, scratch):
    """Class index (int64) -> name, read from a ``labels.txt`` asset at load time."""
    import tensorflow as tf

    path = os.path.join(scratch, LABELS_FILE)
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(class_names) + "\n")
    initializer = tf.lookup.TextFileInitializer(
        path, key_dtype=tf.int64, key_index=tf.lookup.TextFileIndex.LINE_NUMBER,
        value_dtype=tf.string, value_index=tf.lookup.TextFileIndex.WHOLE_LINE)
    return tf.lookup.StaticHashTable(initializer, default_value="")


def _decode_resize(encoded, height, width, channels):
    """One encoded JPEG/PNG -> float32 ``(height, width, channels)`` pixels 0..255.

    As ``kvision.data.load_image``: no crop, bilinear ``tf.image.resize`` without
    antialiasing. Bytes whose header declares more pixels than
    ``kvision.data.MAX_PIXELS`` allowed when exporting are an ``InvalidArgumentError``
    raised before decoding (a decompression bomb must not exhaust the server).
    """
    import tensorflow as tf

    from kvision.data.folders import checked_size

    encoded = checked_size(encoded)
    image = tf.io.decode_image(encoded, channels=channels, dtype=tf.uint8,
                               expand_animations=False)
    image = tf.image.resize(tf.cast(image, tf.float32), (height, width),
                            method="bilinear", antialias=False)
    return tf.ensure_shape(image, (height, width, channels))


def _serving_outputs(model, images, spec, table):
    """Named outputs of ``model`` on float32 ``images``."""
    import tensorflow as tf

    y = model(images, training=False)
    if spec.detector:
        result = {k: v for k, v in _named_outputs(model, y).items()
                  if k in DETECTION_OUTPUTS}
        if table is not None:  # class -1 (padding) is no line: ""
            result["labels"] = table.lookup(tf.cast(result["classes"], tf.int64))
        return result
    if spec.classes is None:
        return _named_outputs(model, y)
    probabilities = tf.cast(y, tf.float32)
    scores, indices = tf.math.top_k(probabilities, k=spec.top_k)
    result = {"probabilities": probabilities, "top_k_scores": scores,
              "top_k_classes": tf.cast(indices, tf.int32)}
    if table is not None:
        result["top_k_labels"] = table.lookup(tf.cast(indices, tf.int64))
    return result


def _named_outputs(model, y):
    """A model's outputs as ``{name: tensor}`` (dict keys, else its output names)."""
    if isinstance(y, dict):
        return dict(y)
    ys = list(y) if isinstance(y, (list, tuple)) else [y]
    names = list(getattr(model, "output_names", None) or [])
    if len(names) != len(ys):
        names = [f"output_{i}" for i in range(len(ys))]
    return dict(zip(names, ys))


def _write_warmup(export_path, spec, image, model_name, proposals=None):
    """TF Serving warm-up: one batch-1 ``PredictRequest`` per signature.

    ``image`` is ``(1, H, W, C)`` in ``spec.input_dtype``. Format as documented at
    https://www.tensorflow.org/tfx/serving/saved_model_warmup.
    """
    import tensorflow as tf
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    requests = {DEFAULT_SIGNATURE: {IMAGES: tf.make_tensor_proto(image)}}
    if proposals is not None:
        requests[DEFAULT_SIGNATURE][PROPOSALS] = tf.make_tensor_proto(proposals)
    if spec.gradcam is not None:
        requests[GRADCAM_SIGNATURE] = {IMAGES: tf.make_tensor_proto(image)}
    if spec.image_bytes:
        png = tf.io.encode_png(np.clip(np.round(image[0]), 0, 255).astype("uint8"))
        requests[BYTES_SIGNATURE] = {
            IMAGE_BYTES: tf.make_tensor_proto([png.numpy()], dtype=tf.string)}
    path = os.path.join(export_path, WARMUP_FILE)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(path) as writer:
        for signature, inputs in requests.items():
            request = predict_pb2.PredictRequest(
                model_spec=model_pb2.ModelSpec(name=model_name, signature_name=signature),
                inputs=inputs)
            log = prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())


# --- checking --------------------------------------------------------------------

def _verify(model, spec, export_path, check_inputs, atol, proposals=None):
    """Run the export as TF Serving would and compare with ``model`` (given the same
    ``proposals`` too, for a detector that takes them).

    Returns ``(figures, latency_ms)``; raises ``ValueError`` with the figures when an
    output differs by more than ``atol``.
    """
    import tensorflow as tf

    reference = _keras_outputs(model, check_inputs.astype("float32"), spec, proposals)
    # What a client of serve_image_bytes sends: the check images as PNG (lossless).
    pixels = np.clip(np.round(check_inputs), 0, 255).astype("uint8")
    encoded = _encode_png(pixels) if spec.image_bytes else None
    try:
        with _session(export_path) as run:
            given = {IMAGES: check_inputs}
            if proposals is not None:
                given[PROPOSALS] = proposals
            got = run(DEFAULT_SIGNATURE, given)
            got_bytes = run(BYTES_SIGNATURE, {IMAGE_BYTES: encoded}) \
                if spec.image_bytes else None
            latency_ms = _latency_ms(run, {k: v[:1] for k, v in given.items()})
            explained = None if spec.gradcam is None else run(
                GRADCAM_SIGNATURE, {IMAGES: check_inputs})
    except tf.errors.OpError as error:
        raise ValueError(f"The SavedModel does not run in TF Serving's "
                         f"session-based loader ({type(error).__name__}: "
                         f"{error.message.splitlines()[0] if error.message else ''}). "
                         f"Nothing was written.") from None
    figures = _figures(reference, got, spec)
    _check(figures, spec, "The SavedModel's serving_default", atol)
    if proposals is not None:
        figures["proposals_input"] = int(spec.proposals)
    if got_bytes is not None:
        reference_bytes = _keras_outputs(model, pixels.astype("float32"), spec)
        bytes_figures = _figures(reference_bytes, got_bytes, spec)
        _check(bytes_figures, spec, "The SavedModel's serve_image_bytes", atol)
        figures["image_bytes_max_abs_diff"] = bytes_figures["max_abs_diff"]
    if explained is not None:  # the class maps beside vis.gradcam's
        figures.update(check_signature(model, spec.gradcam, explained, check_inputs,
                                       atol))
    return figures, latency_ms


def _check(figures, spec, what, atol):
    if spec.detector:
        check_detections(figures, what=what)
    elif spec.keypoint_strides is not None:
        check_keypoints(figures, what=what)
    else:
        check(figures, what=what, max_abs_diff=atol)


def _figures(reference, got, spec):
    """:func:`compare` figures over every output the Keras model also gives
    (:func:`compare_detections` for a detector)."""
    missing = sorted(set(reference) - set(got))
    if missing:
        raise ValueError(f"The SavedModel lacks the outputs {missing}; it gives "
                         f"{sorted(got)}. Nothing was written.")
    if spec.detector:
        if spec.class_names is not None:
            _check_detection_labels(got, spec.class_names)
        return compare_detections(reference, got)
    if spec.keypoint_strides is not None:
        return compare_keypoints(reference, got, spec.keypoint_strides)
    if spec.classes is not None:
        figures = compare(reference["probabilities"], got["probabilities"])
        # The top-k outputs must be the reference's k largest scores, and each class
        # index must point at its score (ties may order equal scores either way).
        expected_scores = -np.sort(-reference["probabilities"], axis=-1)[:, :spec.top_k]
        pointed = np.take_along_axis(reference["probabilities"],
                                     got["top_k_classes"].astype("int64"), axis=-1)
        figures["top_k_max_abs_diff"] = float(max(
            np.max(np.abs(expected_scores - got["top_k_scores"])),
            np.max(np.abs(pointed - got["top_k_scores"]))))
        figures["max_abs_diff"] = max(figures["max_abs_diff"], figures["top_k_max_abs_diff"])
        if spec.class_names is not None:
            _check_labels(got, spec.class_names)
        return figures
    per_output = [compare(reference[k], got[k]) for k in reference]
    figures = {"max_abs_diff": max(f["max_abs_diff"] for f in per_output),
               "num_images": per_output[0]["num_images"]}
    # A segmenter's per-pixel class agreement (compare gives it for (N, H, W, C)).
    agreements = [f["top1_agreement"] for f in per_output if "top1_agreement" in f]
    if agreements:
        figures["top1_agreement"] = min(agreements)
    return figures


def _check_labels(got, class_names):
    """``top_k_labels`` must name ``top_k_classes`` (read back from the labels asset)."""
    expected = np.array(class_names, dtype=object)[got["top_k_classes"]]
    labels = np.vectorize(lambda b: b.decode("utf-8"), otypes=[object])(got["top_k_labels"])
    if not np.array_equal(labels, expected):
        raise ValueError(f"The SavedModel's top_k_labels {labels[0].tolist()} do not name "
                         f"its top_k_classes {got['top_k_classes'][0].tolist()} "
                         f"(expected {expected[0].tolist()}). Nothing was written.")


def _check_detection_labels(got, class_names):
    """``labels`` must name ``classes`` ("" for padding), read back from the asset."""
    names = np.array([*class_names, ""], dtype=object)  # index -1: ""
    classes = got["classes"].astype("int64")
    expected = names[np.where((classes >= 0) & (classes < len(class_names)), classes, -1)]
    labels = np.vectorize(lambda b: b.decode("utf-8"), otypes=[object])(got["labels"])
    if not np.array_equal(labels, expected):
        raise ValueError(f"The SavedModel's labels {labels[0].tolist()} do not name its "
                         f"classes {got['classes'][0].tolist()}. Nothing was written.")


def _keras_outputs(model, x, spec, proposals=None, batch_size=32):
    """The Keras model's outputs on ``x`` (and ``proposals``, padded to its count, for
    a detector that takes them) as ``{name: array}`` (probabilities only for
    classifiers: the top-k outputs are derived from them)."""
    chunks = []
    for start in range(0, len(x), batch_size):
        given = x[start:start + batch_size]
        if proposals is not None:
            given = [given, np.asarray(fit_count(proposals[start:start + batch_size],
                                                 spec.proposals))]
        y = model(given, training=False)
        if spec.classes is not None:
            y = {"probabilities": y}
        else:
            y = _named_outputs(model, y)
            if spec.detector:
                y = {k: v for k, v in y.items() if k in DETECTION_OUTPUTS}
        chunks.append({k: np.asarray(v, dtype="float32") if not spec.detector
                       else np.asarray(v) for k, v in y.items()})
    return {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}


@contextlib.contextmanager
def _session(export_path):
    """Load ``export_path`` with the TF1 session-based loader (TF Serving's path).

    Yields ``run(signature, {input: array}) -> {output: array}``.
    """
    import tensorflow as tf

    graph = tf.Graph()
    with graph.as_default(), tf.compat.v1.Session(graph=graph) as session:
        with _quiet_tf():
            meta_graph = tf.compat.v1.saved_model.loader.load(session, ["serve"],
                                                              export_path)

        def run(signature, inputs, batch_size=32):
            signature_def = meta_graph.signature_def[signature]
            fetches = {k: v.name for k, v in signature_def.outputs.items()}
            count = len(next(iter(inputs.values())))
            # In batches, so a large check set does not need one huge graph run.
            chunks = [session.run(fetches, {signature_def.inputs[name].name:
                                            x[start:start + batch_size]
                                            for name, x in inputs.items()})
                      for start in range(0, count, batch_size)]
            return {k: np.concatenate([c[k] for c in chunks]) for k in fetches}

        yield run


def _latency_ms(run, inputs, repeats=5):
    """Mean time of one batch-1 ``serving_default`` call on ``inputs`` (``{name:
    array}``), after one warm-up call."""
    run(DEFAULT_SIGNATURE, inputs)
    start = time.perf_counter()
    for _ in range(repeats):
        run(DEFAULT_SIGNATURE, inputs)
    return (time.perf_counter() - start) / repeats * 1000.0


def _encode_png(pixels):
    """``(N, H, W, C)`` uint8 -> object array of N PNG byte strings."""
    import tensorflow as tf

    return np.array([tf.io.encode_png(p).numpy() for p in pixels], dtype=object)


@contextlib.contextmanager
def _quiet_tf():
    """Silence TF's deprecation and asset warnings for the duration."""
    import tensorflow as tf

    logger = tf.get_logger()
    level = logger.level
    logger.setLevel("ERROR")
    try:
        yield
    finally:
        logger.setLevel(level)


# --- files -----------------------------------------------------------------------

def _has_version(model_dir) -> bool:
    """Whether ``model_dir`` holds an integer version directory with a SavedModel."""
    if not os.path.isdir(model_dir):
        return False
    return any(re.fullmatch(r"\d+", d)
               and os.path.isfile(os.path.join(model_dir, d, "saved_model.pb"))
               for d in os.listdir(model_dir))
