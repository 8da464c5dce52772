"""Resume the ddp example's model and optimizer at whatever world size this group has, then write
what was loaded (rank 0, as plain tensors) to $RESHARD_OUT and exit: the reshard test compares it
with the checkpoint, tensor for tensor."""
import os

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import get_state_dict
from torch.nn.parallel import DistributedDataParallel

import traind
from traind.jobs.examples.ddp import make_model

dist.init_process_group("gloo")
torch.manual_seed(0)
model = DistributedDataParallel(make_model(32, 64, 8))
opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
sched = torch.optim.lr_scheduler.StepLR(opt, step_size=100, gamma=0.7)
with traind.Session(model=model, optimizers=opt, schedulers=sched, max_steps=1) as session:
    msd, osd = get_state_dict(model, opt)
    if dist.get_rank() == 0:
        torch.save({"model": msd, "optim": osd, "step": session.step, "world_size": dist.get_world_size(),
                    "position": session.position.state_dict()}, os.environ["RESHARD_OUT"])
dist.destroy_process_group()
