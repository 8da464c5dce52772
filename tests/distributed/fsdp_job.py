"""The ddp example's model sharded with FSDP2 (fully_shard on a CPU mesh, gloo) under a Session:
the same loop, a sharded checkpoint whose shards are really each rank's own parameters."""
import argparse
import time

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

import traind
from traind.jobs.examples.ddp import make_data, make_model

p = argparse.ArgumentParser()
p.add_argument("--max-steps", type=int, default=60)
p.add_argument("--every-steps", type=int, default=20)
p.add_argument("--step-seconds", type=float, default=0.0)
args = p.parse_args()
dist.init_process_group("gloo")
torch.manual_seed(0)
model = make_model(32, 64, 8)
mesh = init_device_mesh("cpu", (dist.get_world_size(),))
for layer in model:
    if isinstance(layer, nn.Linear):
        fully_shard(layer, mesh=mesh)
fully_shard(model, mesh=mesh)
opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
traind.seed_everything(1000 + dist.get_rank())
with traind.Session(model=model, optimizers=opt, max_steps=args.max_steps, every_steps=args.every_steps,
                    data_seed=7) as session:
    for x, y in session.batches(make_data(2048, 32, 8), batch_size=16):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if args.step_seconds:
            time.sleep(args.step_seconds)
        session.step_done(loss=loss.item())
dist.destroy_process_group()
