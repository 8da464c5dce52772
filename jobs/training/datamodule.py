"""The DataModule (datasets and how they are batched) and the Trainer's loader from it: always a
resumable one (jobs/runtime/data.py), so that a resume continues with the next batch."""
from __future__ import annotations

import inspect

import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler

from traind.contract.errors import UsageError

from ..runtime.data import DataPosition, resumable_loader
from .hparams import HyperparametersMixin


def resumable_like(loader: DataLoader, position: DataPosition, where: str, group=None) -> DataLoader:
    """The resumable equivalent of a plain DataLoader that a Lightning-style `train_dataloader(self)`
    returned: same dataset, batch size, shuffling, workers and collate_fn, but its order is a
    function of (seed, epoch) and it starts after the batches already consumed."""
    if loader.batch_size is None:
        raise UsageError(f"{where}: returns a DataLoader with a custom batch_sampler, which cannot resume "
                         "mid-epoch; give it batch_size= instead, or implement train_dataset()")
    extra = {"collate_fn": loader.collate_fn, "pin_memory": loader.pin_memory}
    return resumable_loader(loader.dataset, loader.batch_size, position=position,
                            shuffle=isinstance(loader.sampler, RandomSampler), num_workers=loader.num_workers,
                            drop_last=loader.drop_last, group=group, **extra)


def train_loader(datamodule, position: DataPosition, group=None) -> DataLoader:
    """The epoch's loader from a DataModule: `train_dataloader(position)` (ours), or a plain
    Lightning-style `train_dataloader()` made resumable; in a group, this rank's part of it."""
    datamodule.group = group
    fn = datamodule.train_dataloader
    try:
        takes_position = len(inspect.signature(fn).parameters) >= 1
    except (TypeError, ValueError):
        takes_position = True
    if takes_position:
        return fn(position)
    return resumable_like(fn(), position, f"{type(datamodule).__name__}.train_dataloader()", group)


class DataModule(HyperparametersMixin):
    """Owns the datasets and how they are batched. Override `train_dataset()` (and optionally
    `val_dataset()`, `setup()`, `state_dict()`/`load_state_dict()` for your own state).

    The trainer builds the loaders itself (see `resumable_loader`) so that resume is exact."""

    batch_size: int = 32
    num_workers: int = 0
    shuffle: bool = True
    drop_last: bool = False
    loader_kwargs: dict = {}
    group = None        # the rank's data-parallel group (jobs/runtime/group.py), set by the Trainer

    def setup(self, stage: str) -> None:
        """Called once before training ("fit"), before the restore: build the datasets here."""

    def train_dataset(self) -> Dataset:
        raise NotImplementedError(f"{type(self).__name__} must implement train_dataset()")

    def val_dataset(self) -> Dataset | None:
        return None

    def train_dataloader(self, position: DataPosition) -> DataLoader:
        return resumable_loader(self.train_dataset(), self.batch_size, position=position,
                                shuffle=self.shuffle, num_workers=self.num_workers,
                                drop_last=self.drop_last, group=self.group, **self.loader_kwargs)

    def val_dataloader(self) -> DataLoader | None:
        dataset = self.val_dataset()
        if dataset is None:
            return None
        # An explicit generator: creating the loader's iterator must not draw from the global RNG.
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=False, num_workers=0,
                          generator=torch.Generator().manual_seed(0))

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
