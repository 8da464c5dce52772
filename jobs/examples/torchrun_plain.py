"""A plain torchrun training script with its own checkpoint code, as many are written (no traind).

    torchrun --nproc_per_node 2 -m traind.jobs.examples.torchrun_plain OUT_DIR

torchrun_traind.py is this script with five lines changed (docs/frameworks.md shows the diff).
"""
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

MAX_ITERS, SAVE_EVERY, BATCH = 240, 60, 32


def get_batch(it: int, rank: int):
    """The batch of iteration `it` on this rank: a function of both, so a resumed run sees the same."""
    g = torch.Generator().manual_seed(it * 1009 + rank)
    x = torch.randn(BATCH, 20, generator=g)
    return x, x.sum(dim=1, keepdim=True) + 0.1 * torch.randn(BATCH, 1, generator=g)


def save_snapshot(path, model, opt, iters_done: int) -> None:
    torch.save({"model": model.module.state_dict(), "optim": opt.state_dict(), "iters": iters_done}, path)


def main(out_dir: str) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    model = DDP(torch.nn.Sequential(torch.nn.Linear(20, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1)))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    snapshot = Path(out_dir) / "snapshot.pt"
    start = 0
    if snapshot.exists():
        state = torch.load(snapshot, weights_only=True)
        model.module.load_state_dict(state["model"])
        opt.load_state_dict(state["optim"])
        start = state["iters"]
    for it in range(start, MAX_ITERS):
        x, y = get_batch(it, rank)
        loss = F.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if rank == 0 and (it + 1) % SAVE_EVERY == 0:
            save_snapshot(snapshot, model, opt, it + 1)
    dist.destroy_process_group()


if __name__ == "__main__":
    Path(sys.argv[1]).mkdir(parents=True, exist_ok=True)
    main(sys.argv[1])
