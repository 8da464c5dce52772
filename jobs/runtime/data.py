"""Data that resumes exactly: per-epoch seeded shuffling, and skipping consumed batches by index.

The batch order of epoch e depends only on (seed, e), never on the global RNG, so a resumed run
rebuilds the same order without replaying anything; consumed batches are sliced off the index
list (not iterated and thrown away), and DataLoader workers get their base seed from a generator
seeded the same way, so workers > 0 change nothing.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch.utils.data import DataLoader, Dataset, Sampler


from .preemption import RECORDED_SIGNALS


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

    # How the position moves: the only places it changes, whichever way in reads the data.
    def advance(self, batches_per_epoch: int) -> bool:
        """One more batch of this epoch consumed; whether that was the epoch's last."""
        self.batches_consumed += 1
        return self.batches_consumed >= batches_per_epoch

    def next_epoch(self) -> None:
        self.epoch += 1
        self.batches_consumed = 0

    def at_batch(self, epoch: int, batch_index: int) -> "DataPosition":
        """The position after batch `batch_index` of `epoch` (a loop that is not ours counts them)."""
        return DataPosition(int(epoch), self.shuffle_seed, int(batch_index) + 1)

    def resharded(self, saved_world_size: int, world_size: int) -> None:
        """Resumed at another world size: the same samples of the epoch count as seen."""
        self.batches_consumed = self.batches_consumed * saved_world_size // world_size

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
