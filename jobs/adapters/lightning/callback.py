"""`Checkpointing`: the one addition to a Lightning Trainer that gives the run traind's guarantees.

    trainer = pl.Trainer(..., callbacks=[traind.lightning.Checkpointing()])

Order of work, hook by hook (each is where Lightning gives us the consistent state we need):
- setup: the store (rank 0: the one writer), traind's CheckpointIO on the strategy, the training
  loader rebuilt around a ResumableSampler, and the resume point handed to Lightning's own restore
  (so Lightning restores weights, optimizers, schedulers, loops and callbacks as it always does);
- on_load_checkpoint: what traind adds to a checkpoint (RNG states, data position) is kept;
- on_train_start: our stop handlers replace Lightning's SIGTERM handling (which would exit 0 at
  its next batch end without a checkpoint); RNG states restored last; `hello` to the supervisor;
- on_train_batch_end, at each optimizer step: metrics line, heartbeat, the ranks' agreement on
  "stop" and "checkpoint" (jobs/runtime/agreement.py: every rank acts one step after a rank asks);
  a stop is one emergency checkpoint (blocking, durable) and exit 75 (`traind.Preempted`); every
  `checkpoint.memory` interval, a save into the memory tier (jobs/runtime/memory_tier.py);
- validation never moves the training RNG stream (captured at its start, restored at its end),
  so a run resumed where a validation runs again (an epoch-end checkpoint) continues identically;
- on_train_end: the final checkpoint; teardown: flush and close.
"""
from __future__ import annotations

import datetime
import os
import signal
import threading
import warnings
from pathlib import Path

import pytorch_lightning as pl
import torch

from traind import store as ck
from traind.contract import protocol
from traind.contract.errors import TraindError
from ...runtime import agreement, preemption
from ...runtime.group import Group
from ...runtime.callbacks import CheckpointPolicy
from ...runtime.data import DataPosition
from ...runtime.lifecycle import (Event, Phase, finish_with_final_checkpoint, one_line_errors,
                                  stop_with_emergency_checkpoint, transition)
from ...runtime import schema
from .io import TraindCheckpointIO
from .loader import install_loader
from .ranks import gather_rng, position_from_loops, rng_for_rank
from ...runtime.run_reporter import RunReporter
from .sampler import resumable_copy, why_not_resumable
from ...runtime.preemption import FLAGS
from ...runtime.rng import capture_rng, restore_rng
from ...engine import CheckpointEngine, SingleFile
from ...runtime.memory_tier import MemoryTier
MEMORY = "memory"       # the reason of a save into the memory tier (checkpoint.memory)

# Lightning warns about these when traind does the job instead (it resumes by itself; the loader is
# resumable through the sampler, which Lightning's check does not look at).
_QUIETED = (r".*ckpt_path=\"last\"\) is set, but there is no last checkpoint available",
            r"You're resuming from a checkpoint that ended before the epoch ended and your dataloader")


def _scalars(metrics: dict) -> dict:
    out = {}
    for key, value in metrics.items():
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            out[key] = float(value.detach().float().item())
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = float(value)
    return out


class Checkpointing(pl.Callback):
    """traind's checkpoints, resume, stop handling and supervision for a Lightning Trainer.

    every_n_train_steps / train_time_interval (seconds or a timedelta): traind's own periodic,
    non-blocking checkpoints (ModelCheckpoint callbacks keep saving when they would, into the same
    store). keep_last / keep_best={"metric", "mode", "k"}: retention; by default keep_best follows
    the first ModelCheckpoint with a `monitor` and save_top_k > 0. run_dir: $TRAIND_RUN_DIR, else
    this, else the Trainer's default_root_dir. Under `traind run` the spec's `checkpoint:` section
    overrides these field by field."""

    def __init__(self, run_dir=None, *, every_n_train_steps: int | None = None,
                 train_time_interval=None, keep_last: int = 3, keep_best: dict | None = None,
                 environ=None) -> None:
        preemption.install()            # a stop during model building or the restore is not lost
        install_loader()
        self.env = os.environ if environ is None else environ
        self.run_dir_arg = run_dir
        if isinstance(train_time_interval, datetime.timedelta):
            train_time_interval = train_time_interval.total_seconds()
        self.policy = CheckpointPolicy(every_n_train_steps, train_time_interval,
                                       keep_last=keep_last, keep_best=keep_best)
        self._keep_best_given = keep_best is not None
        self.report = RunReporter()
        self.clock = self.report.clock
        self.store: CheckpointEngine | None = None
        self.ckpt_dir: Path | None = None
        self.position = DataPosition()
        self._restored: dict | None = None        # traind's part of the checkpoint Lightning restored
        self._next_save: tuple[str, bool] | None = None    # (reason, blocking) of the next commit
        self._saved_step = self._committed_step = None
        self._val_rng = self.memory = self._memory_every = None
        self._step_at_batch_start, self._save_started = 0, 0.0
        self._active = self._prepared = False
        self._group, self._agreement = None, agreement.Alone()
        self.phase, self._trainer = Phase.STARTING, None
        self._undo_data = self._resumed_path = None
        for pattern in _QUIETED:
            warnings.filterwarnings("ignore", message=pattern)

    # --- setup and restore ---------------------------------------------------------------------
    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage != "fit":
            return
        self._active, self._trainer = True, trainer
        with one_line_errors(self.report.error):
            run_dir = Path(self.env.get(protocol.ENV_RUN_DIR) or self.run_dir_arg or trainer.default_root_dir)
            self.ckpt_dir = ck.checkpoints_dir(run_dir)
            trainer.strategy.checkpoint_io = TraindCheckpointIO(self)
            if trainer.global_rank == 0:
                run_dir.mkdir(parents=True, exist_ok=True)
                self._make_lightnings_dirs(trainer)
            self.report.open(run_dir, trainer.global_rank, self.env)
            self._configure_policy(trainer)
            self._memory_every = MemoryTier.interval(self.env)     # every rank saves with rank 0
            if trainer.global_rank == 0:
                self.store = CheckpointEngine(run_dir, keep_last=self.policy.keep_last,
                                             keep_best=self.policy.keep_best, on_commit=self._on_commit)
                self.memory = MemoryTier.from_env(self.env, SingleFile)
            seed = trainer.strategy.broadcast(torch.initial_seed() % 2**31, src=0)
            self.position = DataPosition(shuffle_seed=int(seed))
            self._make_training_data_resumable(trainer)
            path = trainer.strategy.broadcast(self._resume_point() if self.store is not None else None, src=0)
            self._resumed_path = path
            if path is not None:
                for store in filter(None, (self.store, self.memory)):
                    store.protect(path)
                # Lightning's own restore does the rest, from this checkpoint, as for ckpt_path=path
                # (an explicit ckpt_path given to fit() is loaded after this one and wins).
                trainer._checkpoint_connector.resume_start(path)
                self.report.line(f"resuming from {path}")

    @staticmethod
    def _make_lightnings_dirs(trainer) -> None:
        """The folders Lightning would save into: a script's torch.save there must not fail."""
        for folder in [trainer.default_root_dir] + [getattr(mc, "dirpath", None) for mc in trainer.checkpoint_callbacks]:
            if folder and "://" not in str(folder):
                Path(folder).mkdir(parents=True, exist_ok=True)

    def _configure_policy(self, trainer) -> None:
        keep_best = self.policy.keep_best
        if not self._keep_best_given:      # retention follows the first monitoring ModelCheckpoint
            for mc in trainer.checkpoint_callbacks:
                if getattr(mc, "monitor", None) and getattr(mc, "save_top_k", 0) > 0:
                    keep_best = {"metric": mc.monitor, "mode": mc.mode, "k": mc.save_top_k}
                    break
        p = self.policy
        self.policy = CheckpointPolicy(p.every_steps, p.every_seconds, keep_last=p.keep_last, keep_best=keep_best)
        if self.env.get(protocol.ENV_CHECKPOINT_POLICY):
            for line in self.policy.apply_overrides(self.env[protocol.ENV_CHECKPOINT_POLICY]):
                self.report.line(line)

    def _resume_point(self) -> str | None:
        if protocol.ENV_RESUME_FROM in self.env:          # the supervisor chose ("" = fresh start)
            return self.env[protocol.ENV_RESUME_FROM] or None
        info = self.store.latest_valid()
        return None if info is None else str(info.path)

    def _make_training_data_resumable(self, trainer) -> None:
        source = trainer.fit_loop._data_source
        holder = source.instance
        if isinstance(holder, (pl.LightningModule, pl.LightningDataModule)):
            original = getattr(holder, source.name)
            setattr(holder, source.name, lambda: self._resumable(trainer, original()))
            self._undo_data = lambda: holder.__dict__.pop(source.name, None)
        elif holder is not None:
            source.instance = self._resumable(trainer, holder)
            self._undo_data = lambda: setattr(source, "instance", holder)

    def _resumable(self, trainer, loader):
        why = why_not_resumable(loader)
        if why is not None:
            self.report.line(f"the training loader is {why}: its position is not checkpointed, "
                             "so a resume is not exact")
            return loader
        old = loader.sampler
        if isinstance(old, torch.utils.data.DistributedSampler):
            replicas, rank = old.num_replicas, old.rank
        else:
            replicas, rank = trainer.world_size, trainer.global_rank
        return resumable_copy(loader, self.position, num_replicas=replicas, rank=rank)

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        ours = schema.counters(checkpoint)
        self._restored = {"rng": checkpoint.get("rng_states"), "per_rank": ours.get("rng_states_per_rank")}
        if isinstance(checkpoint.get("data_position"), dict):
            self.position = DataPosition.from_state(checkpoint["data_position"])
        else:   # a checkpoint Lightning wrote: where its loops stood (the shuffle order differs)
            self.position = position_from_loops(checkpoint, self.position.shuffle_seed)
        loaded = trainer.ckpt_path or self._resumed_path
        if loaded is not None and (Path(loaded).resolve().is_relative_to(self.ckpt_dir.resolve()) or
                                   self.memory is not None and self.memory.holds(loaded)):   # copied to disk
            self._committed_step = self._saved_step = int(checkpoint.get("global_step", 0))
            self.policy.saved(self._committed_step, self.clock.monotonic())   # durable here already

    # --- training ------------------------------------------------------------------------------
    def on_sanity_check_start(self, trainer, pl_module) -> None:
        self._take_over_stop_signals(trainer)
        self._val_rng = capture_rng()

    def on_sanity_check_end(self, trainer, pl_module) -> None:
        self._restore_val_rng()

    def on_train_start(self, trainer, pl_module) -> None:
        self._take_over_stop_signals(trainer)
        if self._restored is not None:
            states = rng_for_rank(self._restored, trainer.global_rank, trainer.world_size)
            if states is None:
                self.report.line("the checkpoint holds no RNG states for this rank: resume is not exact")
            else:
                restore_rng(states)       # last: nothing may draw from the RNGs after this
            self._restored = None
        with one_line_errors(self.report.error):
            self.report.started(trainer.global_step)
        self.phase = transition(self.phase, Event.RESTORED)
        self.policy.start(self.clock.monotonic())
        self._group = Group.from_env(self.env)     # Lightning made the process group; None alone
        self._agreement = agreement.for_group(self._group)
        stop = FLAGS.stop is not None
        if (self._group.agree(stop)[0] if self._group is not None else stop):   # a stop during start-up
            self._emergency(trainer)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        self._step_at_batch_start = trainer.global_step
        self.position = self.position.at_batch(trainer.current_epoch, batch_idx)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        step = trainer.global_step
        if step == self._step_at_batch_start:
            return                           # accumulating gradients: not a step boundary
        self._step_done(trainer, outputs, step)
        self._prepare_buffers(trainer)
        if trainer.max_steps > 0 and step >= trainer.max_steps:
            return                           # the final checkpoint follows in on_train_end
        now = self.clock.monotonic()
        asked = FLAGS.take_checkpoint_request() is not None
        counted = self.policy.due_by_count(step, epoch_ended=False)
        timed = trainer.global_rank == 0 and self.policy.due_by_time(step, now)
        stop, save = self._agreement.at_step(step, stop=FLAGS.stop is not None,
                                             checkpoint=(asked or timed) and not counted)
        if stop:
            return self._emergency(trainer)
        if save or counted:
            self._save(trainer, protocol.REASON_PERIODIC, blocking=False)
        if self._memory_every and step % self._memory_every == 0:
            self._save(trainer, MEMORY, blocking=True)

    def on_validation_start(self, trainer, pl_module) -> None:
        # Every validation leaves the training RNG streams as it found them (its loader's iterator
        # draws a seed from them), including one that runs right after a resume from an
        # epoch-end checkpoint, before any training batch.
        if not trainer.sanity_checking:
            self._val_rng = capture_rng()

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self._restore_val_rng()

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        """Runs on every rank inside trainer.save_checkpoint: add what exact resume needs."""
        states = capture_rng()
        per_rank = gather_rng(trainer, states)
        counters = schema.counters_entry(trainer.global_step, trainer.current_epoch, self.position.batches_consumed,
                                         _scalars(trainer.callback_metrics),
                                         **({"rng_states_per_rank": per_rank} if per_rank is not None else {}))
        checkpoint.update(schema.resume_parts(self.position, counters, rng_states=states))

    def on_train_end(self, trainer, pl_module) -> None:
        with one_line_errors(self.report.error):
            finish_with_final_checkpoint(self)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if isinstance(exception, SystemExit):       # ours (Preempted) or a one-line error: said
            return
        self.phase = transition(self.phase, Event.ERROR)
        self._agreement = agreement.Alone()     # the other ranks may be gone: wait for no collective
        self.report.error(f"{type(exception).__name__}: {exception}")
        try:
            self._close()      # lets an in-flight periodic save finish: it is still a good state
        except Exception as err:   # the user's exception matters more; ours is one line
            self.report.line(f"while stopping after the error: {err}")

    def teardown(self, trainer, pl_module, stage: str) -> None:
        if stage != "fit" or not self._active:
            return
        with one_line_errors(self.report.error):
            self._close()
        self.report.line(f"finished at step {trainer.global_step}")

    # --- the pieces ------------------------------------------------------------------------------
    def commit(self, checkpoint: dict) -> int:
        """Called by TraindCheckpointIO on rank 0 for each resumable save; returns its step."""
        step = int(checkpoint.get("global_step", 0))
        reason, blocking = self._next_save or (protocol.REASON_PERIODIC, False)
        self._next_save = None
        if reason == MEMORY:
            with one_line_errors(self.report.error):
                self.memory.save(checkpoint, step=step, epoch=checkpoint.get("epoch"), metrics={})
            return step
        if step == self._committed_step or (not blocking and step == self._saved_step):
            return step                      # this step is durable already (or being written)
        now = self.clock.monotonic()
        self._saved_step, self._save_started = step, now
        self.report.save_cost.save_started()
        self.policy.saved(step, now)
        with one_line_errors(self.report.error):
            self.store.save(checkpoint, step=step, epoch=checkpoint.get("epoch"), reason=reason,
                            metrics=dict(checkpoint.get(schema.COUNTERS_KEY, {}).get("last_metrics") or {}),
                            blocking=blocking)
        return step

    def _save(self, trainer, reason: str, blocking: bool) -> None:
        self._next_save = (reason, blocking)
        try:
            trainer.save_checkpoint(self.ckpt_dir / ck.step_dir_name(trainer.global_step), weights_only=False)
        finally:
            self._next_save = None

    def _emergency(self, trainer) -> None:
        reason = FLAGS.stop.reason if FLAGS.stop is not None else "stop requested on another rank"
        stop_with_emergency_checkpoint(self, trainer.global_step, reason, exit_at_once=False)

    # --- what the lifecycle's sequences ask of a way in (jobs/runtime/lifecycle.py) ---------------
    def say(self, line: str) -> None:
        self.report.line(line)

    def send(self, msg_type: str, **fields) -> None:
        self.report.send(msg_type, **fields)

    def flush_saves(self) -> None:
        if self.store is not None:
            try:
                self.store.flush()
            except TraindError:
                self._saved_step = None          # that step is not durable: write it again
                raise

    def save_now(self, reason: str) -> None:
        self._save(self._trainer, reason, blocking=True)     # commit() skips a step durable already

    def shut_down(self) -> None:
        with one_line_errors(self.report.error):
            self._close()

    def _step_done(self, trainer, outputs, step: int) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        metrics = {"loss": float(loss.detach().float().item())} if isinstance(loss, torch.Tensor) else {}
        if trainer.optimizers:
            metrics["lr"] = trainer.optimizers[0].param_groups[0]["lr"]
        with one_line_errors(self.report.error):
            self.report.step_done(step, trainer.current_epoch, metrics,
                                  trainer.max_steps if trainer.max_steps > 0 else None)

    def _prepare_buffers(self, trainer) -> None:
        """Once, after the first optimizer step (optimizer state exists): snapshot buffers made early."""
        prepare = getattr(self.store, "prepare", None)
        if prepare is None or self._prepared:
            return
        self._prepared = True
        prepare({"state_dict": trainer.strategy.lightning_module_state_dict(),
                 "optimizer_states": [trainer.strategy.optimizer_state(o) for o in trainer.optimizers]})

    def _restore_val_rng(self) -> None:
        if self._val_rng is not None:
            restore_rng(self._val_rng)
            self._val_rng = None

    @staticmethod
    def _take_over_stop_signals(trainer) -> None:
        """Lightning's SIGTERM handler (for fit) would exit 0 at its next batch end without a checkpoint."""
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in preemption.RECORDED_SIGNALS:
            signal.signal(sig, preemption._on_signal)
        connector = getattr(trainer, "_signal_connector", None)
        if connector is not None:
            connector.received_sigterm = False     # a SIGTERM it saw is in our flags too

    def _on_commit(self, info) -> None:     # may run on the store's background thread
        self._committed_step = info.step
        self.report.committed(info, round(self.clock.monotonic() - self._save_started, 3))

    def _close(self) -> None:
        self._agreement.close()
        self._agreement = agreement.Alone()
        if self._undo_data is not None:
            self._undo_data()
            self._undo_data = None
        try:
            for store in filter(None, (self.store, self.memory)):
                store.close()
        finally:
            self.report.close()
