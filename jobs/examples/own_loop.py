"""Your own PyTorch loop, made preemptible and exactly resumable with traind.Session."""
import torch
from torch import nn

import traind


def main(run_dir="runs/own_loop", max_steps=200):
    traind.seed_everything(0)
    x = torch.randn(1024, 16)
    data = torch.utils.data.TensorDataset(x, x.sum(dim=1, keepdim=True))
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Dropout(0.1), nn.Linear(64, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=50, gamma=0.5)
    with traind.Session(run_dir, model=model, optimizers=opt, schedulers=sched,
                      max_steps=max_steps, every_steps=25) as session:
        for xb, yb in session.batches(data, batch_size=32, shuffle=True):
            loss = nn.functional.mse_loss(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            session.step_done(loss=loss.item())


if __name__ == "__main__":
    main()
