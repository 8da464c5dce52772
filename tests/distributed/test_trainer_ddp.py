"""Issue 12, the Trainer: the tiny example (traind.Trainer, dropout, validation, an LR scheduler,
keep_best) on 2 ranks under `distributed:` trains data-parallel (DDP through the training step,
each rank its part of every epoch), and a SIGTERM mid-epoch resumes bit-identical."""
import signal
import time
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


def test_a_group_stopped_during_validation_stops_at_the_next_batch_and_resumes_bit_identical(tmp_path):
    """Issue 22 for a group: the stop reaches each rank's validation at its next batch (through the
    node's shared word); the ranks agree at its end, every rank's emergency checkpoint holds step 50
    with its validation still to do, and the resumed group runs it again."""
    def spec(name, *extra):
        command = [sys.executable, "-m", "traind.jobs.examples.tiny", "--max-steps", "60", "--every-steps", "20",
                   "--val-every", "50", "--log-every", "0", *extra]
        return write_spec(tmp_path, name=name, nproc=2, every_steps=20, command=command), tmp_path / name
    ref_spec, ref_dir = spec("reference")
    assert run(ref_spec, tmp_path / "reference.log") == 0, (tmp_path / "reference.log").read_text()[-3000:]
    run_spec_, run_dir = spec("tiny", "--val-batch-seconds", "1.0")
    log = tmp_path / "tiny.log"
    sup = start(run_spec_, log)
    wait_for(lambda: (metrics(run_dir) or [{"step": 0}])[-1]["step"] >= 49 if (run_dir / "metrics.jsonl").exists()
             else False, 180, "step 49")
    time.sleep(1.5)                                  # step 50 is done; its validation (1 s a batch) runs
    sent = time.monotonic()
    sup.send_signal(signal.SIGTERM)
    assert sup.wait(120) == 75, log.read_text()[-3000:]
    waited = time.monotonic() - sent
    assert waited < 6.0, f"{waited:.1f} s from SIGTERM to exit: the validation was not cut short"
    assert "stop requested during the validation after step 50" in log.read_text(), log.read_text()[-3000:]
    stopped = newest(run_dir)
    assert [s["global_step"] for s in rank_files(stopped)] == [50, 50]
    assert run(spec("tiny")[0], log) == 0, log.read_text()[-3000:]      # resumed at full speed
    assert_same_state(newest(run_dir), newest(ref_dir))
    assert metrics(run_dir) == metrics(ref_dir)
