"""Issue 21, faults: a run folder is written by one process at a time (its lock is
taken over from a dead one), two exports into one folder take two versions, and a
full disk at write time is one clear line that damages nothing written before.
``benchmarks/faults.py`` kills real processes at random moments; these are the
small, deterministic cases of the same promises."""

import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
import zipfile

import keras
import pytest

from kvision import runs
from kvision.cli import main


def _digest(root):
    found = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                found[os.path.relpath(path, root)] = hashlib.sha1(f.read()).hexdigest()
    return found


def _holder(folder):
    """A process that holds ``folder``'s run lock until killed."""
    code = ("import sys, time; from kvision import runs; runs.lock(sys.argv[1]); "
            "print('held', flush=True); time.sleep(600)")
    process = subprocess.Popen([sys.executable, "-c", code, str(folder)],
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "held"
    return process


def test_a_run_folder_has_one_writer_and_a_dead_ones_lock_is_taken_over(tmp_path):
    folder = tmp_path / "run"
    other = _holder(folder)
    try:
        with pytest.raises(ValueError, match=rf"in use by another kvision train \(pid "
                                             rf"{other.pid}, since .*another --out"):
            runs.lock(folder)
        # The refused process wrote nothing: the holder's pid is still in the file.
        assert json.loads((folder / runs.LOCK).read_text())["pid"] == other.pid
    finally:
        other.send_signal(signal.SIGKILL)  # a kill: no chance to remove its lock
        other.wait()
    assert (folder / runs.LOCK).exists()
    runs.lock(folder)
    try:
        assert json.loads((folder / runs.LOCK).read_text())["pid"] == os.getpid()
        # The lock file is not a file of a run: the folder is still a free one.
        assert runs.choose(folder, {}).action == "new"
    finally:
        runs.release(folder)
    assert not (folder / runs.LOCK).exists()


def _disk_full_on(cls, name, call):
    """Make ``cls.name`` fail on its ``call``-th call as a full disk does: half a file
    written where it was asked to write, then ``OSError(ENOSPC)``."""
    original = getattr(cls, name)
    calls = []

    def patched(self, path, *args, **kwargs):
        calls.append(path)
        if len(calls) == call:
            with open(path, "wb") as f:
                f.write(b"PK\x03\x04 half")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return original(self, path, *args, **kwargs)

    return patched


def test_a_full_disk_at_a_checkpoint_keeps_the_last_good_one(tmp_path, capsys, monkeypatch):
    """The second epoch's backup finds the disk full (half a weights file written):
    one line, exit status 2; the first epoch's backup and checkpoint are whole and no
    half file is left where a reader looks (the resume from such a backup is
    tests/test_resume.py's and benchmarks/faults.py's)."""
    method = "save_weights"
    out = str(tmp_path / "run")
    command = ["train", "lenet5", "--epochs", "2", "--steps-per-epoch", "1", "--no-export",
               "--no-augment", "--out", out]
    monkeypatch.setattr(keras.Model, method, _disk_full_on(keras.Model, method, 2))
    assert main(command) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "No space left on device" in err, err
    last = os.path.join(out, "checkpoints", "last.keras")
    with zipfile.ZipFile(last) as archive:  # the first epoch's, whole
        assert archive.testzip() is None
    backup = os.path.join(out, "backup")
    metadata = json.load(open(os.path.join(backup, "training_metadata.json")))
    assert metadata["epoch"] == 1
    # No half file where a reader looks: the backup holds the named weights only.
    assert sorted(os.listdir(backup)) == [metadata["weights"], "training_metadata.json"]
    assert [n for n in os.listdir(os.path.dirname(last)) if not n.startswith(".")] == \
        ["last.keras"]
    import h5py

    with h5py.File(os.path.join(backup, metadata["weights"]), "r") as weights:
        assert len(weights.keys())  # whole: what the next start loads to resume


@pytest.fixture(scope="module")
def lenet(tmp_path_factory):
    from kvision import registry
    from kvision.saving import save_model

    path = tmp_path_factory.mktemp("model") / "lenet5.keras"
    model = registry.create("lenet5", input_shape=(32, 32, 1), classes=10)
    return str(save_model(model, path, class_names=[str(i) for i in range(10)]))


def _earlier_version(out):
    os.makedirs(out / "1" / "variables")
    (out / "1" / "saved_model.pb").write_bytes(b"an earlier version")
    (out / "1" / "variables" / "variables.index").write_bytes(b"its variables")
    return _digest(out)


def test_a_full_disk_during_an_export_changes_nothing(lenet, tmp_path, capsys, monkeypatch):
    from kvision.export import savedmodel

    out = tmp_path / "served"
    before = _earlier_version(out)

    def full(model, spec, export_path, scratch):
        os.makedirs(os.path.join(export_path, "variables"))  # half of the files
        with open(os.path.join(export_path, "saved_model.pb"), "wb") as f:
            f.write(b"\x08\x01 half a graph")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), export_path)

    monkeypatch.setattr(savedmodel, "_write", full)
    assert main(["export", lenet, "--out", str(out), "--format", "savedmodel"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "No space left on device" in err, err
    assert _digest(out) == before and sorted(os.listdir(out)) == ["1"]


def test_two_exports_at_once_take_two_versions(lenet, tmp_path, monkeypatch):
    """Another export renames its version 2 into place while this one is checking
    its own version 2: this one becomes version 3; the other's is not touched."""
    from kvision.export import command, savedmodel

    out = tmp_path / "served"
    _earlier_version(out)
    export = savedmodel.saved_model
    theirs = {}

    def racing(model, model_dir, version, **kwargs):
        result = export(model, model_dir, version, **kwargs)
        os.makedirs(out / str(version))  # the other process's, complete by now
        (out / str(version) / "saved_model.pb").write_bytes(b"the other export")
        theirs.update(_digest(out / str(version)))
        return result

    monkeypatch.setattr(savedmodel, "saved_model", racing)
    monkeypatch.setattr("kvision.export.saved_model", racing)
    results = command.export(lenet, formats=("savedmodel",), out=out)
    assert results[0].path == str(out / "3")
    assert _digest(out / "2") == theirs
    assert os.path.isfile(out / "3" / "saved_model.pb")
    assert sorted(os.listdir(out)) == ["1", "2", "3"]


def test_an_export_killed_mid_way_is_cleaned_by_the_next(lenet, tmp_path, monkeypatch):
    """What a SIGKILLed export leaves (its staging folder, a file it had set aside)
    is hidden, and the next export removes it or puts the file back."""
    from kvision.export import command

    out = tmp_path / "served"
    os.makedirs(out)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    staging = out / f".export-{dead.pid}-abc123"
    os.makedirs(staging / "served" / "2")
    aside = out / f".replaced-{dead.pid}-def456"
    os.makedirs(aside)
    (aside / "lenet5.tflite").write_bytes(b"the earlier tflite")
    live = out / f".export-{os.getpid()}-ghi789"  # an export still running: kept
    os.makedirs(live)
    notes = command.clean_leftovers(str(out))
    assert sorted(os.listdir(out)) == [live.name, "lenet5.tflite"]
    assert (out / "lenet5.tflite").read_bytes() == b"the earlier tflite"
    assert len(notes) == 3 and all(str(dead.pid) in note for note in notes)
