"""A job whose training_step raises at its 4th batch (for the user-exception test)."""
import sys

import torch

import traind
from traind.jobs.examples.tiny import Blobs, TinyClassifier


class Failing(TinyClassifier):
    def training_step(self, batch, batch_idx):
        if self.trainer.global_step == 3:
            raise ValueError("boom in the user's training_step")
        return super().training_step(batch, batch_idx)


if __name__ == "__main__":
    trainer = traind.Trainer(max_steps=10, run_dir=sys.argv[1], checkpoint_every_steps=2)
    torch.manual_seed(0)
    trainer.fit(Failing(), Blobs())
