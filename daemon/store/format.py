"""The checkpoint store's on-disk format: the ONLY module that knows it (torch-free).

Layout of RUN_DIR/checkpoints/:
    step-000001200/{state.pt, MANIFEST.json}   committed; MANIFEST.json is written last = commit marker
    .tmp-step-000001200-<host>-<pid>-<n>/      a write in progress; never trusted, never listed
    .trash-step-000001200-<pid>-<n>/           a checkpoint being pruned; never trusted
    .lock                                      flock of the one writer; holds its pid

MANIFEST.json (canonical JSON, sorted keys): format_version, step, epoch, reason, created, metrics,
files.<name>.{size, block_size, xxh3_128_blocks}, versions, extra, and manifest_xxh3_128 (a checksum
of the rest). This module builds it (`build_manifest`), parses it (`read_manifest`) and holds the one
validity rule (`verify`: the manifest parses and every file matches it byte for byte). How a
checkpoint is written lives in commit.py, how old ones go in retention.py.
"""
from __future__ import annotations

import itertools
import json
import math
import os
import platform
import re
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

import xxhash

from .. import __version__
from ..contract.errors import TraindError
from . import hashing

CHECKPOINTS_SUBDIR = "checkpoints"
MANIFEST_NAME = "MANIFEST.json"
STATE_NAME = "state.pt"
FORMAT_VERSION = 1
BLOCKS_FIELD = f"{hashing.ALGO}_blocks"     # per-file list of block digests
REASONS = ("periodic", "emergency", "final")
STEP_DIR_RE = re.compile(r"^step-(\d{9,})$")
TMP_PREFIX = ".tmp-"
TRASH_PREFIX = ".trash-"
UNUSABLE_PREFIX = ".unusable-"   # set aside: verifies, but the job could not load it; kept for a human
LOCK_NAME = ".lock"
# A sharded checkpoint (one written by every rank of a group) holds, instead of state.pt, torch
# DCP's files (.metadata and each rank's __R_I.distcp) and each rank's own small state (RNG, data
# position: rank-00003.pt), all in the one manifest, whose extra.sharded says so. One manifest for
# every rank's files: a shard missing or corrupt makes the whole checkpoint invalid, for every rank.
SHARDED_FIELD = "sharded"           # extra.sharded = {"world_size": N, "engine": "torch.distributed.checkpoint"}
DCP_METADATA_NAME = ".metadata"


def rank_state_name(rank: int) -> str:
    return f"rank-{int(rank):05d}.pt"


def shard_world_size(man: dict) -> int | None:
    """The number of ranks that wrote a sharded checkpoint; None for a single-process one."""
    sharded = (man.get("extra") or {}).get(SHARDED_FIELD)
    size = sharded.get("world_size") if isinstance(sharded, dict) else None
    return size if isinstance(size, int) and not isinstance(size, bool) and size >= 1 else None


@dataclass
class CheckpointInfo:
    path: Path
    step: int | None = None
    epoch: int | None = None
    reason: str | None = None
    created: float | None = None
    metrics: dict = field(default_factory=dict)
    size: int = 0
    valid: bool = False
    error: str | None = None
    ranks: int | None = None      # a sharded checkpoint: how many ranks wrote it (None: one process)

    def to_json(self) -> dict:
        return {"path": str(self.path), "step": self.step, "epoch": self.epoch,
                "reason": self.reason, "created": self.created, "metrics": self.metrics,
                "size": self.size, "valid": self.valid, "error": self.error, "ranks": self.ranks}


def step_dir_name(step: int) -> str:
    return f"step-{int(step):09d}"


def checkpoints_dir(path) -> Path:
    """A run dir or a checkpoints dir -> the checkpoints dir."""
    path = Path(path)
    if path.name == CHECKPOINTS_SUBDIR or (path / LOCK_NAME).exists():
        return path
    if (path / CHECKPOINTS_SUBDIR).is_dir():
        return path / CHECKPOINTS_SUBDIR
    if path.is_dir() and any(STEP_DIR_RE.match(p.name) for p in path.iterdir()):
        return path
    return path / CHECKPOINTS_SUBDIR


# --- the manifest --------------------------------------------------------------------------------

MANIFEST_CHECKSUM_FIELD = "manifest_xxh3_128"


def _canonical(manifest: dict) -> bytes:
    return json.dumps(manifest, indent=1, sort_keys=True, ensure_ascii=True, allow_nan=False).encode() + b"\n"


def _canonical_hash(manifest: dict) -> str:
    body = {k: v for k, v in manifest.items() if k != MANIFEST_CHECKSUM_FIELD}
    try:
        return xxhash.xxh3_128_hexdigest(_canonical(body))
    except ValueError:     # NaN/inf cannot be canonical JSON
        return ""


def _int_or_none(value) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def read_manifest(ckpt_path: Path) -> tuple[dict | None, str | None]:
    """(manifest, None) or (None, why it is unusable). Structure only; files are not read."""
    mpath = ckpt_path / MANIFEST_NAME
    try:
        raw = mpath.read_bytes()
    except FileNotFoundError:
        return None, f"{mpath}: missing manifest (never committed)"
    except OSError as err:
        return None, f"{mpath}: unreadable: {err.strerror or err}"
    return parse_manifest(raw, mpath)


def parse_manifest(raw: bytes, mpath) -> tuple[dict | None, str | None]:
    """The one manifest rule, on bytes from anywhere (a local file, an object store); errors name
    `mpath`."""
    try:
        man = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as err:
        return None, f"{mpath}: malformed JSON: {err}"
    if not isinstance(man, dict):
        return None, f"{mpath}: not a JSON object"
    # Every byte is covered: the checksum covers the content and the canonical form the layout.
    claimed = man.pop(MANIFEST_CHECKSUM_FIELD, None)
    if not isinstance(claimed, str) or not claimed or claimed != _canonical_hash(man):
        return None, f"{mpath}: field '{MANIFEST_CHECKSUM_FIELD}': mismatch (manifest corrupted or edited)"
    man[MANIFEST_CHECKSUM_FIELD] = claimed
    if _canonical(man) != raw:
        return None, f"{mpath}: not in canonical form (manifest corrupted or edited)"
    if man.get("format_version") != FORMAT_VERSION:
        return None, f"{mpath}: field 'format_version': {man.get('format_version')!r}, expected {FORMAT_VERSION}"
    files = man.get("files")
    if not isinstance(files, dict) or not files:
        return None, f"{mpath}: field 'files': missing or empty"
    for name, entry in files.items():
        if (not isinstance(entry, dict) or _int_or_none(entry.get("size")) is None
                or _int_or_none(entry.get("block_size")) is None or entry["block_size"] < 4096
                or not isinstance(entry.get(BLOCKS_FIELD), list)
                or len(entry[BLOCKS_FIELD]) != hashing.block_count(entry["size"], entry["block_size"])
                or "/" in name or name in ("", ".", "..", MANIFEST_NAME)):
            return None, f"{mpath}: field 'files.{name}': malformed entry"
    if _int_or_none(man.get("step")) is None:
        return None, f"{mpath}: field 'step': missing or not an integer"
    return man, None


def build_manifest(step: int, epoch, reason: str, metrics: dict | None, files: dict,
                   extra: dict | None) -> tuple[dict, bytes]:
    """A new manifest (with its own checksum) for these files, and its canonical bytes."""
    if reason not in REASONS:
        raise ValueError(f"reason must be one of {REASONS}, not {reason!r}")
    manifest = {
        "format_version": FORMAT_VERSION, "step": int(step), "epoch": _json_safe(epoch), "reason": reason,
        "created": time.time(), "metrics": _json_safe(metrics or {}), "files": files,
        "versions": {"traind": __version__, "python": platform.python_version(),
                     **((extra or {}).get("versions") or {})},
        "extra": _json_safe({k: v for k, v in (extra or {}).items() if k != "versions"}),
    }
    manifest[MANIFEST_CHECKSUM_FIELD] = _canonical_hash(manifest)
    return manifest, _canonical(manifest)


def file_entry(size: int, digests: list[str], block_size: int | None = None) -> dict:
    """One file's manifest entry."""
    return {"size": int(size), "block_size": int(block_size or hashing.BLOCK_SIZE), BLOCKS_FIELD: list(digests)}


def info_from_manifest(ckpt_path: Path, man: dict) -> CheckpointInfo:
    metrics = man.get("metrics")
    created = man.get("created")
    return CheckpointInfo(
        path=ckpt_path, step=man["step"], epoch=_int_or_none(man.get("epoch")),
        reason=man.get("reason") if isinstance(man.get("reason"), str) else None,
        created=float(created) if isinstance(created, (int, float)) else None,
        metrics=metrics if isinstance(metrics, dict) else {},
        size=sum(e["size"] for e in man["files"].values()), valid=True, ranks=shard_world_size(man))


def verify(path, *, deep: bool = True, every_file: bool = False, only=None) -> CheckpointInfo:
    """Parse the manifest and check each file's size and (deep) xxh3 checksum. Stops at the first
    bad file, unless every_file (`traind ckpt verify`): then .error names each bad file ("; ").
    `only`: check just these file names (the ranks of a group verify a sharded one in parallel)."""
    ckpt_path = Path(path)
    info = CheckpointInfo(path=ckpt_path)
    m = STEP_DIR_RE.match(ckpt_path.name)
    if m:
        info.step = int(m.group(1))
    if not ckpt_path.is_dir():
        info.error = f"{ckpt_path}: not a checkpoint directory"
        return info
    man, err = read_manifest(ckpt_path)
    if man is None:
        info.error = err
        return info
    info = info_from_manifest(ckpt_path, man)
    if m and int(m.group(1)) != info.step:
        return _invalid(info, f"{ckpt_path / MANIFEST_NAME}: field 'step': {info.step} does not match the directory name")
    problems = []
    for name, entry in sorted(man["files"].items()):
        if only is not None and name not in only:
            continue
        problem = _file_problem(ckpt_path / name, entry, deep)
        if problem is not None:
            problems.append(problem)
            if not every_file:
                break
    return _invalid(info, "; ".join(problems)) if problems else info


def _file_problem(fpath: Path, entry: dict, deep: bool) -> str | None:
    """What is wrong with one file of a checkpoint, or None."""
    try:
        actual = fpath.stat().st_size
    except FileNotFoundError:
        return f"{fpath}: missing file"
    except OSError as err:
        return f"{fpath}: unreadable: {err.strerror or err}"
    if actual != entry["size"]:
        return f"{fpath}: size {actual}, manifest says {entry['size']} (truncated or extended)"
    if deep:
        try:
            _, digests = hashing.hash_blocks(fpath, entry["block_size"])
        except OSError as err:
            return f"{fpath}: unreadable: {err.strerror or err}"
        bad = [i for i, (got, want) in enumerate(zip(digests, entry[BLOCKS_FIELD])) if got != want]
        if bad or len(digests) != len(entry[BLOCKS_FIELD]):
            i = bad[0] if bad else 0
            bs = entry["block_size"]
            return (f"{fpath}: checksum mismatch (corrupted) in {len(bad)} block(s), "
                    f"first at bytes {i * bs}-{min(actual, (i + 1) * bs)}")
    return None


def _invalid(info: CheckpointInfo, error: str) -> CheckpointInfo:
    info.valid = False
    info.error = error
    return info


def _step_dirs(ckpt_dir: Path) -> list[tuple[int, Path]]:
    try:
        entries = list(os.scandir(ckpt_dir))
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as err:
        raise TraindError(f"{ckpt_dir}: cannot list checkpoints: {err.strerror or err}") from None
    found = []
    for entry in entries:
        m = STEP_DIR_RE.match(entry.name)
        if m and entry.is_dir(follow_symlinks=False):
            found.append((int(m.group(1)), Path(entry.path)))
    found.sort(key=lambda sp: sp[0], reverse=True)
    return found


def step_numbers(ckpt_dir) -> list[int]:
    """The steps of the step dirs there, newest first, from their names alone (nothing verified)."""
    return [step for step, _ in _step_dirs(checkpoints_dir(ckpt_dir))]


def list_checkpoints(ckpt_dir, *, deep: bool = True, every_file: bool = False) -> list[CheckpointInfo]:
    """Every committed-looking checkpoint, newest (highest step) first, each verified."""
    return [verify(p, deep=deep, every_file=every_file) for _, p in _step_dirs(checkpoints_dir(ckpt_dir))]


def latest_valid(ckpt_dir) -> tuple[CheckpointInfo | None, list[CheckpointInfo]]:
    """(newest checkpoint that verifies, the newer ones skipped with their .error).

    Skips are values, not log lines: each caller reports them its own way (the supervisor's log,
    `traind status`, `ckpt inspect`, the job's console), once."""
    skipped: list[CheckpointInfo] = []
    for _, p in _step_dirs(checkpoints_dir(ckpt_dir)):
        info = verify(p)
        if info.valid:
            return info, skipped
        skipped.append(info)
    return None, skipped


def _json_safe(obj):
    """Metrics may hold numpy/torch scalars; keep what JSON can carry, stringify the rest."""
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)     # "nan", "inf": canonical JSON has no NaN
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if hasattr(obj, "item"):
        try:
            return _json_safe(obj.item())
        except (TypeError, ValueError):
            pass
    return str(obj)



# --- names of work in progress ----------------------------------------------------------------------

_tmp_counter = itertools.count(1)     # next() is atomic under the GIL: safe across threads


def host_tag() -> str:
    """This host's name as it appears in temp dir names (no '-', so names split cleanly)."""
    return re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname())[:40] or "host"


def tmp_dir_name(step: int) -> str:
    return f"{TMP_PREFIX}{step_dir_name(step)}-{host_tag()}-{os.getpid()}-{next(_tmp_counter)}"


def tmp_dir_owner(name: str) -> tuple[str, int] | None:
    """'.tmp-step-000000012-host-123-4' -> ('host', 123); None when the name is not ours."""
    parts = name.split("-")
    if not name.startswith(TMP_PREFIX) or len(parts) != 6 or not parts[4].isdigit():
        return None
    return parts[3], int(parts[4])


def trash_dir_name(step_dir: str) -> str:
    return f"{TRASH_PREFIX}{step_dir}-{os.getpid()}-{time.monotonic_ns()}"


def unusable_dir_name(step_dir: str) -> str:
    return f"{UNUSABLE_PREFIX}{step_dir}-{time.time_ns()}"
