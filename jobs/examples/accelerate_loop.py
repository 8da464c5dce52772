"""A plain training loop on Hugging Face accelerate with traind: `traind run jobs/examples/accelerate.yaml`
from the repo root (docs/frameworks.md)."""
import argparse

import torch
from accelerate import Accelerator, DataLoaderConfiguration
from torch import nn

import traind.accelerate


def main(argv=None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--project-dir", default="runs/accelerate")
    p.add_argument("--max-steps", type=int, default=300)
    p.add_argument("--every-steps", type=int, default=50)
    a = p.parse_args(argv)
    # A seedable sampler: the shuffle order is a function of the seed and the epoch, so a run
    # resumed in the middle of an epoch sees the batches an uninterrupted run sees.
    accelerator = Accelerator(cpu=True, project_dir=a.project_dir,
                              dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True))
    torch.manual_seed(0)
    x = torch.randn(2048, 16)
    data = torch.utils.data.TensorDataset(x, x.sum(dim=1, keepdim=True))
    # Its own generator: starting an iterator (also the resumed one) draws nothing from the global
    # RNG that dropout uses, so the RNG state accelerate restores is the one the next step needs.
    loader = torch.utils.data.DataLoader(data, batch_size=32, shuffle=True,
                                         generator=torch.Generator().manual_seed(0))
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Dropout(0.1), nn.Linear(64, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=100, gamma=0.5)
    model, opt, loader, sched = accelerator.prepare(model, opt, loader, sched)

    ckpt = traind.accelerate.Checkpointing(accelerator, every_steps=a.every_steps)
    accelerator.load_state()                  # the newest verified checkpoint, if any
    step = ckpt.step
    while step < a.max_steps:
        epoch, done = divmod(step, len(loader))
        loader.set_epoch(epoch)
        for xb, yb in accelerator.skip_first_batches(loader, done) if done else loader:
            loss = nn.functional.mse_loss(model(xb), yb)
            accelerator.backward(loss)
            opt.step()
            sched.step()
            opt.zero_grad()
            step += 1
            if ckpt.step_done(step, epoch=epoch, loss=loss.item()) or step == a.max_steps:
                accelerator.save_state()
            if step == a.max_steps:
                break
    ckpt.close()


if __name__ == "__main__":
    main()
