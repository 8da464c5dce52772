"""`OwnCheckpoints`: traind's guarantees for a script that keeps its own save and load code.

    ckpt = traind.OwnCheckpoints()                 # after init_process_group, in a group
    path = ckpt.resume_dir()                       # the newest verified checkpoint, or None
    ...
        if ckpt.step_done(step, loss=loss):        # metrics line, heartbeat; True: every rank saves now
            ckpt.save(lambda d: torch.save(snapshot, d / "snapshot.pt"))

`step_done()` returns `save_due()`, which is the one stop rule of every way in (jobs/runtime/agreement.py): a stop (SIGTERM,
SIGUSR1, the supervisor) or a periodic checkpoint is acted on by every rank at the same call, one
call after a rank asks (at once in a single process). `save(write)` runs the script's writer into
a fresh directory and commits it as traind commits its own checkpoints (jobs/engine/directory.py):
every file checksummed, the manifest last, retention; after the stop's save the process exits 75.
The script resumes from `resume_dir()`: rank 0's choice (the supervisor's, else the newest one
that verifies), checked byte for byte before it is handed out.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from traind import store as ck
from traind.contract import protocol
from traind.contract.errors import TraindError, UsageError
from ..engine import CheckpointEngine
from ..engine.directory import Directory
from . import agreement, preemption
from .callbacks import CheckpointPolicy
from .group import Group
from .lifecycle import (Event, Phase, one_line_errors, stop_with_emergency_checkpoint,
                                 transition)
from .preemption import FLAGS
from .run_reporter import RunReporter


class OwnCheckpoints:
    """run_dir: $TRAIND_RUN_DIR under `traind run`, else this. every_steps / every_seconds:
    periodic checkpoints (save_due() says when); keep_last: how many committed ones stay. The
    spec's `checkpoint:` section overrides these under `traind run`."""

    def __init__(self, run_dir=None, *, every_steps: int | None = None, every_seconds: float | None = None,
                 keep_last: int = 3, environ=None) -> None:
        preemption.install()            # a stop during start-up is kept for the first save_due()
        self.env = os.environ if environ is None else environ
        given = self.env.get(protocol.ENV_RUN_DIR) or run_dir
        if not given:
            raise UsageError("OwnCheckpoints: no run directory: pass run_dir= or run under `traind run`")
        self.run_dir = Path(given)
        self.report = RunReporter()
        self.clock = self.report.clock
        with one_line_errors():
            self.policy = CheckpointPolicy(every_steps, every_seconds, keep_last=keep_last)
            if self.env.get(protocol.ENV_CHECKPOINT_POLICY):
                self._overrides = self.policy.apply_overrides(self.env[protocol.ENV_CHECKPOINT_POLICY])
            else:
                self._overrides = []
        self.group = None
        self.store: CheckpointEngine | None = None
        self.step = 0                   # the last step reported (or resumed)
        self.phase = Phase.STARTING
        self._agreement = agreement.Alone()
        self._calls = 0                 # save_due() calls: the same count on every rank
        self._stop_agreed = False
        self._writer: Callable[[Path], None] | None = None
        self._started = False
        self._save_started = 0.0
        self._resume: Path | None = None

    # --- start-up ---------------------------------------------------------------------------------
    def _start(self) -> None:
        """Once, at the first call: the group (made by the script), the store, the channel."""
        if self._started:
            return
        self._started = True
        with one_line_errors(self.report.error):
            self.group = Group.from_env(self.env)
            rank = 0 if self.group is None else self.group.rank
            if rank == 0:
                self.run_dir.mkdir(parents=True, exist_ok=True)
            self.report.open(self.run_dir, rank, self.env)
            for line in self._overrides:
                self.report.line(line)
            self.store = CheckpointEngine(self.run_dir, Directory(self.group), keep_last=self.policy.keep_last,
                                          on_commit=self._on_commit)
            self._resume = self._choose_resume_point()
            self._agreement = agreement.for_group(self.group)
        self.phase = transition(self.phase, Event.RESTORED)
        self.report.started(self.step)
        self.policy.start(self.clock.monotonic())

    def _choose_resume_point(self) -> Path | None:
        """Rank 0's choice, verified there, on every rank."""
        path, why = None, None
        if self.store.layout.leader:
            if protocol.ENV_RESUME_FROM in self.env:        # the supervisor chose ("" = fresh start)
                raw = self.env[protocol.ENV_RESUME_FROM]
                path = Path(raw) if raw else None
            else:
                info = self.store.latest_valid()
                path = info.path if info is not None else None
            if path is not None:
                try:
                    path = self.store.load(path)
                except TraindError as err:
                    why = str(err)
        if self.group is not None:
            path, why = self.group.share((None if path is None else str(path), why))
        if why is not None:
            raise TraindError(why)
        if path is None:
            self.report.line("no checkpoint to resume from: a fresh start")
            return None
        path = Path(path)
        info = ck.verify(path, deep=False)
        self.step = info.step
        self.policy.saved(self.step, self.clock.monotonic())     # durable here already
        self.store.protect(path)
        self.report.line(f"resuming from {path} (step {self.step})")
        return path

    def resume_dir(self) -> Path | None:
        """The checkpoint directory to resume from (verified), or None for a fresh start."""
        self._start()
        return self._resume

    def resume_file(self, name: str, default=None):
        """resume_dir() / name, or `default` when there is nothing to resume from."""
        path = self.resume_dir()
        return default if path is None else path / name

    # --- each step --------------------------------------------------------------------------------
    def step_done(self, step: int | None = None, *, epoch: int | None = None, **metrics) -> bool:
        """Report a finished step (default: one more than the last): metrics.jsonl, heartbeat.
        Returns save_due(): whether every rank saves here. A script that can save only at other
        places (an epoch end) ignores it and calls save_due() there."""
        self.report_step(self.step + 1 if step is None else step, epoch=epoch, **metrics)
        return self.save_due()

    def report_step(self, step: int, *, epoch: int | None = None, **metrics) -> None:
        """step_done() without the agreement: the metrics line and the heartbeat of `step`."""
        self._start()
        self.step = int(step)
        scalars = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        with one_line_errors(self.report.error):
            self.report.step_done(self.step, epoch or 0, scalars, None)

    def save_due(self) -> bool:
        """Whether every rank saves here, now: the stop the group agreed on, or a periodic one.
        Call it on every rank at the same places (after a step, at an epoch end)."""
        self._start()
        self._calls += 1
        now = self.clock.monotonic()
        counted = self.policy.due_by_count(self.step, epoch_ended=False)
        timed = (self.group is None or self.group.leader) and self.policy.due_by_time(self.step, now)
        asked = FLAGS.take_checkpoint_request() is not None
        stop, save = self._agreement.at_step(self._calls, stop=FLAGS.stop is not None,
                                             checkpoint=(asked or timed) and not counted)
        self._stop_agreed = self._stop_agreed or stop
        return stop or save or counted

    @property
    def stopping(self) -> bool:
        """True once the group agreed to stop: the next save() is the emergency one, then exit 75."""
        return self._stop_agreed

    def save(self, write: Callable[[Path], None], step: int | None = None, *, final: bool = False) -> None:
        """Run `write(directory)` on every rank and commit what it wrote there, durable when this
        returns. After a stop was agreed: the emergency checkpoint, then exit 75 (SystemExit).
        final=True: the run's last checkpoint (its reason says so)."""
        self._start()
        if step is not None:
            self.step = int(step)
        self._writer = write
        if self._stop_agreed:
            reason = FLAGS.stop.reason if FLAGS.stop is not None else "stop requested on another rank"
            stop_with_emergency_checkpoint(self, self.step, reason, exit_at_once=False)
        self.save_now(protocol.REASON_FINAL if final else protocol.REASON_PERIODIC)

    def close(self) -> None:
        """The run ended: the channel and the writer's lock go (also at exit)."""
        self.shut_down()

    # --- what the lifecycle's sequences ask of a way in (jobs/runtime/lifecycle.py) ----------------
    def say(self, line: str) -> None:
        self.report.line(line)

    def send(self, msg_type: str, **fields) -> None:
        self.report.send(msg_type, **fields)

    def flush_saves(self) -> None:
        pass                             # a save here is blocking: none is ever in flight

    def save_now(self, reason: str) -> None:
        self._save_started = self.clock.monotonic()
        self.report.save_cost.save_started()
        self.policy.saved(self.step, self._save_started)
        with one_line_errors(self.report.error):
            self.store.save({"write": self._writer}, step=self.step, epoch=None, reason=reason)

    def shut_down(self) -> None:
        if not self._started:
            return
        self._agreement.close()
        self._agreement = agreement.Alone()
        try:
            if self.store is not None:
                self.store.close()
        finally:
            self.report.close()

    def _on_commit(self, info) -> None:
        self.report.committed(info, round(self.clock.monotonic() - self._save_started, 3))
