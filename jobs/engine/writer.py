"""Writing state.pt, and the thread a non-blocking save writes it in.

torch.save produces the bytes; HashingWriter writes them. torch hands each tensor storage to
the file object as a view of its memory; the stream below passes those views on as they are, so
the tensor bytes go from the snapshot buffers to the disk with no copy through pickling or an
in-memory zip, and are hashed once, as they are written. With O_DIRECT (large states) they do
not pass through the page cache either: no kernel copy, no writeback work left for the kernel's
threads or the final fsync. torch's storage alignment is raised to a page for those saves so the
storages start on page boundaries in the file, as O_DIRECT wants; torch.load reads them as usual.

A background save (SaveThread) first plans the file (torch.save into the writer, which keeps
views and copies only headers and the pickle), at normal priority since it holds the GIL, then
writes it block by block at a low priority (jobs/engine/priority.py; SCHED_IDLE by default). hurry()
makes it finish as fast as a foreground save: the thread is raised back to SCHED_OTHER where
the OS allows, and the hurrying thread writes the remaining blocks itself, at its own priority.
flush() hurries (so the emergency path is never slowed), and so does a timer at the deadline,
halfway to the next save (so the save ends before the next is due).
"""
from __future__ import annotations

import contextlib
import os
import threading
import time
from typing import Callable

import numpy
import torch

from traind import store as ck
from traind.store.faults import reach
from traind.store.hashing import BLOCK_SIZE, PAGE, HashingWriter, WriteOnlyFile
from .priority import background_policy, lower_priority, raise_priority

DIRECT_ENV = "TRAIND_DIRECT_IO"     # "0": always through the page cache
DIRECT_MIN_BYTES = 64 << 20         # below this the page cache costs little and fsync is short
DIRECT_MAX_PADDING = 0.02           # page-aligned storages may add at most this much to the file
STABLE_MIN_BYTES = PAGE             # smaller writes are copied: not worth an address lookup


def _storages(obj, out: dict[int, int] | None = None) -> dict[int, int]:
    """{address: bytes} of the CPU storages behind the tensors of a nested state."""
    out = {} if out is None else out
    if isinstance(obj, torch.Tensor):
        if obj.device.type == "cpu" and obj.layout == torch.strided:
            storage = obj.untyped_storage()
            if storage.nbytes():
                out[storage.data_ptr()] = storage.nbytes()
    elif isinstance(obj, dict):
        for v in obj.values():
            _storages(v, out)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _storages(v, out)
    return out


def use_direct_io(nbytes: int, storages: int) -> bool:
    """O_DIRECT for a large state whose storages are large enough that aligning each to a page
    costs at most DIRECT_MAX_PADDING of the file (TRAIND_DIRECT_IO=0 turns it off)."""
    if os.environ.get(DIRECT_ENV, "").strip() == "0":
        return False
    return nbytes >= DIRECT_MIN_BYTES and storages * PAGE <= DIRECT_MAX_PADDING * nbytes


class _TorchStream(WriteOnlyFile):
    """The file object torch.save writes into. A write that is exactly one of the state's
    storages is passed on by address (it stays unchanged until written: snapshot buffers, or the
    caller's state during a blocking save); anything else is copied by the writer."""

    def __init__(self, file: HashingWriter, storages: dict[int, int], eager: bool) -> None:
        self._file, self._storages, self._eager = file, storages, eager

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        address = None
        if len(view) >= STABLE_MIN_BYTES:
            at = numpy.frombuffer(view, dtype=numpy.uint8).ctypes.data
            address = at if self._storages.get(at) == len(view) else None
        n = self._file.add(view, address)
        if self._eager:                # a blocking save writes as torch goes: bounded memory
            self._file.write_ready_blocks()
        return n

    @property
    def size(self) -> int:
        return self._file.size


def _serialise(state: dict, file: HashingWriter, storages: dict[int, int], eager: bool) -> None:
    from torch.utils.serialization import config
    saved = config.save.compute_crc32, config.save.storage_alignment
    # Our block checksums cover every byte; torch's per-record crc32 would cost a second pass
    # over the data and torch.load never checks it. (Process-wide settings, restored after.)
    config.save.compute_crc32 = False
    if file.direct:
        config.save.storage_alignment = PAGE
    try:
        torch.save(state, _TorchStream(file, storages, eager))
    except BaseException as err:
        if file.error is not None and file.error is not err:
            raise file.error from err      # the OS error (ENOSPC, EIO), not torch's wrapper
        raise
    finally:
        config.save.compute_crc32, config.save.storage_alignment = saved


def write_state(pending: ck.PendingCheckpoint, state: dict, *, staging: memoryview | None = None,
                job: "SaveThread | None" = None) -> bool:
    """Write state.pt into the pending checkpoint and record its block checksums. Without a job
    it is written as torch.save goes; with one, planned first and then written by job.write().
    Returns whether it went to disk with O_DIRECT."""
    storages = _storages(state)
    direct = use_direct_io(sum(storages.values()), len(storages))
    file = HashingWriter(pending.file_path(ck.STATE_NAME), BLOCK_SIZE, reach, direct=direct,
                         staging=staging if direct else None)
    try:
        _serialise(state, file, storages, eager=job is None)
        file.end_of_data()
        if job is not None:
            job.write(file)
        size, digests = file.close()
    except BaseException:
        file.discard()
        raise
    pending.record(ck.STATE_NAME, size, digests)
    return file.direct


class SaveThread:
    """The thread of one non-blocking save. Blocks are written in order by whoever holds the
    baton: this thread at a low priority (SCHED_IDLE by default), or a thread that called hurry(): the caller of flush(),
    or a timer at the deadline (a starved SCHED_IDLE thread could not raise itself)."""

    def __init__(self, run: Callable[["SaveThread"], None], name: str,
                 deadline: float | None = None, daemon: bool = False) -> None:
        self.lowered: str | None = None   # the policy this thread is under ("idle", "nice")
        self.raised = False               # ... it was raised back by hurry()
        self.helped_cpu = 0.0        # CPU seconds that hurrying threads spent writing blocks
        self.helped_blocks = 0       # blocks they wrote
        self.hurried_at: float | None = None   # when hurry() was first called (monotonic) ...
        self.hurried_by: str | None = None     # ... and why: "deadline", "next save", "flush"
        self.tid: int | None = None
        self._urgent = False
        self._done = False
        self._file: HashingWriter | None = None
        self._self_writing = False    # in lowered(): the layout's own code writes, no blocks to help with
        self._cond = threading.Condition()
        self._baton = threading.Lock()
        self._helped = threading.Event()
        self._help_error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, args=(run,), name=name, daemon=daemon)
        # Past the deadline the save competes for the CPU like the training does, so it ends
        # before the next one is due. The timer is made here, by the caller: normal priority.
        self._timer = None
        if deadline is not None:
            self._timer = threading.Timer(max(0.0, deadline - time.monotonic()), self.hurry, ("deadline",))
            self._timer.name, self._timer.daemon = f"{name}-deadline", True
        self._thread.start()
        if self._timer is not None:
            self._timer.start()

    def _main(self, run) -> None:
        self.tid = threading.get_native_id()
        try:
            run(self)
        finally:
            if self._timer is not None:
                self._timer.cancel()
            with self._cond:      # a tid is reused once the thread is gone: forget it first
                self._done, self.tid = True, None
                self._cond.notify_all()

    # --- in the save's thread ------------------------------------------------------------------
    def write(self, file: HashingWriter) -> None:
        with self._cond:
            self._file = file
            if not self._urgent and lower_priority():
                self.lowered = background_policy()
            self._cond.notify_all()
        if not self._write_blocks(file, lambda: self._urgent):
            self._helped.wait()          # the hurrying thread writes the rest
            if self._help_error is not None:
                raise self._help_error

    @contextlib.contextmanager
    def at_low_priority(self):
        """For a layout whose files are written by other code (DCP's writer, a framework's own
        save): run the block at the low priority; hurry() can only raise it back, not help."""
        with self._cond:
            self._self_writing = True
            if not self._urgent and lower_priority():
                self.lowered = background_policy()
            self._cond.notify_all()
        try:
            yield
        finally:
            raise_priority()

    def _write_blocks(self, file: HashingWriter, stop: Callable[[], bool]) -> int | None:
        """Write blocks until none is left (their count) or stop() says so (None)."""
        n = 0
        while True:
            with self._baton:
                if stop():
                    return None
                if not file.write_block():
                    return n
                n += 1

    # --- in the caller, or the deadline's timer --------------------------------------------------
    def hurry(self, why: str = "flush") -> None:
        """Make the save finish as fast as it would in the foreground: raise the thread back to
        normal priority (where allowed) and write its remaining blocks from this thread."""
        with self._cond:
            self._urgent = True
            if self.hurried_at is None:
                self.hurried_at, self.hurried_by = time.monotonic(), why
            if self.lowered and self.tid is not None and raise_priority(self.tid):
                self.raised, self.lowered = True, None
            self._cond.wait_for(lambda: self._file is not None or self._done or self._self_writing)
            file = self._file
        if file is None:
            return
        cpu, n = time.thread_time(), 0
        try:
            n = self._write_blocks(file, lambda: False)
        except BaseException as err:      # raised by the save's thread, which reports it
            self._help_error = self._help_error or err
        finally:
            with self._cond:
                self.helped_cpu += time.thread_time() - cpu
                self.helped_blocks += n or 0
            self._helped.set()

    def join(self) -> None:
        self._thread.join()
