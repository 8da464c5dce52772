"""torchrun_plain.py with five lines changed: traind's stops, checks and supervision, its own format kept.

    traind run jobs/examples/torchrun.yaml       # or: torchrun --nproc_per_node 2 -m ... OUT_DIR
"""
import sys
from pathlib import Path

import torch
import traind
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
    ckpt = traind.OwnCheckpoints(out_dir, every_steps=SAVE_EVERY)
    snapshot = ckpt.resume_file("snapshot.pt", default=Path(out_dir) / "snapshot.pt")
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
        if ckpt.step_done(it + 1, loss=loss.item()):
            ckpt.save(lambda d: rank == 0 and save_snapshot(d / "snapshot.pt", model, opt, it + 1))
    dist.destroy_process_group()


if __name__ == "__main__":
    Path(sys.argv[1]).mkdir(parents=True, exist_ok=True)
    main(sys.argv[1])
