"""One rank of a 2-rank group that takes a non-blocking sharded save while its training keeps
every core busy (with the burners the test starts), so an idle-priority writer is starved.
Prints one JSON line: when the save committed, in seconds after save() was called.

    python slow_writer_job.py RUN_DIR INTERVAL DEADLINE_FRACTION   (with RANK, WORLD_SIZE, MASTER_*)
"""
import json
import sys
import threading
import time

import torch

import traind.jobs.engine.engine as engine_module
from traind.jobs.engine import CheckpointEngine
from traind.jobs.engine.sharded import Sharded
from traind.jobs.runtime import schema
from traind.jobs.runtime.group import Group

run_dir, interval, fraction = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
engine_module.DEADLINE_FRACTION = fraction
torch.set_num_threads(1)
group = Group.from_env()
torch.manual_seed(group.rank)
model = torch.nn.Sequential(*[torch.nn.Linear(512, 512) for _ in range(16)])     # 16 MiB of weights
opt = torch.optim.AdamW(model.parameters())
model(torch.ones(2, 512)).sum().backward()
opt.step()
committed = threading.Event()
done_at = []
engine = CheckpointEngine(run_dir, Sharded(group, model, [opt], schema.rank_part), keep_last=2,
                          on_commit=lambda info: (done_at.append(time.monotonic()), committed.set()))
state = {"global_step": 1, "epoch": 0}
group.share(None)                                   # both ranks start the save together
called = time.monotonic()
engine.save(state, step=1, epoch=0, blocking=False)
x = torch.ones(256, 256)
while time.monotonic() - called < interval:         # the training: steps on a busy CPU until the next save is due
    x = torch.tanh(x @ x * 1e-3)
waited = time.monotonic()
engine.flush()                                      # what the next save() does first
engine.close()
print(json.dumps({"rank": group.rank, "committed_after": round(done_at[0] - called, 3),
                  "flush_waited": round(time.monotonic() - waited, 3)}), flush=True)
