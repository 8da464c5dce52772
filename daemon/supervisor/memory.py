"""The supervisor's side of the memory tier (checkpoint.memory): choose across tiers, persist, free.

The job commits a checkpoint into tmpfs every `every_steps` steps (jobs/runtime/memory_tier.py);
it outlives the trainer, so a crash resumes from there instead of the last disk checkpoint. Like the
remote mirror, `attach(spec, ...)` gives a NoTier (every hook a no-op) or a Tier whose hooks the
loop calls:
- `resume_finder(find)` wraps the loop's finder (disk, then remote): the newest checkpoint that
  verifies in any tier; on a tie the memory one (it restores without reading the disk). One newer
  than the disk is copied to disk (verified) in a thread while the next attempt already restores
  from memory, then handed to the remote mirror, so a later node loss keeps it;
- `env()` for each spawn; `status()` for status.json;
- `close()`, when the supervisor exits: waits for that copy, persists the tier's newest checkpoint
  if the disk has nothing as new (a run that failed), and removes the tier. A tier a SIGKILLed
  supervisor left is found by the next `traind run` of the run dir (its place follows from the
  run dir), used, and removed by it.
"""
from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .. import store
from ..contract import protocol
from ..contract.errors import TraindError, UsageError
from ..store import format as fmt, memory_tier

FIELDS = ("every_steps", "keep", "budget_mib")
MIB = float(1 << 20)


@dataclass(frozen=True)
class MemoryTierSpec:
    every_steps: int = 10
    keep: int = 2                       # generations kept in memory
    budget_mib: int | None = None       # None: what is free in the tmpfs at start


def parse(c, value: Any) -> MemoryTierSpec | None:
    """`checkpoint.memory`: absent/false (off), true (defaults), or a mapping of FIELDS."""
    if value is None or value is False:
        return None
    if value is True:
        return MemoryTierSpec()
    d = c.section(value, "checkpoint.memory", FIELDS)
    return MemoryTierSpec(
        every_steps=c.number(d.get("every_steps", 10), "checkpoint.memory.every_steps", minimum=1, integer=True,
                             limit=10**9),
        keep=c.number(d.get("keep", 2), "checkpoint.memory.keep", minimum=1, maximum=2, integer=True),
        budget_mib=c.number(d.get("budget_mib"), "checkpoint.memory.budget_mib", minimum=1, integer=True,
                            nullable=True, limit=1 << 40))


def _newest_name(run_dir) -> int:
    """The newest step dir's number in RUN_DIR/checkpoints (-1: none), from names alone."""
    return next(iter(fmt.step_numbers(run_dir)), -1)


class NoTier:
    def __init__(self, note: str | None = None, say=None) -> None:
        self.note, self.say = note, say

    def resume_finder(self, find):
        def find_and_say_why(run_dir):       # said at the first spawn, once the journal is up
            if self.note:
                self.say(self.note)
                self.note = None
            return find(run_dir)
        return find_and_say_why if self.note else find

    def name(self, path) -> str:
        return Path(path).name

    def env(self) -> dict:
        return {}

    def status(self) -> None:
        return None

    def close(self) -> None:
        pass


def attach(spec, say: Callable[[str], None], event: Callable[..., None], mirror):
    config = spec.checkpoint.memory
    if config is None:
        return NoTier()
    if spec.distributed is not None and spec.distributed.nnodes > 1:
        return NoTier("checkpoint.memory: off for a group on several nodes (each node's memory holds only its "
                      "own ranks' shards); crashes resume from disk", say)
    return Tier(config, spec.run_dir, say=say, event=event, mirror=mirror, where=spec.source)


class Tier:
    def __init__(self, config: MemoryTierSpec, run_dir: Path, *, say, event, mirror, where) -> None:
        self.config, self.run_dir = config, Path(run_dir)
        self.dir = memory_tier.tier_dir(run_dir)
        self.say = lambda text: say(f"memory tier: {text}")
        self.event, self.mirror = event, mirror
        self.budget_bytes = self._check_budget(where)
        self.lock = threading.Lock()
        self.persisting: threading.Thread | None = None
        self.persisted_step: int | None = None
        self.newest_step: int | None = None

    def _check_budget(self, where) -> int:
        root = self.dir.parent
        if not root.is_dir() or not os.access(root, os.W_OK):
            raise UsageError(f"{where}: checkpoint.memory: {root} is not a writable directory "
                             f"(the memory tier lives in tmpfs there)")
        free = store.free_bytes(root)
        if self.config.budget_mib is None:
            return free
        if self.config.budget_mib * MIB > free:
            raise UsageError(f"{where}: checkpoint.memory.budget_mib: {self.config.budget_mib} MiB, but {root} "
                             f"has {free / MIB:.0f} MiB free")
        return int(self.config.budget_mib * MIB)

    def name(self, path) -> str:
        """How the spawn line names a resume point: step-N, or step-N in memory."""
        return Path(path).name + (" in memory" if Path(path).resolve().parent.parent == self.dir.resolve() else "")

    def env(self) -> dict:
        return {protocol.ENV_MEMORY_TIER: json.dumps({
            "dir": str(self.dir), "every_steps": self.config.every_steps, "keep": self.config.keep,
            "budget_bytes": self.budget_bytes})}

    def resume_finder(self, find):
        def find_with_memory(run_dir):
            memory, bad = memory_tier.newest(self.dir)
            self.newest_step = None if memory is None else memory.step
            if memory is not None and self.mirror.remote is None and memory.step >= _newest_name(run_dir):
                self._persist_in_background(memory)   # no disk checkpoint can be newer: none verified (crash -> spawn)
                return memory, bad
            disk, skipped = find(run_dir)
            skipped = [*bad, *skipped]
            if memory is None or (disk is not None and memory.step < disk.step):
                return disk, skipped
            if disk is None or memory.step > disk.step:
                self._persist_in_background(memory)
            return memory, skipped
        return find_with_memory

    # --- to disk --------------------------------------------------------------------------------
    def _persist_in_background(self, info) -> None:
        if info.step == _newest_name(self.run_dir):
            return         # a step the disk has (its validity is the disk's business)
        with self.lock:
            if self.persisted_step == info.step or (self.persisting is not None and self.persisting.is_alive()):
                return
            self.persisted_step = info.step
            self.persisting = threading.Thread(target=self._persist, args=(info,), name="traind-memory-persist")
            self.persisting.start()

    def _persist(self, info) -> bool:
        started = time.monotonic()
        try:
            done = memory_tier.persist(info, store.checkpoints_dir(self.run_dir))
        except (OSError, TraindError) as err:   # TraindError: not enough free space on the disk
            why = str(err) if isinstance(err, TraindError) else f"{err.filename}: {err.strerror or err}"
            done = store.CheckpointInfo(path=info.path, step=info.step, error=why)
        if not done.valid:
            self.say(f"copying step {info.step} to disk failed: {done.error}; it stays in memory only")
            self.event("memory_persist_failed", checkpoint_step=info.step, reason=done.error)
            return False
        self.say(f"step {info.step} copied to disk ({done.size / MIB:.1f} MiB, verified) in "
                 f"{time.monotonic() - started:.2f} s")
        self.event("memory_persisted", checkpoint_step=info.step, path=str(done.path))
        self.mirror.enqueue(str(done.path), info.step, protocol.REASON_PERIODIC)
        return True

    def status(self) -> dict:
        return {"path": str(self.dir), "every_steps": self.config.every_steps, "newest_step": self.newest_step,
                "persisted_step": self.persisted_step}

    def close(self) -> None:
        """Wait for a copy in flight; keep what only memory holds; free the tier."""
        if self.persisting is not None:
            self.persisting.join()
        try:
            copied = memory_tier.release(self.run_dir)
        except (OSError, TraindError) as err:
            why = str(err) if isinstance(err, TraindError) else err.strerror or str(err)
            self.say(f"cannot copy to disk or free {self.dir}: {why}; the next `traind run` of this run dir "
                     "will use it")
            return
        if copied is not None:
            self.say(f"step {copied.step} copied to disk before freeing the tier" if copied.valid else
                     f"step {copied.step} could not be copied to disk ({copied.error}); freed anyway")
