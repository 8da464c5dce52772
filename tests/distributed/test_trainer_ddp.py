"""Issue 12, the Trainer: the tiny example (traind.Trainer, dropout, validation, an LR scheduler,
keep_best) on 2 ranks under `distributed:` trains data-parallel (DDP through the training step,
each rank its part of every epoch), and a SIGTERM mid-epoch resumes bit-identical."""
import signal
import sys

import pytest

from ddphelpers import assert_same_state, metrics, newest, rank_files, run, start, step_of, wait_for, write_spec

pytestmark = pytest.mark.slow


def _tiny(tmp_path, name, step_seconds):
    command = [sys.executable, "-m", "traind.jobs.examples.tiny", "--max-steps", "70", "--every-steps", "20",
               "--val-every", "25", "--step-seconds", str(step_seconds)]
    return write_spec(tmp_path, name=name, nproc=2, every_steps=20, command=command), tmp_path / name


def test_trainer_on_two_ranks_resumes_bit_identical_after_sigterm(tmp_path):
    ref_spec, ref_dir = _tiny(tmp_path, "reference", 0)
    assert run(ref_spec, tmp_path / "reference.log") == 0, (tmp_path / "reference.log").read_text()[-3000:]
    spec, run_dir = _tiny(tmp_path, "tiny", 0.03)
    log = tmp_path / "tiny.log"
    sup = start(spec, log)
    wait_for(lambda: step_of(run_dir) >= 33, 120, "step 33 (28 steps per epoch at 2 ranks)")
    sup.send_signal(signal.SIGTERM)
    assert sup.wait(120) == 75, log.read_text()[-3000:]
    stopped = newest(run_dir)
    assert len({s["global_step"] for s in rank_files(stopped)}) == 1 and len(rank_files(stopped)) == 2
    assert run(spec, log) == 0, log.read_text()[-3000:]
    assert_same_state(newest(run_dir), newest(ref_dir))
    assert metrics(run_dir) == metrics(ref_dir)
    # each rank trained on its half of every epoch: 3584 samples / 2 ranks / 64 = 28 steps an epoch
    # (one process would take 56), so step 70 is 14 batches into epoch 2, on both ranks
    positions = [(s["data_position"]["epoch"], s["data_position"]["batches_consumed"])
                 for s in rank_files(newest(run_dir))]
    assert positions == [(2, 14), (2, 14)]
