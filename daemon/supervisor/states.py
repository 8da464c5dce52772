"""The supervised job's lifecycle: one Enum and one pure transition function. Stdlib only.

Legal edges (each branch of `transition` names the one it takes):

    STARTING    -> RUNNING       the child spoke on the control channel (hello / heartbeat), or
                                 it runs on without speaking (a job without traind's job side)
    STARTING    -> FAILED        the command could not be started
    STARTING|RUNNING -> STOPPING     a stop was requested (signal, request_stop) or the child hung
                                     (RUNNING: no message; STARTING: no hello in start-up time)
    STARTING|RUNNING|STOPPING -> SUCCEEDED   the child exited 0
    STOPPING    -> PREEMPTED     the child exited after a requested stop (checkpoint or not); also
                                 exit 0 from a child that never spoke the channel (a plain
                                 Lightning/torchrun/shell job): it stopped because we asked
    STARTING|RUNNING -> STARTING     the child exited 75 on its own (preempted directly): restart now
                                     (unless it keeps doing so without progress: then it is a crash)
    STARTING|RUNNING -> STARTING     the child could not load its resume point (exit 65): that
                                     checkpoint is set aside, restart at once from the previous one
    STARTING|RUNNING -> FAILED       the child keeps failing the same way before its first step
    STARTING|RUNNING|STOPPING -> BACKING_OFF  a crash (or a hang) with restart budget left
    STARTING|RUNNING|STOPPING -> FAILED       a crash with a do-not-retry code, or no budget left
    BACKING_OFF -> STARTING      the backoff delay elapsed
    BACKING_OFF -> PREEMPTED     a stop was requested while no child runs

SUCCEEDED, PREEMPTED and FAILED are terminal. Anything else returns None: nothing happens (e.g. a
second SIGTERM while STOPPING must not skip the emergency checkpoint).
"""
from __future__ import annotations

import enum
from dataclasses import dataclass

from ..contract import exitcodes


class State(str, enum.Enum):
    STARTING = "starting"        # child spawned, not heard from yet
    RUNNING = "running"          # child has spoken on the channel, or runs on without speaking
    STOPPING = "stopping"        # emergency checkpoint requested, waiting up to the grace period
    BACKING_OFF = "backing_off"  # no child; waiting before the next attempt
    SUCCEEDED = "succeeded"
    PREEMPTED = "preempted"      # stopped on request; resumable (exit 75 by default)
    FAILED = "failed"


TERMINAL = frozenset({State.SUCCEEDED, State.PREEMPTED, State.FAILED})
CHILD_ALIVE = frozenset({State.STARTING, State.RUNNING, State.STOPPING})


class Trigger(str, enum.Enum):
    CHILD_SPOKE = "child_spoke"
    SILENT_RUNNING = "silent_running"   # alive a while after its start, never spoke, none expected
    SPAWN_FAILED = "spawn_failed"
    STOP_REQUESTED = "stop_requested"
    HANG_DETECTED = "hang_detected"
    CHILD_EXITED = "child_exited"
    BACKOFF_ELAPSED = "backoff_elapsed"


PREEMPTED_EXIT = exitcodes.PREEMPTED  # the job's own "I checkpointed and stopped" code


@dataclass(frozen=True)
class Facts:
    """What the supervisor knows when the trigger arrives (only CHILD_EXITED reads it)."""
    exit_code: int | None = None      # None when killed by a signal
    stop_requested: bool = False      # a signal or request_stop asked for this stop (not a hang)
    no_retry: bool = False            # exit code is in restart.no_retry_exit_codes
    budget_left: bool = True          # failures in the window (this one included) <= max_restarts
    self_stop_ok: bool = True         # an unasked exit 75 may restart at once (False: it loops)
    resume_point_unusable: bool = False  # exit 65 and the resume point was set aside
    never_starts: bool = False        # failed before its first step the same way, too many times
    silent: bool = False              # never spoke on the control channel (cannot say it finished)


@dataclass(frozen=True)
class Transition:
    source: State
    target: State
    edge: str   # short, human: goes to events.jsonl and the log


def transition(state: State, trigger: Trigger, facts: Facts = Facts()) -> Transition | None:
    def edge(target: State, name: str) -> Transition:
        return Transition(state, target, name)

    if state in TERMINAL:
        return None
    if trigger is Trigger.SPAWN_FAILED and state is State.STARTING:
        return edge(State.FAILED, "command could not be started")              # STARTING -> FAILED
    if trigger is Trigger.CHILD_SPOKE and state is State.STARTING:
        return edge(State.RUNNING, "child spoke on the control channel")       # STARTING -> RUNNING
    if trigger is Trigger.SILENT_RUNNING and state is State.STARTING:
        return edge(State.RUNNING, "runs without speaking traind's channel")   # STARTING -> RUNNING
    if trigger is Trigger.STOP_REQUESTED:
        if state in (State.STARTING, State.RUNNING):
            return edge(State.STOPPING, "stop requested")                       # * -> STOPPING
        if state is State.BACKING_OFF:
            return edge(State.PREEMPTED, "stop requested while backing off")   # BACKING_OFF -> PREEMPTED
        return None                                                             # already STOPPING
    if trigger is Trigger.HANG_DETECTED and state is State.RUNNING:
        return edge(State.STOPPING, "no heartbeat: hang")                       # RUNNING -> STOPPING
    if trigger is Trigger.HANG_DETECTED and state is State.STARTING:
        return edge(State.STOPPING, "no hello: hang in start-up")               # STARTING -> STOPPING
    if trigger is Trigger.BACKOFF_ELAPSED and state is State.BACKING_OFF:
        return edge(State.STARTING, "backoff elapsed")                          # BACKING_OFF -> STARTING
    if trigger is Trigger.CHILD_EXITED and state in CHILD_ALIVE:
        return _child_exited(state, facts, edge)
    return None


def _child_exited(state: State, f: Facts, edge) -> Transition:
    if f.exit_code == 0 and state is State.STOPPING and f.stop_requested and f.silent:
        return edge(State.PREEMPTED, "child stopped on request (exit 0)")      # STOPPING -> PREEMPTED
    if f.exit_code == 0:
        return edge(State.SUCCEEDED, "child finished")                         # * -> SUCCEEDED
    if state is State.STOPPING and f.stop_requested:
        return edge(State.PREEMPTED, "child stopped on request")               # STOPPING -> PREEMPTED
    if f.exit_code == PREEMPTED_EXIT and state is not State.STOPPING and f.self_stop_ok:
        return edge(State.STARTING, "child preempted itself: restart at once")  # -> STARTING
    if f.resume_point_unusable and state is not State.STOPPING:
        return edge(State.STARTING, "resume point unusable: fall back")        # -> STARTING
    if f.no_retry:
        return edge(State.FAILED, "do-not-retry exit code")                    # * -> FAILED
    if f.never_starts:
        return edge(State.FAILED, "fails the same way before its first step")  # * -> FAILED
    if not f.budget_left:
        return edge(State.FAILED, "restart budget exhausted")                  # * -> FAILED
    return edge(State.BACKING_OFF, "hang" if state is State.STOPPING else "crash")  # * -> BACKING_OFF
