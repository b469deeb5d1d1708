"""PyTorch checkpoints as NumPy arrays, without importing torch and without running code.

A ``.pth`` file is a pickle. Unpickling an arbitrary pickle runs whatever callables it
names, so it is read here with a restricted unpickler: the only globals it resolves
are those a plain tensor state dict needs (an ``OrderedDict``, the storage classes
and torch's tensor-rebuild functions, mapped to NumPy stand-ins); any other global is
a ``ValueError`` naming it, raised before anything runs.

Both container formats torch has written are read:

- the legacy format (torch < 1.6, still shipped in many weight packages): a sequence of
  pickles (magic number, protocol version, system info, the object with storages as
  persistent ids, the sorted storage keys), then each storage's raw bytes preceded by
  its element count;
- the zip format (torch >= 1.6): ``<archive>/data.pkl`` plus one raw file per storage
  under ``<archive>/data/<key>``.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import zipfile

import numpy as np

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001

_STORAGE_DTYPES = {
    "DoubleStorage": np.float64, "FloatStorage": np.float32, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


class _StorageType:
    """Stands in for ``torch.FloatStorage`` and friends: only its dtype matters."""

    def __init__(self, name):
        self.name, self.dtype = name, np.dtype(_STORAGE_DTYPES[name])


class _Storage:
    """A storage's bytes, read lazily by key, viewed as its dtype."""

    def __init__(self, dtype, key, numel, reader):
        self.dtype, self.key, self.numel, self._reader = dtype, key, numel, reader
        self._array = None

    @property
    def array(self):
        if self._array is None:
            self._array = self._reader(self.key, self.dtype, self.numel)
        return self._array


def _rebuild_tensor(storage, offset, size, stride, *args):
    """NumPy version of ``torch._utils._rebuild_tensor(_v2)``: a strided view, copied."""
    data = storage.array
    size, stride = tuple(size), tuple(stride)
    if not size:
        return np.array(data[offset], dtype=storage.dtype)
    itemsize = data.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(data[offset:], shape=size,
                                           strides=[s * itemsize for s in stride])
    return np.array(view)


def _rebuild_parameter(data, requires_grad, backward_hooks, *args):
    return data


def _ordered_dict(*args, **kwargs):
    return collections.OrderedDict(*args, **kwargs)


_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    # Tensors are rebuilt lazily: the legacy format stores their bytes after the
    # object pickle, so storages are located only once it has been read.
    ("torch._utils", "_rebuild_tensor"): lambda *args: _LazyTensor(args[0], args[1:]),
    ("torch._utils", "_rebuild_tensor_v2"): lambda *args: _LazyTensor(args[0], args[1:]),
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    **{("torch", name): _StorageType(name) for name in _STORAGE_DTYPES},
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, storage_reader):
        super().__init__(file)
        self._reader = storage_reader

    def find_class(self, module, name):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise ValueError(
                f"Refusing to load {module}.{name}: a plain tensor checkpoint needs only "
                f"OrderedDict, torch storages and torch._utils._rebuild_tensor*; this "
                f"pickle names another global, which could run code.") from None

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise ValueError(f"Unknown persistent id in the checkpoint: {pid!r}.")
        storage_type, key, _location, numel = pid[1:5]
        if not isinstance(storage_type, _StorageType):
            raise ValueError(f"Unknown storage type {storage_type!r} in the checkpoint.")
        return _Storage(storage_type.dtype, str(key), int(numel), self._reader)


def _load_zip(path):
    archive = zipfile.ZipFile(path)
    names = archive.namelist()
    pickles = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
    if not pickles:
        raise ValueError(f"{path} is a zip file but not a PyTorch checkpoint "
                         f"(no data.pkl inside).")
    prefix = pickles[0][: -len("data.pkl")]

    def read(key, dtype, numel):
        raw = archive.read(f"{prefix}data/{key}")
        return np.frombuffer(raw, dtype=dtype, count=numel)

    with archive.open(pickles[0]) as f:
        return _RestrictedUnpickler(io.BytesIO(f.read()), read).load()


def _load_legacy(path):
    with open(path, "rb") as f:
        data = f.read()
    stream = io.BytesIO(data)

    def plain():  # the small header pickles hold only ints, strings and dicts
        return _RestrictedUnpickler(stream, None).load()

    magic = plain()
    if magic != LEGACY_MAGIC:
        raise ValueError(f"{path} is not a PyTorch checkpoint (no magic number).")
    protocol = plain()
    if protocol != LEGACY_PROTOCOL:
        raise ValueError(f"{path}: unsupported legacy protocol version {protocol}.")
    plain()  # system info: endianness, type sizes
    offsets = {}

    def read(key, dtype, numel):
        start = offsets[key]
        return np.frombuffer(data, dtype=dtype, count=numel, offset=start)

    obj = _RestrictedUnpickler(stream, read).load()
    keys = plain()
    position = stream.tell()
    for key in keys:
        (count,) = struct.unpack("<q", data[position:position + 8])
        offsets[str(key)] = position + 8
        size = _storage_size(obj, str(key), count)
        position += 8 + size
    return obj


def _storage_size(obj, key, count):
    """Bytes of storage ``key``: its element count times its dtype's size."""
    for storage in _storages(obj):
        if storage.key == key:
            return count * storage.dtype.itemsize
    raise ValueError(f"Storage {key!r} is listed but no tensor uses it.")


def _storages(obj):
    """Every _Storage reachable from the unpickled object (before arrays are read)."""
    found = []

    def visit(value):
        if isinstance(value, _Storage):
            found.append(value)
        elif isinstance(value, dict):
            for v in value.values():
                visit(v)
        elif isinstance(value, (list, tuple)):
            for v in value:
                visit(v)
        elif isinstance(value, _LazyTensor):
            visit(value.storage)

    visit(obj)
    return found


class _LazyTensor:
    """A tensor whose storage bytes are not located yet (legacy files put them last)."""

    def __init__(self, storage, args):
        self.storage, self.args = storage, args

    def materialize(self):
        return _rebuild_tensor(self.storage, *self.args)


def _materialize(value):
    if isinstance(value, _LazyTensor):
        return value.materialize()
    if isinstance(value, collections.OrderedDict):
        return collections.OrderedDict((k, _materialize(v)) for k, v in value.items())
    if isinstance(value, dict):
        return {k: _materialize(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_materialize(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_materialize(v) for v in value)
    return value


def load_torch_checkpoint(path):
    """The tensors of a PyTorch checkpoint file as NumPy arrays (a dict, usually).

    Reads the legacy and the zip formats without torch; refuses (``ValueError``) any
    pickle that names a global a tensor state dict does not need. Missing file ->
    ``FileNotFoundError``; a file that is not a checkpoint -> ``ValueError``.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No checkpoint file at {path!r}.")
    try:
        obj = _load_zip(path) if zipfile.is_zipfile(path) else _load_legacy(path)
    except (pickle.UnpicklingError, EOFError, struct.error, IndexError, KeyError) as error:
        raise ValueError(f"{path} is not a readable PyTorch checkpoint "
                         f"({type(error).__name__}: {error}).") from None
    return _materialize(obj)
