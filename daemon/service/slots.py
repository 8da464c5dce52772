"""Which slots of `traind serve` are free.

A slot is free only when every process of the job that held it is gone. After a daemon restart
the jobs it was running may still be alive, orphaned, writing their emergency checkpoint: each
keeps its slot (`draining`) until its run dir's lock is free (the supervisor's lock is inherited
by the job, its ranks and its DataLoader workers, so a free lock means all of them are gone), and
is SIGKILLed if it outlives its grace. With GPUs per slot, a slot a job just left is handed on
only once its device holds no process any more (NVML, where present), for at most
GPU_SETTLE_SECONDS. Plain values and decisions; the daemon does the probing and the killing.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

GPU_SETTLE_SECONDS = 60.0       # a device that still shows processes this long after its job left is handed on
DRAIN_MARGIN_SECONDS = 30.0     # beyond the job's grace, before its old process is SIGKILLed


@dataclass
class Draining:
    slot: int | None            # the slot it held; None: its record did not say (counts as one slot)
    since: float
    bound: float                # seconds from `since` until it is SIGKILLed
    killed: bool = False


class SlotBook:
    def __init__(self, slots: int, gpus: list[str] | None) -> None:
        self.slots, self.gpus = slots, gpus
        self.draining: dict[str, Draining] = {}
        self.left_at: dict[int, float] = {}          # slot -> when its last job left it

    def device(self, slot: int) -> str:
        return self.gpus[slot] if self.gpus else str(slot)

    def drain(self, name: str, slot: int | None, now: float, grace: float) -> None:
        taken = {d.slot for d in self.draining.values()}
        usable = slot if isinstance(slot, int) and 0 <= slot < self.slots and slot not in taken else None
        self.draining[name] = Draining(usable, now, grace + DRAIN_MARGIN_SECONDS)

    def drained(self, name: str, now: float) -> int | None:
        """The old process of `name` is gone: its slot is free (returned)."""
        d = self.draining.pop(name)
        if d.slot is not None:
            self.left_at[d.slot] = now
        return d.slot

    def left(self, slot: int, now: float) -> None:
        self.left_at[slot] = now

    def overdue(self, now: float) -> list[str]:
        return [n for n, d in self.draining.items() if not d.killed and now - d.since > d.bound]

    def free(self, running_slots) -> list[int]:
        used = set(running_slots) | {d.slot for d in self.draining.values() if d.slot is not None}
        free = [s for s in range(self.slots) if s not in used]
        return free[sum(d.slot is None for d in self.draining.values()):]

    def device_settling(self, slot: int, now: float) -> bool:
        """Whether to ask the device of `slot` if it still holds the last job's memory."""
        left = self.left_at.get(slot)
        return bool(self.gpus) and left is not None and now - left < GPU_SETTLE_SECONDS


def grace_of(spec_path: Path) -> float:
    """The job's preemption.grace_seconds (as the daemon rewrote its spec); 90 when unreadable."""
    try:
        raw = yaml.safe_load(spec_path.read_text()) or {}
        return float(raw.get("preemption", {}).get("grace_seconds", 90))
    except (OSError, ValueError, TypeError, AttributeError, yaml.YAMLError):
        return 90.0
