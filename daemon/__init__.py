"""traind: a fault-tolerant training daemon for PyTorch.

`import traind` is torch-free (the supervisor imports it; tests/test_no_torch.py checks it). The
job-side names below (traind.Session, traind.Trainer, ...) live in traind.jobs, which imports
torch, and resolve on first use.

Folders and import names: daemon/ is `traind` (contract/, fs/, store/, supervisor/, service/,
cluster/, cli/); jobs/ is `traind.jobs` (the job side: what runs inside the training process).
"""
__version__ = "0.1.0"

JOB_SIDE_NAMES = (
    "Session", "Trainer", "TrainModule", "DataModule", "Callback", "CheckpointPolicy", "EarlyStopping",
    "seed_everything", "Preempted", "resumable_loader", "DataPosition", "EpochBatchSampler", "OwnCheckpoints",
)


def __getattr__(name):
    if name in JOB_SIDE_NAMES:
        import importlib
        value = getattr(importlib.import_module("traind.jobs"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'traind' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(JOB_SIDE_NAMES))
