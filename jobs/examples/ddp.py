"""Data-parallel training on 4 CPU ranks (gloo): a torchrun-style script under `traind run`.

    traind run jobs/examples/ddp.yaml                 # 4 ranks (distributed.nproc_per_node: 4)
    torchrun --nproc-per-node 2 -m traind.jobs.examples.ddp --run-dir runs/ddp-torchrun

It is an ordinary DDP script: the process group comes from torchrun's environment (RANK,
WORLD_SIZE, MASTER_ADDR, ... which `traind run` sets for each rank), the model is wrapped in
DistributedDataParallel, and a traind.Session does the rest: each rank trains on its part of a
shuffled epoch, every rank stops at the same step on a signal to any of them, and checkpoints are
sharded (torch.distributed.checkpoint) and committed once, with one manifest, for the group.
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import TensorDataset

import traind
from traind.jobs.examples.tiny import at_least, non_negative_seconds


def make_data(samples: int, features: int, classes: int, seed: int = 1234) -> TensorDataset:
    """Gaussian blobs from a fixed seed (the same on every rank; nothing downloaded)."""
    gen = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, features, generator=gen) * 0.6
    labels = torch.randint(classes, (samples,), generator=gen)
    return TensorDataset(centers[labels] + torch.randn(samples, features, generator=gen) * 2.0, labels)


def make_model(features: int, hidden: int, classes: int) -> nn.Module:
    return nn.Sequential(nn.Linear(features, hidden), nn.ReLU(), nn.Dropout(0.2),
                         nn.Linear(hidden, hidden), nn.ReLU(), nn.Dropout(0.2), nn.Linear(hidden, classes))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run-dir", default="runs/ddp", help="overridden by $TRAIND_RUN_DIR")
    p.add_argument("--max-steps", type=at_least(1), default=200)
    p.add_argument("--every-steps", type=at_least(0), default=50, help="periodic checkpoint interval (0: off)")
    p.add_argument("--batch-size", type=at_least(1), default=16, help="per rank")
    p.add_argument("--hidden", type=at_least(1), default=64)
    p.add_argument("--workers", type=at_least(0), default=0, help="DataLoader worker processes per rank")
    p.add_argument("--step-seconds", type=non_negative_seconds, default=0.0,
                   help="sleep after each step (to interrupt it at a chosen point; results are unchanged)")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    dist.init_process_group("gloo")            # env://: torchrun's variables, set by traind run per rank
    torch.manual_seed(0)                       # the same initial weights on every rank
    model = DistributedDataParallel(make_model(32, args.hidden, 8))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=100, gamma=0.7)
    traind.seed_everything(1000 + dist.get_rank())  # each rank its own RNG streams (saved per rank)
    data = make_data(2048, 32, 8)
    with traind.Session(run_dir=args.run_dir, model=model, optimizers=opt, schedulers=sched,
                        max_steps=args.max_steps, every_steps=args.every_steps or None, data_seed=7,
                        hyper_parameters=vars(args)) as session:
        for x, y in session.batches(data, batch_size=args.batch_size, num_workers=args.workers):
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if args.step_seconds:
                time.sleep(args.step_seconds)
            session.step_done(loss=loss.item())
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
