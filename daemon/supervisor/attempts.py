"""What the supervisor records about each attempt and how a run ended (plain values, stdlib only)."""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field

from ..contract import exitcodes, protocol
from .osproc import ExitStatus
from .states import State


MAX_IDLE_SELF_STOPS = 2       # exits with 75 in a row, unasked and without progress, before they count


@dataclass
class Outcome:
    """How an emergency stop ended; given to the follow-up (SLURM requeue, ...)."""
    trigger: str                      # "SIGTERM", "SIGUSR1", "request: <reason>", ...
    checkpoint_committed: bool        # an emergency checkpoint committed during the stop
    checkpoint_step: int | None       # the resume point now (latest valid checkpoint)
    exit: ExitStatus | None           # the child's, None if no child was running
    attempt: int

    def words(self) -> str:
        if self.checkpoint_committed and self.checkpoint_step is not None:
            return f"emergency checkpoint committed at step {self.checkpoint_step}"
        point = "none" if self.checkpoint_step is None else f"step {self.checkpoint_step}"
        if self.exit is not None and self.exit.code == exitcodes.PREEMPTED:
            if self.checkpoint_step is None:
                return "the job exited 75 itself; traind holds no checkpoint of it"
            return f"the job exited 75 without committing a newer checkpoint; resume point {point}"
        return f"no emergency checkpoint committed; resume point {point}"


@dataclass
class Attempt:
    number: int
    pid: int | None = None
    resume_step: int | None = None
    resume_path: str | None = None
    spoke: bool = False
    times_checkpoints: bool = False    # its hello said it decides every_seconds itself
    started_at: float | None = None    # monotonic, at the spawn
    final_committed: bool = False      # the job committed its "final" checkpoint: training is done
    first_beat: tuple[float, int] | None = None   # (monotonic, step) to compute the step rate
    last_step: int | None = None
    exit: ExitStatus | None = None
    reason: str | None = None

    def summary(self) -> dict:
        return {"attempt": self.number, "pid": self.pid, "resume_step": self.resume_step,
                "last_step": self.last_step, "exit": None if self.exit is None else self.exit.describe(),
                "reason": self.reason}


def startup_deadline(attempts: list[Attempt], health) -> float | None:
    """When the current attempt is hung in start-up: it should say hello (an earlier attempt spoke,
    or health.expects_hello) and has not within health.startup_timeout_seconds of its start."""
    a, timeout = (attempts[-1] if attempts else None), health.startup_timeout_seconds
    if (timeout is None or a is None or a.spoke or a.exit is not None or a.started_at is None
            or not (health.expects_hello or any(x.spoke for x in attempts[:-1]))):
        return None
    return a.started_at + timeout


def silent_running_at(attempts: list[Attempt], health, state: State) -> float | None:
    """When a STARTING attempt that is not expected to speak (see startup_deadline) counts as
    running: health.silent_running_seconds after its start, if it is alive and has not spoken."""
    a = attempts[-1] if attempts else None
    if (state is not State.STARTING or a is None or a.spoke or a.exit is not None or a.started_at is None
            or startup_deadline(attempts, health) is not None):
        return None
    return a.started_at + health.silent_running_seconds


@dataclass
class Deadlines:
    """The supervisor's monotonic deadlines; None: not set."""
    stop: float | None = None              # grace over: SIGKILL the group
    backoff_until: float | None = None     # the next attempt starts
    next_checkpoint: float | None = None   # checkpoint_now, for a job that does not time its own


@dataclass
class RestartBudget:
    """What decides whether a failed attempt is retried, and after how long."""
    failure_times: list[float] = field(default_factory=list)   # monotonic: max_restarts in window_seconds
    consecutive_failures: int = 0          # drives the backoff; progress resets it
    idle_self_stops: int = 0               # exits with 75 in a row, unasked and without progress

    def self_stop_ok(self, self_stop: bool, progressed: bool) -> bool:
        """A job may stop itself with 75 (it was preempted directly): restart at once, no failure.
        MAX_IDLE_SELF_STOPS in a row without a newer checkpoint is a loop, not a preemption."""
        self.idle_self_stops = 0 if not self_stop or progressed else self.idle_self_stops + 1
        return self_stop and self.idle_self_stops < MAX_IDLE_SELF_STOPS

    def failed(self, now: float, window_seconds: float) -> None:
        """A crash now: the failures within the window are what max_restarts counts."""
        self.failure_times = [t for t in self.failure_times if now - t <= window_seconds] + [now]


@dataclass
class LastSeen:
    """The latest of each, as status.json shows them (dicts)."""
    heartbeat: dict | None = None
    checkpoint: dict | None = None
    failure: dict | None = None
    grace_warned: bool = False

    def beat(self, msg: dict, step: int | None, rate: float | None, wall: float) -> None:
        self.heartbeat = {"step": step, "epoch": msg.get("epoch"), "metrics": msg.get("metrics") or {},
                          "time": wall, "total": as_int(msg.get("total")), "steps_per_second": rate}

    def grace_too_short(self, grace: float) -> list[str]:
        """Once per run: a warning when a step plus a save (the last one's duration) cannot fit the
        stop's grace: a stop then ends in SIGKILL and the step in progress is lost."""
        rate = (self.heartbeat or {}).get("steps_per_second")
        save = (self.checkpoint or {}).get("seconds")
        save = save if isinstance(save, (int, float)) else 0.0
        if self.grace_warned or not rate or 1 / rate + save <= grace:
            return []
        self.grace_warned = True
        return [f"warning: a step takes {1 / rate:.1f} s and a save {save:.1f} s, more than "
                f"preemption.grace_seconds ({grace:g} s): a stop will be SIGKILLed before its emergency checkpoint"]

    def past_grace(self) -> str:
        """What a SIGKILL at the end of the grace costs, in words."""
        rate = (self.heartbeat or {}).get("steps_per_second")
        step = (self.checkpoint or {}).get("step")
        took = f"a step takes {1 / rate:.1f} s; " if rate else ""
        return f" ({took}the resume point stays the last committed checkpoint, step {step})" if step is not None \
            else f" ({took}no checkpoint committed yet)"

    def committed(self, msg: dict, step: int | None, wall: float) -> bool:
        """A CHECKPOINT message; True when its step is past the last heartbeat's (the final one),
        which then shows that step."""
        self.checkpoint = {**{k: msg.get(k) for k in ("step", "path", "reason", *protocol.CHECKPOINT_COSTS)},
                           "bytes": as_int(msg.get("bytes")), "time": wall}
        if step is None or not self.heartbeat or (self.heartbeat.get("step") or 0) >= step:
            return False
        self.heartbeat = {**self.heartbeat, "step": step, "time": wall}
        return True


@dataclass
class RunResult:
    exit_code: int
    state: State
    message: str
    attempts: list[dict] = field(default_factory=list)


def as_int(value) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


MIN_RATE_SPAN_SECONDS = 2.0   # heartbeats read in one batch share a receive time: never divide by ~0


def step_rate(a: Attempt, now: float, step: int | None, reported=None) -> float | None:
    """Steps per second: the job's own figure (its clock), else from our receive times, once
    they span long enough to mean something."""
    if isinstance(reported, (int, float)) and not isinstance(reported, bool) and math.isfinite(reported):
        return round(float(reported), 3)
    if a.first_beat is None or step is None or now - a.first_beat[0] < MIN_RATE_SPAN_SECONDS:
        return None
    return round((step - a.first_beat[1]) / (now - a.first_beat[0]), 3)


def backoff_delay(policy, failures_in_a_row: int, rand: float) -> float:
    """Exponential backoff with +-jitter (rand in [0, 1)), capped at policy.max_seconds."""
    exponent = max(0, failures_in_a_row - 1)
    if policy.initial_seconds <= 0:
        base = 0.0
    elif policy.factor > 1 and exponent * math.log(policy.factor) >= math.log(max(policy.max_seconds, 1e-9)
                                                                              / policy.initial_seconds):
        base = policy.max_seconds          # capped: factor ** exponent would overflow a float after ~1000
    else:
        base = min(policy.max_seconds, policy.initial_seconds * policy.factor ** exponent)
    return max(0.0, base * (1 + policy.jitter * (2 * rand - 1)))


class StartupGuard:
    """Tells a job that can never start (an import error, a missing file: retrying for minutes
    helps nobody) from one that crashes: `limit` attempts in a row died before speaking, the same
    way (exit status + last output line), within the restart window (failures spread wider apart
    are the budget's business)."""

    def __init__(self, limit: int, window: float):
        self.limit, self.window = limit, window
        self.history: list[tuple[float, str]] = []     # (when, how) attempts in a row died before speaking

    def never_starts(self, a: Attempt, status: ExitStatus, last_line: str, now: float) -> bool:
        if a.spoke or not last_line.strip():
            # Spoke: it did start. Said nothing at all: no evidence that the attempts failed alike
            # (each was killed from outside before its first line, say); the restart budget decides.
            self.history.clear()
            return False
        self.history.append((now, f"{status.describe()}: {_without_rank(last_line)}"))
        recent = self.history[-self.limit:] if self.limit else []
        return (bool(recent) and len(recent) == self.limit and len({why for _, why in recent}) == 1
                and recent[-1][0] - recent[0][0] <= self.window)


def _without_rank(line: str) -> str:
    """The failure a rank's line tells, without which rank told it: the ranks of a group failing
    alike end their logs with "[rank0]: X" or "[rank1]: X" (torch), "[default1]:X" (torchrun)."""
    return _RANK_PREFIX.sub("", line)


_RANK_PREFIX = re.compile(r"^\[(?:rank|default)\d+\]:\s*")


def fmt_seconds(value) -> str:
    return f"{value:.2f}s" if isinstance(value, (int, float)) else "time unknown"


def json_line(obj) -> str:
    return json.dumps(obj, separators=(",", ":"))

