"""The job's lifecycle inside one process: an explicit Enum, one transition function, the one
emergency and final sequences every way in runs (Session, the Trainer on it, the Lightning
callback), and the edge where traind's own failures become one line and an exit code."""
from __future__ import annotations

import contextlib
import os
import sys
from enum import Enum
from typing import Protocol

from traind.contract import exitcodes, protocol
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


class Ending(Protocol):
    """What a way in gives the two sequences below."""
    phase: Phase
    clock: object

    def say(self, line: str) -> None: ...          # one console line
    def send(self, msg_type: str, **fields) -> None: ...   # to the supervisor (if any)
    def flush_saves(self) -> None: ...             # wait for the in-flight save; raise its failure
    def save_now(self, reason: str) -> None: ...   # a blocking save of this step, unless it is durable
    def shut_down(self) -> None: ...               # close the engine, the channel and the logs


def stop_with_emergency_checkpoint(job: Ending, step: int, reason: str, *, exit_at_once: bool):
    """The stop: the in-flight save first (its failure only said), then the emergency checkpoint,
    durable, STOPPING to the supervisor, and exit 75: at once with os._exit (interpreter and
    DataLoader teardown took 0.6-1.7 s here, time a 30 s preemption notice can't spare), or by
    raising Preempted so the caller's own `finally` blocks run."""
    job.phase = transition(job.phase, Event.STOP_REQUESTED)
    job.say(f"stop requested ({reason}): emergency checkpoint at step {step}")
    started = job.clock.monotonic()
    try:
        job.flush_saves()
    except TraindError as err:
        job.say(f"the in-flight checkpoint failed ({err}); writing the emergency one")
    job.save_now(protocol.REASON_EMERGENCY)
    job.phase = transition(job.phase, Event.SAVED)
    job.send(protocol.STOPPING, reason=reason, step=step)
    job.shut_down()
    job.say(f"emergency checkpoint at step {step} durable after "
            f"{job.clock.monotonic() - started:.2f} s; exiting {exitcodes.PREEMPTED}")
    if exit_at_once:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(exitcodes.PREEMPTED)
    raise Preempted(step, reason)


def finish_with_final_checkpoint(job: Ending) -> None:
    """The end of training: the in-flight save, then the final checkpoint (unless this very step
    is durable already). Shutting down is the caller's, once the framework is done."""
    job.phase = transition(job.phase, Event.FINISHED)
    job.flush_saves()
    job.save_now(protocol.REASON_FINAL)
    job.phase = transition(job.phase, Event.SAVED)
