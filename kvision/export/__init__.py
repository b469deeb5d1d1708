"""Exports for servers and phones, each proven against the Keras model before it is kept.

- :func:`saved_model`: TensorFlow Serving's ``<model_dir>/<version>/`` layout, raw-pixel
  and image-bytes signatures, class names as an asset, warm-up requests.
- :func:`serving_config`: a ``models.config`` for every model under a base path.
- :func:`tflite`: a ``.tflite`` file (float32, float16, dynamic or full int8).
- :class:`TFLiteModel`: runs a ``.tflite`` file with the ``predict`` of a Keras model.

These modules import TensorFlow only when they run, so importing them is cheap. The
function ``tflite`` is imported last on purpose: it takes the package attribute over
from its module of the same name.
"""

from kvision.export.litert import TFLiteModel
from kvision.export.parity import ExportResult, ParityError, as_float32
from kvision.export.savedmodel import next_version, saved_model, serving_config
from kvision.export.tflite import tflite  # noqa: E402  (after its module's import)

__all__ = ["ExportResult", "ParityError", "TFLiteModel", "as_float32", "next_version",
           "saved_model", "serving_config", "tflite"]
