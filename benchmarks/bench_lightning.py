"""How long a Lightning training loop is blocked per checkpoint: traind's addition against
Lightning's own ModelCheckpoint (synchronous TorchCheckpointIO) and its AsyncCheckpointIO.

Run by hand (not a test):  OMP_NUM_THREADS=2 python benchmarks/bench_lightning.py [--saves 5]

One run, one model for all three: 2 x Linear(4096, 4096) + AdamW = 403 MB of model + optimizer
state. The same ModelCheckpoint(every_n_train_steps=K) triggers every save in all three; what
differs is where the save goes. "Blocked" is the wall time of each `trainer.save_checkpoint` call
as the loop sees it (for traind: the snapshot into reused buffers; the write, checksums and fsync
run in the background; for AsyncCheckpointIO: its clone of every tensor plus waiting for the
previous save). The first save of each is shown apart (traind allocates its buffers then).
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402
from pytorch_lightning.callbacks import ModelCheckpoint  # noqa: E402
from pytorch_lightning.plugins.io import AsyncCheckpointIO  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

import traind.lightning  # noqa: E402

WIDTH = 4096


class Big(pl.LightningModule):
    def __init__(self, width: int = WIDTH):
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width))

    def training_step(self, batch, batch_idx):
        (x,) = batch
        return self.net(x).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-4)


class SaveTimer(pl.Callback):
    """Times every trainer.save_checkpoint call (what the loop waits for)."""

    def __init__(self) -> None:
        self.seconds: list[float] = []

    def setup(self, trainer, pl_module, stage):
        original = trainer.save_checkpoint

        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds.append(time.perf_counter() - started)
        trainer.save_checkpoint = timed


def run(kind: str, root: Path, saves: int, every: int) -> tuple[list[float], float]:
    pl.seed_everything(0, verbose=False)
    timer = SaveTimer()
    callbacks = [timer, ModelCheckpoint(dirpath=root / "lightning", every_n_train_steps=every, save_top_k=1,
                                        save_last=False)]
    plugins = []
    if kind == "traind":
        callbacks.append(traind.lightning.Checkpointing(run_dir=root, keep_last=saves + 1))
    elif kind == "async":
        plugins.append(AsyncCheckpointIO())
    data = DataLoader(TensorDataset(torch.randn(64, WIDTH)), batch_size=8)
    trainer = pl.Trainer(max_steps=saves * every, accelerator="cpu", devices=1, logger=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=root,
                         callbacks=callbacks, plugins=plugins, num_sanity_val_steps=0)
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(Big(), data)
    return timer.seconds[:saves], time.perf_counter() - started


def state_mb() -> float:
    params = 2 * (WIDTH * WIDTH + WIDTH)
    return params * 4 * 3 / 1e6          # weights + AdamW's two moments, float32


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--saves", type=int, default=5)
    parser.add_argument("--every", type=int, default=8, help="steps between saves")
    parser.add_argument("--dir", default=None, help="where to write (default: a temp dir beside the repo)")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="bench-lightning-", dir=args.dir or REPO / "benchmarks"))
    print(f"state: {state_mb():.0f} MB (2 x Linear({WIDTH}, {WIDTH}) + AdamW), {args.saves} saves, one every "
          f"{args.every} steps, torch {torch.__version__}, pytorch-lightning {pl.__version__}, "
          f"{torch.get_num_threads()} threads; writing under {base}")
    rows = {}
    for kind in ("sync", "async", "traind"):
        seconds, total = run(kind, base / kind, args.saves, args.every)
        rows[kind] = (seconds, total)
    print(f"\n{'checkpoint path':<44}{'first save':>11}{'median after':>14}{'max after':>11}{'run':>9}")
    names = {"sync": "Lightning ModelCheckpoint (TorchCheckpointIO)", "async": "Lightning AsyncCheckpointIO",
             "traind": "traind.lightning.Checkpointing()"}
    for kind, (seconds, total) in rows.items():
        rest = seconds[1:] or seconds
        print(f"{names[kind]:<44}{seconds[0]:>10.3f}s{statistics.median(rest):>13.3f}s{max(rest):>10.3f}s"
              f"{total:>8.1f}s")
    extra = [json.loads((d / "MANIFEST.json").read_text())["extra"]
             for d in sorted((base / "traind" / "checkpoints").glob("step-*"))]
    print(f"traind, from its manifests: snapshot {statistics.median(e['snapshot_seconds'] for e in extra):.3f} s, "
          f"background write + checksums + fsync {statistics.median(e['write_seconds'] for e in extra):.3f} s "
          f"(median of {len(extra)})")
    traind_s = statistics.median(rows["traind"][0][1:] or rows["traind"][0])
    for kind in ("sync", "async"):
        other = statistics.median(rows[kind][0][1:] or rows[kind][0])
        print(f"traind blocks the loop {other / traind_s:.1f}x less than {names[kind]}")
    shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
