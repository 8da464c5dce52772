"""Trainer features in one short job: max_epochs, an epoch-end checkpoint policy, early stopping,
a monitored per-epoch scheduler (ReduceLROnPlateau) and two optimizers. Usage: features_job.py RUN_DIR"""
import sys

import torch

import traind
from traind.jobs.examples.tiny import Blobs, TinyClassifier


class TwoOptimizers(TinyClassifier):
    def configure_optimizers(self):
        first, rest = list(self.net[0].parameters()), list(self.net[1:].parameters())
        a, b = torch.optim.SGD(first, lr=0.05), torch.optim.AdamW(rest, lr=3e-3)
        plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(b, patience=0)
        return [a, b], [{"scheduler": plateau, "monitor": "val_loss", "interval": "epoch"}]


if __name__ == "__main__":
    # min_delta=10 means no validation ever "improves" after the first: stop at the second one.
    stop = traind.EarlyStopping("val_loss", patience=1, min_delta=10.0)
    trainer = traind.Trainer(max_epochs=5, run_dir=sys.argv[1], checkpoint_at_epoch_end=True,
                           keep_last=5, callbacks=[stop])
    traind.seed_everything(3)
    trainer.fit(TwoOptimizers(), Blobs())
