"""traind.hf.Checkpointing on a Hugging Face Trainer (a 2-layer GPT-2 from its config, synthetic
tokens: jobs/examples/hf_gpt2.py) under `traind run`: a SIGTERM or SIGUSR1 loses no step (also with
HF's own enable_jit_checkpoint on), SIGKILLs of the trainer and SIGTERMs of the supervisor resume
to the end bit-identical, and a damaged newest checkpoint is skipped."""
import json
import os
import random
import signal
import sys
import time

import pytest
import torch

pytest.importorskip("transformers")
from safetensors.torch import load_file  # noqa: E402

from jobhelpers import (assert_identical, checkpoints, last_step, metrics, run_spec,  # noqa: E402
                        traind_run, wait_for_step)
from traind.store import format as fmt  # noqa: E402

pytestmark = pytest.mark.slow
MAX_STEPS = 60


def _spec(tmp_path, name, run_dir, extra=(), restarts=0, ranks=1) -> str:
    command = [sys.executable, "-m", "traind.jobs.examples.hf_gpt2", "--output-dir", run_dir / "hf-output",
               "--max-steps", MAX_STEPS, "--save-steps", 25, *extra]
    return run_spec(tmp_path, name, run_dir, command, ranks=ranks,
                    restart={"max_restarts": restarts, "backoff": {"initial_seconds": 0.1}})


def _final_weights(run_dir) -> dict:
    final = checkpoints(run_dir)[-1]
    return {"model": load_file(final / "model.safetensors"),
            "optimizer": torch.load(final / "optimizer.pt", weights_only=True),
            "step": json.loads((final / "trainer_state.json").read_text())["global_step"]}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hf-reference")
    proc = traind_run(_spec(tmp, "reference", tmp / "run"))
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    return tmp / "run"


def test_sigterm_and_sigusr1_lose_no_step_and_the_run_ends_bit_identical(tmp_path, reference):
    run_dir = tmp_path / "run"
    for i, (at, sig, extra) in enumerate(((12, signal.SIGTERM, ()), (30, signal.SIGUSR1, ("--jit",)))):
        proc = traind_run(_spec(tmp_path, f"stop{i}", run_dir, extra))
        wait_for_step(proc, run_dir, at)
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=90)
        assert proc.returncode == 75, out[-3000:]
        newest, _ = fmt.latest_valid(run_dir / "checkpoints")
        assert (newest.step, newest.reason) == (last_step(run_dir), "emergency"), out[-3000:]   # 0 lost
    proc = traind_run(_spec(tmp_path, "end", run_dir))
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    assert f"resuming from {newest.path} (step {newest.step})" in out, out[-3000:]
    assert [r["step"] for r in metrics(run_dir)] == list(range(1, MAX_STEPS + 1))
    assert_identical(_final_weights(reference), _final_weights(run_dir))


def test_sigkills_of_the_trainer_and_sigterms_of_the_supervisor_end_bit_identical(tmp_path, reference):
    """5 SIGKILLs of the child (the supervisor restarts it from the newest checkpoint), 2 SIGTERMs
    of the supervisor (each rerun goes on), a flipped byte in the newest checkpoint before the
    last rerun (skipped: the resume falls back)."""
    run_dir, rng = tmp_path / "run", random.Random(21)
    spec = _spec(tmp_path, "campaign", run_dir, restarts=10)
    proc = traind_run(spec)
    events = ("kill", "kill", "stop", "kill", "kill", "kill", "stop")
    for i, event in enumerate(events):
        wait_for_step(proc, run_dir, min(last_step(run_dir) + rng.randint(2, 6), MAX_STEPS - 3))
        if event == "kill":
            os.kill(json.loads((run_dir / "status.json").read_text())["pid"], signal.SIGKILL)
            time.sleep(0.5)
            continue
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=90)
        assert proc.returncode == 75, out[-3000:]
        if i < len(events) - 1:
            proc = traind_run(spec)
    newest, older = checkpoints(run_dir)[-1], checkpoints(run_dir)[-2]
    with open(newest / "model.safetensors", "r+b") as f:
        f.seek(200)
        byte = f.read(1)
        f.seek(200)
        f.write(bytes([byte[0] ^ 0x01]))
    proc = traind_run(spec)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    assert "checksum mismatch" in out and f"resuming from {older}" in out, out[-3000:]
    assert_identical(_final_weights(reference), _final_weights(run_dir))


def test_a_two_rank_group_stops_at_one_step_and_ends_bit_identical(tmp_path):
    """SIGUSR1 to `traind run` of 2 ranks: both stop at the step the rule agrees on (HF's save is
    collective: a rank elsewhere would leave it waiting), exit 75, resume there, same end."""
    reference = tmp_path / "reference"
    proc = traind_run(_spec(tmp_path, "reference", reference, ranks=2))
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    run_dir = tmp_path / "run"
    proc = traind_run(_spec(tmp_path, "stopped", run_dir, ranks=2))
    wait_for_step(proc, run_dir, 17)
    proc.send_signal(signal.SIGUSR1)
    out, _ = proc.communicate(timeout=90)
    assert proc.returncode == 75, out[-3000:]
    newest, _ = fmt.latest_valid(run_dir / "checkpoints")
    assert (newest.step, newest.reason) == (last_step(run_dir), "emergency"), out[-3000:]
    assert {"rng_state_0.pth", "rng_state_1.pth"} <= {p.name for p in newest.path.iterdir()}
    proc = traind_run(_spec(tmp_path, "stopped", run_dir, ranks=2))
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0 and f"(step {newest.step})" in out, out[-3000:]
    assert_identical(_final_weights(reference), _final_weights(run_dir))
