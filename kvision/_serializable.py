"""``import kvision`` registers every Keras object kvision saves, without loading Keras.

Keras finds a custom class named in a ``.keras`` file (``"kvision>ResizeLike"``) only
after the module defining it has run its ``keras.saving`` registration decorator, so a
model saved by kvision loads only once the modules in :data:`MODULES` have been
imported. Importing them means importing Keras and TensorFlow (seconds), which
``import kvision`` and the command line avoid. So :func:`install` registers at once
when Keras is already loaded, and otherwise puts a finder on ``sys.meta_path`` that
imports :data:`MODULES` right after Keras has finished loading::

    import kvision
    import keras                                   # kvision's objects register here
    keras.saving.load_model("unet.keras", safe_mode=True)

Keras is often loaded from inside another import: ``import tensorflow`` loads it
midway through its own ``__init__``, and ``import kvision.layers`` loads it before
``kvision.layers`` is complete. Registering there would import kvision's modules
against a half-made ``tensorflow`` or ``kvision.layers``, so registration waits until
the outermost of those imports (keras, tensorflow, ``kvision.*``) has finished.
"""

import importlib
import importlib.machinery
import sys
import threading
import warnings

# Every module holding a class registered with keras.saving's decorator: one list, kept
# true by tests/test_serializable.py, which scans kvision's source for the decorator.
MODULES = (
    "kvision.data.box_augment",
    "kvision.layers.atrous",
    "kvision.layers.backbone",
    "kvision.layers.detection",
    "kvision.layers.labeling",
    "kvision.layers.mask_rcnn",
    "kvision.layers.margin",
    "kvision.layers.normalization",
    "kvision.layers.overfeat",
    "kvision.layers.pose",
    "kvision.layers.preprocessing",
    "kvision.layers.proposals",
    "kvision.layers.rcnn",
    "kvision.layers.residual",
    "kvision.layers.roi",
    "kvision.layers.shuffle",
    "kvision.layers.upsampling",
    "kvision.layers.yolo",
    "kvision.losses.detection",
    "kvision.losses.embedding",
    "kvision.losses.segmentation",
    "kvision.metrics.segmentation",
    "kvision.tasks.model",
    "kvision.tasks.two_stage",
)

_FILE_LOADERS = (importlib.machinery.SourceFileLoader,
                 importlib.machinery.SourcelessFileLoader)
_WATCHED = ("keras", "tensorflow")  # top-level packages whose loading is waited for
_local = threading.local()  # per thread: how many watched imports are under way
_registered = False


def register():
    """Import every module of :data:`MODULES` (once): their classes register."""
    global _registered
    if _registered:
        return
    _registered = True
    try:
        for name in MODULES:
            importlib.import_module(name)
    finally:
        _uninstall()  # once is enough: later imports go by untouched


def install():
    """Register now if Keras is loaded, else when it finishes loading (see above)."""
    if _keras_loaded():
        register()
    elif not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())


def _keras_loaded():
    keras = sys.modules.get("keras")
    return keras is not None and not getattr(keras.__spec__, "_initializing", False)


def _uninstall():
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _Finder)]


def _watched(fullname):
    return fullname in _WATCHED or fullname.startswith("kvision.")


class _Finder:
    """Finds nothing itself: it asks the finders after it and wraps the loader of a
    watched module so that the end of the outermost watched import can register."""

    def find_spec(self, fullname, path=None, target=None):
        if _registered or not _watched(fullname):
            return None
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            if finder is self or find is None:
                continue
            spec = find(fullname, path, target)
            if spec is not None:
                _wrap(spec.loader)
                return spec
        return None


def _wrap(loader):
    """Wrap ``loader.exec_module`` on this loader object only, so ``__loader__`` keeps
    its type and its methods. Only a source loader: it is one object per module (a
    builtin or frozen module's loader is a class shared by all)."""
    if not isinstance(loader, _FILE_LOADERS) or \
            getattr(loader.exec_module, "_kvision_wrapped", False):
        return
    exec_module = loader.exec_module

    def wrapped(module):
        _local.depth = getattr(_local, "depth", 0) + 1
        try:
            exec_module(module)
        finally:
            _local.depth -= 1
        if _local.depth == 0 and "keras" in sys.modules:  # all watched imports done
            _register_quietly()

    wrapped._kvision_wrapped = True
    loader.exec_module = wrapped


def _register_quietly():
    """Register from inside someone's ``import``: an error here must not make their
    ``import keras`` fail, so it becomes a warning that says what will not load."""
    try:
        register()
    except Exception as error:  # noqa: BLE001  (any failure: warn, never break keras)
        warnings.warn(f"kvision could not register its Keras layers, losses and metrics "
                      f"({type(error).__name__}: {error}); loading a model kvision saved "
                      f"may fail with 'Could not locate class'.", RuntimeWarning,
                      stacklevel=2)
