"""The job's place in a data-parallel group, on torch.distributed (gloo on CPU, NCCL on GPU).

Under `distributed:` the supervisor starts every rank with torchrun's environment (RANK,
WORLD_SIZE, MASTER_ADDR, ...); `Group.from_env` joins the default process group through env://
(unless the script did already) and makes two small gloo groups of its own:
- `control`: the training thread's collectives: the resume point, the start-up stop check and,
  across nodes, the stop rule's all_reduce (jobs/runtime/agreement.py, which says when a stop or
  a save happens on every rank);
- `ckpt`: the sharded checkpoint's collectives (DCP's plan exchange, the shard reports, the commit),
  which run on the background writer thread; a group per thread keeps the collectives of each
  thread in one order on every rank.
"""
from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist

DEFAULT_TIMEOUT_SECONDS = 300.0     # a collective waits this long for a peer (TRAIND_DIST_TIMEOUT)


class Group:
    def __init__(self, rank: int, world_size: int, local_rank: int) -> None:
        self.rank, self.world_size, self.local_rank = rank, world_size, local_rank
        self.control = dist.new_group(backend="gloo")
        self.ckpt = dist.new_group(backend="gloo")
        self._pending = None          # the agreement in flight (start_agreement), read next step

    @classmethod
    def from_env(cls, environ=os.environ) -> "Group | None":
        """The group this process belongs to; None for a single process (no WORLD_SIZE > 1 and
        no process group initialised by the script)."""
        if not dist.is_available():
            return None
        if not dist.is_initialized():
            if int(environ.get("WORLD_SIZE", "1") or 1) <= 1:
                return None
            backend = "nccl" if torch.cuda.is_available() else "gloo"
            timeout = float(environ.get("TRAIND_DIST_TIMEOUT", DEFAULT_TIMEOUT_SECONDS))
            dist.init_process_group(backend, init_method="env://", timeout=timedelta(seconds=timeout))
        if dist.get_world_size() <= 1:
            return None
        return cls(dist.get_rank(), dist.get_world_size(), int(environ.get("LOCAL_RANK", dist.get_rank())))

    @property
    def leader(self) -> bool:
        return self.rank == 0

    def agree(self, *flags: bool) -> tuple[bool, ...]:
        """Each flag is true on every rank if it is true on any (one all_reduce of a few ints)."""
        t = torch.tensor([int(bool(f)) for f in flags], dtype=torch.int32)
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.control)
        return tuple(bool(v) for v in t.tolist())

    def start_agreement(self, *flags: bool) -> None:
        """`agree`, without waiting: the result is read one step later (finish_agreement), so the
        all_reduce runs behind that step's compute instead of in front of it (measured: ~3 ms per
        blocking call with 4 ranks on 2 busy cores). Every rank reads the same result at the same
        step, so the group still stops, or saves, at one step: the one after the flag was raised."""
        t = torch.tensor([int(bool(f)) for f in flags], dtype=torch.int32)
        self._pending = (t, dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.control, async_op=True))

    def finish_agreement(self) -> tuple[bool, ...] | None:
        """The flags of the last start_agreement, reduced over the group (None if none is pending)."""
        pending, self._pending = self._pending, None
        if pending is None:
            return None
        pending[1].wait()
        return tuple(bool(v) for v in pending[0].tolist())

    def share(self, obj, group=None):
        """Rank 0's `obj`, on every rank (picklable plain values only: paths, strings, dicts)."""
        box = [obj if self.leader else None]
        dist.broadcast_object_list(box, src=0, group=group or self.control)
        return box[0]

    def collect(self, obj, group=None) -> list:
        """Every rank's `obj`, on every rank, in rank order."""
        out = [None] * self.world_size
        dist.all_gather_object(out, obj, group=group or self.control)
        return out


def fix_ddp_buckets(model) -> bool:
    """Keep a DistributedDataParallel model's gradient buckets in one layout from the first step.

    DDP re-buckets once, after its first iteration, in the order gradients became ready. A resumed
    group builds a new DDP, whose first step then reduces in the initial layout where an
    uninterrupted run already used the re-bucketed one: gloo/NCCL sum each element in an order that
    depends on where it sits in the bucket, so the last bits differ and resume is no longer exact.
    Handing the reducer every parameter up front makes it re-bucket at the very first step, the
    same way in every run (DDP's static-graph mode does the same). The cost: buckets follow the
    parameters' order rather than the backward's, which overlaps communication a little less."""
    reducer = getattr(model, "reducer", None)
    if reducer is None or not hasattr(reducer, "_push_all_rebuilt_params") or os.environ.get(
            "TRAIND_DDP_FIXED_BUCKETS", "1") == "0":
        return False
    reducer._push_all_rebuilt_params()
    return True


class _TrainingStep(torch.nn.Module):
    """A module's training_step as a forward, so that DDP's hooks see the backward of the loss."""

    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, batch, batch_idx):
        return self.module.training_step(batch, batch_idx)


def data_parallel_step(module: torch.nn.Module):
    """`module.training_step` through DistributedDataParallel, its buckets fixed (fix_ddp_buckets)."""
    from torch.nn.parallel import DistributedDataParallel
    ddp = DistributedDataParallel(_TrainingStep(module))
    fix_ddp_buckets(ddp)
    return ddp
