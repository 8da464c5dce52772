"""The torch side of the checkpoint store: state.pt writing, non-blocking save, safe loading.

The on-disk format and its commit protocol belong to traind.store (torch-free); this module
only turns a state dict into bytes and back. A non-blocking save is two-phase (as in CheckFreq):
the caller waits only for a snapshot of every tensor into CPU buffers that are reused across saves;
a background thread serialises, checksums, fsyncs and commits. At most one save is in flight, and
its failure is raised at the next save(), flush() or close().
"""
from __future__ import annotations

import copy
import ctypes
import logging
import mmap
import os
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import torch

from traind import store as ck
from traind.store import CheckpointInfo
from traind.contract.errors import TraindError, UsageError
from traind.jobs.checkpoint_io import UnusableCheckpoint, load_checkpoint  # noqa: F401 (re-exported)
from traind.store.retention import check_retention

log = logging.getLogger("traind.store")

def tensor_bytes(obj) -> int:
    """Bytes of tensor data reachable from a nested state (what state.pt will mostly hold)."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    return 0


def write_state(pending: ck.PendingCheckpoint, state: dict) -> None:
    """torch.save into the pending checkpoint, checksumming while writing (no second read)."""
    writer = pending.open_file(ck.STATE_NAME)
    crc = torch.serialization.get_crc32_options()
    # Our block checksums cover every byte; torch's per-record crc32 would cost a second pass
    # over the data and torch.load never checks it. (Process-wide setting, restored after.)
    torch.serialization.set_crc32_options(False)
    try:
        torch.save(state, writer)
    except BaseException as err:
        writer.discard()
        if writer.error is not None and writer.error is not err:
            raise writer.error from err      # the OS error (ENOSPC, EIO), not torch's wrapper
        raise
    finally:
        torch.serialization.set_crc32_options(crc)
    pending.record(ck.STATE_NAME, *writer.close())


def _raw_copyable(buf: torch.Tensor, src: torch.Tensor) -> bool:
    """True when src's bytes are exactly what buf must hold: a plain dense CPU tensor, laid out
    contiguously, without lazy conjugate/negative bits (copy_ resolves those; memmove would not)."""
    return (type(src) in (torch.Tensor, torch.nn.Parameter) and src.device.type == "cpu"
            and src.dtype == buf.dtype and src.shape == buf.shape and src.is_contiguous()
            and buf.is_contiguous() and not src.is_conj() and not src.is_neg())


def _new_buffer(t: torch.Tensor, pin: bool) -> torch.Tensor:
    """A CPU buffer for a snapshot of t. Large host buffers come from an mmap with MAP_POPULATE:
    the kernel maps every page in one call (2x cheaper here than faulting them in one at a time
    during the first copy), which is what makes the first save's snapshot slow."""
    nbytes = t.numel() * t.element_size()
    if pin or nbytes < (1 << 20) or not hasattr(mmap, "MAP_POPULATE"):
        return torch.empty(t.shape, dtype=t.dtype, device="cpu", pin_memory=pin)
    region = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | mmap.MAP_POPULATE)
    # frombuffer keeps `region` alive as long as the tensor lives
    return torch.frombuffer(region, dtype=t.dtype, count=t.numel()).view(t.shape)


def copy_threads() -> int:
    """Threads for host snapshot copies: TRAIND_SNAPSHOT_THREADS, else up to 4 of our cores."""
    env = os.environ.get("TRAIND_SNAPSHOT_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, min(4, cores))


class _Snapshotter:
    """Copies a nested state into CPU buffers kept between saves (copy_ into a reused buffer is
    ~4x cheaper than a fresh clone: no allocation, no page faults). Pinned when CUDA is present so
    device->host copies are fast and asynchronous."""

    CHUNK = 32 << 20       # host copies are split in chunks this size over the copy threads

    def __init__(self, threads: int | None = None) -> None:
        self._buffers: dict[tuple, torch.Tensor] = {}
        self._pin = torch.cuda.is_available()
        self.threads = threads or copy_threads()
        self._pool: ThreadPoolExecutor | None = None
        self._host_copies: list[tuple[torch.Tensor, torch.Tensor]] = []

    def take(self, state):
        used: dict[tuple, torch.Tensor] = {}
        self._cuda_devices: set = set()
        self._host_copies = []
        self._same: dict[tuple, torch.Tensor] = {}
        snap = self._copy(state, (), used)
        self._same = {}
        self._buffers = used          # forget buffers of keys that went away
        self._run_host_copies()
        for device in self._cuda_devices:   # the async copies must land before the writer reads
            torch.cuda.synchronize(device)
        return snap

    def _run_host_copies(self) -> None:
        """CPU->CPU copies are memory-bandwidth bound. Contiguous ones go through libc memmove,
        which streams large copies past the cache (~1.5x faster here than copy_'s loop), split in
        chunks over a few threads (ctypes releases the GIL), so one huge tensor is not serial."""
        jobs, self._host_copies = self._host_copies, []
        raw: list[tuple[int, int, int]] = []       # (dst address, src address, bytes)
        for buf, src in jobs:
            if _raw_copyable(buf, src):
                nbytes = buf.numel() * buf.element_size()
                dst_ptr, src_ptr = buf.data_ptr(), src.data_ptr()
                raw.extend((dst_ptr + o, src_ptr + o, min(self.CHUNK, nbytes - o))
                           for o in range(0, nbytes, self.CHUNK))
            else:
                buf.copy_(src)
        if self.threads <= 1 or len(raw) < 2:
            for dst_ptr, src_ptr, n in raw:
                ctypes.memmove(dst_ptr, src_ptr, n)
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="traind-snapshot")
        for _ in self._pool.map(lambda job: ctypes.memmove(*job), raw):
            pass

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def _copy(self, obj, key, used):
        if isinstance(obj, torch.Tensor):
            return self._copy_tensor(obj, key, used)
        if isinstance(obj, OrderedDict):
            out = OrderedDict((k, self._copy(v, key + (k,), used)) for k, v in obj.items())
            if hasattr(obj, "_metadata"):   # module.state_dict() keeps per-module versions here
                out._metadata = copy.deepcopy(obj._metadata)
            return out
        if isinstance(obj, dict):
            return {k: self._copy(v, key + (k,), used) for k, v in obj.items()}
        if isinstance(obj, list):
            return [self._copy(v, key + (i,), used) for i, v in enumerate(obj)]
        if isinstance(obj, tuple) and type(obj) is tuple:
            return tuple(self._copy(v, key + (i,), used) for i, v in enumerate(obj))
        return copy.deepcopy(obj)     # ints, floats, strings, torch.Size, ...: small

    def _copy_tensor(self, t: torch.Tensor, key, used) -> torch.Tensor:
        if t.layout != torch.strided or t.is_quantized or t.is_nested:
            return t.detach().to("cpu", copy=True)       # rare kinds: a plain copy
        # The same tensor reached twice (tied weights): one buffer, so torch.save still writes it
        # once and the loaded state keeps the two entries tied, as a blocking save would.
        identity = (t.device, t.dtype, t.data_ptr(), tuple(t.shape), t.stride(), t.is_conj(), t.is_neg())
        if t.numel() and identity in self._same:
            used[key] = self._same[identity]
            return self._same[identity]
        buf = self._buffers.get(key)
        if buf is None or buf.shape != t.shape or buf.dtype != t.dtype:
            buf = _new_buffer(t, pin=self._pin and t.is_cuda)
        if t.is_cuda:
            self._cuda_devices.add(t.device)
            buf.copy_(t.detach(), non_blocking=True)      # async on the copy engine
        else:
            self._host_copies.append((buf, t.detach()))
        used[key] = buf
        self._same[identity] = buf
        return buf


def _checked_retention(keep_last, keep_best) -> tuple[int, dict | None]:
    """Validate the retention policy up front (a bad one must not surface mid-run in prune)."""
    retention, problem = check_retention(keep_last, keep_best)
    if problem is not None:
        raise UsageError(f"checkpoint policy: field '{problem.field}': {problem.value!r} is not {problem.expected}")
    return retention


class CheckpointStore:
    """The one writer of RUN_DIR/checkpoints (holds its WriterLock until close())."""

    def __init__(self, run_dir, *, keep_last: int = 3, keep_best: dict | None = None,
                 on_commit: Callable[[CheckpointInfo], None] | None = None):
        self.ckpt_dir = ck.checkpoints_dir(run_dir)
        self.keep_last, self.keep_best = _checked_retention(keep_last, keep_best)
        self.on_commit = on_commit
        self._lock = ck.WriterLock(self.ckpt_dir).acquire()
        self._snap = _Snapshotter()
        self._protected: set[Path] = set()
        self._thread: threading.Thread | None = None
        self._result: CheckpointInfo | None = None
        self._error: BaseException | None = None
        self._closed = False

    # --- saving ---------------------------------------------------------------------------------
    def save(self, state: dict, *, step: int, epoch: int | None, reason: str = "periodic",
             metrics: dict | None = None, blocking: bool = True) -> CheckpointInfo | None:
        """Blocking: returns the committed CheckpointInfo. Non-blocking: returns None once every
        tensor is snapshotted; the commit is reported by on_commit / flush(). Raises the failure
        of the previous non-blocking save (once) before doing anything."""
        if self._closed:
            raise TraindError(f"{self.ckpt_dir}: checkpoint store is closed")
        self.flush()
        args = (int(step), epoch, reason, dict(metrics or {}))
        started = time.monotonic()
        if blocking:
            return self._persist(state, *args, started=started)
        # The free-space check also runs here, in the caller: a full disk is reported by this
        # call, not one save later. The temp dir is made by the background writer.
        ck.check_free_space(self.ckpt_dir, int(step), tensor_bytes(state))
        snapshot = self._snap.take(state)
        self._thread = threading.Thread(
            target=self._persist_in_background, args=(snapshot, *args),
            kwargs={"started": started, "snapshot_seconds": time.monotonic() - started},
            name=f"traind-ckpt-{step}", daemon=False)
        self._thread.start()
        return None

    def _persist_in_background(self, *args, **kwargs) -> None:
        try:
            self._persist(*args, **kwargs)
        except BaseException as err:  # handed to the caller at the next save/flush/close
            self._error = err

    def _persist(self, state: dict, step: int, epoch, reason: str, metrics: dict, *,
                 started: float, snapshot_seconds: float | None = None) -> CheckpointInfo:
        pending = ck.begin(self.ckpt_dir, step, tensor_bytes(state))
        try:
            write_state(pending, state)
            extra = {"versions": {"torch": torch.__version__},
                     "write_seconds": round(time.monotonic() - started, 6)}
            if snapshot_seconds is not None:
                extra["snapshot_seconds"] = round(snapshot_seconds, 6)
            info = pending.commit(step, epoch, reason, metrics, extra=extra)
        except OSError as err:
            pending.abort()
            raise TraindError(
                f"{pending.tmp_path}: writing checkpoint step {step} failed: "
                f"{err.strerror or err}; nothing committed, earlier checkpoints intact") from err
        except TraindError:
            pending.abort()
            raise
        except Exception as err:   # e.g. an object torch.save cannot pickle: one line, cause chained
            pending.abort()
            raise TraindError(f"{self.ckpt_dir}: checkpoint step {step} failed: "
                              f"{type(err).__name__}: {err}; nothing committed") from err
        except BaseException:
            pending.abort()
            raise
        try:
            ck.prune(self.ckpt_dir, self.keep_last, self.keep_best, protect=self._protected)
        except (OSError, TraindError) as err:   # committed already; a failed prune only costs space
            log.warning("pruning %s failed: %s", self.ckpt_dir, err)
        self._result = info
        if self.on_commit is not None:
            try:
                self.on_commit(info)
            except Exception:   # the checkpoint is durable; a failing listener is not a failed save
                log.exception("on_commit callback failed for %s", info.path)
        return info

    def flush(self) -> CheckpointInfo | None:
        """Wait for the in-flight save; re-raise its failure (once). Returns the last commit."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            err, self._error = self._error, None
            raise err
        return self._result

    def close(self) -> None:
        if self._closed:
            return
        try:
            self.flush()
        finally:
            self._closed = True
            self._snap.close()
            self._lock.release()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # --- reading --------------------------------------------------------------------------------
    def latest_valid(self) -> CheckpointInfo | None:
        info, skipped = ck.latest_valid(self.ckpt_dir)
        for bad in skipped:
            log.warning("skipped checkpoint %s: %s", bad.path, bad.error)
        return info

    def load(self, path=None, map_location="cpu") -> dict:
        """The checkpoint `path` names (default: the newest valid one here), verified, then loaded
        with weights_only=True; one that verifies but cannot be loaded is an UnusableCheckpoint."""
        return load_checkpoint(self.ckpt_dir if path is None else path, map_location=map_location)

    def protect(self, path) -> None:
        """Never prune this checkpoint (e.g. the one the run resumed from)."""
        self._protected.add(Path(path).resolve())
