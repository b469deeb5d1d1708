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

import contextlib
import dataclasses
import datetime
import fcntl
import json
import os
import re
import shutil
import tempfile

from kvision._files import write_text_atomically

MANIFEST = "run.json"
LOCK = "run.lock"
BACKUP = "backup"
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
    if not os.path.isdir(path) or not [n for n in os.listdir(path) if n != LOCK]:
        return "free", ""
    manifest = read_manifest(path)
    if manifest is None:
        if any(os.path.exists(os.path.join(path, name)) for name in RUN_FILES):
            return "run", "holds a run from an older kvision (no run.json)"
        return "other", f"holds files that are not a kvision run (no {MANIFEST})"
    state = manifest.get("state")
    if state == "finished":
        return "run", "holds a finished run"
    if state == "saving" and not os.path.isdir(os.path.join(path, BACKUP)):
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
    """Make ``folder`` ready for the run, which holds its lock (:func:`lock`): a
    replaced folder goes as a whole (moved aside in one rename, then deleted) and is
    locked again, a new run's manifest is written, and a resumed run's leftovers of a
    kill (hidden temporary files, :func:`leftovers`) are removed."""
    if folder.action == "resume":
        for path in leftovers(folder.path):
            _remove(path)
        return
    if folder.action == "replace":
        parent = os.path.dirname(os.path.abspath(folder.path))
        aside = tempfile.mkdtemp(prefix=f".{os.path.basename(folder.path)}.replaced-",
                                 dir=parent)
        os.rename(folder.path, os.path.join(aside, "old"))
        release(folder.path)
        shutil.rmtree(aside)
        lock(folder.path)
    os.makedirs(folder.path, exist_ok=True)
    _write_manifest(folder.path, {"state": "training", "settings": _jsonable(settings),
                                  "started": _now()})


# What a killed run can leave in its folder: kvision's temporary files and folders are
# hidden (".run.json-…", ".tmp-1-…" of a SavedModel, ".last.keras-…" of a
# checkpoint); kvision.saving stages a .keras file in a "tmp…" folder.
_LEFTOVER = re.compile(r"\..+-.+|tmp[a-z0-9_]{8}")


def leftovers(path):
    """The temporary files and folders a killed run left in the run folder ``path``
    (and its ``checkpoints/``): only its lock holder may remove them."""
    found = []
    for folder in (path, os.path.join(path, "checkpoints")):
        if os.path.isdir(folder):
            found += [os.path.join(folder, name) for name in sorted(os.listdir(folder))
                      if _LEFTOVER.fullmatch(name)]
    return found


def _remove(path):
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            os.remove(path)


class RunFolderBusy(ValueError):
    """Another live process holds the run folder's lock."""


_held = {}  # real path of a run folder -> the open lock file this process holds


def lock(path):
    """Hold the run folder ``path`` (created if missing) for this process: an
    exclusive ``flock`` on ``path/run.lock``, which names our pid. The kernel drops
    it when the process dies, so a killed run's lock is taken over. Raises
    :class:`RunFolderBusy` (a ``ValueError``) naming the holder when another live
    process holds it; a folder this process holds already is held again."""
    key = os.path.realpath(path)
    if key in _held:
        return
    os.makedirs(path, exist_ok=True)
    lock_path = os.path.join(path, LOCK)
    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise RunFolderBusy(
                f"The run folder {path!r} is in use by another kvision train ({holder}); "
                f"wait for it to end, or give another --out.") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(lock_path).st_ino
        except FileNotFoundError:
            same = False
        if same:  # not a file its last holder removed as we opened it
            break
        os.close(fd)
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps({"pid": os.getpid(), "since": _now()}).encode())
    _held[key] = fd


def release(path):
    """Let go of the lock :func:`lock` took on ``path`` (its file is removed first,
    while still held); nothing if this process does not hold it."""
    fd = _held.pop(os.path.realpath(path), None)
    if fd is None:
        return
    with contextlib.suppress(OSError):
        os.remove(os.path.join(path, LOCK))
    os.close(fd)


def _holder(fd):
    """"pid N, since T" from a held lock file, as far as it can be read."""
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        holder = json.loads(os.read(fd, 4096) or b"{}")
        return f"pid {holder['pid']}, since {holder['since']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that has not written its pid yet"


def mark(path, state):
    """Set the run's ``state`` ("saving", "finished") in its manifest. A finished
    run's backup goes (it could only resume a run that is complete) and its lock is
    released."""
    manifest = read_manifest(path)
    if manifest is None:
        return
    manifest["state"] = state
    manifest[state] = _now()
    _write_manifest(path, manifest)
    if state == "finished":
        shutil.rmtree(os.path.join(path, BACKUP), ignore_errors=True)
        release(path)


def _write_manifest(path, manifest):
    """Through a temporary file and a rename, so a kill leaves the old or the new."""
    write_text_atomically(os.path.join(path, MANIFEST), json.dumps(manifest, indent=1))


def _jsonable(settings):
    """``settings`` as JSON gives it back (tuples become lists), so they compare."""
    return json.loads(json.dumps(settings))


def _now():
    return datetime.datetime.now().isoformat(timespec="seconds")
