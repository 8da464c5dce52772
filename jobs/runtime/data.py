"""Data that resumes exactly: per-epoch seeded shuffling, and skipping consumed batches by index.

The batch order of epoch e depends only on (seed, e), never on the global RNG, so a resumed run
rebuilds the same order without replaying anything; consumed batches are sliced off the index
list (not iterated and thrown away), and DataLoader workers get their base seed from a generator
seeded the same way, so workers > 0 change nothing.
"""
from __future__ import annotations

import inspect
from dataclasses import asdict, dataclass

import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler, Sampler

from traind.contract.errors import UsageError

from traind.jobs.training.hparams import HyperparametersMixin
from traind.jobs.runtime.preemption import RECORDED_SIGNALS


def epoch_seed(seed: int, epoch: int) -> int:
    return (int(seed) * 1_000_003 + int(epoch)) % 2**63


@dataclass
class DataPosition:
    """Where the training data stands: stored as `data_position` in state.pt."""
    epoch: int = 0
    shuffle_seed: int = 0
    batches_consumed: int = 0     # in the current epoch

    def state_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_state(cls, state: dict) -> "DataPosition":
        return cls(int(state["epoch"]), int(state["shuffle_seed"]), int(state["batches_consumed"]))


class EpochBatchSampler(Sampler):
    """Batches of indices for one epoch, starting at batch `start_batch`. In a group of
    `world_size` ranks, rank r takes every world_size-th index of the epoch's order from r on (the
    same number on every rank, as DistributedSampler(drop_last=True)): the batch order is a
    function of (seed, epoch, rank)."""

    def __init__(self, num_samples: int, batch_size: int, *, seed: int = 0, epoch: int = 0,
                 shuffle: bool = True, drop_last: bool = False, start_batch: int = 0,
                 rank: int = 0, world_size: int = 1) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.rank, self.world_size, self.all_samples = int(rank), int(world_size), int(num_samples)
        num_samples = num_samples // self.world_size
        self.num_samples, self.batch_size = int(num_samples), int(batch_size)
        self.seed, self.epoch, self.shuffle, self.drop_last = seed, epoch, shuffle, drop_last
        self.start_batch = int(start_batch)

    def batches_per_epoch(self) -> int:
        full, rest = divmod(self.num_samples, self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def __len__(self) -> int:
        return max(0, self.batches_per_epoch() - self.start_batch)

    def __iter__(self):
        if self.shuffle:
            gen = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
            order = torch.randperm(self.all_samples, generator=gen).tolist()
        else:
            order = list(range(self.all_samples))
        order = order[self.rank::self.world_size][:self.num_samples]
        for b in range(self.start_batch, self.batches_per_epoch()):
            yield order[b * self.batch_size:(b + 1) * self.batch_size]

    def state_dict(self) -> dict:
        return {"num_samples": self.num_samples, "batch_size": self.batch_size, "seed": self.seed,
                "epoch": self.epoch, "shuffle": self.shuffle, "drop_last": self.drop_last,
                "start_batch": self.start_batch, "rank": self.rank, "world_size": self.world_size}


class _WorkerInit:
    """DataLoader workers ignore the stop signals: SLURM and `kill -TERM -PGID` signal every process,
    and a worker killed by SIGTERM would make the next batch raise instead of letting the main
    process reach its step boundary and write the emergency checkpoint. Workers still exit when
    the loader shuts them down or the main process dies."""

    def __init__(self, user_fn=None) -> None:
        self.user_fn = user_fn

    def __call__(self, worker_id: int) -> None:
        import signal
        for sig in RECORDED_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        if self.user_fn is not None:
            self.user_fn(worker_id)


def resumable_loader(dataset: Dataset, batch_size: int, *, position: DataPosition | None = None,
                     shuffle: bool = True, num_workers: int = 0, drop_last: bool = False,
                     group=None, **loader_kwargs) -> DataLoader:
    """A DataLoader for the epoch in `position`, starting after the batches already consumed;
    with a `group` (jobs/runtime/group.py), this rank's part of each epoch."""
    position = position or DataPosition()
    sampler = EpochBatchSampler(len(dataset), batch_size, seed=position.shuffle_seed,
                                epoch=position.epoch, shuffle=shuffle, drop_last=drop_last,
                                start_batch=position.batches_consumed,
                                rank=0 if group is None else group.rank,
                                world_size=1 if group is None else group.world_size)
    # Worker base seeds come from this generator, not from the global RNG (which would both
    # differ on resume and perturb the dropout stream).
    generator = torch.Generator().manual_seed(epoch_seed(position.shuffle_seed, position.epoch) ^ 0x5EED)
    if num_workers > 0:
        loader_kwargs["worker_init_fn"] = _WorkerInit(loader_kwargs.get("worker_init_fn"))
    return DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers,
                      generator=generator, **loader_kwargs)


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
