"""Reading a checkpoint outside a running job (no writer lock): for load_from_checkpoint and tools."""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from traind import store
from traind.contract.errors import TraindError
from traind.jobs.store import load_checkpoint

log = logging.getLogger("traind.store")


def resolve(path) -> Path:
    """A state.pt, a checkpoint dir, or a run/checkpoints dir -> that file or checkpoint dir."""
    path = Path(path)
    if path.is_file() or (path / store.MANIFEST_NAME).exists():
        return path
    chosen, skipped = store.latest_valid(store.checkpoints_dir(path))
    if chosen is None:
        why = f" ({len(skipped)} invalid, newest: {skipped[0].error})" if skipped else ""
        raise TraindError(f"{path}: no valid checkpoint{why}")
    for bad in skipped:
        log.warning("skipped checkpoint %s: %s", bad.path, bad.error)
    return chosen.path


def load_state(path, map_location="cpu") -> dict:
    """The state dict of a checkpoint; a checkpoint dir is verified (sizes, checksums) first."""
    target = resolve(path)
    if target.is_file():
        # weights_only=True: a checkpoint is data; a crafted pickle must never run code here.
        return torch.load(target, map_location=map_location, weights_only=True)
    return load_checkpoint(target, map_location=map_location)
