"""traind for a plain loop on Hugging Face accelerate: `save_state` and `load_state` go through
traind's store; the loop reports its steps and asks where it may save.

    accelerator = Accelerator()
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    ckpt = traind.accelerate.Checkpointing(accelerator, every_steps=100)
    accelerator.load_state()                  # the newest verified checkpoint (none: nothing loaded)
    for step in range(ckpt.step, max_steps):
        ...
        if ckpt.step_done(step + 1, loss=loss.item()):    # a periodic save, or the agreed stop
            accelerator.save_state()                       # committed by traind; after a stop: exit 75

accelerate keeps writing with its own writer (model, optimizer, scheduler, sampler, RNG states,
objects registered with `register_for_checkpointing`); `save_state()` without a directory writes
into a fresh checkpoint directory that traind commits (jobs/runtime/own_checkpoints.py: every file
checksummed, the manifest last, retention), and `load_state()` without one reads the newest that
verifies. Either one given a directory does what accelerate does.
"""
from __future__ import annotations

from pathlib import Path

from ..runtime.own_checkpoints import OwnCheckpoints

__all__ = ["Checkpointing"]


class Checkpointing:
    """run_dir: $TRAIND_RUN_DIR under `traind run`, else this, else the accelerator's
    project_dir. every_steps / every_seconds / keep_last: as for traind.OwnCheckpoints (keep_last
    defaults to the ProjectConfiguration's total_limit)."""

    def __init__(self, accelerator, run_dir=None, *, every_steps: int | None = None,
                 every_seconds: float | None = None, keep_last: int | None = None, environ=None) -> None:
        self.accelerator = accelerator
        project = accelerator.project_configuration
        run_dir = run_dir or accelerator.project_dir
        self.own = OwnCheckpoints(run_dir, every_steps=every_steps, every_seconds=every_seconds,
                                  keep_last=keep_last or project.total_limit or 3, environ=environ)
        self._save_state, self._load_state = accelerator.save_state, accelerator.load_state
        accelerator.save_state, accelerator.load_state = self._saving, self._loading

    @property
    def step(self) -> int:
        """The step resumed from (0 on a fresh start), then the last one reported."""
        self.own.resume_dir()
        return self.own.step

    def step_done(self, step: int | None = None, **metrics) -> bool:
        """The step's metrics line and heartbeat; True when every rank saves here (save_state())."""
        return self.own.step_done(step, **metrics)

    def close(self) -> None:
        self.own.close()

    # --- accelerate's two calls, without a directory ------------------------------------------------
    def _saving(self, output_dir=None, *args, **kwargs):
        if output_dir is not None:
            return self._save_state(output_dir, *args, **kwargs)
        project = self.accelerator.project_configuration
        automatic = project.automatic_checkpoint_naming

        def write(directory: Path) -> None:
            project.automatic_checkpoint_naming = False     # else accelerate picks its own folder
            try:
                self._save_state(str(directory), *args, **kwargs)
            finally:
                project.automatic_checkpoint_naming = automatic
        self.own.save(write)
        if automatic:
            project.iteration += 1
        return str(self.own.store.ckpt_dir)

    def _loading(self, input_dir=None, *args, **kwargs):
        if input_dir is not None:
            return self._load_state(input_dir, *args, **kwargs)
        path = self.own.resume_dir()
        if path is None:
            return None
        return self._load_state(str(path), *args, **kwargs)
