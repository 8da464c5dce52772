"""traind for Hugging Face Transformers: one callback gives a `Trainer` traind's guarantees.

    import traind.hf
    trainer = Trainer(model, args, ..., callbacks=[traind.hf.Checkpointing()])
    trainer.train()          # resumes by itself from the newest verified checkpoint

HF keeps writing its checkpoints with its own writer (model.safetensors, optimizer.pt,
scheduler.pt, rng_state*.pth, trainer_state.json), so `resume_from_checkpoint` works unchanged;
what HF wrote into `output_dir/checkpoint-N` is moved into traind's store and committed there
(jobs/runtime/own_checkpoints.py: every file checksummed, the manifest last, retention from
`save_total_limit`). The hooks, in HF's order:
- on_init_end: the Trainer's train() resumes from the newest checkpoint that verifies when it is
  given no path (one given by the script wins); our stop handlers go in front of HF's own
  (enable_jit_checkpoint) instead of replacing them;
- on_step_end, after the optimizer step: metrics line, heartbeat, the ranks' agreement on a stop or
  a checkpoint (jobs/runtime/agreement.py); either asks HF for a save at this step;
- on_save, once HF wrote the checkpoint on every rank: the commit; after the stop's save, exit 75.
"""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from transformers import Trainer, TrainerCallback

from traind.contract.errors import TraindError
from ..runtime import preemption
from ..runtime.lifecycle import one_line_errors
from ..runtime.own_checkpoints import OwnCheckpoints

HF_PREFIX = "checkpoint-"      # transformers.trainer_utils.PREFIX_CHECKPOINT_DIR
__all__ = ["Checkpointing"]


class Checkpointing(TrainerCallback):
    """run_dir: $TRAIND_RUN_DIR under `traind run`, else this, else the Trainer's output_dir.
    every_steps / every_seconds: traind's own periodic checkpoints beside HF's save_steps (the
    spec's `checkpoint:` section sets them under `traind run`)."""

    def __init__(self, run_dir=None, *, every_steps: int | None = None, every_seconds: float | None = None,
                 environ=None) -> None:
        preemption.install()         # a stop while the model is built is kept for the first step
        self.env = os.environ if environ is None else environ
        self._args = (run_dir, every_steps, every_seconds)
        self.own: OwnCheckpoints | None = None
        self._final = False
        self._logged_step = -1

    # --- set-up ---------------------------------------------------------------------------------
    def on_init_end(self, args, state, control, **kwargs):
        run_dir, every_steps, every_seconds = self._args
        keep = args.save_total_limit if args.save_total_limit and args.save_total_limit > 0 else 3
        self.own = OwnCheckpoints(run_dir or args.output_dir, every_steps=every_steps,
                                  every_seconds=every_seconds, keep_last=keep, environ=self.env)
        preemption.chain()
        trainer = _the_trainer_holding(self)
        if trainer is not None:
            _resume_by_default(trainer, self.own)

    # --- each step --------------------------------------------------------------------------------
    def on_step_end(self, args, state, control, **kwargs):
        """After the optimizer step (HF logs, evaluates and saves after this hook)."""
        step = self.own.step = state.global_step
        if not control.should_log:          # else on_log writes this step's line, with its loss
            self.own.report_step(step, epoch=int(state.epoch or 0))
        due = self.own.save_due()
        self._final = state.max_steps > 0 and step >= state.max_steps
        if due or self._final:
            control.should_save = True
        if self.own.stopping:
            control.should_training_stop = True

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.global_step == self._logged_step or "loss" not in (logs or {}):
            return                          # an evaluation's log, or this step's line is written
        self._logged_step = state.global_step
        self.own.report_step(state.global_step, epoch=int(state.epoch or 0),
                             **{k: v for k, v in logs.items() if k != "epoch"})

    def on_save(self, args, state, control, **kwargs):
        """HF wrote checkpoint-N (every rank its part): move it into the store and commit it."""
        source = Path(args.output_dir) / f"{HF_PREFIX}{state.global_step}"
        if self.own.group is not None:
            self.own.group.collect(None)          # every rank's files are written
        leader = self.own.group is None or self.own.group.leader
        self.own.save(lambda d: leader and _move_files(source, d), step=state.global_step,
                      final=self._final and not self.own.stopping)

    def on_train_end(self, args, state, control, **kwargs):
        self.own.close()


def _move_files(source: Path, target: Path) -> None:
    if not source.is_dir():
        raise TraindError(f"{source}: HF's checkpoint is not there (a custom _save_checkpoint?)")
    for entry in sorted(source.iterdir()):
        if entry.is_dir():
            raise TraindError(f"{entry}: a folder in HF's checkpoint (FSDP/DeepSpeed layouts are not supported)")
        try:
            os.replace(entry, target / entry.name)
        except OSError:                      # output_dir on another file system: copy, then remove
            shutil.copy2(entry, target / entry.name)
            entry.unlink()
    source.rmdir()


def _the_trainer_holding(callback) -> Trainer | None:
    """The Trainer whose __init__ is calling on_init_end: HF hands callbacks no reference to it."""
    frame = sys._getframe(1)
    while frame is not None:
        candidate = frame.f_locals.get("self")
        if isinstance(candidate, Trainer) and callback in candidate.callback_handler.callbacks:
            return candidate
        frame = frame.f_back
    return None


def _resume_by_default(trainer: Trainer, own: OwnCheckpoints) -> None:
    """trainer.train() with no resume_from_checkpoint resumes from traind's newest verified one."""
    train = trainer.train

    def train_resuming(resume_from_checkpoint=None, *args, **kwargs):
        if resume_from_checkpoint is None:
            with one_line_errors(own.report.error):
                path = own.resume_dir()
            resume_from_checkpoint = None if path is None else str(path)
        return train(resume_from_checkpoint, *args, **kwargs)
    trainer.train = train_resuming

