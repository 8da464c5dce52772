"""`traind run`: supervise one job until it succeeds, fails for good, or is stopped.

One loop, in a fixed order: (1) act on deadlines that passed (backoff, grace, hang, a periodic
checkpoint), (2) block in `os.wait()` until an event or the next deadline, (3) handle each event.
Every state change goes through `states.transition` and `_apply`, which hands the values to the
journal (records.py: log line, events.jsonl, status.json). Every OS effect goes through `self.os`.
A group of ranks is one child (group.py).
"""
from __future__ import annotations

import os
import signal
import sys
from dataclasses import replace
from typing import Callable

from ..contract import protocol
from ..contract.exitcodes import FAILED, OK, PREEMPTED, UNUSABLE_CHECKPOINT
from . import distributed, memory as memory_tier, mirror as remote_mirror
from .group import DONE, KILL_REST, STOP_SIGNALS, RankGroup
from .attempts import (Attempt, Deadlines, LastSeen, Outcome, RestartBudget, RunResult, StartupGuard, as_int,
                       backoff_delay, fmt_seconds, json_line, silent_running_at, startup_deadline, step_rate)
from .osproc import (BadMessage, ChildExited, ChildMessage, ExitStatus, RealOS, SignalArrived,
                                      SpareExited, SpareReady, SpawnFailure, StopRequested, signal_name)
from .records import Journal, status_record
from .runfiles import Recorder, RunFiles, RunLock
from .resume import ResumePoints, find_resume_point
from .os_interface import SupervisorOS
from .spare import Spares
from .spec import JobSpec, signal_numbers
from .states import TERMINAL, Facts, State, Trigger, transition

CHANNEL_BATCH_SECONDS = 1.0   # while RUNNING the channel is read at most this often (wakeups <= 1/s)


class Supervisor:
    def __init__(self, spec: JobSpec, *, os_: SupervisorOS | None = None, followup: Callable[[Outcome], int] | None = None,
                 find_resume=find_resume_point, log: Callable[[str], None] | None = None,
                 live: Callable[[str], None] | None = None):
        self.spec = spec
        self.os = os_ if os_ is not None else RealOS()
        self.followup = followup or (lambda outcome: PREEMPTED)
        self.placement = None if spec.distributed is None else distributed.place(spec.distributed, spec.name, source=spec.source)
        # checkpoint.remote (mirror.py): the shared checkpoints dir is mirrored once, by node 0
        self.mirror = remote_mirror.attach(spec if self.placement is None or self.placement.node_rank == 0 else
                                           replace(spec, checkpoint=replace(spec.checkpoint, remote=None)),
                                           self.say, self._event)
        self.tier = memory_tier.attach(spec, self.say, self._event, self.mirror)   # checkpoint.memory
        self.resume = ResumePoints(spec.run_dir, self.tier.resume_finder(self.mirror.resume_finder(find_resume)), self.say, self._event)
        self.node_dir = spec.run_dir if self.placement is None else self.placement.node_dir(spec.run_dir)
        self.group = RankGroup(1, 0.0)
        self.files = RunFiles(self.node_dir)
        # live: redraws one status line on a terminal (None: plain lines only)
        self.journal = Journal(spec.name, lambda say: Recorder(self.files, self.os.wall, say),
                               log or (lambda line: print(line, file=sys.stderr, flush=True)), live)
        self.spares = Spares(spec.restart.warm_spare, self.os, self.files, self.say, self._event)
        self.state = State.STARTING
        self.attempts: list[Attempt] = []
        self.budget, self.deadlines, self.seen = RestartBudget(), Deadlines(), LastSeen()
        self.stop_trigger: str | None = None    # set by a signal / request_stop (not by a hang)
        self.killed = self.emergency_committed = self.status_dirty = False
        self.exit_code, self.message, self.attempt_base, self.last_drain, self.started_wall = None, "", 0, 0.0, 0.0
        self.earlier_attempts: list[dict] = []
        self.startup_guard = StartupGuard(spec.restart.max_startup_failures, spec.restart.window_seconds)
        self.stop_signals = signal_numbers(spec.preemption.signals) | {signal.SIGTERM, signal.SIGINT}

    # --- public -----------------------------------------------------------------------------------
    def request_stop(self, reason: str) -> None:
        """Thread-safe: same path as SIGUSR1 (emergency checkpoint, then the follow-up)."""
        self.os.request_stop(reason)

    def run(self) -> RunResult:
        self.files.create()
        lock = self.lock = RunLock(self.node_dir).acquire()
        self.attempt_base = self.files.attempts_so_far()   # numbering goes on across `traind run`s
        self.earlier_attempts = self.files.earlier_attempts()   # ... and so does the status's list
        self.os.install_signal_handlers(sorted(self.stop_signals))
        self.started_wall = self.os.wall()
        self.say(f"supervising {' '.join(self.spec.command)} (run dir {self.spec.run_dir}, pid {os.getpid()})")
        try:
            self._spawn_attempt()
            while self.state not in TERMINAL:
                self._act_on_deadlines(self.os.monotonic())
                if self.state in TERMINAL:
                    break
                now = self.os.monotonic()
                listen = self.state is not State.RUNNING or now - self.last_drain >= CHANNEL_BATCH_SECONDS
                events = self.os.wait(self._timeout(now), listen_channel=listen)
                self.last_drain = self.os.monotonic()
                for event in events:
                    self._handle(event)
                if self.status_dirty:       # heartbeats of one batch: one status.json write
                    self._write_status()
        finally:
            self.os.restore_signal_handlers()
            lock.release()
        return RunResult(self.exit_code, self.state, self.message, [a.summary() for a in self.attempts])

    # --- the loop's pieces --------------------------------------------------------------------------
    def _timeout(self, now: float) -> float | None:
        deadlines = [d for d in (self.deadlines.backoff_until, self.deadlines.stop if not self.killed else None,
                                 self._hang_deadline(), self.deadlines.next_checkpoint, self.group.kill_at,
                                 self._rendezvous_deadline(),
                                 silent_running_at(self.attempts, self.spec.health, self.state)) if d is not None]
        if self.state is State.RUNNING:
            deadlines.append(self.last_drain + CHANNEL_BATCH_SECONDS)   # the batched channel read
        elif self.state in (State.STARTING, State.STOPPING):
            deadlines.append(now + CHANNEL_BATCH_SECONDS)               # echo the child's log
        return None if not deadlines else max(0.0, min(deadlines) - now)

    def _hang_deadline(self) -> float | None:
        if self.state is State.STARTING:
            return startup_deadline(self.attempts, self.spec.health)
        timeout = self.spec.health.hang_timeout_seconds
        quiet_since = self.group.quiet_since()      # the quietest rank (the only one, without distributed:)
        if timeout is None or self.state is not State.RUNNING or quiet_since is None:
            return None
        return quiet_since + timeout

    def _rendezvous_deadline(self) -> float | None:
        if self.placement is not None and not self.killed and self.state in (State.STARTING, State.RUNNING):
            return distributed.rendezvous_deadline(self.attempts, self.group, self.spec.distributed)

    def _act_on_deadlines(self, now: float) -> None:
        rendezvous = self._rendezvous_deadline()
        if rendezvous is not None and now >= rendezvous:
            silent = [r for r, v in self.group.ranks.items() if v.last_message_at is None]
            self.attempts[-1].reason = (f"ranks {silent} did not start within {rendezvous - self.attempts[-1].started_at:g}s"
                                        ": another node of the group did not join the rendezvous")
            self.say(f"{self.attempts[-1].reason}; SIGKILL to the group")
            self.killed = True
            self.os.signal_group(signal.SIGKILL)
        if self.group.stragglers_overdue(now):
            self.say(f"rank {self.group.late} still runs {self.group.exit_timeout:g}s after another rank exited: "
                     "SIGKILL to the group")
            self.os.signal_group(signal.SIGKILL)
        if self.state is State.BACKING_OFF and self.deadlines.backoff_until is not None and now >= self.deadlines.backoff_until:
            self.deadlines.backoff_until = None
            self._apply(transition(self.state, Trigger.BACKOFF_ELAPSED))
            self._spawn_attempt()
        elif self.state is State.STOPPING and not self.killed and now >= self.deadlines.stop:
            self.say(f"grace period of {self.spec.preemption.grace_seconds:g}s over: SIGKILL to the process group"
                     + self.seen.past_grace())
            self.killed = True
            self.os.signal_group(signal.SIGKILL)
        elif self.state in (State.STARTING, State.RUNNING):
            hang = self._hang_deadline()
            if hang is not None and now >= hang:
                self.attempts[-1].reason = "hang"
                why = (f"no message for {self.spec.health.hang_timeout_seconds:g}s" if self.state is State.RUNNING
                       else f"no hello {self.spec.health.startup_timeout_seconds:g}s after the start")
                self._apply(transition(self.state, Trigger.HANG_DETECTED), reason=why)
                self._enter_stopping("hang")
            elif (silent := silent_running_at(self.attempts, self.spec.health, self.state)) and now >= silent:
                self._apply(transition(self.state, Trigger.SILENT_RUNNING))
            elif self.deadlines.next_checkpoint is not None and now >= self.deadlines.next_checkpoint:
                self.os.send(protocol.CHECKPOINT_NOW, reason=protocol.REASON_PERIODIC)
                self.deadlines.next_checkpoint = now + self.spec.checkpoint.every_seconds

    def _handle(self, event) -> None:
        if isinstance(event, SignalArrived):
            if event.signo in self.stop_signals:
                self._stop(signal_name(event.signo))
        elif isinstance(event, StopRequested):
            self._stop(f"request: {event.reason}")
        elif isinstance(event, ChildMessage):
            self._on_message(event.msg, event.rank)
        elif isinstance(event, BadMessage):
            self.say(f"ignoring a malformed control message: {event.error}")
        elif isinstance(event, (SpareReady, SpareExited)):
            self.spares.on_event(event)
        elif isinstance(event, ChildExited):
            self._on_rank_exit(event)

    def _stop(self, trigger: str) -> None:
        if self.state is State.STOPPING:
            left = max(0.0, self.deadlines.stop - self.os.monotonic())
            if self.stop_trigger is None:   # a hang stop becomes a requested stop: no restart after
                self.stop_trigger = trigger
            self.say(f"{trigger}: already stopping; waiting for the emergency checkpoint ({left:.0f}s of grace left)")
            return
        self.stop_trigger = trigger
        t = transition(self.state, Trigger.STOP_REQUESTED)
        self._apply(t, reason=trigger)
        if t is not None and t.target is State.STOPPING:
            self._enter_stopping(trigger)
        elif t is not None:  # nothing running (backing off): the latest valid checkpoint is the resume point
            self.deadlines.backoff_until = None
            self._finish_preempted(exit_status=None)

    def _enter_stopping(self, why: str) -> None:
        a = self.attempts[-1]
        self.spares.discard()
        self.deadlines.stop = self.os.monotonic() + self.spec.preemption.grace_seconds
        self.killed = self.emergency_committed = False
        self.deadlines.next_checkpoint = None
        sent = self.os.send(protocol.CHECKPOINT_AND_STOP, reason=why)
        if not a.spoke:   # may not speak the channel at all: the classic way too
            self.os.signal_group(signal.SIGTERM)
            self.say(f"{why}: asked for an emergency checkpoint on the channel and sent SIGTERM to the group "
                     f"(it has not spoken traind's channel); grace {self.spec.preemption.grace_seconds:g}s")
        else:
            self.say(f"{why}: asked the child for an emergency checkpoint"
                     f"{'' if sent else ' (channel closed)'}; grace {self.spec.preemption.grace_seconds:g}s")

    def _on_message(self, msg: dict, rank: int = 0) -> None:
        a = self.attempts[-1] if self.attempts else None
        if a is None or a.exit is not None:
            return
        now = self.os.monotonic()
        kind = msg.get("type")
        self.group.heard(rank, now, pid=msg.get("pid") if kind == protocol.HELLO else None,
                         step=as_int(msg.get("step")) if kind == protocol.HEARTBEAT else None)
        if rank != 0 and kind in (protocol.HEARTBEAT, protocol.HELLO, protocol.STOPPING):
            self.status_dirty = kind == protocol.HEARTBEAT or self.status_dirty
            return      # the group's progress is rank 0's; the others' is in status.json's "ranks"
        if kind == protocol.HELLO and msg.get(protocol.TIMES_CHECKPOINTS) is True:
            a.times_checkpoints, self.deadlines.next_checkpoint = True, None   # every_seconds: one timer, the job's
        if not a.spoke:
            a.spoke = True
            if self.spec.checkpoint.every_seconds and not a.times_checkpoints:
                self.deadlines.next_checkpoint = now + self.spec.checkpoint.every_seconds
            t = transition(self.state, Trigger.CHILD_SPOKE)
            if t is not None:
                self._apply(t)
        if kind == protocol.HELLO:
            self.say(f"child pid {msg.get('pid')} says hello (resumed step {msg.get('resumed_step')})")
        elif kind == protocol.HEARTBEAT:
            if self.state is State.RUNNING:    # keep a warm spare started behind a training attempt
                self.spares.want(self.spec.command, **self._child_args({}))
            step = as_int(msg.get("step"))
            a.last_step, a.first_beat = step, a.first_beat or (None if step is None else (now, step))
            self.seen.beat(msg, step, step_rate(a, now, step, msg.get("steps_per_second")), self.os.wall())
            for warning in self.seen.grace_too_short(self.spec.preemption.grace_seconds):
                self.say(warning)
            self.status_dirty = True
        elif kind == protocol.CHECKPOINT:
            step = as_int(msg.get("step"))
            self.mirror.enqueue(msg.get("path"), step, msg.get("reason"))   # then to checkpoint.remote, if set
            if self.seen.committed(msg, step, self.os.wall()):     # past the last heartbeat: the final one
                a.last_step = step
            a.final_committed = a.final_committed or msg.get("reason") == protocol.REASON_FINAL
            if self.state is State.STOPPING and msg.get("reason") == protocol.REASON_EMERGENCY:
                self.emergency_committed = True
            if self.spec.checkpoint.every_seconds and self.state is State.RUNNING and not a.times_checkpoints:
                self.deadlines.next_checkpoint = now + self.spec.checkpoint.every_seconds
            self.say(f"checkpoint committed at step {msg.get('step')} ({msg.get('reason')}, "
                     f"{fmt_seconds(msg.get('seconds'))})")
            self._event("checkpoint", checkpoint_step=step, reason=msg.get("reason"), seconds=msg.get("seconds"),
                        bytes=as_int(msg.get("bytes")))
            self.status_dirty = True
        elif kind == protocol.STOPPING:
            self.say(f"child is stopping: {msg.get('reason')}")
        elif kind == protocol.ERROR and (a.reason is None or rank == 0):
            a.reason = (f"rank {rank}: " if self.placement else "") + str(msg.get("message"))[:500]
            self.say(f"child reports an error: {a.reason}")

    def _on_rank_exit(self, event: ChildExited) -> None:
        """One rank exited: kill the rest if it failed; the attempt ends when the whole group has."""
        action = self.group.exited(event.rank, event.status, self.os.monotonic())
        if action == KILL_REST:
            self.say(f"rank {event.rank} {event.status.describe()}: SIGKILL to the other ranks (they cannot go on without it)")
            self.os.signal_group(signal.SIGKILL)
        elif action == DONE:
            status, why = self.group.status()
            a = self.attempts[-1]
            if why and self.placement is not None and status.code != 0:
                a.reason = a.reason or why
            if a.final_committed and status.signal in STOP_SIGNALS:   # SLURM signals every process
                self.say(f"the job had finished (final checkpoint committed) when {status.describe()}: done")
                status = ExitStatus(0)
            self._on_exit(status)

    def _on_exit(self, status: ExitStatus) -> None:
        a = self.attempts[-1]
        if a.exit is not None:
            return
        a.exit = status
        now = self.os.monotonic()
        unusable = status.code == UNUSABLE_CHECKPOINT and a.resume_path is not None and self.resume.set_aside(a)
        # No child runs until the next spawn, so this is also that spawn's resume point.
        newest = self.resume.refresh()
        newest_step = None if newest is None else newest.step
        progressed = newest_step is not None and (a.resume_step is None or newest_step > a.resume_step)
        self_stop = status.code == PREEMPTED and self.state is not State.STOPPING
        self_stop_ok = self.budget.self_stop_ok(self_stop, progressed)
        crash = status.code != 0 and not self_stop_ok and not unusable \
            and not (self.state is State.STOPPING and self.stop_trigger is not None)
        never_starts = crash and self.startup_guard.never_starts(
            a, status, (self.files.log_tail(a.number, lines=1) or [""])[-1], now)
        if crash:
            self.budget.failed(now, self.spec.restart.window_seconds)
            self.seen.failure = {"attempt": a.number, "exit": status.describe(), "reason": a.reason,
                                 "time": self.os.wall()}
            self.budget.consecutive_failures = 0 if progressed else self.budget.consecutive_failures
        facts = Facts(exit_code=status.code, stop_requested=self.stop_trigger is not None, self_stop_ok=self_stop_ok,
                      resume_point_unusable=unusable, never_starts=never_starts, silent=not a.spoke,
                      no_retry=status.code in self.spec.restart.no_retry_exit_codes,
                      budget_left=len(self.budget.failure_times) <= self.spec.restart.max_restarts)
        t = transition(self.state, Trigger.CHILD_EXITED, facts)
        self._apply(t, exit_status=status, checkpoint_step=newest_step)
        if t.target is State.SUCCEEDED:
            self._finish(OK, f"succeeded after {len(self.attempts)} attempt(s)" + self.mirror.drain(newest_step, None))
        elif t.target is State.PREEMPTED:
            if status.code == PREEMPTED:    # its word for a checkpoint, if the store holds a newer one
                self.emergency_committed = self.emergency_committed or progressed
            self._finish_preempted(exit_status=status, checkpoint_step=newest_step)
        elif t.target is State.STARTING:
            self._spawn_attempt()
        elif t.target is State.BACKING_OFF:
            self.budget.consecutive_failures += 1
            delay = backoff_delay(self.spec.restart.backoff, self.budget.consecutive_failures, self.os.random())
            self.deadlines.backoff_until = now + delay
            self.say(f"attempt {a.number} {status.describe()}{' (progress: backoff reset)' if progressed else ''}; "
                     f"restart {len(self.budget.failure_times)}/{self.spec.restart.max_restarts} in {delay:.2f}s")
        elif t.target is State.FAILED:
            why = f" ({a.reason})" if a.reason else ""
            tail = " | ".join(self.files.log_tail(a.number)) if never_starts or not a.reason else ""
            self._finish(FAILED, f"{t.edge}: attempt {a.number} {status.describe()}{why}; "
                                 + "; ".join(f"#{x.number} {x.exit.describe() if x.exit else '?'}"
                                             for x in self.attempts)
                                 + (f"; its last output: {tail}" if tail else ""))

    def _spawn_attempt(self) -> None:
        number = self.attempt_base + len(self.attempts) + 1
        info = self.resume.take(quiet=False)
        a = Attempt(number=number, resume_step=None if info is None else info.step,
                    resume_path=None if info is None else str(info.path), started_at=self.os.monotonic())
        self.attempts.append(a)
        self.journal.attempt, self.deadlines.stop, self.killed = number, None, False
        resume_from, log = "" if info is None else str(info.path), self.files.attempt_log(number)
        pid = self.mirror.refuse_spawn() or self.spares.take(log, resume_from=resume_from, attempt=number)
        ranks = None if self.placement is None else self.placement.rank_envs(number, self.spec.restart.max_restarts)
        self.group = RankGroup(len(ranks or [0]), 0.0 if ranks is None else self.spec.distributed.exit_timeout_seconds)
        if pid is None:
            extra = {} if ranks is None else {"rank_envs": ranks}
            pid = self.os.spawn(self.spec.command, log_path=log, **extra, **self._child_args(
                {protocol.ENV_RESUME_FROM: resume_from, protocol.ENV_ATTEMPT: str(number)}))
        if isinstance(pid, SpawnFailure):
            a.reason = pid.message
            self._apply(transition(self.state, Trigger.SPAWN_FAILED))     # the reason: once, in the final line
            self._finish(FAILED, pid.message)
            return
        a.pid = pid
        self.group.started(self.os.rank_pids())
        self.lock.record(child_pid=pid)
        where = "no checkpoint in traind's store" if info is None else f"resuming from step {info.step} ({self.tier.name(info.path)})"
        self.say(f"attempt {number}: started pid {pid}, {where}; log {self.files.attempt_log(number)}")
        self._event("spawned", reason=where, checkpoint_step=a.resume_step, pid=pid)
        self._write_status()        # from the first spawn on, even for a child that never speaks

    def _child_args(self, extra_env: dict) -> dict:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.spec.env, protocol.ENV_RUN_DIR: str(self.spec.run_dir),
               protocol.ENV_JOB_NAME: self.spec.name,
               protocol.ENV_CHECKPOINT_POLICY: json_line(self.spec.checkpoint_json()), **self.tier.env(), **extra_env}
        return {"cwd": self.spec.workdir, "env": env, "keep_fds": (self.lock.fd,)}

    def _finish_preempted(self, exit_status: ExitStatus | None, checkpoint_step: int | None = None) -> None:
        checkpoint_step = checkpoint_step if checkpoint_step is not None else getattr(self.resume.take(quiet=True), "step", None)
        outcome = Outcome(trigger=self.stop_trigger or "stop", checkpoint_committed=self.emergency_committed,
                          checkpoint_step=checkpoint_step, exit=exit_status, attempt=len(self.attempts))
        what = outcome.words() + self.mirror.drain(checkpoint_step, self.deadlines.stop)   # remotely committed, within the grace
        # One requeue for the group: node 0's supervisor runs the follow-up, the others just stop.
        code = self.followup(outcome) if self.placement is None or self.placement.node_rank == 0 else PREEMPTED
        self._finish(code, f"stopped ({outcome.trigger}): {what}")

    # --- the records: values handed to the journal (records.py) ------------------------------------
    def say(self, text: str) -> None:
        self.journal.say(text)

    def _event(self, kind: str, **fields) -> None:
        self.journal.event(kind, self.state, **fields)

    def _apply(self, t, *, reason: str | None = None, exit_status: ExitStatus | None = None,
               checkpoint_step: int | None = None) -> None:
        if t is None:
            return
        self.state = t.target     # the one place the state changes
        last_step = self.attempts[-1].last_step if exit_status is not None and self.attempts else None
        self.journal.transition(t, reason=reason, exit_status=exit_status, last_step=last_step,
                                checkpoint_step=checkpoint_step)
        self._write_status(durable=Journal.durable_after(t))

    def _write_status(self, durable: bool = False) -> None:
        self.status_dirty = False
        self.journal.status(status_record(
            spec=self.spec, state=self.state, attempts=self.attempts, earlier=self.earlier_attempts,
            budget=self.budget, seen=self.seen, supervisor_pid=os.getpid(), started=self.started_wall,
            updated=self.os.wall(), exit_code=self.exit_code, message=self.message, remote=self.mirror.status(),
            memory=self.tier.status(),
            spare=self.spares.summary(), placement=self.placement,
            ranks=None if self.placement is None else self.group.summary(self.os.monotonic())), durable=durable)

    def _finish(self, code: int, message: str) -> None:
        self.spares.discard()
        self.tier.close()
        self.exit_code, self.message = code, message
        self.say(f"{self.state.value}: {message}; exit {code}")
        self._event("finished", reason=message, exit_code=code, durable=True)
        self._write_status(durable=True)
