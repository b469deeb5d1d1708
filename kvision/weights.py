"""Pretrained weights: ``"imagenet"``, a local file, or ``None``.

``"imagenet"`` goes through keras.applications' own download code (the builder with
the same layout as the kvision network, ``ModelInfo.keras_application``), then moves
its weights into the kvision model. A local file is a Keras 3 ``.weights.h5`` (or a
legacy ``.h5``); before loading, its variables are compared with the model's, and a
mismatch is a ``ValueError`` naming the first variables that differ.
:func:`load_torch_checkpoint` reads a PyTorch ``.pth`` state dict as NumPy arrays
without torch (see :mod:`kvision.torch_checkpoint`); a network of torchvision's or
timm's layout (``ModelInfo.torch_layout``) takes such a file as ``weights=`` (see
:mod:`kvision.weights_torch`).
"""

from __future__ import annotations

import os
import tempfile

import keras
import numpy as np

from kvision.torch_checkpoint import load_torch_checkpoint  # noqa: F401  (public here)
from kvision.weights_torch import LAYOUTS, TORCH_EXTENSIONS, load_torch_file


def check_weights_argument(info, weights, *, include_top, classes,
                           classifier_activation):
    """Validate ``weights`` before anything is built."""
    if weights is None:
        return
    if not isinstance(weights, (str, os.PathLike)):
        raise ValueError(
            f"`weights` must be None, 'imagenet' or a path to a weights file, "
            f"got {type(weights).__name__}."
        )
    weights = os.fspath(weights)
    if weights == "imagenet":
        if not info.has_imagenet_weights:
            raise ValueError(
                f"No ImageNet weights exist for {info.name} (family {info.family!r}); "
                f"use weights=None or a path to a .weights.h5 file."
            )
        if include_top and classes != 1000:
            raise ValueError(
                f"weights='imagenet' with include_top=True needs classes=1000, "
                f"got classes={classes}."
            )
        if include_top and classifier_activation not in (None, "softmax"):
            raise ValueError(
                "weights='imagenet' with include_top=True needs classifier_activation "
                f"None or 'softmax', got {classifier_activation!r}."
            )
        return
    publisher = torch_publisher(info)
    if not os.path.isfile(weights):
        raise FileNotFoundError(
            f"Weights file not found: {weights!r} (expected 'imagenet', None or an "
            f"existing .weights.h5 file"
            + (f", or a {publisher} .pth checkpoint)." if publisher else ").")
        )
    if weights.endswith(TORCH_EXTENSIONS):
        if publisher is None:
            raise ValueError(
                f"{info.name} follows neither a torchvision nor a timm layout, so it "
                f"cannot take the PyTorch checkpoint {weights!r}; pass a Keras "
                f".weights.h5 file.")
        return
    if not weights.endswith(".h5"):
        raise ValueError(
            f"Weights file {weights!r} must be a Keras '.weights.h5' (or legacy "
            f"'.h5') file"
            + (f", or a {publisher} '.pth' checkpoint." if publisher else ".")
        )


def torch_publisher(info):
    """Whose state-dict names a network's ``.pth`` files follow ("torchvision" or
    "timm", :attr:`kvision.weights_torch.Layout.publisher`); None if it takes none."""
    return None if info.torch_layout is None else LAYOUTS[info.torch_layout].publisher


def load_into(model, weights, info, *, include_top=True, keras_kwargs=None):
    """Load ``weights`` (None, "imagenet" or a path) into ``model``."""
    if weights is None:
        return model
    weights = os.fspath(weights)
    if weights == "imagenet":
        if info.imagenet_loader is not None:
            return info.imagenet_loader(model, info, include_top)
        return load_imagenet(model, info, include_top=include_top,
                             **(keras_kwargs or {}))
    if weights.endswith(TORCH_EXTENSIONS):
        return load_torch_file(model, weights, info.torch_layout)
    return load_file(model, weights)


def cache_dir():
    """kvision's directory in the Keras cache (``$KERAS_HOME`` or ``~/.keras``)."""
    home = os.environ.get("KERAS_HOME", os.path.join(os.path.expanduser("~"), ".keras"))
    return os.path.join(home, "kvision")


def cached_weights(filename, build_reference):
    """A ``.weights.h5`` in :func:`cache_dir`, made once by ``build_reference()``.

    ``build_reference()`` returns a model holding the weights; it is saved through a
    temporary file and a rename, so an interrupted conversion leaves no cache.
    Returns the file's path.
    """
    path = os.path.join(cache_dir(), filename)
    if os.path.isfile(path):
        return path
    reference = build_reference()
    os.makedirs(cache_dir(), exist_ok=True)
    tmp = os.path.join(cache_dir(), f".{os.getpid()}-{filename}")
    try:
        reference.save_weights(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def copy_by_layer_name(source, target):
    """Every weighted layer of ``target`` takes the weights of ``source``'s layer of
    the same name (a model without top, or at another input size, from a full one)."""
    names = {layer.name: layer for layer in source.layers}
    for layer in target.layers:
        if layer.weights:
            if layer.name not in names:
                raise ValueError(f"No layer {layer.name!r} in the pretrained model.")
            layer.set_weights(names[layer.name].get_weights())
    return target


def load_imagenet(model, info, *, include_top=True, **keras_kwargs):
    """ImageNet weights from keras.applications' download path into ``model``."""
    builder = getattr(keras.applications, info.keras_application)
    shape = tuple(model.input_shape[1:])
    if None in shape[:2]:  # keras' builders take None for "any size", not (None, None, 3)
        shape = None
    try:
        reference = builder(weights="imagenet", include_top=include_top,
                            input_shape=shape, **keras_kwargs)
    except Exception as error:  # the download or the file check failed
        raise ConnectionError(
            f"Could not get ImageNet weights for {info.name} through "
            f"keras.applications.{info.keras_application} ({error}). Offline, pass "
            f"a local .weights.h5 file as `weights=`."
        ) from error
    transfer_weights(reference, model)
    return model


def transfer_weights(source, target):
    """Copy every variable of ``source`` into ``target`` (same layout), checked.

    Goes through a temporary ``.weights.h5`` file, the path a local file takes, so
    that layers with derived state (``Normalization`` recomputes its scale when it
    loads its mean and variance) end up exactly as if loaded from disk.
    """
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, f"{source.name}.weights.h5")
        source.save_weights(path)
        load_file(target, path)
    return target


def _h5_variables(path):
    """``[(path, shape)]`` of a Keras 3 ``.weights.h5`` file, in loading order."""
    import h5py

    found = []
    with h5py.File(path, "r") as f:
        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                found.append((name, tuple(obj.shape)))
        f.visititems(visit)
    return found


def check_hdf5(path):
    """``ValueError`` naming ``path`` when it is not an HDF5 file (another format
    renamed) or is one h5py cannot open (truncated, damaged)."""
    import h5py

    with open(path, "rb") as f:
        head = f.read(8)
    if not h5py.is_hdf5(path):
        raise ValueError(f"Weights file {path!r} is not an HDF5 file (it starts with "
                         f"{head!r}, not HDF5's signature); expected a Keras "
                         f"'.weights.h5' file written by model.save_weights.")
    try:
        with h5py.File(path, "r") as f:
            f.visit(lambda name: None)  # walks every group: a cut file fails here
    except (OSError, RuntimeError, KeyError, ValueError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ValueError(f"Weights file {path!r} is damaged or truncated: h5py cannot "
                         f"read it ({reason}).") from None


def load_file(model, path):
    """Load a ``.weights.h5`` (or legacy ``.h5``) file, checking shapes first: a
    file that is not HDF5, or is cut short, or whose variables differ from the
    model's is a ``ValueError`` naming the file and what is wrong."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Weights file not found: {path!r}.")
    check_hdf5(path)
    if path.endswith(".weights.h5"):
        with tempfile.TemporaryDirectory() as tmp:
            expected_path = os.path.join(tmp, "expected.weights.h5")
            model.save_weights(expected_path)
            expected = _h5_variables(expected_path)
        found = _h5_variables(path)
        problems = []
        expected_names = dict(expected)
        found_names = dict(found)
        missing = [n for n in expected_names if n not in found_names]
        extra = [n for n in found_names if n not in expected_names]
        if missing:
            problems.append(f"missing in the file: {', '.join(missing[:5])}")
        if extra:
            problems.append(f"not in the model: {', '.join(extra[:5])}")
        for name, shape in expected:
            if name in found_names and found_names[name] != shape:
                problems.append(
                    f"{name}: the model expects {shape}, the file has {found_names[name]}"
                )
                if len(problems) >= 6:
                    break
        if problems:
            raise ValueError(
                f"Weights file {path!r} does not match model {model.name!r}: "
                + "; ".join(problems)
            )
    try:
        model.load_weights(path)
    except Exception as error:
        raise ValueError(
            f"Weights file {path!r} does not match model {model.name!r}: {error}"
        ) from error
    return model


def max_abs_diff(a, b) -> float:
    """Largest absolute difference between two (lists of) arrays."""
    if isinstance(a, (list, tuple)):
        return max(max_abs_diff(x, y) for x, y in zip(a, b))
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
