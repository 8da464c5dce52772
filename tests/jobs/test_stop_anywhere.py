"""Issue 22's campaign: the Trainer job (2 DataLoader workers, a validation of 8 slow batches every
50 steps) under `traind run`, SIGTERMed at random moments across its phases (start-up before and
after hello, restore, the first batch's fetch, training steps, validation, in-flight and final
saves), each followed by a rerun. Every stop exits 75 within the grace with no SIGKILL, the resume
point is never older than the last completed training step, and the run ends bit-identical to an
uninterrupted one (metrics lines included)."""
import random
import signal
import sys
import time

import pytest

from jobhelpers import assert_same_training, last_step, run_spec, traind_run
from traind.store import format as fmt

pytestmark = pytest.mark.slow
ARGS = ["--max-steps", "200", "--every-steps", "40", "--val-every", "50", "--log-every", "0", "--workers", "2"]
GRACE, STOPS = 20, 12


def _spec(tmp_path, name, run_dir, extra=()) -> str:
    return run_spec(tmp_path, name, run_dir, [sys.executable, "-m", "traind.jobs.examples.tiny", *ARGS, *extra],
                    preemption={"grace_seconds": GRACE})


def _resume_step(run_dir) -> int:
    info, _ = fmt.latest_valid(run_dir / "checkpoints")
    return 0 if info is None else info.step


def _attempts(run_dir) -> int:
    events = run_dir / "events.jsonl"
    return events.read_text().count('"event":"spawned"') if events.exists() else 0


def test_sigterm_anywhere_exits_75_in_the_grace_and_the_run_ends_bit_identical(tmp_path):
    reference = tmp_path / "reference"
    proc = traind_run(_spec(tmp_path, "reference", reference))
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]

    run_dir, rng = tmp_path / "run", random.Random(20261207)
    spec = _spec(tmp_path, "stopped", run_dir, ["--val-batch-seconds", "0.25"])
    for i in range(STOPS):
        attempts = _attempts(run_dir)
        proc = traind_run(spec)
        time.sleep(rng.uniform(0.2, 6.0))            # start-up takes ~2 s; a validation 2 s every 50 steps
        if proc.poll() is not None:
            break                                     # it finished
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=GRACE + 30)
        took = time.monotonic() - sent
        if proc.returncode == 0 and "finished at step 200" in out:
            break                                     # the stop came after the last step
        if proc.returncode == -signal.SIGTERM and not out:
            # The stop reached `traind run` before its handlers were in place (interpreter start-up):
            # it dies as any program would, and it had launched nothing yet.
            assert _attempts(run_dir) == attempts, f"stop {i}: killed with an attempt under way"
            continue
        assert proc.returncode == 75, f"stop {i}: exit {proc.returncode}\n{out[-3000:]}"
        assert took < GRACE and "SIGKILL" not in out, f"stop {i}: {took:.1f} s\n{out[-3000:]}"
        assert _resume_step(run_dir) >= last_step(run_dir), f"stop {i}: resume point behind the last step\n{out[-3000:]}"
    proc = traind_run(spec)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    assert_same_training(reference, run_dir)
