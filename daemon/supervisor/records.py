"""The supervisor's records: every state change, event and status rewrite, written in one place.

`Journal` writes down what the supervisor (loop.py) tells it, with the values it is given: the log
line, events.jsonl and status.json (through `Recorder`) and the live terminal line. It reads
nothing of the supervisor; `status_record` builds status.json's value from the run's parts.
"""
from __future__ import annotations

from typing import Callable

from .attempts import Attempt, LastSeen, RestartBudget
from .osproc import ExitStatus
from .runfiles import Recorder
from .states import TERMINAL, State, Transition
from .terminal import live_text


class Journal:
    def __init__(self, name: str, recorder_of: Callable[[Callable[[str], None]], Recorder],
                 log: Callable[[str], None], live: Callable[[str], None] | None):
        self.name, self._log, self._live = name, log, live
        self.attempt: int | None = None           # the attempt number lines and events carry
        self.recorder = recorder_of(self.say)

    def say(self, text: str) -> None:
        self._log(f"traind[{self.name}{'' if self.attempt is None else f' #{self.attempt}'}]: {text}")

    def event(self, kind: str, state: State, *, exit_status: ExitStatus | None = None, durable: bool = False,
              **fields) -> None:
        self.recorder.event(kind, attempt=self.attempt, state=state.value, exit_status=exit_status,
                            durable=durable, **fields)

    def transition(self, t: Transition, *, reason: str | None, exit_status: ExitStatus | None,
                   last_step: int | None, checkpoint_step: int | None) -> None:
        self.event("transition", t.target, source=t.source.value, target=t.target.value, edge=t.edge,
                   reason=reason, last_step=last_step, exit_status=exit_status, checkpoint_step=checkpoint_step)
        detail = f" ({exit_status.describe()})" if exit_status else (f" ({reason})" if reason else "")
        self.say(f"{t.source.value} -> {t.target.value}: {t.edge}{detail}")

    def status(self, record: dict, *, durable: bool = False) -> None:
        self.recorder.status(record, durable=durable)
        if self._live is not None:
            self._live(live_text(self.name, record["attempt"], record["state"], record["last_heartbeat"],
                                 record["last_checkpoint"]))

    @staticmethod
    def durable_after(t: Transition) -> bool:
        return t.target in TERMINAL


def status_record(*, spec, state: State, attempts: list[Attempt], earlier: list[dict], budget: RestartBudget,
                  seen: LastSeen, supervisor_pid: int, started: float, updated: float, exit_code: int | None,
                  message: str, remote, spare, placement, ranks, memory=None) -> dict:
    """status.json, from the run's parts (what `traind status` and the service read)."""
    a = attempts[-1] if attempts else None
    return {
        "name": spec.name, "spec": str(spec.source), "run_dir": str(spec.run_dir),
        "state": state.value, "attempt": None if a is None else a.number,
        "restarts": max(0, len(attempts) - 1), "failures_in_window": len(budget.failure_times),
        "supervisor_pid": supervisor_pid, "pid": None if a is None or a.exit is not None else a.pid,
        "started": started, "updated": updated,
        "last_heartbeat": seen.heartbeat, "last_checkpoint": seen.checkpoint,
        "last_failure": seen.failure, "exit_code": exit_code, "message": message or None,
        "attempts": (earlier + [x.summary() for x in attempts])[-20:],
        "remote": remote, "spare": spare, "memory_tier": memory,
        **({} if placement is None else {"node_rank": placement.node_rank, "ranks": ranks}),
    }
