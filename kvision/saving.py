"""Saving what kvision trains: a ``.keras`` file that carries its class names.

A ``.keras`` file is a zip of ``config.json``, ``model.weights.h5`` and
``metadata.json``, the last holding Keras' version and the date, which Keras' loader
does not read. :func:`save_model` adds ``"kvision": {"class_names": [...]}`` to that
metadata, so a model's names travel with the file itself: ``kvision predict`` on a
copied ``.keras`` file still says "background" and "3", not "0" and "4". The file
stays a plain Keras file (same three members, so loading extracts nothing more) and
loads with ``keras.saving.load_model`` as before. ``class_names.txt`` beside a run's
model remains the readable copy, and the names of models saved without them.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import zipfile

METADATA = "metadata.json"
KEY = "kvision"


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
