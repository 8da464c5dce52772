"""Summarise a state.pt without torch and without running any code it carries.

state.pt is a zip (torch.save's format): `<archive>/data.pkl` holds the object tree, tensors are
references to `<archive>/data/<key>` records. We unpickle data.pkl with an Unpickler whose
find_class never imports anything: torch's tensor rebuild functions become stubs recording dtype
and shape, containers are the builtin ones, and every other global becomes an inert placeholder.
So `traind ckpt inspect` is fast (no torch import) and safe on a hostile file.
"""
from __future__ import annotations

import io
import math
import pickle
import pickletools
import struct
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

_SAFE_BUILTINS = {"set": set, "frozenset": frozenset, "complex": complex, "slice": slice,
                  "bytearray": bytearray, "list": list, "dict": dict, "tuple": tuple}
_ELEMENT_SIZE = {"Double": 8, "Float": 4, "Half": 2, "BFloat16": 2, "Long": 8, "Int": 4, "Short": 2,
                 "Char": 1, "Byte": 1, "Bool": 1, "ComplexFloat": 8, "ComplexDouble": 16}


_MEMO_OPS = {"PUT", "BINPUT", "LONG_BINPUT", "GET", "BINGET", "LONG_BINGET"}


@dataclass(frozen=True)
class TensorStub:
    dtype: str
    shape: tuple

    def __repr__(self) -> str:
        return f"Tensor({self.dtype}, {list(self.shape)})"

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * _ELEMENT_SIZE.get(self.dtype, 1)


class _Placeholder:
    """Stands for any global we do not model (never imported, never called for real)."""

    def __init__(self, qualname: str, args=()):
        self.qualname, self.args = qualname, args

    def __call__(self, *args, **kwargs):
        return _Placeholder(self.qualname, args)

    def __setstate__(self, state):
        self.state = state

    def __repr__(self) -> str:
        return f"<{self.qualname}>"


class _StorageType(str):
    @property
    def dtype(self) -> str:
        return self[:-len("Storage")] if self.endswith("Storage") else self


def _rebuild_tensor(storage, offset, size, *rest):
    dtype = storage[0].dtype if isinstance(storage, tuple) and isinstance(storage[0], _StorageType) else "?"
    return TensorStub(dtype, tuple(int(n) for n in size))   # a bad shape fails the load, as a reason


def _rebuild_parameter(data, *rest):
    return data


class _InertUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if module == "collections" and name == "OrderedDict":
            return OrderedDict
        if module == "builtins" and name in _SAFE_BUILTINS:
            return _SAFE_BUILTINS[name]
        if module == "torch._utils" and name.startswith("_rebuild_tensor"):
            return _rebuild_tensor
        if module == "torch._utils" and name.startswith("_rebuild_parameter"):
            return _rebuild_parameter
        if module == "torch" and name.endswith("Storage"):
            return _StorageType(name)
        if module == "torch" and name == "Size":
            return tuple
        if module == "torch" and name not in ("device",):
            return f"torch.{name}"       # dtypes (torch.float16) as their names
        return _Placeholder(f"{module}.{name}")

    def persistent_load(self, pid):
        # ('storage', storage_type, key, location, numel)
        if isinstance(pid, tuple) and len(pid) >= 3 and pid[0] == "storage":
            return (pid[1], pid[2])
        return _Placeholder("persistent", (pid,))


@dataclass
class StateSummary:
    top_level_keys: list
    epoch: object
    global_step: object
    hyper_parameters: object
    tensor_count: int
    tensor_bytes: int
    storage_bytes: int
    lightning_version: object = None     # `pytorch-lightning_version`: Lightning's loader reads it
    traind_version: object = None


def summarize_state(path: Path) -> StateSummary:
    """Read state.pt's structure. Raises ValueError (with the reason) if it is not a torch zip."""
    try:
        with zipfile.ZipFile(path) as z:
            pkl_names = [n for n in z.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
            if len(pkl_names) != 1:
                raise ValueError("no data.pkl record (not a torch.save zip file)")
            prefix = pkl_names[0][: -len("data.pkl")]
            storage_bytes = sum(i.file_size for i in z.infolist() if i.filename.startswith(prefix + "data/"))
            raw = _read_member(path, z.getinfo(pkl_names[0]), z)
    except zipfile.BadZipFile as err:
        raise ValueError(f"not a zip file: {err}") from None
    except OSError:
        raise
    except Exception as err:   # odd zips (unsupported compression, encrypted, truncated stream)
        raise ValueError(f"unreadable zip: {type(err).__name__}: {err}") from None
    tensors: list[TensorStub] = []
    try:
        # Walk the opcodes first: a damaged length field then fails here, cheaply, instead of
        # making the unpickler allocate gigabytes for a string that is not there.
        for op, arg, _ in pickletools.genops(raw):
            if op.name in _MEMO_OPS and isinstance(arg, int) and arg > len(raw):
                raise ValueError(f"memo index {arg} out of range")   # would size the memo table
        obj = _InertUnpickler(io.BytesIO(raw)).load()
    except Exception as err:   # any malformed pickle is a reason, not a crash
        raise ValueError(f"unreadable pickle: {type(err).__name__}: {err}") from None
    _collect(obj, tensors)
    top = obj if isinstance(obj, dict) else {}
    return StateSummary(
        top_level_keys=[str(k) for k in top], epoch=top.get("epoch"),
        global_step=top.get("global_step"), hyper_parameters=jsonable(top.get("hyper_parameters")),
        tensor_count=len(tensors), tensor_bytes=sum(t.nbytes for t in tensors),
        storage_bytes=storage_bytes, lightning_version=jsonable(top.get("pytorch-lightning_version")),
        traind_version=jsonable(top.get("traind_version")))


def summarize_file(path: Path) -> dict:
    """What one checkpoint file traind did not commit holds (a Lightning .ckpt, a torch.save'd .pt):
    the same summary as for state.pt, read the same inert way. Nothing vouches for its bytes (no
    manifest), so `verified` is False; `traind ckpt import` turns it into a verified checkpoint."""
    out: dict = {"path": str(path), "verified": False, "size": path.stat().st_size,
                 "note": "no MANIFEST.json next to it: sizes and checksums not verified"}
    try:
        s = summarize_state(path)
    except (ValueError, OSError) as err:
        out["state_error"] = f"{path}: {err}"
        return out
    kind = ("Lightning checkpoint" if s.lightning_version is not None and s.traind_version is None
            else "traind checkpoint state" if s.traind_version is not None else "torch.save file")
    out.update(kind=kind, global_step=s.global_step, state_epoch=s.epoch,
               lightning_version=s.lightning_version, hyper_parameters=s.hyper_parameters,
               top_level_keys=s.top_level_keys, tensor_count=s.tensor_count,
               tensor_bytes=s.tensor_bytes, storage_bytes=s.storage_bytes)
    return out


_LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")   # zip local file header, 30 bytes


def _read_member(path: Path, info: zipfile.ZipInfo, z: zipfile.ZipFile) -> bytes:
    """A member's bytes without the zip CRC check.

    traind writes state.pt with torch's per-record crc32 turned off (the manifest's block checksums
    already cover every byte, and torch.load never reads the crc), so zipfile's CRC check would
    reject every one of our checkpoints. torch stores records uncompressed: read them raw.
    """
    if info.compress_type != zipfile.ZIP_STORED:
        return z.read(info)
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        header = f.read(_LOCAL_HEADER.size)
        if len(header) != _LOCAL_HEADER.size or header[:4] != b"PK\x03\x04":
            raise zipfile.BadZipFile(f"bad local header for {info.filename!r}")
        name_len, extra_len = _LOCAL_HEADER.unpack(header)[-2:]
        f.seek(info.header_offset + _LOCAL_HEADER.size + name_len + extra_len)
        data = f.read(info.compress_size)
    if len(data) != info.compress_size:
        raise zipfile.BadZipFile(f"{info.filename!r} is truncated")
    return data


def _collect(obj, out: list, depth: int = 0) -> None:
    if depth > 200:
        return
    if isinstance(obj, TensorStub):
        out.append(obj)
    elif isinstance(obj, dict):
        for v in obj.values():
            _collect(v, out, depth + 1)
    elif isinstance(obj, (list, tuple, set, frozenset)):
        for v in obj:
            _collect(v, out, depth + 1)


def jsonable(obj, depth: int = 0):
    if depth > 50:
        return "..."
    if isinstance(obj, dict):
        return {str(k): jsonable(v, depth + 1) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [jsonable(v, depth + 1) for v in obj]
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else str(obj)
    return repr(obj)
