"""The checkpoint engine: the one orchestration of a save, whatever the checkpoint's layout.

It owns the writer lock, the snapshot buffers, the one background-save thread (deadline, hurry,
priority: jobs/engine/writer.py), begin -> write -> commit -> prune, the stats and the commit
report. What differs between a single `state.pt` (jobs/engine/single.py) and a group's DCP shards
plus per-rank files (jobs/engine/sharded.py) is a layout plugged into it:

    layout.parts(state)        what to snapshot (a non-blocking save copies it into reused buffers)
    layout.begin(dir, step, n) the PendingCheckpoint (a group: rank 0 makes it, the others attach)
    layout.write(pending, parts, job)  this process's files, checksummed and recorded
    layout.settle(step, info, failure) the commit's outcome on every process (a group shares it)
    layout.load(path)          a committed checkpoint back, verified

The commit itself (manifest last, rename, fsync: traind.store.commit) is called here and nowhere
else on the job side. A non-blocking save is two-phase (as in CheckFreq): the caller waits only
for the snapshot; the thread writes at idle CPU priority and is hurried back to normal priority
halfway to the next save (or earlier after a late one), or when the next save or a stop waits.
At most one save is in flight; its failure is raised at the next save(), flush() or close().
"""
from __future__ import annotations

import collections
import logging
import time
from pathlib import Path
from typing import Callable

import torch

from traind import store as ck
from traind.contract.errors import TraindError, UsageError
from traind.store import CheckpointInfo
from traind.store.retention import check_retention
from .single import SingleFile
from .snapshot import Snapshotter, tensor_bytes
from .writer import SaveThread

log = logging.getLogger("traind.store")
DEADLINE_FRACTION = 0.5   # a background save still running this far into the save interval
                          # goes back to normal priority, so it ends before the next is due...
TAIL_MARGIN = 1.5         # ... or earlier, if the last save needed more than the rest of the
                          # interval once hurried (a slow disk): that long, times this, before
INTERVALS_KEPT = 3        # the interval is the shortest of the last few (safe when irregular)


def checked_retention(keep_last, keep_best) -> tuple[int, dict | None]:
    """Validate the retention policy up front (a bad one must not surface mid-run in prune)."""
    retention, problem = check_retention(keep_last, keep_best)
    if problem is not None:
        raise UsageError(f"checkpoint policy: field '{problem.field}': {problem.value!r} is not {problem.expected}")
    return retention


class CheckpointEngine:
    """The one writer of RUN_DIR/checkpoints (its leader holds the WriterLock until close()).
    prune=False keeps every checkpoint (an import adds one and removes none)."""

    def __init__(self, run_dir, layout=None, *, keep_last: int = 3, keep_best: dict | None = None,
                 on_commit: Callable[[CheckpointInfo], None] | None = None, prune: bool = True):
        self.ckpt_dir = ck.checkpoints_dir(run_dir)
        self.layout = layout or SingleFile()
        self.keep_last, self.keep_best = checked_retention(keep_last, keep_best)
        self.on_commit, self._prune = on_commit, prune
        self._lock = ck.WriterLock(self.ckpt_dir).acquire() if self.layout.leader else None
        self.layout.opened()            # a group's other ranks start once stale temp dirs are gone
        self._snap = Snapshotter()
        self._protected: set[Path] = set()
        self._thread: SaveThread | None = None
        # When the last non-blocking save was asked, and the last intervals between them; the
        # first interval counts from here, which is about when a job's first period starts.
        self._last_call = time.monotonic()
        self._intervals: collections.deque[float] = collections.deque(maxlen=INTERVALS_KEPT)
        self._result: CheckpointInfo | None = None
        self._tail = 0.0          # seconds the last background save took to commit once hurried
        self._error: BaseException | None = None
        self.last_stats: dict | None = None
        self._closed = False

    # --- saving ---------------------------------------------------------------------------------
    def prepare(self, state: dict) -> None:
        """Allocate and fault in the snapshot buffers for `state` in a background thread at the
        writer's low priority, so the first non-blocking save copies into ready buffers instead of
        allocating them while the caller waits. Returns at once; call it when the state has its
        final shape (after the first optimizer step: Adam's moments appear there)."""
        self._snap.prepare(self.layout.parts(state))

    def save(self, state: dict, *, step: int, epoch: int | None, reason: str = "periodic",
             metrics: dict | None = None, blocking: bool = True, extra: dict | None = None) -> CheckpointInfo | None:
        """Blocking: returns the committed CheckpointInfo. Non-blocking: returns None once every
        tensor is snapshotted; the commit is reported by on_commit / flush(). Raises the failure
        of the previous non-blocking save (once) before doing anything. A group calls it on every
        rank at the same step."""
        if self._closed:
            raise TraindError(f"{self.ckpt_dir}: checkpoint store is closed")
        self.flush(_why="next save")     # one still running makes the next deadline come earlier
        args = (int(step), epoch, reason, dict(metrics or {}), dict(extra or {}))
        started = time.monotonic()
        parts = self.layout.parts(state)
        if blocking:
            return self._persist(parts, *args, started=started)
        if self.layout.ranks == 1:
            # A full disk is reported by this call, not one save later (a group's rank 0 finds it
            # in begin, on the writer thread, where every rank hears of it).
            ck.check_free_space(self.ckpt_dir, int(step), tensor_bytes(parts))
        snapshot = self._snap.take(parts)
        snapshot_seconds = time.monotonic() - started
        self._intervals.append(started - self._last_call)
        self._last_call = started
        self._thread = SaveThread(
            lambda job: self._persist_in_background(snapshot, *args, started=started,
                                                    snapshot_seconds=snapshot_seconds, job=job),
            name=f"traind-ckpt-{step}", daemon=self.layout.ranks > 1,
            deadline=started + self._deadline_after(min(self._intervals)))
        return None

    def _deadline_after(self, interval: float) -> float:
        """Seconds after its call at which a background save is hurried: halfway to the next
        save, or early enough that the time the last hurried save needed still fits."""
        offset = DEADLINE_FRACTION * interval
        if self._tail:
            offset = min(offset, interval - TAIL_MARGIN * self._tail)
        return max(0.0, offset)

    def _persist_in_background(self, *args, **kwargs) -> None:
        try:
            self._persist(*args, **kwargs)
        except BaseException as err:  # handed to the caller at the next save/flush/close
            self._error = err

    def _persist(self, parts, step: int, epoch, reason: str, metrics: dict, extra: dict, *,
                 started: float, snapshot_seconds: float | None = None,
                 job: SaveThread | None = None) -> CheckpointInfo:
        cpu = time.thread_time()
        nbytes = tensor_bytes(parts)
        pending = self.layout.begin(self.ckpt_dir, step, nbytes)
        try:
            stats = {"bytes": nbytes, **self.layout.write(pending, parts, job)}
            stats["writer_cpu_seconds"] = round(time.thread_time() - cpu + (job.helped_cpu if job else 0), 6)
            stats["write_seconds"] = round(time.monotonic() - started, 6)
            if job is not None:
                stats.update(snapshot_seconds=round(snapshot_seconds, 6), background=True,
                             priority=job.lowered or ("raised" if job.raised else "normal"),
                             helped_blocks=job.helped_blocks)
            info = failure = None
            if pending.owner:
                try:
                    info = pending.commit(step, epoch, reason, metrics, extra={
                        "versions": {"torch": torch.__version__}, **stats, **self.layout.manifest_fields(), **extra})
                except (OSError, TraindError) as err:
                    failure = err
            info = self.layout.settle(pending, info, failure)
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
        if pending.owner and self._prune:
            try:
                ck.prune(self.ckpt_dir, self.keep_last, self.keep_best, protect=self._protected)
            except (OSError, TraindError) as err:   # committed already; a failed prune only costs space
                log.warning("pruning %s failed: %s", self.ckpt_dir, err)
        stats["commit_seconds"] = round(time.monotonic() - started, 6)
        if job is not None:       # hurried by its deadline, or by the next save as it ran late
            late = job.hurried_at is not None and job.hurried_by in ("deadline", "next save")
            self._tail = time.monotonic() - job.hurried_at if late else 0.0
        info.stats = self.last_stats = stats      # what on_commit listeners may forward
        self._result = info
        if self.on_commit is not None:
            try:
                self.on_commit(info)
            except Exception:   # the checkpoint is durable; a failing listener is not a failed save
                log.exception("on_commit callback failed for %s", info.path)
        return info

    def flush(self, _why: str = "flush") -> CheckpointInfo | None:
        """Wait for the in-flight save; re-raise its failure (once). Returns the last commit.
        The wait is never slowed by the save's idle priority: it is raised back where the OS
        allows, and this thread writes what is left itself where the layout lets it."""
        if self._thread is not None:
            self._thread.hurry(_why)
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
            if self._lock is not None:
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
        return self.layout.load(self.ckpt_dir if path is None else path, map_location=map_location)

    def protect(self, path) -> None:
        """Never prune this checkpoint (e.g. the one the run resumed from)."""
        self._protected.add(Path(path).resolve())
