"""Exact resume of the tiny example across SIGKILLs and SIGTERMs (real processes, real signals)."""
import random
import signal

import pytest

from jobhelpers import (assert_same_training, finish, last_step, saving_now, sigterm_and_expect_75,
                        start, wait_until)

TINY = "traind.jobs.examples.tiny"
STEPS = 240
# Small checkpoint interval and 2 DataLoader workers: many saves to land in, workers > 0 covered.
ARGS = ("--max-steps", STEPS, "--every-steps", 20, "--workers", 2, "--val-every", 40, "--seed", 7)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("uninterrupted") / "run"
    code, out = finish(start(TINY, "--run-dir", run_dir, *ARGS))
    assert code == 0, out
    assert last_step(run_dir) == STEPS
    return run_dir


@pytest.mark.slow
def test_six_interruptions_resume_bit_for_bit(uninterrupted, tmp_path):
    run_dir = tmp_path / "run"
    rng = random.Random(20261128)

    def launch(hold=None):
        # hold: every save is held open this long, so "during a background save" is hit for sure
        return start(TINY, "--run-dir", run_dir, *ARGS, hold_saves=hold)

    def kill_at_random_step(low, high):
        proc = launch()
        target = last_step(run_dir) + rng.randint(low, high)    # mid-epoch: 56 batches an epoch
        wait_until(lambda: last_step(run_dir) >= target, proc)
        proc.kill()
        assert finish(proc)[0] == -signal.SIGKILL

    kill_at_random_step(7, 30)                              # 1. SIGKILL mid-epoch

    proc = launch(hold=0.3)                                 # 2. SIGKILL during a background save
    start_step = last_step(run_dir)
    wait_until(lambda: last_step(run_dir) > start_step and saving_now(run_dir), proc)
    proc.kill()
    assert finish(proc)[0] == -signal.SIGKILL

    proc = launch()                                         # 3. SIGTERM: emergency checkpoint, 75
    target = last_step(run_dir) + rng.randint(5, 25)
    wait_until(lambda: last_step(run_dir) >= target, proc)
    acted = sigterm_and_expect_75(proc, run_dir)

    proc = launch()                                         # 4. SIGKILL during restore/first steps
    wait_until(lambda: last_step(run_dir) > acted or saving_now(run_dir), proc, interval=0.001)
    proc.kill()
    finish(proc)

    kill_at_random_step(3, 40)                              # 5. SIGKILL again, anywhere

    proc = launch(hold=0.3)                                 # 6. SIGTERM while a periodic save is in flight
    start_step = last_step(run_dir)
    wait_until(lambda: last_step(run_dir) > start_step and saving_now(run_dir), proc)
    sigterm_and_expect_75(proc, run_dir)

    code, out = finish(launch())                            # resume to the end
    assert code == 0, out
    assert "resumed from" in out
    assert_same_training(uninterrupted, run_dir)
