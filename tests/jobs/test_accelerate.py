"""traind.accelerate.Checkpointing on a plain accelerate loop (jobs/examples/accelerate_loop.py)
under `traind run`: SIGTERM and SIGUSR1 lose no step, the rerun resumes at the stop step, and the
run ends bit-identical to an uninterrupted one (metrics lines, weights, optimizer)."""
import signal
import sys

import pytest
import torch

pytest.importorskip("accelerate")
from safetensors.torch import load_file  # noqa: E402

from jobhelpers import (assert_identical, checkpoints, last_step, metrics, run_spec,  # noqa: E402
                        traind_run, wait_for_step)
from traind.store import format as fmt  # noqa: E402

pytestmark = pytest.mark.slow
MAX_STEPS = 200


def _spec(tmp_path, name, run_dir, ranks=1) -> str:
    return run_spec(tmp_path, name, run_dir, [sys.executable, "-m", "traind.jobs.examples.accelerate_loop",
                                              "--project-dir", run_dir, "--max-steps", MAX_STEPS, "--every-steps", 50],
                    ranks=ranks)


def _final(run_dir) -> dict:
    final = checkpoints(run_dir)[-1]
    return {"model": load_file(final / "model.safetensors"),
            "optimizer": torch.load(final / "optimizer.bin", weights_only=True)}


def test_sigterm_and_sigusr1_lose_no_step_and_the_run_ends_bit_identical(tmp_path):
    reference = tmp_path / "reference"
    proc = traind_run(_spec(tmp_path, "reference", reference))
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]

    run_dir = tmp_path / "run"
    spec = _spec(tmp_path, "stopped", run_dir)
    resumed_at = None
    for at, sig in ((37, signal.SIGTERM), (121, signal.SIGUSR1)):
        proc = traind_run(spec)
        wait_for_step(proc, run_dir, at, timeout=120)
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 75, out[-3000:]
        if resumed_at is not None:
            assert f"(step {resumed_at})" in out, out[-3000:]          # the rerun resumed at the stop step
        newest, _ = fmt.latest_valid(run_dir / "checkpoints")
        resumed_at = last_step(run_dir)
        assert (newest.step, newest.reason) == (resumed_at, "emergency"), out[-3000:]   # no step lost
    proc = traind_run(spec)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]
    assert f"resuming from {newest.path} (step {resumed_at})" in out, out[-3000:]
    assert [r["step"] for r in metrics(run_dir)] == list(range(1, MAX_STEPS + 1))
    assert metrics(run_dir) == metrics(reference)
    assert_identical(_final(reference), _final(run_dir))


def test_a_two_rank_group_stops_at_one_step_and_ends_bit_identical(tmp_path):
    """SIGUSR1 to `traind run` of 2 ranks: both stop at the step the rule agrees on (the save is
    collective: a rank elsewhere would leave it waiting), exit 75, resume there, same end."""
    reference = tmp_path / "reference"
    proc = traind_run(_spec(tmp_path, "reference", reference, ranks=2))
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]
    run_dir = tmp_path / "run"
    proc = traind_run(_spec(tmp_path, "stopped", run_dir, ranks=2))
    wait_for_step(proc, run_dir, 45, timeout=120)
    proc.send_signal(signal.SIGUSR1)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 75, out[-3000:]
    newest, _ = fmt.latest_valid(run_dir / "checkpoints")
    assert (newest.step, newest.reason) == (last_step(run_dir), "emergency"), out[-3000:]
    assert {"random_states_0.pkl", "random_states_1.pkl"} <= {p.name for p in newest.path.iterdir()}
    proc = traind_run(_spec(tmp_path, "stopped", run_dir, ranks=2))
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0 and f"(step {newest.step})" in out, out[-3000:]
    assert metrics(run_dir) == metrics(reference)
    assert_identical(_final(reference), _final(run_dir))
