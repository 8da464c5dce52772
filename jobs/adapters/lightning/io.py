"""Lightning's CheckpointIO plugin over traind's store: where a Lightning run's saves land.

Every resumable save Lightning makes (`trainer.save_checkpoint`, hence every ModelCheckpoint save)
becomes a commit of `RUN_DIR/checkpoints/step-N` through traind.jobs.engine.CheckpointEngine:
atomic, checksummed, non-blocking (the loop waits only for a snapshot into reused buffers), pruned
by traind's retention, one writer. The file name Lightning chose is remembered, so that Lightning
can load it back by that name (`ckpt_path="best"`); traind's retention, not ModelCheckpoint's
`remove_checkpoint`, decides what is deleted, and never before a newer checkpoint is durable.
A weights-only save (`ModelCheckpoint(save_weights_only=True)`) is an export, not a resume point:
it is written where Lightning asked, as Lightning would.
"""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from pytorch_lightning.plugins import CheckpointIO, TorchCheckpointIO

from traind import store
from .loader import load_for_lightning

log = logging.getLogger("traind.lightning")
STEP_IN_NAME = re.compile(r"step=(\d+)")     # Lightning's default file names: epoch=E-step=N.ckpt


class TraindCheckpointIO(CheckpointIO):
    """Installed on the strategy by `traind.lightning.Checkpointing` (its `commit` does the save)."""

    def __init__(self, owner) -> None:
        self.owner = owner
        self.saved_as: dict[str, int] = {}
        self._plain = TorchCheckpointIO()

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        if "optimizer_states" not in checkpoint:
            self._plain.save_checkpoint(checkpoint, path, storage_options=storage_options)
            return
        self.saved_as[os.fspath(path)] = self.owner.commit(checkpoint)

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict:
        # weights_only is always True here, whatever the caller asks: a checkpoint is data
        return load_for_lightning(self.resolve(path), map_location)

    def resolve(self, path) -> Path:
        """The file or checkpoint dir `path` names: itself if it exists, else the step dir of a
        name Lightning gave one of our saves (remembered, or `step=N` in Lightning's file names)."""
        p = Path(path)
        if p.exists():
            return p
        step = self.saved_as.get(os.fspath(path))
        if step is None:
            found = STEP_IN_NAME.search(p.name)
            step = int(found.group(1)) if found else None
        ckpt_dir = getattr(self.owner, "ckpt_dir", None)
        if step is not None and ckpt_dir is not None:
            candidate = Path(ckpt_dir) / store.step_dir_name(step)
            if candidate.exists():
                return candidate
        raise FileNotFoundError(f"{path}: no such checkpoint (and no traind checkpoint it names)")

    def remove_checkpoint(self, path) -> None:
        log.debug("not removing %s: traind's retention (keep_last, keep_best) decides", path)

    def teardown(self) -> None:
        self._plain.teardown()
