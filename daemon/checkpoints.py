"""The checkpoint store's on-disk format: the ONLY module that knows it (torch-free).

Layout of RUN_DIR/checkpoints/:
    step-000001200/{state.pt, MANIFEST.json}   committed; MANIFEST.json is written last = commit marker
    .tmp-step-000001200-<host>-<pid>-<n>/      a write in progress; never trusted, never listed
    .trash-step-000001200-<pid>-<n>/           a checkpoint being pruned; never trusted
    .lock                                      flock of the one writer; holds its pid

Commit protocol (PendingCheckpoint): write + fsync every file in the temp dir -> write + fsync the
manifest (sizes + xxh3-128 checksums of every 16 MiB block of every file) -> fsync the temp dir -> rename it to
step-N -> fsync the checkpoints dir. A kill at any point leaves either the previous set of
committed checkpoints or that set plus the complete new one. Discovery (verify/latest_valid) trusts
only step-N dirs whose manifest parses and whose files match it byte for byte.
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
from typing import Callable

import xxhash

from daemon import __version__
from daemon import ckpt_hash
from daemon.ckpt_hash import HashingWriter
from daemon.ckpt_fs import (ExclusiveFileLock, fsync_dir, fsync_file, make_dirs_durable, remove_tree,
                            swap_into_place, write_all)
from daemon.errors import TraindError

__all__ = [
    "CHECKPOINTS_SUBDIR", "MANIFEST_NAME", "FORMAT_VERSION", "STATE_NAME", "CheckpointInfo",
    "checkpoints_dir", "verify", "list_checkpoints", "latest_valid", "WriterLock", "begin",
    "PendingCheckpoint", "prune", "clean_stale",
]


CHECKPOINTS_SUBDIR = "checkpoints"
MANIFEST_NAME = "MANIFEST.json"
STATE_NAME = "state.pt"
FORMAT_VERSION = 1
BLOCKS_FIELD = f"{ckpt_hash.ALGO}_blocks"     # per-file list of block digests
REASONS = ("periodic", "emergency", "final")
STEP_DIR_RE = re.compile(r"^step-(\d{9,})$")
TMP_PREFIX = ".tmp-"
TRASH_PREFIX = ".trash-"
# Free space required beyond the expected size: torch.save adds headers and 64-byte alignment.
SPACE_MARGIN_FRACTION = 0.05
SPACE_MARGIN_BYTES = 1 << 20

# Tests set this to a callable(point_name) to stop the writer at a named point of the protocol
# (e.g. SIGKILL itself). Production code never sets it.
fault_hook: Callable[[str], None] | None = None


def _reach(point: str) -> None:
    if fault_hook is not None:
        fault_hook(point)


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

    def to_json(self) -> dict:
        return {"path": str(self.path), "step": self.step, "epoch": self.epoch,
                "reason": self.reason, "created": self.created, "metrics": self.metrics,
                "size": self.size, "valid": self.valid, "error": self.error}


def step_dir_name(step: int) -> str:
    return f"step-{int(step):09d}"


def checkpoints_dir(path) -> Path:
    """A run dir or a checkpoints dir -> the checkpoints dir."""
    path = Path(path)
    if path.name == CHECKPOINTS_SUBDIR or (path / ".lock").exists():
        return path
    if (path / CHECKPOINTS_SUBDIR).is_dir():
        return path / CHECKPOINTS_SUBDIR
    if path.is_dir() and any(STEP_DIR_RE.match(p.name) for p in path.iterdir()):
        return path
    return path / CHECKPOINTS_SUBDIR


# --- reading -----------------------------------------------------------------------------------

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
                or len(entry[BLOCKS_FIELD]) != ckpt_hash.block_count(entry["size"], entry["block_size"])
                or "/" in name or name in ("", ".", "..", MANIFEST_NAME)):
            return None, f"{mpath}: field 'files.{name}': malformed entry"
    if _int_or_none(man.get("step")) is None:
        return None, f"{mpath}: field 'step': missing or not an integer"
    return man, None


def _info_from_manifest(ckpt_path: Path, man: dict) -> CheckpointInfo:
    metrics = man.get("metrics")
    created = man.get("created")
    return CheckpointInfo(
        path=ckpt_path, step=man["step"], epoch=_int_or_none(man.get("epoch")),
        reason=man.get("reason") if isinstance(man.get("reason"), str) else None,
        created=float(created) if isinstance(created, (int, float)) else None,
        metrics=metrics if isinstance(metrics, dict) else {},
        size=sum(e["size"] for e in man["files"].values()), valid=True)


def verify(path, *, deep: bool = True, every_file: bool = False) -> CheckpointInfo:
    """Parse the manifest and check each file's size and (deep) xxh3 checksum. Stops at the first
    bad file, unless every_file (`traind ckpt verify`): then .error names each bad file ("; ")."""
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
    info = _info_from_manifest(ckpt_path, man)
    if m and int(m.group(1)) != info.step:
        return _invalid(info, f"{ckpt_path / MANIFEST_NAME}: field 'step': {info.step} does not match the directory name")
    problems = []
    for name, entry in sorted(man["files"].items()):
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
            _, digests = ckpt_hash.hash_blocks(fpath, entry["block_size"])
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


# --- writing -----------------------------------------------------------------------------------

_tmp_counter = itertools.count(1)     # next() is atomic under the GIL: safe across threads


def host_tag() -> str:
    """This host's name as it appears in temp dir names (no '-', so names split cleanly)."""
    return re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname())[:40] or "host"


def _tmp_name(step: int) -> str:
    return f"{TMP_PREFIX}{step_dir_name(step)}-{host_tag()}-{os.getpid()}-{next(_tmp_counter)}"


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def check_free_space(ckpt_dir, step: int, expected_bytes: int) -> None:
    """Raise a clear TraindError, before anything is written, if the state will not fit."""
    ckpt_dir = checkpoints_dir(ckpt_dir)
    make_dirs_durable(ckpt_dir)
    need = int(expected_bytes * (1 + SPACE_MARGIN_FRACTION)) + SPACE_MARGIN_BYTES
    have = free_bytes(ckpt_dir)
    if have < need:
        raise TraindError(
            f"{ckpt_dir}: not enough free space for checkpoint step {step}: need {_mib(need)} "
            f"(state {_mib(expected_bytes)} + margin), {_mib(have)} free; existing checkpoints untouched")


def begin(ckpt_dir, step: int, expected_bytes: int) -> "PendingCheckpoint":
    """Check free space, then make the temp dir a checkpoint is written into."""
    ckpt_dir = checkpoints_dir(ckpt_dir)
    check_free_space(ckpt_dir, step, expected_bytes)
    tmp = ckpt_dir / _tmp_name(step)
    tmp.mkdir()
    _reach("begin:mkdir")
    return PendingCheckpoint(ckpt_dir, step, tmp)


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


class PendingCheckpoint:
    """A checkpoint being written: files go into .tmp_path; commit() makes it visible atomically."""

    def __init__(self, ckpt_dir: Path, step: int, tmp_path: Path):
        self.ckpt_dir = ckpt_dir
        self.step = int(step)
        self.tmp_path = tmp_path
        self._files: dict[str, dict] = {}
        self.done = False

    def file_path(self, name: str) -> Path:
        if "/" in name or name in ("", ".", "..", MANIFEST_NAME):
            raise ValueError(f"bad checkpoint file name {name!r}")
        return self.tmp_path / name

    def open_file(self, name: str) -> HashingWriter:
        """A writer that checksums while writing; pass close()'s result to record()."""
        return HashingWriter(self.file_path(name), ckpt_hash.BLOCK_SIZE, reach=_reach)

    def record(self, name: str, size: int, digests: list[str], block_size: int | None = None) -> None:
        """Register a file written (and fsynced) by the caller with its block checksums."""
        self._files[name] = {"size": int(size), "block_size": int(block_size or ckpt_hash.BLOCK_SIZE),
                             BLOCKS_FIELD: list(digests)}

    def write_bytes(self, name: str, data) -> None:
        w = self.open_file(name)
        try:
            w.write(data)
        except BaseException:
            w.discard()
            raise
        self.record(name, *w.close())

    def commit(self, step: int | None = None, epoch: int | None = None, reason: str = "periodic",
               metrics: dict | None = None, extra: dict | None = None) -> CheckpointInfo:
        step = self.step if step is None else int(step)
        if step != self.step:
            raise ValueError(f"commit step {step} differs from begin step {self.step}")
        if reason not in REASONS:
            raise ValueError(f"reason must be one of {REASONS}, not {reason!r}")
        # Files the caller wrote itself through file_path(): hash (and fsync) them now.
        for entry in sorted(os.scandir(self.tmp_path), key=lambda e: e.name):
            if entry.name not in self._files and entry.name != MANIFEST_NAME:
                fd = os.open(entry.path, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    fsync_file(fd)
                finally:
                    os.close(fd)
                self.record(entry.name, *ckpt_hash.hash_blocks(Path(entry.path)))
        _reach("commit:files-durable")
        manifest = {
            "format_version": FORMAT_VERSION, "step": step, "epoch": _json_safe(epoch), "reason": reason,
            "created": time.time(), "metrics": _json_safe(metrics or {}),
            "files": self._files,
            "versions": {"traind": __version__, "python": platform.python_version(),
                         **((extra or {}).get("versions") or {})},
            "extra": _json_safe({k: v for k, v in (extra or {}).items() if k != "versions"}),
        }
        manifest[MANIFEST_CHECKSUM_FIELD] = _canonical_hash(manifest)
        data = _canonical(manifest)
        mpath = self.tmp_path / MANIFEST_NAME
        fd = os.open(mpath, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            write_all(fd, memoryview(data))
            _reach("commit:manifest-written")
            fsync_file(fd)
        finally:
            os.close(fd)
        _reach("commit:manifest-durable")
        fsync_dir(self.tmp_path)
        _reach("commit:tmpdir-durable")
        final = self.ckpt_dir / step_dir_name(step)
        replaced = self._rename_into_place(final)
        _reach("commit:renamed")
        fsync_dir(self.ckpt_dir)
        _reach("commit:parent-durable")
        self.done = True
        if replaced is not None:
            remove_tree(replaced)
        info = _info_from_manifest(final, manifest)
        return info

    def _rename_into_place(self, final: Path) -> Path | None:
        """Rename the temp dir to step-N. If step-N already exists (a second save at the same
        step), swap the two atomically so step-N is always a complete checkpoint; the old one ends
        under a .trash- name that the caller removes. Returns that trash path or None."""
        try:
            os.rename(self.tmp_path, final)
            return None
        except OSError as err:
            if not final.exists():
                raise
            del err
        trash = self.ckpt_dir / f"{TRASH_PREFIX}{final.name}-{os.getpid()}-{time.monotonic_ns()}"
        swap_into_place(self.tmp_path, final, trash)
        return trash

    def abort(self) -> None:
        """Remove the temp dir (after a failed write); nothing was committed."""
        if not self.done and self.tmp_path.exists():
            remove_tree(self.tmp_path)
        self.done = True


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


# --- the one writer ------------------------------------------------------------------------------

class WriterLock(ExclusiveFileLock):
    """flock on CKPT_DIR/.lock. acquire() refuses a second writer, naming the holder's pid; a dead
    holder's lock is gone with its process. Once held, leftovers of dead writers are removed.
    Forked children (DataLoader workers) don't inherit it: a restart must not wait for them."""

    fork_private = True

    def __init__(self, ckpt_dir):
        self.ckpt_dir = checkpoints_dir(ckpt_dir)
        super().__init__(self.ckpt_dir / ".lock", what=f"checkpoint dir {self.ckpt_dir}")

    def acquire(self) -> "WriterLock":
        try:
            self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:   # a file named `checkpoints`, a read-only mount
            raise TraindError(f"{self.ckpt_dir}: cannot create the checkpoints dir: {err.strerror or err}") from None
        super().acquire()
        clean_stale(self.ckpt_dir)
        return self


# Retention lives in daemon/ckpt_retention.py, which builds on this module; imported at call time.

def prune(ckpt_dir, keep_last: int, keep_best: dict | None = None, protect=()) -> list[Path]:
    """Crash-safe: keep the last N + the best k; never the newest or a protected one."""
    from daemon import ckpt_retention
    return ckpt_retention.prune(ckpt_dir, keep_last, keep_best, protect)


def clean_stale(ckpt_dir) -> list[Path]:
    """Remove temp dirs of dead writers and leftover trash (call with the WriterLock held)."""
    from daemon import ckpt_retention
    return ckpt_retention.clean_stale(ckpt_dir)
