"""Issue 12: a checkpoint written by 4 ranks loads at 2 (DCP reshards): model and optimizer state
equal tensor for tensor, and training goes on from there. Also `traind ckpt export`."""
import subprocess
import sys

import pytest
import torch

from ddphelpers import REPO, assert_equal, env, newest, rank_files, run, write_spec
from traind.jobs.commands.export import consolidated_state

pytestmark = pytest.mark.slow


def test_a_4_rank_checkpoint_loads_at_2_ranks_tensor_for_tensor_and_training_goes_on(tmp_path):
    run_dir = tmp_path / "ddp"
    four = write_spec(tmp_path, name="four", run_dir=run_dir, max_steps=40, every_steps=20, step_seconds=0)
    assert run(four, tmp_path / "four.log") == 0, (tmp_path / "four.log").read_text()[-3000:]
    ckpt = newest(run_dir)
    assert ckpt.name == "step-000000040" and len(rank_files(ckpt)) == 4

    out = tmp_path / "loaded.pt"
    probe = write_spec(tmp_path, name="probe", run_dir=run_dir, nproc=2, env={"RESHARD_OUT": str(out)},
                       command=[sys.executable, str(REPO / "tests" / "distributed" / "reshard_job.py")])
    assert run(probe, tmp_path / "probe.log") == 0, (tmp_path / "probe.log").read_text()[-3000:]
    loaded = torch.load(out, weights_only=True)
    assert loaded["world_size"] == 2 and loaded["step"] == 40
    # 40 steps of 32 per epoch on 4 ranks: 8 into epoch 1, 8 x 16 x 4 samples, which is 16 batches at 2 ranks
    assert loaded["position"]["epoch"] == 1 and loaded["position"]["batches_consumed"] == 16
    saved = consolidated_state(ckpt)
    assert_equal(loaded["model"], saved["state_dict"], "model")
    assert sorted(loaded["optim"]["state"]) == sorted(saved["state_dict"])
    for i, name in enumerate(loaded["optim"]["param_groups"][0]["params"]):
        assert_equal(loaded["optim"]["state"][name], saved["optimizer_states"][0]["state"][i], f"optim.{name}")

    two = write_spec(tmp_path, name="two", run_dir=run_dir, nproc=2, max_steps=60, step_seconds=0)
    assert run(two, tmp_path / "two.log") == 0, (tmp_path / "two.log").read_text()[-3000:]
    final = newest(run_dir)
    assert final.name == "step-000000060" and len(rank_files(final)) == 2
    assert "resuming from step 40" in (tmp_path / "two.log").read_text()


def test_ckpt_export_writes_one_weights_only_file_for_sharded_and_single_checkpoints(tmp_path, reference_run):
    ckpt, out = newest(reference_run), tmp_path / "model.pt"
    done = subprocess.run([sys.executable, "-m", "traind", "ckpt", "export", str(ckpt), str(out)], cwd=REPO,
                          env=env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    state = torch.load(out, weights_only=True)
    from traind.jobs.examples.ddp import make_model
    model = make_model(32, 64, 8)
    model.load_state_dict(state["state_dict"])       # the unwrapped module's names: no DDP prefix
    opt = torch.optim.AdamW(model.parameters())
    opt.load_state_dict(state["optimizer_states"][0])
    assert state["global_step"] == 120 and state["exported_from"]["ranks"] == 4
    bad = subprocess.run([sys.executable, "-m", "traind", "ckpt", "export", str(tmp_path / "nope"), str(out)],
                         cwd=REPO, env=env(), capture_output=True, text=True)
    assert bad.returncode != 0 and "Traceback" not in bad.stderr and "nope" in bad.stderr
