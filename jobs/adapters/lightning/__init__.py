"""traind for PyTorch Lightning: one callback gives a Lightning run traind's guarantees.

    import traind.lightning
    trainer = pl.Trainer(..., callbacks=[traind.lightning.Checkpointing()])
    trainer.fit(model, datamodule)        # resumes by itself; a stop request -> checkpoint, exit 75

Checkpoints go through traind's store (atomic, checksummed, non-blocking, retained, one writer),
the run resumes by itself from the latest valid checkpoint, bit for bit on CPU, and a stop request
(SIGTERM, SIGUSR1, the supervisor's control channel) is acted on at the next step boundary with
one emergency checkpoint and exit 75. See docs/lightning.md.

This package's own __init__ imports nothing heavy: `traind.jobs.runtime.session` reads `schema` (Lightning's
checkpoint schema, stdlib only) without Lightning installed. The names below import
pytorch_lightning on first use (`pip install 'traind[lightning]'`).
"""
from __future__ import annotations

import importlib

_LAZY = {
    "Checkpointing": "traind.jobs.adapters.lightning.callback",
    "TraindCheckpointIO": "traind.jobs.adapters.lightning.io",
    "ResumableSampler": "traind.jobs.adapters.lightning.sampler",
    "install_loader": "traind.jobs.adapters.lightning.loader",
    "import_checkpoint": "traind.jobs.commands.import_ckpt",
}
__all__ = sorted(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'traind.jobs.adapters.lightning' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
