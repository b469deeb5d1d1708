"""kvision: classic computer-vision networks and tasks for Keras 3 on TensorFlow.

``kvision.create(name)``, ``kvision.list_models()`` and ``kvision.profile(model)``
are the short forms of ``kvision.models``'; submodules load on first use, so that
``import kvision`` (and the command line) start without loading TensorFlow.

``import kvision`` is also all that loading a saved kvision model needs: kvision's
layers, losses and metrics register with Keras as soon as Keras is loaded (at once if
it already is), so ``keras.saving.load_model(path, safe_mode=True)`` finds them
(:mod:`kvision._serializable`).
"""

import importlib

__version__ = "0.1.0"

_SHORTCUTS = {"create": "kvision.models", "list_models": "kvision.models",
              "profile": "kvision.models", "get_info": "kvision.models"}
_SUBMODULES = ("blocks", "data", "distribute", "evaluate", "export", "features", "layers",
               "losses", "metrics", "models", "ops", "predict", "registry", "retrieval",
               "saving", "testing", "train", "transfer", "visualization", "weights")


def __getattr__(name):
    if name in _SHORTCUTS:
        return getattr(importlib.import_module(_SHORTCUTS[name]), name)
    if name in _SUBMODULES:
        return importlib.import_module(f"kvision.{name}")
    raise AttributeError(f"module 'kvision' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_SHORTCUTS, *_SUBMODULES])


# Last: registering may import kvision's submodules, which need the names above.
from kvision import _serializable  # noqa: E402

_serializable.install()
