"""TFLite export for phones: float32, float16, dynamic-range or full int8, proven first.

The conversion takes the path of Keras' own LiteRT exporter (``model.export(...,
format="litert")``): Keras' ``ExportArchive`` writes the model's inference call as a
SavedModel, and ``tf.lite.TFLiteConverter.from_saved_model`` converts that. It is done
here rather than through ``model.export`` because that format only exists in recent
Keras (kvision allows Keras >= 3.3), it turns on TensorFlow (Flex) operators by
default, and it writes straight to the target. Operators: TFLite builtins only
(``TFLITE_BUILTINS``, and ``TFLITE_BUILTINS_INT8`` first for int8); ``SELECT_TF_OPS``
only with ``allow_flex``.

A detector (outputs ``boxes``, ``scores``, ``classes``, ``num_detections``, its
decoding and NMS in the graph) converts the same way, NMS included as the builtin
``NON_MAX_SUPPRESSION_V4``; the file's signature keeps the four output names
(:func:`run_detector` reads them), and its check is
:func:`~kvision.export.parity.compare_detections` (every detection matched at IoU >=
0.99 with its class, scores within 1e-3 for float32). Full int8 is for classifiers and
keypoint models. A keypoint model (a pose estimator: outputs ``keypoints`` ``(N, K,
2)`` in input pixels and ``scores`` ``(N, K)``, decoded in the graph) keeps both
outputs, read by name, and its check is
:func:`~kvision.export.parity.compare_keypoints`: the mean distance between its
keypoints and Keras', in heatmap pixels (at most 0.5 for float32).

Every export is written to a temporary file beside the target, run with
:class:`~kvision.export.litert.TFLiteModel` and compared with the Keras model
(:mod:`kvision.export.parity`); only then is it renamed into place, with its labels
file. A failed check raises :class:`~kvision.export.parity.ParityError` (a
``ValueError``) with the figures and the number of check images, and leaves the target
as it was.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
import uuid
import warnings

import numpy as np

from kvision import _native
from kvision.export.litert import TFLiteModel, custom_ops, labels_path
from kvision.export.parity import (MAX_KEYPOINT_DISTANCE, ExportResult, as_float32, check,
                                   check_detections, check_keypoints, compare,
                                   compare_detections, compare_keypoints, export_kind,
                                   is_detector, keypoint_strides, size_mb)

QUANTIZE = (None, "float16", "dynamic", "int8")
FORMATS = {None: "tflite", "float16": "tflite-float16", "dynamic": "tflite-dynamic",
           "int8": "tflite-int8"}
# Top-1 agreement with the Keras model each variant must reach by default. float16
# weights lose ~3 decimal digits: argmax flips only on near ties. Dynamic-range
# quantization computes with int8 weights and activations quantized on the fly, about
# as lossy as full int8, so it gets the same bar.
MIN_TOP1_AGREEMENT = {None: None, "float16": 0.99, "dynamic": 0.97, "int8": 0.97}
# A float32 segmenter ((N, H, W, classes) scores) must also give the Keras class to
# this share of pixels: with atol=None that is its only check (float rounding can
# move a near-tied maximum, which max unpooling then puts one pixel over).
MIN_PIXEL_AGREEMENT_FLOAT32 = 0.995
# A keypoint model (outputs keypoints, scores): the mean distance in heatmap pixels
# between its keypoints and the Keras model's each variant may reach by default.
# float32 always at the half pixel. Measured on a 2-stack, 64-feature
# hourglass trained on figures over 200 held-out figures: after 12 epochs (PCK@0.2
# 0.904) float16 0.001, dynamic 0.029, int8 1.27 (its PCK 0.808); after 20 (the
# README's run) int8 1.49. int8's heatmaps, quantized, tie and move their arg-max;
# its default bar leaves room above both.
MAX_KEYPOINT_DISTANCE_BY_VARIANT = {None: MAX_KEYPOINT_DISTANCE,
                                    "float16": MAX_KEYPOINT_DISTANCE,
                                    "dynamic": MAX_KEYPOINT_DISTANCE, "int8": 2.0}
CHECK_IMAGES = 256     # default check set: up to this many representative images
RANDOM_CHECK_IMAGES = 8
MAX_CHECK_IMAGES = 10_000  # a repeating tf.data pipeline must end somewhere


def tflite(model, path, quantize=None, representative_data=None, *, int8_io=False,
           allow_flex=False, class_names=None, check_data=None, check_labels=None,
           atol=1e-4, min_top1_agreement=None, max_accuracy_drop=1.0,
           max_keypoint_distance=None, max_rank1_drop=None,
           num_calibration=200) -> ExportResult:
    """Export ``model`` to a ``.tflite`` file, checked against the Keras model.

    Args:
        model: a Keras model with one image input ``(None, H, W, C)`` of fixed size
            and one output. A mixed-precision model is exported as its float32 twin.
        path: the ``.tflite`` file to write (its directory is created). An existing
            file is replaced only once the new one has passed its check.
        quantize: None (float32), ``"float16"`` (float16 weights), ``"dynamic"``
            (int8 weights, float activations) or ``"int8"`` (full-integer, calibrated
            on ``representative_data``).
        representative_data: images as the model takes them (e.g. raw pixels
            ``[0, 255]``): a folder of class sub-folders, a ``tf.data.Dataset`` of
            images or ``(image, label)`` (batched or not), an array ``(N, H, W, C)``,
            or ``(images, labels)``. Up to ``num_calibration`` are used to calibrate.
        int8_io: with ``"int8"``, the file's input and output are int8 too
            (:class:`TFLiteModel` still takes and returns floats).
        allow_flex: allow TensorFlow (Flex) operators where TFLite has no builtin.
            Without it a model that needs them is a ``ValueError`` naming them.
        class_names: written one a line to ``<path minus .tflite>.labels.txt``.
        check_data, check_labels: inputs (same forms as ``representative_data``) and
            their labels for the parity check; default up to 256 of the
            representative images (with their labels, if they have some), else 8
            random images.
        atol: largest absolute difference allowed for float32 (None: not checked).
        min_top1_agreement: top-1 agreement required for a quantized export; default
            0.99 for float16, 0.97 for dynamic and int8. For a segmenter (one output
            ``(N, H, W, classes)``) it is per-pixel argmax agreement, required at
            0.995 for float32 too.
        max_accuracy_drop: with labels, points of accuracy the export may lose to the
            Keras model (None: not checked).
        max_keypoint_distance: a keypoint model (outputs ``keypoints``, ``scores``,
            its task's export kind ``"keypoints"``), quantized: the mean distance, in
            heatmap pixels, its keypoints may lie from the Keras model's; default
            0.5 for float16 and dynamic, 2.0 for int8. float32 is always held to 0.5.
        max_rank1_drop: an embedding model, quantized, with ``check_labels`` (the
            identities of the check images): points of leave-one-out rank-1 the file
            may lose; default 2.0 (:mod:`kvision.export.embedding`). Every
            embedding file is held to a cosine similarity of 0.9999 per image
            (float32) and reports its rank-1 change.
        num_calibration: representative images used for int8 calibration.
    Returns:
        :class:`~kvision.export.ExportResult` with the parity figures and the
        batch-1 latency of the file (ms, 2 threads).
    Raises:
        ValueError: bad arguments, or Flex operators not allowed.
        ParityError: (a ``ValueError``) a failed check, with the figures, the number
            of images they rest on and their ``failed`` names; nothing is written.
    """
    path = _check_path(path)
    if quantize not in QUANTIZE:
        raise ValueError(f"quantize must be one of {QUANTIZE}, got {quantize!r}.")
    if int8_io and quantize != "int8":
        raise ValueError(f"int8_io=True needs quantize='int8', got quantize={quantize!r}.")
    model = as_float32(model)
    shape = input_shape(model)
    class_names = _check_class_names(class_names, model)
    if quantize == "int8" and is_detector(model):
        raise ValueError("quantize='int8' is for classifiers; export a detector as "
                         "float32, float16 or dynamic.")

    representative = None
    if representative_data is not None:
        representative = images_from(representative_data, shape,
                                     limit=max(num_calibration, CHECK_IMAGES),
                                     what="representative_data")
    if quantize == "int8" and representative is None:
        raise ValueError("quantize='int8' needs representative_data (a folder, a tf.data "
                         "pipeline or an array of training images) to calibrate on.")
    check_x, labels = _check_set(check_data, check_labels, representative, shape,
                                 class_names)

    directory = os.path.dirname(os.path.abspath(path))
    created = not os.path.isdir(directory)
    os.makedirs(directory, exist_ok=True)
    # A hidden name beside the target (same file system: the rename is atomic).
    staged = os.path.join(directory, f".{os.path.basename(path)}-{uuid.uuid4().hex[:12]}"
                                     f".tflite")
    staged_labels = labels_path(staged)
    try:
        calibration = None if representative is None else representative[0][:num_calibration]
        _convert(model, staged, quantize, calibration, int8_io, allow_flex)
        parity, latency = _prove(model, staged, quantize, check_x, labels, atol=atol,
                                 min_top1_agreement=min_top1_agreement,
                                 max_accuracy_drop=max_accuracy_drop,
                                 max_keypoint_distance=max_keypoint_distance,
                                 max_rank1_drop=max_rank1_drop)
        _commit(staged, path, class_names, staged_labels)
    except BaseException:
        for leftover in (staged, staged_labels):
            with contextlib.suppress(FileNotFoundError):
                os.remove(leftover)
        if created:
            with contextlib.suppress(OSError):
                os.rmdir(directory)  # only if empty: it was ours
        raise
    return ExportResult(path=path, format=FORMATS[quantize], size_mb=size_mb(path),
                        parity=parity, latency_ms=latency)


def _check_path(path) -> str:
    path = os.fspath(path)
    if os.path.isdir(path):
        raise ValueError(f"path must be a .tflite file name; {path!r} is a directory.")
    if not path.endswith(".tflite"):
        raise ValueError(f"path must end with '.tflite', got {path!r}.")
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise ValueError(f"Cannot write {path!r}: {parent!r} is a file, not a directory.")
    return path


def input_shape(model) -> tuple:
    """``(H, W, C)`` of a model's single image input; ``ValueError`` if not fixed."""
    try:
        inputs = model.inputs
    except AttributeError:
        inputs = None
    if not inputs:
        raise ValueError(f"Model {getattr(model, 'name', model)!r} has no input shape: "
                         f"build it with input_shape=(H, W, C) (or call it once) first.")
    if len(inputs) != 1 or (len(model.outputs) != 1 and not is_detector(model)
                            and export_kind(model) not in ("outputs", "keypoints")):
        raise ValueError(f"TFLite export takes a model with one image input and one "
                         f"output (or a detector's boxes, scores, classes, "
                         f"num_detections, or keypoints and scores); {model.name!r} "
                         f"has {len(inputs)} inputs and {len(model.outputs)} outputs.")
    shape = tuple(inputs[0].shape[1:])
    if len(shape) != 3 or any(d is None for d in shape):
        raise ValueError(f"TFLite export needs a fixed image input (H, W, C); "
                         f"{model.name!r} takes {tuple(inputs[0].shape)}.")
    return tuple(int(d) for d in shape)


def _check_class_names(class_names, model):
    if class_names is None:
        return None
    class_names = [str(name) for name in class_names]
    classes = len(class_names) if is_detector(model) else model.outputs[0].shape[-1]
    if len(class_names) != classes or any("\n" in name for name in class_names):
        raise ValueError(f"class_names must be {classes} names (one per output of "
                         f"{model.name!r}, no newlines), got {len(class_names)}.")
    return class_names


# --- data -----------------------------------------------------------------------------

def images_from(data, shape, limit=None, what="data"):
    """Images (and labels, where the data has them) from any accepted form.

    Args:
        data: folder path, ``tf.data.Dataset`` (images or ``(image, label)``, batched
            or not), array ``(N, H, W, C)`` or ``(images, labels)``.
        shape: ``(H, W, C)`` the model takes.
        limit: at most this many images (a random subset of arrays and folders,
            the first ones of a pipeline).
    Returns:
        ``(images, labels, label_names)``: float32 ``(n, H, W, C)``, int64 ``(n,)`` or
        None, and the folder's class names (None for other forms).
    """
    names = None
    if isinstance(data, (str, os.PathLike)):
        images, labels, names = _from_folder(os.fspath(data), shape, limit, what)
    elif _is_dataset(data):
        images, labels = _from_dataset(data, limit or MAX_CHECK_IMAGES)
    else:
        if isinstance(data, tuple) and len(data) == 2 and np.ndim(data[1]) == 1:
            images, labels = np.asarray(data[0]), np.asarray(data[1])
        else:
            images, labels = np.asarray(data), None
        if limit is not None and len(images) > limit and images.ndim == 4:
            pick = np.sort(np.random.default_rng(0).choice(len(images), limit, replace=False))
            images = images[pick]
            labels = labels[pick] if labels is not None else None
    images = np.asarray(images)
    if images.ndim != 4 or tuple(images.shape[1:]) != tuple(shape) or len(images) == 0:
        raise ValueError(f"{what} must hold images of shape (N, {', '.join(map(str, shape))}) "
                         f"as the model takes them; got shape {images.shape}.")
    if labels is not None:
        labels = np.asarray(labels).reshape(-1).astype("int64")
        if len(labels) != len(images):
            raise ValueError(f"{what}: {len(images)} images but {len(labels)} labels.")
    return images.astype("float32"), labels, names


def _is_dataset(data):
    tf = sys.modules.get("tensorflow")  # a Dataset can only exist if TF is loaded
    return tf is not None and isinstance(data, tf.data.Dataset)


def _from_dataset(dataset, limit):
    images, labels = [], []
    count = 0
    for element in dataset:
        label = None
        if isinstance(element, (tuple, list)):
            image = element[0]
            label = element[1] if len(element) > 1 else None
        elif isinstance(element, dict):
            raise ValueError("A tf.data pipeline of dicts is not supported; map it to "
                             "images or (image, label) pairs.")
        else:
            image = element
        image = np.asarray(image)
        if image.ndim == 3:  # unbatched
            image = image[None]
            label = None if label is None else np.reshape(np.asarray(label), (1,))
        images.append(image)
        labels.append(None if label is None else np.asarray(label).reshape(-1))
        count += len(image)
        if count >= limit:
            break
    if not images:
        raise ValueError("The tf.data pipeline is empty.")
    images = np.concatenate(images)[:limit]
    if any(lab is None for lab in labels):
        return images, None
    return images, np.concatenate(labels)[:limit]


def _from_folder(root, shape, limit, what):
    if not os.path.isdir(root):
        raise FileNotFoundError(f"{what}: {root!r} is not a folder of images.")
    try:
        from kvision.data import list_images, load_image
    except ImportError:
        raise ValueError(f"{what}: reading a folder needs kvision.data.list_images, "
                         f"which this kvision lacks; pass an array or tf.data.") from None
    paths, labels, names = list_images(root)
    if len(paths) == 0:
        raise ValueError(f"{what}: no images under {root!r}.")
    # Class folders come in order: a random subset calibrates on every class.
    order = np.random.default_rng(0).permutation(len(paths))[:limit]
    height, width, channels = shape
    size = height if height == width else (height, width)
    images = np.stack([load_image(paths[i], size, channels=channels) for i in order])
    return images, np.asarray(labels)[order], list(names)


def _check_set(check_data, check_labels, representative, shape, class_names):
    """The images and labels the export is checked on (see :func:`tflite`)."""
    if check_data is not None:
        images, labels, names = images_from(check_data, shape, what="check_data")
    elif representative is not None:
        images, labels, names = representative
        images = images[:CHECK_IMAGES]
        labels = None if labels is None else labels[:CHECK_IMAGES]
    else:
        rng = np.random.default_rng(0)
        images = rng.uniform(0, 255, (RANDOM_CHECK_IMAGES, *shape)).astype("float32")
        labels = names = None
    if check_labels is not None:
        labels = np.asarray(check_labels).reshape(-1).astype("int64")
        names = None
        if len(labels) != len(images):
            raise ValueError(f"check_labels has {len(labels)} labels for {len(images)} "
                             f"check images.")
    if labels is not None and names is not None and class_names is not None \
            and list(names) != list(class_names):
        # A folder's labels index its own class list: map them onto the model's.
        index = {name: i for i, name in enumerate(class_names)}
        if not all(name in index for name in names):
            return images, None
        labels = np.asarray([index[names[label]] for label in labels], dtype="int64")
    return images, labels


# --- conversion -----------------------------------------------------------------------

def _convert(model, path, quantize, calibration, int8_io, allow_flex):
    """Write the ``.tflite`` bytes of ``model`` to ``path``.

    Keras' ``ExportArchive`` writes a SavedModel (into a temporary directory) whose
    ``serve`` endpoint is the model's inference call on ``(None, H, W, C)`` float32;
    ``TFLiteConverter.from_saved_model`` converts it. Flex operators -> ``ValueError``
    unless ``allow_flex``.
    """
    import keras
    import tensorflow as tf

    with tempfile.TemporaryDirectory() as scratch:
        archive = keras.export.ExportArchive()
        archive.track(model)
        archive.add_endpoint(
            "serve", _named_call(model),
            input_signature=[tf.TensorSpec((None, *input_shape(model)), tf.float32,
                                           name="images")])
        archive.write_out(scratch, verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(scratch)
        _configure(converter, quantize, calibration, int8_io, allow_flex)
        try:
            content = converter.convert()
        except Exception as error:  # ConverterError and friends: report what matters
            raise _conversion_error(error, model) from None
    with open(path, "xb") as f:
        f.write(content)


def _named_call(model):
    """The model's inference call; an embedding model's answer named ``embeddings``
    in the file's signature (so :func:`kvision.tasks.task_of` knows the export),
    where a lone output would be ``output_0``."""
    from kvision.export.embedding import is_embedding
    from kvision.tasks import EMBEDDINGS

    if is_embedding(model):
        return lambda images: {EMBEDDINGS: model(images, training=False)}
    return lambda images: model(images, training=False)


def _configure(converter, quantize, calibration, int8_io, allow_flex):
    """Converter options of one variant: builtin operators unless Flex is allowed."""
    import tensorflow as tf

    ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if quantize is not None:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantize == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if quantize == "int8":
        # int8 kernels first; the float builtins only for an operator that has none.
        ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS]

        def representative_dataset():
            for image in calibration:
                yield [image[None]]

        converter.representative_dataset = representative_dataset
        if int8_io:
            converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8
    if allow_flex:
        ops.append(tf.lite.OpsSet.SELECT_TF_OPS)
    converter.target_spec.supported_ops = ops


def _conversion_error(error, model):
    """A ``ValueError`` naming the operators TFLite builtins lack, or the first error."""
    flex, custom = set(), set()
    for data in getattr(error, "errors", []) or []:
        text = str(data)
        name = data.operator.name.removeprefix("tf.") if data.HasField("operator") else ""
        if "ERROR_NEEDS_FLEX_OPS" in text and name:
            flex.add(name)
        elif "ERROR_NEEDS_CUSTOM_OPS" in text and name:
            custom.add(name)
    message = str(error)
    for pattern, found in ((r"TF Select ops: ([^\n]+)", flex), (r"Custom ops: ([^\n]+)", custom)):
        for match in re.finditer(pattern, message):
            found.update(op.strip() for op in match.group(1).split(",") if op.strip())
    if flex or custom:
        parts = []
        if flex:
            parts.append(f"TensorFlow (Flex) operators {', '.join(sorted(flex))} that TFLite "
                         f"builtins lack (allow_flex=True keeps them; the phone then needs "
                         f"the Flex delegate)")
        if custom:
            parts.append(f"operators {', '.join(sorted(custom))} that neither TFLite nor "
                         f"its Flex delegate has")
        return ValueError(f"Model {model.name!r} needs {' and '.join(parts)}.")
    lines = [line.strip() for line in message.splitlines() if "error" in line.lower()]
    return ValueError(f"TFLite conversion of {model.name!r} failed: "
                      f"{(lines or [message.strip()])[0][:500]}")


# --- proof and commit -----------------------------------------------------------------

def run_detector(path, images, num_threads=2):
    """A detector's ``.tflite`` file on ``images`` -> ``{name: array}`` of its four
    outputs (read by name from the file's signature), and the median batch-1
    latency in ms."""
    import time

    from kvision.export.litert import _interpreter_class

    with _native.held_when_quiet():  # XNNPACK's "Created ... delegate" line
        interpreter = _interpreter_class()(model_path=os.fspath(path),
                                           num_threads=num_threads)
    runner = interpreter.get_signature_runner()
    (name,) = runner.get_input_details()
    images = np.asarray(images, "float32")
    parts = [runner(**{name: images[i:i + 1]}) for i in range(len(images))]
    outputs = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    times = []
    for _ in range(10):
        start = time.perf_counter()
        runner(**{name: images[:1]})
        times.append(time.perf_counter() - start)
    return outputs, 1000.0 * float(np.median(times))


def _prove_detector(model, staged, quantize, images, min_top1_agreement):
    """The detection check of a staged file (see the module docstring)."""
    candidate, latency = run_detector(staged, images)
    reference = model.predict(images, batch_size=32, verbose=0)
    figures = compare_detections(reference, candidate)
    what = f"The {FORMATS[quantize]} export"
    if quantize is None:
        check_detections(figures, what=what)
    else:  # reduced precision: most detections must keep their twin
        agreement = MIN_TOP1_AGREEMENT[quantize] if min_top1_agreement is None \
            else min_top1_agreement
        check(figures, what=what, min_top1_agreement=agreement)
    return figures, latency


def _prove_keypoints(model, staged, quantize, images, max_distance):
    """The keypoint check of a staged file: its ``keypoints`` and ``scores``, read by
    name (the converter may order a file's outputs either way), against Keras'."""
    runner = TFLiteModel(staged)
    if sorted(runner.output_names) != ["keypoints", "scores"]:
        raise ValueError(f"The {FORMATS[quantize]} export answers "
                         f"{', '.join(runner.output_names)}; expected keypoints and "
                         f"scores. Nothing was written.")
    candidate = dict(zip(runner.output_names, runner.predict(images)))
    reference = model.predict(images, batch_size=32, verbose=0)
    figures = compare_keypoints(reference, candidate, keypoint_strides(model))
    bar = MAX_KEYPOINT_DISTANCE_BY_VARIANT[quantize] \
        if max_distance is None or quantize is None else max_distance
    check_keypoints(figures, what=f"The {FORMATS[quantize]} export", max_distance=bar)
    return figures, runner.latency_ms(batch_size=1, x=images[:1])


def _prove(model, staged, quantize, images, labels, *, atol, min_top1_agreement,
           max_accuracy_drop, max_keypoint_distance=None, max_rank1_drop=None):
    """Run the staged file and the Keras model on ``images``; ``(figures, latency_ms)``."""
    from kvision.export import embedding

    if embedding.is_embedding(model):
        return embedding.prove(model, staged, quantize, images, labels,
                               what=f"The {FORMATS[quantize]} export",
                               max_rank1_drop=max_rank1_drop)
    if is_detector(model):
        return _prove_detector(model, staged, quantize, images, min_top1_agreement)
    if export_kind(model) == "keypoints":
        return _prove_keypoints(model, staged, quantize, images, max_keypoint_distance)
    with open(staged, "rb") as f:
        flex = [op for op in custom_ops(f.read()) if op.startswith("Flex")]
    try:
        runner = TFLiteModel(staged)
    except ValueError:
        if not flex:
            raise
        # The Flex delegate is in the phone's runtime, not in this interpreter.
        warnings.warn(f"The export needs Flex operators {', '.join(flex)} that this "
                      f"interpreter cannot run; it was not checked against Keras.",
                      stacklevel=3)
        return {"checked": False, "flex_ops": flex}, None
    reference = model.predict(images, batch_size=32, verbose=0)
    candidate = runner.predict(images)
    if not np.all(np.isfinite(candidate)):
        raise ValueError(f"The {FORMATS[quantize]} export gives non-finite outputs where "
                         f"the Keras model does not. Nothing was written.")
    figures = compare(reference, candidate, labels)
    agreement = MIN_TOP1_AGREEMENT[quantize] if min_top1_agreement is None \
        else min_top1_agreement
    if agreement is None and np.ndim(reference) == 4 and "top1_agreement" in figures:
        agreement = MIN_PIXEL_AGREEMENT_FLOAT32
    check(figures, what=f"The {FORMATS[quantize]} export",
          max_abs_diff=atol if quantize is None else None,
          min_top1_agreement=agreement, max_accuracy_drop=max_accuracy_drop)
    if flex:
        figures["flex_ops"] = flex
    return figures, runner.latency_ms(batch_size=1, x=images[:1])


def _commit(staged, path, class_names, staged_labels):
    """Move the checked file (and its labels) into place."""
    target_labels = labels_path(path)
    if class_names is not None:
        with open(staged_labels, "w", encoding="utf-8") as f:
            f.write("".join(f"{name}\n" for name in class_names))
        os.replace(staged_labels, target_labels)
    elif os.path.isfile(target_labels):
        # Labels of the file being replaced would now name the wrong outputs.
        os.remove(target_labels)
    os.replace(staged, path)
