"""A small classifier on generated data: the quick-start job (trains in seconds on 2 CPU cores).

    python -m traind.jobs.examples.tiny --run-dir runs/tiny --max-steps 300
    traind run jobs/examples/tiny.yaml

Run it again with the same run dir and it resumes from its latest valid checkpoint. It exercises
what exact resume needs: dropout, shuffling, optional DataLoader workers, an LR scheduler,
validation, and optional mixed precision / gradient accumulation.
"""
from __future__ import annotations

import argparse
import time

import torch
from torch import nn
from torch.utils.data import TensorDataset

import traind


class Blobs(traind.DataModule):
    """Gaussian blobs, one per class, generated from `data_seed` (nothing downloaded)."""

    def __init__(self, samples: int = 4096, classes: int = 8, features: int = 32,
                 batch_size: int = 64, num_workers: int = 0, data_seed: int = 1234):
        self.save_hyperparameters()
        self.batch_size, self.num_workers = batch_size, num_workers

    def setup(self, stage: str) -> None:
        hp = self.hparams
        gen = torch.Generator().manual_seed(hp["data_seed"])
        centers = torch.randn(hp["classes"], hp["features"], generator=gen) * 0.6
        labels = torch.randint(hp["classes"], (hp["samples"],), generator=gen)
        points = centers[labels] + torch.randn(hp["samples"], hp["features"], generator=gen) * 2.0
        split = hp["samples"] * 7 // 8
        self._train = TensorDataset(points[:split], labels[:split])
        self._val = TensorDataset(points[split:], labels[split:])

    def train_dataset(self):
        return self._train

    def val_dataset(self):
        return self._val


class TinyClassifier(traind.TrainModule):
    def __init__(self, features: int = 32, classes: int = 8, hidden: int = 128,
                 dropout: float = 0.2, lr: float = 3e-3, step_size: int = 100):
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(features, hidden), nn.ReLU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, hidden), nn.ReLU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, classes))

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self(x).float(), y)

    val_batch_seconds = 0.0     # a slow validation, to interrupt it by hand (results are unchanged)

    def validation_step(self, batch, batch_idx):
        if self.val_batch_seconds:
            time.sleep(self.val_batch_seconds)
        x, y = batch
        logits = self(x).float()
        self.log("val_loss", nn.functional.cross_entropy(logits, y))
        self.log("val_acc", (logits.argmax(dim=1) == y).float().mean())

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.parameters(), lr=self.hparams["lr"], weight_decay=0.01)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=self.hparams["step_size"], gamma=0.7)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def at_least(minimum: int):
    """An argparse type: an integer >= minimum (a bad flag is a usage error, not a traceback)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {value}")
        return value
    return parse


class Pace(traind.Callback):
    """Sleeps after each step: slows the demo down enough to interrupt it by hand (or by a test)
    at a chosen point. Sleeping touches no RNG, so the results are the same as without it."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    def on_train_step_end(self, trainer, module, metrics: dict) -> None:
        time.sleep(self.seconds)


def non_negative_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not 0 <= value <= 60:
        raise argparse.ArgumentTypeError(f"expected seconds between 0 and 60, got {text}")
    return value


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run-dir", default="runs/tiny", help="overridden by $TRAIND_RUN_DIR")
    p.add_argument("--max-steps", type=at_least(1), default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--every-steps", type=at_least(0), default=50, help="periodic checkpoint interval (0: off)")
    p.add_argument("--workers", type=at_least(0), default=0, help="DataLoader worker processes")
    p.add_argument("--precision", default="32", choices=["32", "bf16", "16-mixed"])
    p.add_argument("--accumulate", type=at_least(1), default=1, help="gradient accumulation batches")
    p.add_argument("--val-every", type=at_least(0), default=50)
    p.add_argument("--log-every", type=at_least(0), default=50)
    p.add_argument("--step-seconds", type=non_negative_seconds, default=0.0,
                   help="sleep after each step (to interrupt it by hand; results are unchanged)")
    p.add_argument("--val-batch-seconds", type=non_negative_seconds, default=0.0,
                   help="sleep in each validation batch (a long validation; results are unchanged)")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    trainer = traind.Trainer(max_steps=args.max_steps, precision=args.precision,
                           accumulate_grad_batches=args.accumulate, gradient_clip_val=1.0,
                           val_check_interval=args.val_every, run_dir=args.run_dir,
                           checkpoint_every_steps=args.every_steps or None, keep_last=3,
                           keep_best={"metric": "val_loss", "mode": "min", "k": 1},
                           log_every_n_steps=args.log_every,
                           callbacks=[Pace(args.step_seconds)] if args.step_seconds else [])
    traind.seed_everything(args.seed)
    module = TinyClassifier()
    module.val_batch_seconds = args.val_batch_seconds
    trainer.fit(module, Blobs(num_workers=args.workers))


if __name__ == "__main__":
    main()
