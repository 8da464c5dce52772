"""Sharded checkpoints of a data-parallel group: every rank writes its part, rank 0 commits once.

The model and optimizer tensors go through torch.distributed.checkpoint (DCP: it spreads
replicated tensors over the ranks, so each writes about 1/N, and it reshards on load at another
world size); everything else of the rank (RNG states, data position, callbacks, the optimizer's
param_groups: no pickled objects in DCP's data) is that rank's small `rank-0000R.pt`, loadable
with torch.load(weights_only=True). The commit, on the `ckpt` process group:
  1. rank 0 makes the temp dir (free-space check included) and shares its path;
  2. every rank writes its DCP shard and its rank file, fsyncs and checksums them, in parallel;
  3. every rank reports its files' entries; rank 0 records them, checksums DCP's .metadata and
     commits (manifest last, rename, directory fsync) as a single-process checkpoint commits;
  4. rank 0 shares the outcome: every rank knows the step is durable, or why not.
A rank that dies mid-way makes the others' collectives fail: nothing is committed (.tmp- only).
Non-blocking saves snapshot into reused buffers (jobs/snapshot.py) and do 1-4 on a background
thread at idle priority, raised back when the next save or the emergency stop waits for it.
"""
from __future__ import annotations

import io
import logging
import threading
import time
from pathlib import Path
from typing import Callable

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from traind import store as ck
from traind.contract.errors import TraindError
from traind.jobs.checkpoint_io import UnusableCheckpoint
from traind.jobs.group import Group
from traind.jobs.priority import lower_priority, raise_priority
from traind.jobs.snapshot import Snapshotter, tensor_bytes
from traind.store import format as fmt
from traind.store import hashing

log = logging.getLogger("traind.store")
TENSOR_KEYS = ("state_dict", "optimizer_states")     # what DCP holds; the rest is per rank


_NONE = object()      # "nothing on this side" (None itself is a value: SGD's momentum_buffer may be None)


def split_tensors(obj):
    """(the tensors of a nested dict, with their nesting; everything else, with its nesting);
    None for a side that has nothing. An empty dict stays on the non-tensor side."""
    tensors, rest = _split(obj)
    return (None if tensors is _NONE else tensors), (None if rest is _NONE else rest)


def _split(obj):
    if isinstance(obj, torch.Tensor):
        return obj, _NONE
    if not isinstance(obj, dict):
        return _NONE, obj
    tensors, rest = {}, {}
    for k, v in obj.items():
        t, r = _split(v)
        if t is not _NONE:
            tensors[k] = t
        if r is not _NONE:
            rest[k] = r
    return tensors or _NONE, rest if rest or not tensors else _NONE


def merge(tensors, rest):
    """split_tensors undone."""
    if tensors is None:
        return rest
    if not isinstance(tensors, dict) or not isinstance(rest, dict):
        return tensors
    out = dict(rest)
    for k, v in tensors.items():
        out[k] = merge(v, rest.get(k))
    return out


class ShardedStore:
    """The group's checkpoint store: the same calls as CheckpointStore, made on every rank."""

    sharded = True

    def __init__(self, run_dir, group: Group, model, optimizers, *, keep_last: int = 3,
                 keep_best: dict | None = None, on_commit: Callable | None = None):
        self.ckpt_dir = ck.checkpoints_dir(run_dir)
        self.group, self.model, self.optimizers = group, model, list(optimizers)
        self.keep_last, self.keep_best, self.on_commit = keep_last, keep_best, on_commit
        # rank 0 is the one writer of the directory (lock, temp dirs, commit, pruning)
        self._lock = ck.WriterLock(self.ckpt_dir).acquire() if group.leader else None
        group.share(None)           # the others start once the stale temp dirs are gone
        self._snap = Snapshotter()
        self._protected: set[Path] = set()
        self._thread: threading.Thread | None = None
        self._tid: int | None = None
        self._error: BaseException | None = None
        self._result = None
        self.last_stats: dict | None = None
        self._closed = False

    # --- what a rank holds ------------------------------------------------------------------
    def _parts(self, state: dict) -> tuple[dict, dict]:
        msd, osd = get_state_dict(self.model, self.optimizers)
        tensors, rest = split_tensors({"model": msd, "optim": osd})
        rank_state = {k: v for k, v in state.items() if k not in TENSOR_KEYS}
        rank_state["sharded"] = {"rank": self.group.rank, "world_size": self.group.world_size, "rest": rest}
        return tensors or {}, rank_state

    def prepare(self, state: dict) -> None:
        self._snap.prepare(self._parts(state)[0])

    # --- saving -----------------------------------------------------------------------------
    def save(self, state: dict, *, step: int, epoch, reason: str = "periodic", metrics: dict | None = None,
             blocking: bool = True):
        """On every rank at the same step (the group agrees on it first)."""
        if self._closed:
            raise TraindError(f"{self.ckpt_dir}: checkpoint store is closed")
        self.flush()
        started = time.monotonic()
        tensors, rank_state = self._parts(state)
        args = (int(step), epoch, reason, dict(metrics or {}))
        if blocking:
            return self._persist(tensors, rank_state, *args, started=started)
        snapshot = self._snap.take({"t": tensors, "r": rank_state})
        blocked = time.monotonic() - started
        self._thread = threading.Thread(target=self._in_background, name=f"traind-shard-{step}", daemon=True,
                                        args=(snapshot["t"], snapshot["r"], *args),
                                        kwargs={"started": started, "blocked": blocked})
        self._thread.start()
        return None

    def _in_background(self, *args, **kwargs) -> None:
        self._tid = threading.get_native_id()
        lower_priority()
        try:
            self._persist(*args, **kwargs)
        except BaseException as err:    # handed to the training thread at the next save/flush/close
            self._error = err

    def _persist(self, tensors: dict, rank_state: dict, step: int, epoch, reason: str, metrics: dict, *,
                 started: float, blocked: float | None = None):
        g, cpu = self.group, time.thread_time()
        nbytes = tensor_bytes(tensors)
        pending, why = None, None
        if g.leader:
            try:
                pending = ck.begin(self.ckpt_dir, step, nbytes * g.world_size)
            except (OSError, TraindError) as err:
                why = str(err) if isinstance(err, TraindError) else f"{self.ckpt_dir}: {err.strerror or err}"
        tmp, why = g.share((None if pending is None else str(pending.tmp_path), why), group=g.ckpt)
        if why is not None:
            raise TraindError(f"checkpoint step {step}: {why}")
        pending = pending or ck.PendingCheckpoint(self.ckpt_dir, step, Path(tmp))
        try:
            entries, problem = self._write_shard(pending, tensors, rank_state), None
        except Exception as err:        # reported to rank 0, which then commits nothing
            entries, problem = {}, f"rank {g.rank}: {type(err).__name__}: {err}"
        reports = g.collect((entries, problem), group=g.ckpt)
        outcome = self._commit(pending, reports, step, epoch, reason, metrics, nbytes, cpu) if g.leader else None
        path, why = g.share(outcome, group=g.ckpt)
        if why is not None:
            raise TraindError(f"checkpoint step {step} not committed: {why}")
        info = ck.CheckpointInfo(path=Path(path), step=step, epoch=epoch, reason=reason, metrics=metrics,
                                 size=nbytes, valid=True)
        info.stats = self.last_stats = {"bytes": nbytes, "ranks": g.world_size,
                                        "writer_cpu_seconds": round(time.thread_time() - cpu, 6),
                                        "snapshot_seconds": None if blocked is None else round(blocked, 6),
                                        "commit_seconds": round(time.monotonic() - started, 6)}
        self._result = info
        if self.on_commit is not None:
            try:
                self.on_commit(info)
            except Exception:
                log.exception("on_commit callback failed for %s", info.path)
        return info

    def _write_shard(self, pending, tensors: dict, rank_state: dict) -> dict:
        """This rank's files, written, fsynced and checksummed: {name: manifest entry}."""
        g = self.group
        dcp.save(tensors, storage_writer=dcp.FileSystemWriter(pending.tmp_path, sync_files=True),
                 process_group=g.ckpt)
        buf, name = io.BytesIO(), fmt.rank_state_name(g.rank)
        torch.save(rank_state, buf)
        w = pending.open_file(name)
        try:
            w.write(buf.getbuffer())
        except BaseException:
            w.discard()
            raise
        entries = {name: fmt.file_entry(*w.close())}
        for f in sorted(pending.tmp_path.glob(f"__{g.rank}_*.distcp")):
            entries[f.name] = fmt.file_entry(*hashing.hash_blocks(f))
        return entries

    def _commit(self, pending, reports, step, epoch, reason, metrics, nbytes, cpu) -> tuple:
        problems = [p for _, p in reports if p]
        if problems:
            pending.abort()
            return None, "; ".join(problems)
        try:
            for entries, _ in reports:
                for name, entry in entries.items():
                    pending.record(name, entry["size"], entry[fmt.BLOCKS_FIELD], entry["block_size"])
            extra = {"versions": {"torch": torch.__version__}, "bytes": nbytes,
                     fmt.SHARDED_FIELD: {"world_size": self.group.world_size,
                                         "engine": "torch.distributed.checkpoint"}}
            info = pending.commit(step, epoch, reason, metrics, extra=extra)   # hashes .metadata itself
        except (OSError, TraindError) as err:
            pending.abort()
            return None, f"{pending.tmp_path}: {getattr(err, 'strerror', None) or err}"
        try:
            ck.prune(self.ckpt_dir, self.keep_last, self.keep_best, protect=self._protected)
        except (OSError, TraindError) as err:
            log.warning("pruning %s failed: %s", self.ckpt_dir, err)
        return str(info.path), None

    def flush(self):
        if self._thread is not None:
            if self._tid is not None:
                raise_priority(self._tid)      # the wait is never slowed by the idle priority
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

    # --- reading ----------------------------------------------------------------------------
    def latest_valid(self):
        return ck.latest_valid(self.ckpt_dir)[0]

    def protect(self, path) -> None:
        self._protected.add(Path(path).resolve())

    def load(self, path) -> dict:
        """Verify (each rank a share of the files), load the tensors into the live model and
        optimizers through DCP (resharded when the world size differs), and return this rank's
        own state; the model and optimizer fields are absent (already loaded)."""
        g, path = self.group, Path(path)
        man, why = fmt.read_manifest(path)
        mine = sorted(man["files"])[g.rank::g.world_size] if man else []
        info = fmt.verify(path, only=set(mine)) if man else None
        problems = [p for p in g.collect(why or (None if info.valid else info.error)) if p]
        if problems:
            raise TraindError(f"cannot load checkpoint: {problems[0]}")
        saved_world = fmt.shard_world_size(man)
        if saved_world is None:
            raise UnusableCheckpoint(path, f"{path}: not a sharded checkpoint (written by one process); "
                                           "run it with the world size of 1 that wrote it")
        rank_file = path / fmt.rank_state_name(g.rank if g.rank < saved_world else 0)
        try:
            rank_state = torch.load(rank_file, map_location="cpu", weights_only=True)
        except Exception as err:
            raise UnusableCheckpoint(path, f"{rank_file}: {type(err).__name__}: {err}") from None
        msd, osd = get_state_dict(self.model, self.optimizers)
        tensors, _ = split_tensors({"model": msd, "optim": osd})
        dcp.load(tensors or {}, checkpoint_id=path, process_group=g.ckpt)
        full = merge(tensors, rank_state["sharded"]["rest"])
        set_state_dict(self.model, self.optimizers, model_state_dict=full["model"], optim_state_dict=full["optim"])
        rank_state["sharded"]["saved_world_size"] = saved_world
        return rank_state
