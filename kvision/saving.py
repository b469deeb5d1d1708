"""Saving what kvision trains: a ``.keras`` file that carries its class names.

A ``.keras`` file is a zip of ``config.json``, ``model.weights.h5`` and
``metadata.json``, the last holding Keras' version and the date, which Keras' loader
does not read. :func:`save_model` adds ``"kvision": {"class_names": [...]}`` to that
metadata, so a model's names travel with the file itself: ``kvision predict`` on a
copied ``.keras`` file still says "background" and "3", not "0" and "4". The file
stays a plain Keras file (same three members, so loading extracts nothing more) and
loads with ``keras.saving.load_model`` as before. ``class_names.txt`` beside a run's
model remains the readable copy, and the names of models saved without them.

:func:`load_keras` is how kvision opens a ``.keras`` file it is given (``predict``,
``evaluate``, ``export``, ``train`` from a trained model, ``load_trained``): the
archive is read first (:func:`check_keras_file`) and refused, with the member it
objects to named, when an entry's name would land outside an extraction folder
(``../``, an absolute path, a drive), when it holds a ``Lambda`` layer or a
serialized Python function (code that would run at load time), or when its
``config.json`` is not one; then Keras loads it with ``safe_mode=True``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import zipfile

METADATA = "metadata.json"
CONFIG = "config.json"
KEY = "kvision"
MAX_CONFIG_BYTES = 64 << 20   # a model's config.json is kilobytes; a bomb is not read
CODE_CLASSES = ("Lambda", "__lambda__")   # a Lambda layer, a serialized Python function


def load_keras(path, compile=False):
    """A ``.keras`` file as a Keras model, after :func:`check_keras_file` found
    nothing hostile in it; loaded with ``safe_mode=True``."""
    import keras

    check_keras_file(path)
    return keras.saving.load_model(os.fspath(path), safe_mode=True, compile=compile)


def check_keras_file(path):
    """Refuse (``ValueError``, one line naming the file and the problem) a ``.keras``
    file that is not a zip archive with a ``config.json``, that has an entry whose
    name escapes the folder it would be extracted to, or whose config holds a
    ``Lambda`` layer or a serialized Python function. Nothing is extracted."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No .keras file at {path!r}.")
    try:
        with zipfile.ZipFile(path) as archive:
            for name in archive.namelist():
                if _escapes(name):
                    raise ValueError(f"Refusing {path!r}: its archive entry {name!r} "
                                     f"would be written outside the folder it is "
                                     f"extracted to.")
            try:
                info = archive.getinfo(CONFIG)
            except KeyError:
                raise ValueError(f"{path!r} is not a Keras model file: its archive has "
                                 f"no {CONFIG}.") from None
            if info.file_size > MAX_CONFIG_BYTES:
                raise ValueError(f"Refusing {path!r}: its {CONFIG} says it is "
                                 f"{info.file_size:,} bytes, more than "
                                 f"{MAX_CONFIG_BYTES:,}.")
            config = json.loads(archive.read(info))
    except zipfile.BadZipFile:
        raise ValueError(f"{path!r} is not a Keras model file (not a zip archive); "
                         f"expected a .keras file written by model.save.") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path!r} is not a Keras model file: its {CONFIG} is not "
                         f"JSON ({error}).") from None
    code = _code_in(config)
    if code is not None:
        raise ValueError(f"Refusing {path!r}: it holds {code}, Python code that would "
                         f"run when it loads (kvision models use registered layers, "
                         f"never Lambda).")


def _escapes(name):
    """Whether a zip entry's ``name`` points outside the folder it is extracted to:
    an absolute path, a drive, or a ``..`` part (either slash)."""
    parts = re.split(r"[\\/]", name)
    return (name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name) is not None
            or ".." in parts)


def _code_in(config):
    """A description of the first ``Lambda`` layer or serialized function in a
    Keras config (nested dicts and lists), or None."""
    stack = [config]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if item.get("class_name") in CODE_CLASSES:
                name = (item.get("config") or {}).get("name") \
                    if isinstance(item.get("config"), dict) else None
                what = "a Lambda layer" if item["class_name"] == "Lambda" \
                    else "a serialized Python function"
                return what + (f" ({name!r})" if name else "")
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return None


def save_model(model, path, class_names=None):
    """``model.save(path)``, with ``class_names`` (one name per class) in its metadata.

    Written to a temporary file beside ``path`` and renamed over it at the end, so an
    interrupted save leaves the previous file, never half a file. Returns ``path``.
    """
    path = os.fspath(path)
    if not path.endswith(".keras"):
        raise ValueError(f"Expected a path ending in .keras, got {path!r}.")
    names = _checked_names(class_names)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        staged = os.path.join(tmp, os.path.basename(path))
        model.save(staged)
        if names is not None:
            staged = _with_metadata(staged, {"class_names": names})
        os.replace(staged, path)
    return path


def saved_class_names(path):
    """The class names :func:`save_model` wrote into the ``.keras`` file at ``path``;
    None for a file saved without them (or not a ``.keras`` zip)."""
    try:
        with zipfile.ZipFile(path) as archive:
            metadata = json.loads(archive.read(METADATA))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None
    if not isinstance(metadata, dict) or not isinstance(metadata.get(KEY), dict):
        return None
    names = metadata[KEY].get("class_names")
    return tuple(str(n) for n in names) if isinstance(names, list) else None


def _checked_names(class_names):
    """``class_names`` as a list of one-line strings, or None."""
    if class_names is None:
        return None
    if isinstance(class_names, str):
        raise ValueError(f"class_names must be a list of names, got the string "
                         f"{class_names!r}.")
    names = [str(n) for n in class_names]
    bad = [n for n in names if not n.strip() or "\n" in n]
    if bad:  # class_names.txt holds one name a line: these could not round-trip
        raise ValueError(f"Class names must be non-empty single lines, got {bad!r}.")
    return names


def _with_metadata(path, extra):
    """A copy of the ``.keras`` zip at ``path`` whose metadata also holds ``extra``
    under ``"kvision"``; the other members are copied as they are. Returns its path."""
    out = f"{path}.meta"
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(out, "w") as target:
        metadata = {}
        for info in source.infolist():
            if info.filename == METADATA:
                metadata = json.loads(source.read(info))
                continue
            with source.open(info) as src, target.open(info, "w") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        metadata[KEY] = {**metadata.get(KEY, {}), **extra}
        target.writestr(METADATA, json.dumps(metadata, indent=1))
    return out
