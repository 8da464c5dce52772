"""A wide MLP whose checkpoint (weights + AdamW state) is ~0.8 GiB: for checkpoint benchmarks and
for timing the emergency path. Few steps; synthetic data generated per index (nothing downloaded).

    python -m traind.jobs.examples.large --run-dir runs/large --max-steps 20
"""
from __future__ import annotations

import argparse

import torch
from torch import nn
from torch.utils.data import Dataset

import traind
from traind.jobs.examples.tiny import at_least


class Synthetic(Dataset):
    """Sample i is generated from seed i: any order, any worker, always the same sample."""

    def __init__(self, size: int, width: int) -> None:
        self.size, self.width = size, width

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int):
        gen = torch.Generator().manual_seed(index)
        x = torch.randn(self.width, generator=gen)
        return x, torch.tanh(x.roll(1))


class SyntheticData(traind.DataModule):
    def __init__(self, width: int = 4096, samples: int = 2048, batch_size: int = 16):
        self.save_hyperparameters()
        self.batch_size = batch_size
        self._train = Synthetic(samples, width)

    def train_dataset(self):
        return self._train


class WideMLP(traind.TrainModule):
    def __init__(self, width: int = 4096, layers: int = 4, dropout: float = 0.1, lr: float = 1e-4):
        super().__init__()
        self.save_hyperparameters()
        blocks = []
        for _ in range(layers - 1):
            blocks += [nn.Linear(width, width), nn.GELU(), nn.Dropout(dropout)]
        self.net = nn.Sequential(*blocks, nn.Linear(width, width))

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self(x), y)

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.parameters(), lr=self.hparams["lr"])
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(1.0, (step + 1) / 10))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run-dir", default="runs/large", help="overridden by $TRAIND_RUN_DIR")
    p.add_argument("--max-steps", type=at_least(1), default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--every-steps", type=at_least(0), default=10)
    p.add_argument("--width", type=at_least(1), default=4096)
    p.add_argument("--layers", type=at_least(1), default=4)
    args = p.parse_args(argv)
    trainer = traind.Trainer(max_steps=args.max_steps, run_dir=args.run_dir,
                           checkpoint_every_steps=args.every_steps or None, keep_last=2, log_every_n_steps=1)
    traind.seed_everything(args.seed)
    trainer.fit(WideMLP(args.width, args.layers), SyntheticData(args.width))


if __name__ == "__main__":
    main()
