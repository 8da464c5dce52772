"""The training data of a Lightning run, made resumable exactly: a sampler that knows its position.

`ResumableSampler` is a `DistributedSampler` (so Lightning keeps it and injects nothing in DDP):
the order of epoch e is a permutation drawn from a generator seeded with (shuffle_seed, e), never
the global RNG; each rank takes its shard; after a resume the batches already consumed are sliced
off by index. `len()` stays the whole epoch's count (what Lightning's loops expect of a stateful
loader: they count from the restored batch index). `resumable_copy` rebuilds a user's DataLoader
around it, keeping everything else (batch size, workers, collate_fn, pin_memory, ...).
"""
from __future__ import annotations

import inspect
import math

import torch
from torch.utils.data import (BatchSampler, DataLoader, DistributedSampler, IterableDataset, RandomSampler,
                              SequentialSampler)

from ...runtime.data import DataPosition, EpochBatchSampler, _WorkerInit, epoch_seed

WORKER_SEED_SALT = 0x5EED     # as traind.jobs.runtime.data.resumable_loader: worker base seeds per (seed, epoch)


class ResumableSampler(DistributedSampler):
    """Sample indices of one rank for one epoch, from batch `start_batch` on."""

    def __init__(self, num_samples: int, batch_size: int, *, shuffle: bool = True, seed: int = 0,
                 num_replicas: int = 1, rank: int = 0, drop_last: bool = False, epoch: int = 0,
                 start_batch: int = 0, generator: torch.Generator | None = None) -> None:
        # DistributedSampler's own __init__ wants a dataset and a process group; set its fields here.
        self.dataset_len, self.batch_size = int(num_samples), int(batch_size)
        self.num_replicas, self.rank = int(num_replicas), int(rank)
        self.shuffle, self.seed, self.drop_last = bool(shuffle), int(seed), bool(drop_last)
        self.num_samples = math.ceil(self.dataset_len / self.num_replicas)    # per rank, padded
        self.total_size = self.num_samples * self.num_replicas
        self.loader_generator = generator   # the DataLoader's: reseeded per epoch (worker seeds)
        self.epoch, self.start_batch = 0, 0
        self.move_to(epoch, start_batch)

    def batches_per_epoch(self) -> int:
        full, rest = divmod(self.num_samples, self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def move_to(self, epoch: int, start_batch: int) -> None:
        """Position the sampler; a finished epoch means the start of the next one."""
        epoch, start_batch = int(epoch), int(start_batch)
        if start_batch >= self.batches_per_epoch() > 0:
            epoch, start_batch = epoch + 1, 0
        self.epoch, self.start_batch = epoch, start_batch
        if self.loader_generator is not None:
            self.loader_generator.manual_seed(epoch_seed(self.seed, epoch) ^ WORKER_SEED_SALT)

    def set_epoch(self, epoch: int) -> None:
        """Lightning calls this at every epoch start, also after a resume (same epoch: no-op)."""
        if int(epoch) != self.epoch:
            self.move_to(epoch, 0)

    def __iter__(self):
        # The epoch's order as traind.jobs.runtime.data defines it (the whole epoch as one batch of indices).
        order = next(iter(EpochBatchSampler(self.dataset_len, max(self.dataset_len, 1), seed=self.seed,
                                            epoch=self.epoch, shuffle=self.shuffle)), [])
        if self.total_size > len(order):         # pad, as DistributedSampler does, so shards are equal
            order += (order * math.ceil(self.total_size / max(len(order), 1)))[: self.total_size - len(order)]
        mine = order[self.rank:self.total_size:self.num_replicas]
        return iter(mine[self.start_batch * self.batch_size:])

    def __len__(self) -> int:
        return self.num_samples


def why_not_resumable(loader) -> str | None:
    """None if `resumable_copy` can rebuild this loader exactly, else the reason it cannot."""
    if not isinstance(loader, DataLoader):
        return f"a {type(loader).__name__}, not a DataLoader"
    if isinstance(loader.dataset, IterableDataset):
        return "an IterableDataset (no indices to resume from)"
    if loader.batch_sampler is None or type(loader.batch_sampler) is not BatchSampler:
        return f"a custom batch sampler ({type(loader.batch_sampler).__name__})"
    sampler = loader.sampler
    if isinstance(sampler, ResumableSampler):
        return None
    if isinstance(sampler, RandomSampler):
        if sampler.replacement or sampler._num_samples is not None:
            return "a RandomSampler with replacement or num_samples"
        return None
    if type(sampler) in (SequentialSampler, DistributedSampler):
        return None
    return f"a custom sampler ({type(sampler).__name__})"


def _shuffles(sampler) -> bool:
    if isinstance(sampler, (RandomSampler,)):
        return True
    if isinstance(sampler, DistributedSampler):
        return bool(sampler.shuffle)
    return False


_COPIED = ("num_workers", "collate_fn", "pin_memory", "timeout", "multiprocessing_context",
           "prefetch_factor", "persistent_workers", "pin_memory_device", "in_order")


def resumable_copy(loader: DataLoader, position: DataPosition, *, num_replicas: int = 1,
                   rank: int = 0) -> DataLoader:
    """The same loader, with a ResumableSampler at `position` (check why_not_resumable first)."""
    old = loader.sampler
    generator = torch.Generator()
    sampler = ResumableSampler(len(loader.dataset), loader.batch_size, shuffle=_shuffles(old),
                               seed=position.shuffle_seed, num_replicas=num_replicas, rank=rank,
                               drop_last=loader.drop_last, epoch=position.epoch,
                               start_batch=position.batches_consumed, generator=generator)
    accepted = inspect.signature(DataLoader.__init__).parameters
    kwargs = {name: getattr(loader, name) for name in _COPIED if name in accepted and hasattr(loader, name)}
    if kwargs.get("num_workers", 0) == 0:
        kwargs.pop("prefetch_factor", None)
        kwargs.pop("persistent_workers", None)
        kwargs["worker_init_fn"] = loader.worker_init_fn
    else:   # workers ignore SIGTERM/SIGUSR1: the main process acts on them at a step boundary
        kwargs["worker_init_fn"] = _WorkerInit(loader.worker_init_fn)
    return DataLoader(loader.dataset, batch_size=loader.batch_size, sampler=sampler,
                      drop_last=loader.drop_last, generator=generator, **kwargs)
