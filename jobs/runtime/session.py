"""Session: restore-or-start, step reporting, periodic/emergency/final checkpoints, stop requests.

It is the whole job lifecycle in one object, for people with their own loop and for the Trainer:

    with Session(run_dir="runs/x", model=model, optimizers=opt, max_steps=1000, every_steps=100) as s:
        for x, y in s.batches(dataset, batch_size=32):
            ...one optimizer step...
            s.step_done(loss=loss.item())

Stop requests (SIGTERM, SIGUSR1, the supervisor's control channel, its EOF) are only recorded;
they are acted on at a step boundary: the loop ends, and leaving the `with` block waits for the
in-flight save, writes a blocking emergency checkpoint and exits 75.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

from traind.contract import protocol
from traind.contract.errors import TraindError, UsageError
from . import agreement, preemption
from .callbacks import CheckpointPolicy
from .clock import SystemClock
from .control import ControlChannel
from .data import DataPosition, resumable_loader
from .group import Group, fix_ddp_buckets
from .memory_tier import MemoryTier
from .lifecycle import (Event, Phase, Preempted, finish_with_final_checkpoint, one_line_errors,
                        stop_with_emergency_checkpoint, transition)
from .preemption import FLAGS
from .reporting import Console, MetricsLog, checkpoint_message
from .savecost import SaveCost
from . import schema
from ..engine import CheckpointEngine, SingleFile

HEARTBEAT_MIN_INTERVAL = 0.2   # seconds: at most ~5 heartbeats a second, however fast the steps
TIMING_KEYS = ("time", "steps_per_s")   # in metrics.jsonl: the only fields a resumed run changes


def _as_list(value) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _plain_metrics(metrics: dict) -> dict:
    return {k: (v.detach().float().item() if isinstance(v, torch.Tensor) else v) for k, v in metrics.items()}


class Session:
    def __init__(self, run_dir=None, *, model: torch.nn.Module | None = None, optimizers=None,
                 schedulers=None, scaler=None, max_steps: int | None = None,
                 every_steps: int | None = None, every_seconds: float | None = None,
                 keep_last: int = 3, keep_best: dict | None = None,
                 policy: CheckpointPolicy | None = None, user_state: dict | None = None,
                 callbacks=(), datamodule=None, hyper_parameters: dict | None = None,
                 hparams_name: str | None = None, data_seed: int | None = None,
                 console: Console | None = None, clock=None, environ=None,
                 exit_at_once: bool = True) -> None:
        preemption.install()          # first: a stop during the restore below is not lost
        env = os.environ if environ is None else environ
        self.phase = Phase.STARTING
        # After a durable emergency checkpoint, leave with os._exit(75): interpreter and DataLoader
        # teardown took 0.6-1.7 s here, time a 30 s preemption notice can't spare. False raises
        # Preempted (SystemExit 75) instead, so the caller's own `finally` blocks run.
        self.exit_at_once = exit_at_once
        self.clock = clock or SystemClock()
        self.model, self.scaler = model, scaler
        self.optimizers, self.schedulers = _as_list(optimizers), _as_list(schedulers)
        self.max_steps = max_steps
        self.state = user_state if user_state is not None else {}
        self.datamodule, self.callbacks = datamodule, list(callbacks)
        self.hyper_parameters, self.hparams_name = dict(hyper_parameters or {}), hparams_name
        self.console = console or Console(max_steps)
        self.step = 0
        self.position = DataPosition(shuffle_seed=data_seed if data_seed is not None
                                     else torch.initial_seed() % 2**31)
        self.finished = False
        self.last_metrics: dict = {}
        self.resumed_from: Path | None = None
        # A step whose optimizer update is done (and counted) but whose boundary work (validation,
        # callbacks, the metrics line) was interrupted by a stop: {"epoch_ended", "metrics"}. It is
        # in the emergency checkpoint; the resumed run finishes that boundary first.
        self.boundary_pending: dict | None = None
        self._committed_step, self._save_started = None, 0.0   # the last commit; when the last save began
        self.save_cost = SaveCost()       # steps beside a background save against steps without
        self._last_heartbeat, self._epoch_end_pending = -1e18, False
        self.control, self._error_sent, self.group, self._group_stop = None, False, None, False
        self.agreement, self.memory = agreement.Alone(), None
        with one_line_errors(self._report_error):
            self.run_dir = Path(env.get(protocol.ENV_RUN_DIR) or run_dir or "runs/default")
            self.policy = policy or CheckpointPolicy(every_steps, every_seconds,
                                                     keep_last=keep_last, keep_best=keep_best)
            if env.get(protocol.ENV_CHECKPOINT_POLICY):
                for line in self.policy.apply_overrides(env[protocol.ENV_CHECKPOINT_POLICY]):
                    if env.get("RANK", "0") in ("", "0"):     # once per group
                        self.console.line(line)      # say which one wins: the spec's or the code's
            if self.policy not in self.callbacks:
                self.callbacks.insert(0, self.policy)
            try:
                self.run_dir.mkdir(parents=True, exist_ok=True)
            except OSError as err:   # a file in the way, a read-only mount: no attempt can work
                raise UsageError(f"{self.run_dir}: cannot use as the run dir: {err.strerror or err}") from None
            self.control = ControlChannel.from_env(env)
            if env.get(protocol.ENV_SPARE) and self.control is not None:
                env = self.control.become_attempt(env)   # a warm spare; before the store: it holds no lock
            self.group = Group.from_env(env)        # a rank of a data-parallel group (jobs/runtime/group.py)
            self.agreement = agreement.for_group(self.group)   # the group's stop rule (agreement.py)
            self.store = self._open_store()
            self.memory = MemoryTier.from_env(env, self._layout)   # checkpoint.memory (memory_tier.py)
            self.metrics_log = MetricsLog(self.run_dir, enabled=self.group is None or self.group.leader)
            self._restore(env)
            self._agree(stop=FLAGS.stop is not None)     # a stop during the restore: every rank sees it
        self._started_at, self._started_step = self.clock.monotonic(), self.step
        if self.max_steps is not None and self.step >= self.max_steps and self.boundary_pending is None:
            self.finished = True        # a rerun of a finished job: nothing left to do
        self.policy.start(self._started_at)
        self.phase = transition(self.phase, Event.RESTORED)
        self._send(protocol.HELLO, pid=os.getpid(), resumed_step=self.step if self.resumed_from else None,
                   **{protocol.TIMES_CHECKPOINTS: True})

    def _open_store(self):
        options = {"keep_last": self.policy.keep_last, "keep_best": self.policy.keep_best, "on_commit": self._on_commit}
        if self.group is not None:
            if self.model is None:
                raise UsageError("Session(model=...): a data-parallel group needs the model, to shard its checkpoint")
            fix_ddp_buckets(self.model)
            self.console.progress = self.group.leader   # one progress line per group; messages from every rank
            self.console.prefix += f"[rank {self.group.rank}] "
        return CheckpointEngine(self.run_dir, self._layout(), **options)

    def _layout(self):
        """A new instance of this job's checkpoint layout (each engine has its own buffers)."""
        if self.group is None:
            return SingleFile()
        from ..engine.sharded import Sharded
        return Sharded(self.group, self.model, self.optimizers, schema.rank_part)

    def _agree(self, *, stop: bool, checkpoint: bool = False) -> bool:
        """A group's ranks stop (and save) at the same step: each flag true on all if on any.
        Returns whether to checkpoint; the agreed stop is what should_stop() answers from then on."""
        if self.group is None:
            return checkpoint
        stop, checkpoint = self.group.agree(stop, checkpoint)
        return self._agreed(stop, checkpoint)

    def _agreed(self, stop: bool, checkpoint: bool) -> bool:
        if stop and not self._group_stop:
            self._group_stop = True
            if FLAGS.stop is None:
                FLAGS.request_stop("another rank of the group was asked to stop")
        return checkpoint

    # --- restore -------------------------------------------------------------------------
    def _resume_point(self, env) -> Path | None:
        if protocol.ENV_RESUME_FROM in env:
            raw = env[protocol.ENV_RESUME_FROM]        # the supervisor chose ("" = fresh start)
            path = Path(raw) if raw else None
        else:
            info = self.store.latest_valid()          # unsupervised: the newest valid one
            path = info.path if info else None
        # Rank 0's choice is the group's: every rank resumes from the one checkpoint.
        return path if self.group is None else self.group.share(path)

    def _restore(self, env) -> None:
        path = self._resume_point(env)
        if path is None:
            self.metrics_log.truncate_after(0)   # lines of an earlier attempt that saved nothing
            return
        state = self.store.load(path)
        self.apply_state(state, where=str(path))
        self.resumed_from = path
        self.store.protect(path)
        in_memory = self.memory is not None and self.memory.holds(path)
        if in_memory:
            self.memory.protect(path)       # the supervisor copies it to disk meanwhile: durable
        if in_memory or Path(path).resolve().parent == self.store.ckpt_dir.resolve():
            self._committed_step = self.step
        self.metrics_log.truncate_after(self.step)
        self.console.line(f"resumed from {path} (step {self.step}, epoch {self.position.epoch})")

    def apply_state(self, state: dict, where: str = "checkpoint") -> None:
        """Load every part of a checkpoint into the live objects (jobs/runtime/schema.py); the RNG states go last."""
        schema.apply(self, state, where)

    # --- the loop's side ------------------------------------------------------------------
    def should_stop(self) -> bool:
        return self.finished or (FLAGS.stop is not None if self.group is None else self._group_stop)

    def stop_now(self) -> bool:
        """Whether to cut short a phase that changes no training state (an evaluation): a stop was
        asked of this process or, on one node, of another rank of the group (the group's word).
        A group's ranks then agree at the phase's end (cut_short), where every rank is."""
        if FLAGS.stop is not None:
            self.agreement.propose_stop(self.step)    # the other ranks of the node see it at once
        return FLAGS.stop is not None or self.agreement.stop_pending()

    def cut_short(self, here: bool) -> bool:
        """At the end of such a phase: whether it was cut short here or, in a group, on any rank
        (one all_reduce); then every rank stops at this step, with the phase still to do."""
        if self.group is None or not self.group.agree(here)[0]:
            return here
        self._agreed(True, False)       # every rank: should_stop() from now on
        return True

    def step_interrupted(self, metrics: dict, *, epoch_ended: bool) -> None:
        """The optimizer step is done but its boundary (validation, ...) was cut short by a stop:
        count the step, keep what finishing the boundary needs; the emergency checkpoint follows."""
        if self.boundary_pending is None:      # else: a resumed run finishing it, stopped again
            self.step += 1
        self.boundary_pending = {"epoch_ended": bool(epoch_ended), "metrics": _plain_metrics(metrics)}

    def batches(self, dataset, batch_size: int, *, shuffle: bool = True, num_workers: int = 0,
                drop_last: bool = False, **loader_kwargs):
        """Batches across epochs from the resumed data position, until should_stop()."""
        while not self.should_stop():
            loader = resumable_loader(dataset, batch_size, position=self.position, shuffle=shuffle,
                                      num_workers=num_workers, drop_last=drop_last, group=self.group, **loader_kwargs)
            total = loader.batch_sampler.batches_per_epoch()
            if total == 0:
                with one_line_errors(self._report_error):
                    raise TraindError(f"session.batches(): a dataset of {len(dataset)} samples "
                                      f"gives no batch of {batch_size}")
            for batch, _ in self.consume(loader):
                yield batch
                if self.should_stop():
                    return
            if self.position.batches_consumed >= total:   # step_done() did not roll it over
                self._next_epoch()

    def consume(self, loader):
        """(batch, epoch_ended) from one epoch's resumable loader, moving the data position on:
        the one place it advances (batches() and the Trainer both read through it)."""
        total = loader.batch_sampler.batches_per_epoch()
        for batch in loader:
            self._epoch_end_pending = self.position.advance(total)
            yield batch, self._epoch_end_pending

    def _next_epoch(self) -> None:
        self.position.next_epoch()
        self._epoch_end_pending = False

    def step_done(self, metrics: dict | None = None, *, epoch_ended: bool | None = None, **named) -> None:
        """Report one finished optimizer step (and its metrics); may start a periodic save."""
        metrics = _plain_metrics({**(metrics or {}), **named})
        if self.boundary_pending is not None:
            self.boundary_pending = None    # a resumed run finishing an interrupted step: counted already
            self._committed_step = None     # the checkpoint of this step holds the boundary still to do
        else:
            self.step += 1
        if self.step == self._started_step + 1 and (self.policy.every_steps or self.policy.every_seconds):
            # The state has its final shape now (Adam's moments appear at the first step): warm the
            # snapshot buffers in the background, so the first periodic save stalls like the others.
            self.store.prepare(self.checkpoint_state())
        now = self.clock.monotonic()
        self.save_cost.step(now)
        rate = (self.step - self._started_step) / max(now - self._started_at, 1e-9)
        with one_line_errors(self._report_error):
            self.metrics_log.append({"step": self.step, "epoch": self.position.epoch, **metrics,
                                     TIMING_KEYS[0]: round(self.clock.wall(), 3),
                                     TIMING_KEYS[1]: round(rate, 3)})
        self.last_metrics.update(metrics)
        if epoch_ended if epoch_ended is not None else self._epoch_end_pending:
            epoch_ended = True
            self._next_epoch()
        self.console.step(self.step, self.position.epoch, metrics, rate, now)
        if now - self._last_heartbeat >= HEARTBEAT_MIN_INTERVAL:
            self._last_heartbeat = now
            self._send(protocol.HEARTBEAT, step=self.step, epoch=self.position.epoch, metrics=metrics,
                       steps_per_second=round(rate, 3), total=self.max_steps)   # rate: the job's own clock
        if self.max_steps is not None and self.step >= self.max_steps:
            self.finished = True
        if self.finished:
            return                      # the final checkpoint follows at once
        asked = FLAGS.take_checkpoint_request()
        # every_steps is the same on every rank; a request, or every_seconds on the leader's
        # clock, is agreed on (jobs/runtime/agreement.py): a group acts on it one step later
        counted = self.policy.due_by_count(self.step, epoch_ended=bool(epoch_ended))
        timed = (self.group is None or self.group.leader) and self.policy.due_by_time(self.step, now)
        stop, save = self.agreement.at_step(self.step, stop=FLAGS.stop is not None,
                                            checkpoint=bool(asked or timed) and not counted and not self._group_stop)
        due = self._agreed(stop, save) or counted
        if self.should_stop():
            return                      # the emergency checkpoint follows at once
        if self.memory is not None and self.memory.due(self.step):
            with one_line_errors(self._report_error):
                if self.group is not None:
                    self.store.flush()    # one save at a time on the group's `ckpt` process group
                self.memory.save(self.checkpoint_state(), step=self.step, epoch=self.position.epoch,
                                 metrics=dict(self.last_metrics))
        if due:
            with one_line_errors(self._report_error):
                self.save(reason=protocol.REASON_PERIODIC, blocking=False)

    # --- checkpoints ----------------------------------------------------------------------
    def checkpoint_state(self) -> dict:
        """The whole checkpoint at this step, as the state schema builds it (jobs/runtime/schema.py)."""
        return schema.build(self)

    def save(self, reason: str = protocol.REASON_PERIODIC, blocking: bool = True):
        """Checkpoint now. Non-blocking returns once tensors are snapshotted (commit reported later)."""
        now = self.clock.monotonic()
        self._save_started = now
        self.save_cost.save_started()
        self.policy.saved(self.step, now)
        return self.store.save(self.checkpoint_state(), step=self.step, epoch=self.position.epoch,
                               reason=reason, metrics=dict(self.last_metrics), blocking=blocking)

    def _on_commit(self, info) -> None:     # may run on the store's background thread
        self._committed_step = info.step
        self.save_cost.save_committed()
        seconds = round(self.clock.monotonic() - self._save_started, 3)
        if self.control is None:     # supervised: the supervisor logs each commit, once
            self.console.line(f"checkpoint step {info.step} ({info.reason}) committed in {seconds:.2f} s")
        if self.group is not None and self.group.local_rank != 0:
            return                      # one report per node's supervisor: the commit is the group's
        self._send(protocol.CHECKPOINT, **checkpoint_message(info, seconds, self.save_cost.slowdown()))

    def _send(self, msg_type: str, **fields) -> None:
        if self.control is not None:
            self.control.send(msg_type, **fields)

    # --- the end ---------------------------------------------------------------------------
    def __enter__(self) -> "Session":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            self.close()
        elif not issubclass(exc_type, Preempted):
            self._fail(exc)
        return False

    def close(self) -> None:
        """End of training: emergency checkpoint + exit 75 if a stop was asked, else a final one."""
        if self.phase in (Phase.DONE, Phase.PREEMPTED, Phase.FAILED):
            return
        with one_line_errors(self._report_error):
            self.agreement.close()
            if self.should_stop() and not self.finished:
                stop_with_emergency_checkpoint(self, self.step, FLAGS.stop.reason, exit_at_once=self.exit_at_once)
            finish_with_final_checkpoint(self)
            self._shutdown()
            self.console.line(f"finished at step {self.step}")

    # --- what the lifecycle's sequences ask of a way in (jobs/runtime/lifecycle.py) ---------------
    def say(self, line: str) -> None:
        self.console.line(line)

    def send(self, msg_type: str, **fields) -> None:
        self._send(msg_type, **fields)

    def flush_saves(self) -> None:
        self.store.flush()

    def save_now(self, reason: str) -> None:
        if self._committed_step == self.step:     # this very step is already durable
            return
        if not self.store.layout.saves_untrained and self.resumed_from is None and self.step == self._started_step:
            # A fresh start stopped before its first step has nothing to save; a layout that cannot
            # save optimizers without state exactly (Sharded) does not: the next attempt starts
            # fresh, exactly as this one did.
            self.say("stopped before the first step: nothing to save; the next attempt starts fresh")
            return
        self.save(reason=reason, blocking=True)

    def shut_down(self) -> None:
        self._shutdown()

    def _report_error(self, message: str) -> None:
        """Tell the supervisor why we fail, in the job's own words (once: the first reason wins)."""
        if not self._error_sent:
            self._error_sent = True
            self._send(protocol.ERROR, message=message[:2000])

    def _fail(self, exc: BaseException) -> None:
        self.phase = transition(self.phase, Event.ERROR)
        self._report_error(f"{type(exc).__name__}: {exc}")
        try:
            self._shutdown()   # lets an in-flight periodic save finish: it is still a good state
        except Exception as err:  # the user's exception matters more; ours is one line
            print(f"traind: while stopping after the error: {err}", file=sys.stderr)

    def _shutdown(self) -> None:
        try:
            self.store.close()
            if self.memory is not None:
                self.memory.close()
        finally:
            self.console.close()
            self.metrics_log.close()
            if self.control is not None:
                self.control.close()
