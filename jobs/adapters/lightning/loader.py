"""Loading checkpoints for Lightning: traind's are verified first, and may be named by their directory.

`load_for_lightning(path)` is what traind's CheckpointIO plugin loads with: a traind checkpoint
(a step dir, a file in one, a run or checkpoints dir) goes through traind.jobs.engine.loading
(sizes + xxh3 checked, weights_only=True); any other file (a Lightning .ckpt) loads as it is,
still with weights_only=True. `install_loader()` routes Lightning's own loader through the same
function for traind checkpoints only, so that `LitModule.load_from_checkpoint("runs/x/checkpoints/
step-000000050")` (a directory, which Lightning cannot open) works and verifies; other paths are
left to Lightning unchanged. Using `traind.lightning.Checkpointing` installs it.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

from traind import store
from ...engine.loading import load_checkpoint, load_unverified

log = logging.getLogger("traind.lightning")
_installed = False


def _local(path) -> Path | None:
    if not isinstance(path, (str, os.PathLike)):
        return None
    text = os.fspath(path)
    return None if "://" in str(text) else Path(text)


def is_traind_checkpoint(path) -> bool:
    """A path traind can verify: a step dir, a file inside one, or a dir holding checkpoints/."""
    p = _local(path)
    if p is None or not p.exists():
        return False
    if p.is_file():
        return (p.parent / store.MANIFEST_NAME).exists()
    return ((p / store.MANIFEST_NAME).exists() or bool(store.STEP_DIR_RE.match(p.name))
            or (p / store.CHECKPOINTS_SUBDIR).is_dir() or p.name == store.CHECKPOINTS_SUBDIR)


def load_for_lightning(path, map_location=None) -> dict:
    """The state dict at `path`: verified if traind wrote it, as it is otherwise (weights_only)."""
    where = map_location if map_location is not None else "cpu"
    if is_traind_checkpoint(path):
        return load_checkpoint(path, map_location=where)
    log.info("%s: not a traind checkpoint (no manifest); loading it unverified", path)
    return load_unverified(path, map_location=where)


def install_loader() -> None:
    """Make Lightning's loaders accept traind checkpoints (verified, directories allowed). Idempotent."""
    global _installed
    if _installed:
        return
    import lightning_fabric.plugins.io.torch_io as torch_io
    import pytorch_lightning.core.saving as saving

    for module in (saving, torch_io):
        original = module.pl_load

        def load(path_or_url, map_location=None, weights_only=None, _original=original):
            if is_traind_checkpoint(path_or_url):
                return load_for_lightning(path_or_url, map_location)
            return _original(path_or_url, map_location=map_location, weights_only=weights_only)

        load.traind_original = original
        module.pl_load = load
    _installed = True
