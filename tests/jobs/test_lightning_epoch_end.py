"""Issue 22: a Lightning run resumed from a checkpoint taken at the last batch of an epoch, where
validation runs next, continues bit for bit (the validation that runs again on resume must not
move the training RNG: it did, through the val loader's iterator seed)."""
import os
import shutil
import subprocess
import sys

import pytest

pytest.importorskip("pytorch_lightning")

from jobhelpers import REPO, assert_identical, final_state  # noqa: E402

BATCHES_PER_EPOCH = 28       # the example's 1792 training samples in batches of 64


def _run(run_dir, max_steps: int) -> None:
    out = subprocess.run([sys.executable, "-m", "traind.jobs.examples.lightning_job", "--run-dir", str(run_dir),
                          "--max-steps", str(max_steps), "--every-steps", "14"],
                         cwd=REPO, capture_output=True, text=True, timeout=600,
                         env={**{k: v for k, v in os.environ.items() if not k.startswith("TRAIND_")},
                              "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"})
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]


@pytest.mark.slow
def test_resumed_from_an_epoch_end_checkpoint_is_bit_identical(tmp_path):
    end = 2 * BATCHES_PER_EPOCH + 14
    _run(tmp_path / "whole", end)
    at_epoch_end = tmp_path / "whole" / "checkpoints" / f"step-{2 * BATCHES_PER_EPOCH:09d}"
    assert at_epoch_end.is_dir()
    (tmp_path / "resumed" / "checkpoints").mkdir(parents=True)
    shutil.copytree(at_epoch_end, tmp_path / "resumed" / "checkpoints" / at_epoch_end.name)
    _run(tmp_path / "resumed", end)                 # resumes from the epoch-end checkpoint alone
    whole, resumed = final_state(tmp_path / "whole"), final_state(tmp_path / "resumed")
    assert whole["global_step"] == resumed["global_step"] == end
    for key in ("state_dict", "optimizer_states", "lr_schedulers", "rng_states"):
        assert_identical(whole[key], resumed[key], key)
