"""What the supervisor records about each attempt and how a run ended (plain values, stdlib only)."""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from traind.supervisor.osproc import ExitStatus
from traind.supervisor.states import State


@dataclass
class Outcome:
    """How an emergency stop ended; given to the follow-up (SLURM requeue, ...)."""
    trigger: str                      # "SIGTERM", "SIGUSR1", "request: <reason>", ...
    checkpoint_committed: bool        # an emergency checkpoint committed during the stop
    checkpoint_step: int | None       # the resume point now (latest valid checkpoint)
    exit: ExitStatus | None           # the child's, None if no child was running
    attempt: int


@dataclass
class Attempt:
    number: int
    pid: int | None = None
    resume_step: int | None = None
    spoke: bool = False
    last_message_at: float | None = None
    first_beat: tuple[float, int] | None = None   # (monotonic, step) to compute the step rate
    last_step: int | None = None
    exit: ExitStatus | None = None
    reason: str | None = None

    def summary(self) -> dict:
        return {"attempt": self.number, "pid": self.pid, "resume_step": self.resume_step,
                "last_step": self.last_step, "exit": None if self.exit is None else self.exit.describe(),
                "reason": self.reason}


@dataclass
class RunResult:
    exit_code: int
    state: State
    message: str
    attempts: list[dict] = field(default_factory=list)


def as_int(value) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def step_rate(a: Attempt, now: float, step: int | None) -> float | None:
    if a.first_beat is None or step is None or now <= a.first_beat[0]:
        return None
    return round((step - a.first_beat[1]) / (now - a.first_beat[0]), 3)


def fmt_seconds(value) -> str:
    return f"{value:.2f}s" if isinstance(value, (int, float)) else "time unknown"


def json_line(obj) -> str:
    return json.dumps(obj, separators=(",", ":"))

