"""The job's side of the memory tier: frequent checkpoints into tmpfs that outlive the trainer.

The supervisor turns it on (`checkpoint.memory` in the spec) and names the place in
TRAIND_MEMORY_TIER (JSON: dir, every_steps, keep, budget_bytes). What is written there is one more
CheckpointEngine over the same layout as the disk store (one state.pt, or a group's DCP shards
plus rank files), so it is the same format and commit protocol, manifest last, every byte
checksummed, and it resumes exactly. A small state (under the engine's O_DIRECT size) is saved
blocking, so a crash loses at most `every_steps` steps; a larger one in the background like a
periodic save (one save interval more at worst, while it is in flight).
The supervisor chooses the newest valid checkpoint across the tiers and persists a memory one it
resumes from to disk (daemon/supervisor/memory.py). Used by traind.Session (and so the Trainer)
and by the Lightning callback (rank 0 writes Lightning's whole checkpoint).
"""
from __future__ import annotations

import json
from pathlib import Path

from traind.contract import protocol
from traind.contract.errors import UsageError
from ..engine import CheckpointEngine
from ..engine.snapshot import tensor_bytes
from ..engine.writer import DIRECT_MIN_BYTES

MIB = float(1 << 20)


class MemoryTier:
    def __init__(self, config: dict, new_layout) -> None:
        self.dir = Path(config["dir"])
        self.every_steps = int(config["every_steps"])
        self.keep = int(config.get("keep", 2))
        self.budget_bytes = int(config["budget_bytes"])
        self.engine = CheckpointEngine(self.dir, new_layout(), keep_last=self.keep)
        self._checked = False

    @classmethod
    def from_env(cls, env, new_layout) -> "MemoryTier | None":
        raw = env.get(protocol.ENV_MEMORY_TIER)
        if not raw:
            return None
        return cls(json.loads(raw), new_layout)

    @staticmethod
    def interval(env) -> int | None:
        """every_steps, for a rank that does not write the tier but saves with the one that does."""
        raw = env.get(protocol.ENV_MEMORY_TIER)
        return int(json.loads(raw)["every_steps"]) if raw else None

    def holds(self, path) -> bool:
        return Path(path).resolve().parent == self.engine.ckpt_dir.resolve()

    def protect(self, path) -> None:
        """The checkpoint this attempt resumed from stays while the supervisor copies it to disk."""
        self.engine.protect(path)

    def due(self, step: int) -> bool:
        return step % self.every_steps == 0

    def save(self, state: dict, *, step: int, epoch, metrics: dict) -> None:
        nbytes = tensor_bytes(self.engine.layout.parts(state))
        if not self._checked:
            self._check_budget(nbytes)
        self.engine.save(state, step=step, epoch=epoch, reason=protocol.REASON_PERIODIC, metrics=metrics,
                         blocking=nbytes < DIRECT_MIN_BYTES)

    def _check_budget(self, nbytes: int) -> None:
        """Once, at the first save: `keep` generations and the one being written must fit."""
        self._checked = True
        need = nbytes * (self.keep + 1)
        if need > self.budget_bytes:
            raise UsageError(
                f"checkpoint.memory: the state is {nbytes / MIB:.1f} MiB; {self.keep} generation(s) plus the one "
                f"being written need {need / MIB:.1f} MiB of {self.dir.parent}, but the budget is "
                f"{self.budget_bytes / MIB:.1f} MiB (checkpoint.memory.budget_mib, or the free space there); "
                f"raise it, lower checkpoint.memory.keep, or remove checkpoint.memory")

    def close(self) -> None:
        self.engine.close()
