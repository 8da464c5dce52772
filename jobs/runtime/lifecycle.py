"""The job's lifecycle inside one process: an explicit Enum, one transition function, and the
edge where traind's own failures become one line and an exit code."""
from __future__ import annotations

import contextlib
import sys
from enum import Enum

from traind.contract import exitcodes
from traind.contract.errors import IllegalTransition, TraindError


class Preempted(SystemExit):
    """Raised after the emergency checkpoint is durable: the process exits 75 (resumable)."""

    def __init__(self, step: int, reason: str) -> None:
        super().__init__(exitcodes.PREEMPTED)
        self.step, self.reason = step, reason


class Phase(Enum):
    """STARTING -> TRAINING -> FINISHING -> DONE; STARTING|TRAINING -> STOPPING -> PREEMPTED;
    any phase -> FAILED when an exception escapes the user's code or a save."""
    STARTING = "starting"
    TRAINING = "training"
    STOPPING = "stopping"
    FINISHING = "finishing"
    DONE = "done"
    PREEMPTED = "preempted"
    FAILED = "failed"


class Event(Enum):
    RESTORED = "restored"
    STOP_REQUESTED = "stop requested"
    FINISHED = "finished"
    SAVED = "saved"
    ERROR = "error"


def transition(phase: Phase, event: Event) -> Phase:
    if event is Event.ERROR:
        return Phase.FAILED                                   # any -> FAILED
    if phase is Phase.STARTING and event is Event.RESTORED:
        return Phase.TRAINING                                 # STARTING -> TRAINING
    if phase in (Phase.STARTING, Phase.TRAINING) and event is Event.STOP_REQUESTED:
        return Phase.STOPPING                                 # -> STOPPING (emergency save)
    if phase is Phase.TRAINING and event is Event.FINISHED:
        return Phase.FINISHING                                # TRAINING -> FINISHING (final save)
    if phase is Phase.STOPPING and event is Event.SAVED:
        return Phase.PREEMPTED                                # STOPPING -> PREEMPTED (exit 75)
    if phase is Phase.FINISHING and event is Event.SAVED:
        return Phase.DONE                                     # FINISHING -> DONE (exit 0)
    raise IllegalTransition(f"illegal session transition: {phase.value} on {event.value}")


@contextlib.contextmanager
def one_line_errors(report=None):
    """Our own failures (locked run dir, bad $TRAIND_CHECKPOINT, disk full, a resume point that
    cannot be loaded) end the job with one line and their exit code; the user's exceptions keep
    their traceback. `report(message)` also tells the supervisor that one line."""
    try:
        yield
    except TraindError as err:
        print(f"traind: {err}", file=sys.stderr)
        if report is not None:
            report(str(err))
        raise SystemExit(err.exit_code) from None
