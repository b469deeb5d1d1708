"""Exports for servers and phones, each proven against the Keras model before it is kept.

- :func:`saved_model`: TensorFlow Serving's ``<model_dir>/<version>/`` layout, raw-pixel
  and image-bytes signatures, class names as an asset, warm-up requests.
- :func:`serving_config`: a ``models.config`` for every model under a base path.
- :func:`tflite`: a ``.tflite`` file (float32, float16, dynamic or full int8).
- :class:`TFLiteModel`: runs a ``.tflite`` file with the ``predict`` of a Keras model.
"""

import importlib

_EXPORTS = {
    "saved_model": "kvision.export.savedmodel",
    "next_version": "kvision.export.savedmodel",
    "serving_config": "kvision.export.savedmodel",
    "tflite": "kvision.export.tflite",
    "TFLiteModel": "kvision.export.litert",
    "ExportResult": "kvision.export.parity",
    "as_float32": "kvision.export.parity",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'kvision.export' has no attribute {name!r}")
