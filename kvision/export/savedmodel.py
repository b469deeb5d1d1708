"""SavedModel in TensorFlow Serving's layout: ``<base>/<name>/<version>/``.

Written through Keras' own exporter (``model.export(..., format="tf_saved_model")``;
a plain ``tf.saved_model.save`` of a Keras 3 model does not load in TF Serving's
session-based loader), into a temporary directory beside the target, checked against
the Keras model, then renamed into place: a failed export leaves nothing behind and
never touches an existing version.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile

import numpy as np


def next_version(model_dir) -> int:
    """The next free integer version under ``model_dir`` (1 when there is none)."""
    if not os.path.isdir(model_dir):
        return 1
    versions = [int(d) for d in os.listdir(model_dir) if re.fullmatch(r"\d+", d)]
    return max(versions, default=0) + 1


def saved_model(model, model_dir, version=None, check_inputs=None, atol=1e-4):
    """Export ``model`` to ``model_dir/<version>/`` for TensorFlow Serving.

    Args:
        model: a Keras model with a known input shape (batch size free).
        model_dir: the model's directory in the serving base path
            (``saved_models/<name>``).
        version: integer version; default the next free one. An existing version
            is a ``ValueError``: versions are never overwritten.
        check_inputs: inputs to run through the export and the Keras model; their
            outputs must agree to ``atol`` or the export is removed.
    Returns:
        The path of the version directory written.
    """
    import tensorflow as tf

    if os.path.exists(model_dir) and not os.path.isdir(model_dir):
        raise ValueError(f"Cannot export into {model_dir!r}: it exists and is a file.")
    version = next_version(model_dir) if version is None else version
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ValueError(f"version must be an integer >= 1, got {version!r}.")
    target = os.path.join(model_dir, str(version))
    if os.path.exists(target):
        raise ValueError(f"Version {version} already exists at {target!r}; versions are "
                         f"never overwritten (omit version= to take the next free one).")
    os.makedirs(model_dir, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{version}-", dir=model_dir)
    try:
        export_path = os.path.join(staging, "export")
        model.export(export_path, format="tf_saved_model", verbose=False)
        if check_inputs is not None:
            serving = tf.saved_model.load(export_path).signatures["serving_default"]
            expected = np.asarray(model(check_inputs, training=False))
            (got,) = serving(tf.constant(check_inputs)).values()
            diff = float(np.max(np.abs(expected - got.numpy())))
            if diff > atol:
                raise ValueError(f"The SavedModel differs from the Keras model by {diff:.3g} "
                                 f"(allowed {atol}); nothing was written.")
        os.rename(export_path, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
