"""A standard PyTorch Lightning script, plus traind's one-line addition (marked below).

    python -m traind.jobs.examples.lightning_job --run-dir runs/lightning --max-steps 300
    traind run jobs/examples/lightning.yaml

LightningModule (dropout, AdamW + a per-step StepLR), a LightningDataModule (shuffled training
data, validation every epoch), a ModelCheckpoint, and `Trainer.fit(..., ckpt_path="last")` as
Lightning users write it. With `traind.lightning.Checkpointing()` among the callbacks, every
checkpoint goes through traind's store, the run resumes by itself bit for bit, and SIGTERM or
the supervisor's stop request ends it with an emergency checkpoint and exit 75. `--no-traind`
runs the same script without that line (plain Lightning: it resumes from its own last.ckpt).
`--devices 2` trains with DDP on 2 CPU processes (gloo).
"""
from __future__ import annotations

import argparse
import os
import time

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import traind.lightning


class BlobData(pl.LightningDataModule):
    """Gaussian blobs, one per class, generated from `data_seed` (nothing downloaded)."""

    def __init__(self, samples: int = 2048, features: int = 32, classes: int = 8,
                 batch_size: int = 64, num_workers: int = 0, data_seed: int = 1234):
        super().__init__()
        self.save_hyperparameters()

    def setup(self, stage: str) -> None:
        hp = self.hparams
        gen = torch.Generator().manual_seed(hp.data_seed)
        centers = torch.randn(hp.classes, hp.features, generator=gen) * 0.6
        labels = torch.randint(hp.classes, (hp.samples,), generator=gen)
        points = centers[labels] + torch.randn(hp.samples, hp.features, generator=gen) * 2.0
        split = hp.samples * 7 // 8
        self.train_set = TensorDataset(points[:split], labels[:split])
        self.val_set = TensorDataset(points[split:], labels[split:])

    def train_dataloader(self):
        return DataLoader(self.train_set, batch_size=self.hparams.batch_size, shuffle=True,
                          num_workers=self.hparams.num_workers)

    def val_dataloader(self):
        return DataLoader(self.val_set, batch_size=self.hparams.batch_size)


class LitClassifier(pl.LightningModule):
    def __init__(self, features: int = 32, classes: int = 8, hidden: int = 128, dropout: float = 0.2,
                 lr: float = 3e-3, step_size: int = 100, step_seconds: float = 0.0):
        super().__init__()
        self.save_hyperparameters()
        blocks = []
        for width_in in (features, hidden):        # two hidden layers, each with dropout
            blocks += [nn.Linear(width_in, hidden), nn.ReLU(), nn.Dropout(dropout)]
        self.net = nn.Sequential(*blocks, nn.Linear(hidden, classes))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self.net(x), y)
        self.log("train_loss", loss)
        if self.hparams.step_seconds:
            time.sleep(self.hparams.step_seconds)   # paces a demo; results are unchanged
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.cross_entropy(self.net(x), y))

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=self.hparams.step_size, gamma=0.5)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", default="runs/lightning")
    parser.add_argument("--max-steps", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--every-steps", type=int, default=50, help="ModelCheckpoint every_n_train_steps")
    parser.add_argument("--step-seconds", type=float, default=0.0)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--no-traind", action="store_true", help="plain Lightning: without the addition")
    args = parser.parse_args(argv)
    run_dir = os.environ.get("TRAIND_RUN_DIR") or args.run_dir

    pl.seed_everything(args.seed)
    callbacks = [ModelCheckpoint(dirpath=os.path.join(run_dir, "lightning"),
                                 every_n_train_steps=args.every_steps, save_last=True)]
    if not args.no_traind:
        callbacks.append(traind.lightning.Checkpointing())          # <- the one-line addition
    trainer = pl.Trainer(max_steps=args.max_steps, accelerator="cpu", devices=args.devices,
                         strategy="ddp" if args.devices > 1 else "auto", default_root_dir=run_dir,
                         callbacks=callbacks, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, log_every_n_steps=10)
    trainer.fit(LitClassifier(step_seconds=args.step_seconds), BlobData(num_workers=args.workers),
                ckpt_path="last")


if __name__ == "__main__":
    main()
