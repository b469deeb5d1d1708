"""Exported artifacts answering as a Keras model does, for ``kvision predict`` and
``kvision evaluate``.

:class:`ExportedModel` wraps a ``.tflite`` file (through
:class:`~kvision.export.litert.TFLiteModel`) or a SavedModel version directory
(its ``serving_default`` signature, loaded with ``tf.saved_model.load``) behind the
few things :mod:`kvision.predict` and :mod:`kvision.evaluate` ask of a model:
``predict``, ``predict_on_batch``, ``input_shape`` and outputs with shapes and names,
so :func:`kvision.tasks.task_of` reads the task off them as it does for a Keras file
saved before tasks travelled with models. The callers are not special-cased.

What each export holds, and so what it answers (see :mod:`kvision.export`):

- classifier: a ``.tflite``'s one ``(N, classes)`` output; a SavedModel's
  ``probabilities`` (its ``top_k_*`` outputs are derived from them);
- detector or localizer: ``boxes``, ``scores``, ``classes``, ``num_detections`` by
  name (the TFLite signature's or the SavedModel's outputs);
- semantic segmenter: the one ``(N, H, W, classes)`` output.

An instance segmenter's export is a ValueError: its answer is decoded with layers
of the Keras model (predict the ``.keras`` file instead).
"""

from __future__ import annotations

import collections
import os
import re

import numpy as np

from kvision.export.parity import DETECTION_OUTPUTS

SAVED_MODEL_FILE = "saved_model.pb"
SIGNATURE = "serving_default"
# A SavedModel's labels, written by kvision.export.savedmodel into assets/.
SAVED_MODEL_LABELS = os.path.join("assets", "labels.txt")

# What task_of reads off a model: a shape per output (a KerasTensor has more).
OutputSpec = collections.namedtuple("OutputSpec", "shape")


def is_saved_model(path) -> bool:
    """``path`` is a SavedModel directory (it holds ``saved_model.pb``)."""
    return os.path.isfile(os.path.join(os.fspath(path), SAVED_MODEL_FILE))


def newest_version(model_dir):
    """``(newest version directory, [versions])`` of TF Serving's layout
    ``model_dir/<integer>/saved_model.pb``; ``(None, [])`` when it has none."""
    versions = sorted(int(d) for d in os.listdir(model_dir)
                      if re.fullmatch(r"\d+", d)
                      and is_saved_model(os.path.join(model_dir, d)))
    if not versions:
        return None, []
    return os.path.join(model_dir, str(versions[-1])), versions


def _chosen(shapes):
    """The output names to answer with, from ``{name: shape}``: a detector's four, a
    SavedModel classifier's ``probabilities``, else the one output; ValueError for
    an instance segmenter or outputs that fit no task."""
    names = set(shapes)
    if "instance_map" in names:
        raise ValueError("an instance segmenter's export answers maps that only the "
                         "Keras model decodes into instances: predict its .keras file.")
    if set(DETECTION_OUTPUTS) <= names:
        return list(DETECTION_OUTPUTS)
    if "probabilities" in names:
        return ["probabilities"]
    if len(names) == 1 and len(next(iter(shapes.values()))) in (2, 4):
        return list(names)
    raise ValueError(f"its outputs {sorted(names)} fit no task: expected a classifier's "
                     f"(N, classes), a segmenter's (N, H, W, classes) or a detector's "
                     f"{', '.join(DETECTION_OUTPUTS)}.")


class ExportedModel:
    """An exported model with the parts of a Keras model's interface kvision's
    predict and evaluate use.

    Attributes:
        path: the ``.tflite`` file or the SavedModel version directory.
        name: its file or directory name.
        format: ``"tflite"`` or ``"savedmodel"``.
        input_shape: ``(None, H, W, C)``.
        output_names, outputs, output, output_shape: the answered outputs (Keras'
            meanings: one output is ``output``, several a dict by name).
        class_names: from the labels file the export wrote, else None.
    """

    def __init__(self, path, fmt, run, input_shape, shapes, class_names):
        self.path, self.format, self._run = path, fmt, run
        self.name = os.path.basename(os.path.normpath(path))
        self.input_shape = (None, *input_shape[1:])
        try:
            self.output_names = _chosen(shapes)
        except ValueError as error:
            raise ValueError(f"{path!r}: {error}") from None
        self.outputs = [OutputSpec(tuple(shapes[n])) for n in self.output_names]
        self.output = self.outputs[0] if len(self.outputs) == 1 else \
            dict(zip(self.output_names, self.outputs))
        self.output_shape = self.outputs[0].shape
        self.class_names = class_names

    def predict(self, x, batch_size=32, verbose=0):
        """Outputs for float images ``(N, H, W, C)`` 0..255, as ``keras.Model.predict``
        gives them (a dict by name for a detector)."""
        x = np.asarray(x, "float32")
        if x.ndim != 4 or x.shape[1:] != tuple(self.input_shape[1:]):
            raise ValueError(f"{self.name} takes images of shape (N, "
                             f"{', '.join(map(str, self.input_shape[1:]))}), got "
                             f"{x.shape}.")
        starts = range(0, len(x), int(batch_size or 32)) if len(x) else [0]
        pieces = [self._run(x[i:i + (batch_size or 32)]) for i in starts]
        answered = {n: np.concatenate([p[n] for p in pieces]) for n in self.output_names}
        return answered if len(answered) > 1 else answered[self.output_names[0]]

    def predict_on_batch(self, x):
        return self.predict(np.asarray(x))

    def __call__(self, x):
        return self.predict(x)


def from_tflite(path) -> ExportedModel:
    """A ``.tflite`` file (float, float16, dynamic or int8, int8 I/O dequantized)."""
    from kvision.export.litert import TFLiteModel

    lite = TFLiteModel(path)
    names = lite.output_names

    def run(x):
        y = lite.predict(x)
        return dict(zip(names, y if len(names) > 1 else [y]))

    shapes = dict(zip(names, lite.output_shapes))
    return ExportedModel(lite.path, "tflite", run, lite.input_shape, shapes,
                         lite.class_names)


def from_saved_model(path) -> ExportedModel:
    """A SavedModel version directory's ``serving_default`` signature (input
    ``images``, float32 or uint8 pixels)."""
    import tensorflow as tf

    path = os.fspath(path)
    try:
        signature = tf.saved_model.load(path).signatures[SIGNATURE]
    except (KeyError, OSError, ValueError, tf.errors.OpError) as error:
        first = (str(error).strip().splitlines() or [f"no {SIGNATURE!r} signature"])[0]
        raise ValueError(f"{path!r} is not a SavedModel kvision can run: {first}") \
            from None
    (name, spec), = signature.structured_input_signature[1].items()
    shapes = {n: tuple(s.shape) for n, s in signature.structured_outputs.items()}

    def run(x):
        if spec.dtype == tf.uint8:  # what a uint8 client sends, as the export's check
            x = np.clip(np.round(x), 0, 255).astype("uint8")
        return {n: v.numpy() for n, v in signature(**{name: tf.constant(x)}).items()}

    labels = os.path.join(path, SAVED_MODEL_LABELS)
    names = None
    if os.path.isfile(labels):
        with open(labels, encoding="utf-8") as f:
            names = [line.rstrip("\n") for line in f if line.strip()]
    return ExportedModel(path, "savedmodel", run, tuple(spec.shape), shapes, names)
