"""The supervisor's records: every state change, event and status rewrite, in one place.

A mixin of `Supervisor` (loop.py), which owns the flow; this part only writes down what happened:
the log line, events.jsonl and status.json (through `Recorder`) and the live terminal line.
"""
from __future__ import annotations

import os

from .osproc import ExitStatus
from .states import TERMINAL, Transition
from .terminal import live_text


class Records:
    # --- records ----------------------------------------------------------------------------------
    def _apply(self, t: Transition | None, *, reason: str | None = None, exit_status: ExitStatus | None = None,
               checkpoint_step: int | None = None) -> None:
        if t is None:
            return
        self.state = t.target
        last_step = self.attempts[-1].last_step if exit_status is not None and self.attempts else None
        self._event("transition", source=t.source.value, target=t.target.value, edge=t.edge, reason=reason,
                    last_step=last_step,
                    exit_status=exit_status, checkpoint_step=checkpoint_step)
        detail = f" ({exit_status.describe()})" if exit_status else (f" ({reason})" if reason else "")
        self.say(f"{t.source.value} -> {t.target.value}: {t.edge}{detail}")
        self._write_status(durable=t.target in TERMINAL)

    def _event(self, kind: str, *, exit_status: ExitStatus | None = None, durable: bool = False, **fields) -> None:
        a = self.attempts[-1] if self.attempts else None
        self.records.event(kind, attempt=None if a is None else a.number, state=self.state.value,
                           exit_status=exit_status, durable=durable, **fields)

    def _write_status(self, durable: bool = False) -> None:
        self.status_dirty = False
        a = self.attempts[-1] if self.attempts else None
        self.records.status({
            "name": self.spec.name, "spec": str(self.spec.source), "run_dir": str(self.spec.run_dir),
            "state": self.state.value, "attempt": None if a is None else a.number,
            "restarts": max(0, len(self.attempts) - 1), "failures_in_window": len(self.budget.failure_times),
            "supervisor_pid": os.getpid(), "pid": None if a is None or a.exit is not None else a.pid,
            "started": self.started_wall, "updated": self.os.wall(),
            "last_heartbeat": self.seen.heartbeat, "last_checkpoint": self.seen.checkpoint,
            "last_failure": self.seen.failure, "exit_code": self.exit_code, "message": self.message or None,
            "attempts": (self.earlier_attempts + [x.summary() for x in self.attempts])[-20:],
            "remote": self.mirror.status(),
            "spare": self.spares.summary(),
            **({} if self.placement is None else {
                "node_rank": self.placement.node_rank, "ranks": self.group.summary(self.os.monotonic())}),
        }, durable=durable)
        if self._live is not None:
            self._live(live_text(self.spec.name, None if a is None else a.number, self.state.value,
                                 self.seen.heartbeat, self.seen.checkpoint))

    def say(self, text: str) -> None:
        a = self.attempts[-1] if self.attempts else None
        self._log(f"traind[{self.spec.name}{'' if a is None else f' #{a.number}'}]: {text}")
