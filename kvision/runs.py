"""Run folders: which folder a training run writes into, and what it left there.

A run folder holds one run's files and nothing else. Its manifest (``run.json``)
is written when the run starts, with the settings that decide what the backup can
be restored into (network, input size, data, classes, seed…), and its ``state``
moves ``training`` -> ``saving`` (``fit`` ended) -> ``finished`` (the model, its
class names and its export are written: the manifest is the last file written).

Given a requested folder, :func:`choose` answers where the run goes:

- an empty or missing folder: a new run there;
- an unfinished run (state ``training``) of the same settings: it resumes there;
- anything else (a finished run, one of other settings, one whose saving was cut
  short, files that are not a run) is never written into: the run goes to the
  first of ``FOLDER-2``, ``FOLDER-3`` … that is free or holds a resumable run of
  these settings (ultralytics' ``exp2``); with ``overwrite`` the folder is replaced
  as a whole instead, if it is a run folder.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import shutil
import tempfile

from kvision._files import write_text_atomically

MANIFEST = "run.json"
# Files of a run written before manifests existed: a folder holding one of these
# is a run folder, which ``overwrite`` may replace.
RUN_FILES = ("training_log.csv", "class_names.txt", "backup", "checkpoints")


@dataclasses.dataclass(frozen=True)
class RunFolder:
    """Where a run writes. ``action``: "new", "resume" or "replace"; ``note``:
    why the requested folder was not used (empty when it was)."""

    path: str
    action: str
    note: str = ""


def read_manifest(path):
    """The manifest of the run folder ``path`` as a dict, or None."""
    try:
        with open(os.path.join(path, MANIFEST)) as f:
            return json.load(f)
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
        return None


def _differences(old, new):
    """The settings that differ, as "key X there, Y now" phrases."""
    def short(value):
        text = repr(value)
        return text if len(text) <= 60 else text[:57] + "..."

    return [f"{key} {short(old.get(key))} there, {short(new.get(key))} now"
            for key in sorted(set(old) | set(new)) if old.get(key) != new.get(key)]


def _status(path, settings):
    """``(status, reason)``: status "free", "resume", "run" (a run folder that is
    not resumable with these settings) or "other" (files that are not a run)."""
    if os.path.isfile(path):
        raise ValueError(f"The run folder {path!r} is a file; expected a folder (or a "
                         f"path that does not exist yet).")
    if not os.path.isdir(path) or not os.listdir(path):
        return "free", ""
    manifest = read_manifest(path)
    if manifest is None:
        if any(os.path.exists(os.path.join(path, name)) for name in RUN_FILES):
            return "run", "holds a run from an older kvision (no run.json)"
        return "other", f"holds files that are not a kvision run (no {MANIFEST})"
    state = manifest.get("state")
    if state == "finished":
        return "run", "holds a finished run"
    if state == "saving":
        return "run", "holds a run whose training ended but whose saving was cut short"
    differences = _differences(manifest.get("settings", {}), _jsonable(settings))
    if differences:
        return "run", ("holds an unfinished run of other settings ("
                       + "; ".join(differences)
                       + "); it stays resumable by its own command")
    return "resume", ""


def choose(requested, settings, *, overwrite=False):
    """The :class:`RunFolder` for a run of ``settings`` asked to write in ``requested``
    (the module docstring gives the rules)."""
    requested = os.path.normpath(os.fspath(requested))
    status, reason = _status(requested, settings)
    if status in ("free", "resume"):
        return RunFolder(requested, "new" if status == "free" else "resume")
    if overwrite:
        if status == "other":
            raise ValueError(f"{requested!r} {reason}: overwrite replaces only run "
                             f"folders; choose another output folder.")
        return RunFolder(requested, "replace", f"{requested} {reason}; replacing it")
    number = 2
    while True:
        candidate = f"{requested}-{number}"
        found, _ = _status(candidate, settings)
        if found in ("free", "resume"):
            note = (f"{requested} {reason}, so this run writes to {candidate}"
                    + (" (resuming the unfinished run there)" if found == "resume" else "")
                    + "; pass --overwrite (overwrite=True) to replace it instead")
            return RunFolder(candidate, "new" if found == "free" else "resume", note)
        number += 1


def start(folder, settings):
    """Make ``folder`` ready for the run: a replaced folder goes as a whole (moved
    aside in one rename, then deleted), and a new run's manifest is written."""
    if folder.action == "resume":
        return
    if folder.action == "replace":
        parent = os.path.dirname(os.path.abspath(folder.path))
        aside = tempfile.mkdtemp(prefix=f".{os.path.basename(folder.path)}.replaced-",
                                 dir=parent)
        os.rename(folder.path, os.path.join(aside, "old"))
        shutil.rmtree(aside)
    os.makedirs(folder.path, exist_ok=True)
    _write_manifest(folder.path, {"state": "training", "settings": _jsonable(settings),
                                  "started": _now()})


def mark(path, state):
    """Set the run's ``state`` ("saving", "finished") in its manifest."""
    manifest = read_manifest(path)
    if manifest is None:
        return
    manifest["state"] = state
    manifest[state] = _now()
    _write_manifest(path, manifest)


def _write_manifest(path, manifest):
    """Through a temporary file and a rename, so a kill leaves the old or the new."""
    write_text_atomically(os.path.join(path, MANIFEST), json.dumps(manifest, indent=1))


def _jsonable(settings):
    """``settings`` as JSON gives it back (tuples become lists), so they compare."""
    return json.loads(json.dumps(settings))


def _now():
    return datetime.datetime.now().isoformat(timespec="seconds")
