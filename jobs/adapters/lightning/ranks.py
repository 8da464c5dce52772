"""What several ranks of one Lightning run must agree on, and each rank's share of a checkpoint.

Decisions (stop now, checkpoint now) are the runtime's agreement (jobs/runtime/agreement.py),
as for every way in. RNG states differ per rank (dropout): rank 0 gathers them into the
checkpoint, and each rank restores its own.
"""
from __future__ import annotations

import torch

from ...runtime.data import DataPosition


def _distributed(trainer) -> bool:
    return (trainer.world_size > 1 and torch.distributed.is_available()
            and torch.distributed.is_initialized())


def gather_rng(trainer, states: dict) -> list | None:
    """Every rank's RNG states (on every rank), or None with a single rank. A collective: call it
    on all ranks at once (on_save_checkpoint runs on all of them inside trainer.save_checkpoint)."""
    if not _distributed(trainer):
        return None
    out: list = [None] * trainer.world_size
    torch.distributed.all_gather_object(out, states)
    return out


def rng_for_rank(restored: dict, rank: int, world_size: int) -> dict | None:
    """The RNG states this rank resumes with: its own if the checkpoint has one per rank for this
    world size; the checkpoint's single set on a single rank; None (not exact) otherwise."""
    per_rank = restored.get("per_rank")
    if isinstance(per_rank, list) and len(per_rank) == world_size:
        return per_rank[rank]
    if world_size == 1 or rank == 0:
        return restored.get("rng")
    return None


def position_from_loops(checkpoint: dict, shuffle_seed: int) -> DataPosition:
    """Where a checkpoint without traind's data position stood: from Lightning's loop counters
    (batches processed in the current epoch), so that the epoch continues after them."""
    fit = ((checkpoint.get("loops") or {}).get("fit_loop") or {})
    current = (fit.get("epoch_loop.batch_progress") or {}).get("current") or {}
    done = int(current.get("processed", 0) or 0)
    return DataPosition(int(checkpoint.get("epoch", 0) or 0), shuffle_seed, done)
