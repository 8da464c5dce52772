"""traind job side: what runs inside the training process (imports torch).

Public API: Trainer, TrainModule, DataModule, callbacks (CheckpointPolicy, EarlyStopping), Session
(for your own loop), OwnCheckpoints (for a script that keeps its own save code), resumable_loader,
seed_everything, Preempted.
"""
import os as _os

from traind.contract import protocol as _protocol
from .runtime import preemption as _preemption

if _os.environ.get(_protocol.ENV_CONTROL_FD):
    # Under a supervisor, record stop signals from the very start: importing torch and building
    # the model can take long enough for a preemption notice to arrive.
    _preemption.install()

from .runtime.callbacks import Callback, CheckpointPolicy, EarlyStopping  # noqa: E402
from .runtime.data import DataPosition, EpochBatchSampler, resumable_loader  # noqa: E402
from .training.datamodule import DataModule  # noqa: E402
from .training.module import TrainModule  # noqa: E402
from .runtime.rng import seed_everything  # noqa: E402
from .runtime.session import Preempted, Session  # noqa: E402

__all__ = [
    "Callback", "CheckpointPolicy", "EarlyStopping", "DataModule", "DataPosition",
    "EpochBatchSampler", "resumable_loader", "TrainModule", "seed_everything", "Preempted",
    "Session", "Trainer", "OwnCheckpoints",
]


def __getattr__(name):  # Trainer is imported on first use (it pulls in more of torch)
    if name == "Trainer":
        from .training.trainer import Trainer
        return Trainer
    if name == "OwnCheckpoints":
        from .runtime.own_checkpoints import OwnCheckpoints
        return OwnCheckpoints
    raise AttributeError(f"module 'jobs' has no attribute {name!r}")
