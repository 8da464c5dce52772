"""The ranks of one attempt as one unit: when the group has exited, how it exited, who is quiet.

A data-parallel group cannot go on without any of its ranks (the others would wait in the next
collective), so the attempt is the group: a rank that fails makes the supervisor SIGKILL the
rest at once (they cannot write a checkpoint without it; a SIGTERM would only start an emergency
save that waits for the dead rank). A rank that exits 0 or 75 is ending with the others (they all
agree on the stop step and commit together), so they get `exit_timeout` seconds to follow before
they are killed. The group's exit is the first failure, else 75 if any rank stopped, else 0.
Plain values and decisions; the loop does the killing (through its OS object).
"""
from __future__ import annotations

import signal
from dataclasses import dataclass, field

from ..contract.exitcodes import OK, PREEMPTED
from .osproc import ExitStatus

WAIT, KILL_REST, DONE = "wait", "kill-rest", "done"
# SLURM signals every process of a step (--signal, scancel --signal): a rank of an unmodified
# script may die of the stop signal itself. That is the group being stopped, not a rank failing.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


@dataclass
class RankView:
    pid: int | None = None
    step: int | None = None
    last_message_at: float | None = None
    exit: ExitStatus | None = None


@dataclass
class RankGroup:
    size: int
    exit_timeout: float
    ranks: dict[int, RankView] = field(default_factory=dict)
    first_failure: tuple[int, ExitStatus] | None = None
    kill_at: float | None = None          # the stragglers' deadline, once one rank ended cleanly
    first_spoke_at: float | None = None
    late: int | None = None               # the rank killed for not following the others out

    def __post_init__(self) -> None:
        self.ranks = {r: RankView() for r in range(self.size)}

    def started(self, pids: dict[int, int]) -> None:
        """The processes the supervisor started (a rank that never speaks has its pid too)."""
        for rank, pid in pids.items():
            if rank in self.ranks:
                self.ranks[rank].pid = pid

    def heard(self, rank: int, now: float, *, pid=None, step=None) -> None:
        view = self.ranks.get(rank)
        if view is None:
            return
        view.last_message_at = now
        self.first_spoke_at = now if self.first_spoke_at is None else self.first_spoke_at
        view.pid = pid if isinstance(pid, int) else view.pid
        view.step = step if isinstance(step, int) else view.step

    def quiet_since(self) -> float | None:
        """When the quietest live rank was last heard (a rank not heard yet counts from when the
        first one spoke: a rank stopped before its first message is a hang too). None before any spoke."""
        if self.first_spoke_at is None:
            return None
        times = [v.last_message_at or self.first_spoke_at for v in self.ranks.values() if v.exit is None]
        return min(times) if times else None

    def exited(self, rank: int, status: ExitStatus, now: float) -> str:
        """Record one rank's exit; what to do about the others: WAIT, KILL_REST or DONE."""
        view = self.ranks.setdefault(rank, RankView())
        if view.exit is not None:
            return DONE if self.all_exited() else WAIT
        view.exit = status
        failed_first = (status.code not in (OK, PREEMPTED) and status.signal not in STOP_SIGNALS
                        and self.first_failure is None)
        if failed_first:
            self.first_failure = (rank, status)
        if self.all_exited():
            self.kill_at = None
            return DONE
        if failed_first:
            return KILL_REST
        if self.first_failure is None and self.kill_at is None:
            self.kill_at = now + self.exit_timeout
        return WAIT

    def all_heard(self) -> bool:
        return all(v.last_message_at is not None for v in self.ranks.values())

    def all_exited(self) -> bool:
        return all(v.exit is not None for v in self.ranks.values())

    def stragglers_overdue(self, now: float) -> bool:
        """The clean exit of one rank was `exit_timeout` ago and some still run: they get killed,
        and the group counts as failed because of the first one still running."""
        if self.kill_at is None or now < self.kill_at or self.first_failure is not None or self.all_exited():
            return False
        late = min(r for r, v in self.ranks.items() if v.exit is None)
        self.first_failure, self.late, self.kill_at = (late, ExitStatus(None, 9)), late, None
        return True

    def status(self) -> tuple[ExitStatus, str | None]:
        """The group's exit status, and which rank it comes from (None: every rank agreed)."""
        if self.first_failure is not None:
            rank, status = self.first_failure
            if self.late == rank:
                return status, f"rank {rank} did not exit within {self.exit_timeout:g}s of the others"
            return status, f"rank {rank} {status.describe()}" + ("" if self.size == 1 else "; the others were killed")
        exits = [v.exit for v in self.ranks.values() if v.exit is not None]
        signalled = [e for e in exits if e.signal is not None]      # stopped by a stop signal
        if signalled:
            return signalled[0], None
        return ExitStatus(PREEMPTED if any(e.code == PREEMPTED for e in exits) else OK), None

    def summary(self, now: float) -> list[dict]:
        return [{"rank": r, "pid": v.pid, "step": v.step,
                 "quiet_seconds": None if v.last_message_at is None else round(now - v.last_message_at, 1),
                 "exit": None if v.exit is None else v.exit.describe()} for r, v in sorted(self.ranks.items())]
