"""A Hugging Face Trainer job: a 2-layer GPT-2 built from its config, synthetic tokens, traind's
one callback. `traind run jobs/examples/hf.yaml` from the repo root (docs/frameworks.md)."""
import argparse

import torch
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

import traind.hf


class Tokens(torch.utils.data.Dataset):
    """Synthetic token sequences (map-style: HF resumes them exactly by skipping batches)."""

    def __init__(self, n: int, length: int, vocab: int) -> None:
        g = torch.Generator().manual_seed(1234)
        self.ids = torch.randint(0, vocab, (n, length), generator=g)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def main(argv=None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--output-dir", default="runs/hf")
    p.add_argument("--max-steps", type=int, default=120)
    p.add_argument("--save-steps", type=int, default=50)
    p.add_argument("--jit", action="store_true", help="also HF's own enable_jit_checkpoint")
    a = p.parse_args(argv)
    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=256, n_positions=32,
                        bos_token_id=0, eos_token_id=0)
    model = GPT2LMHeadModel(config)
    args = TrainingArguments(output_dir=a.output_dir, max_steps=a.max_steps, save_steps=a.save_steps,
                             save_total_limit=3, per_device_train_batch_size=8, learning_rate=1e-3,
                             logging_steps=1, report_to=[], use_cpu=True, seed=0, disable_tqdm=True,
                             dataloader_num_workers=0, enable_jit_checkpoint=a.jit)
    trainer = Trainer(model=model, args=args, train_dataset=Tokens(512, 32, 256),
                      callbacks=[traind.hf.Checkpointing()])
    trainer.train()


if __name__ == "__main__":
    main()
