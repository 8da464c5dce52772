"""Issue 22: a stop during validation is honoured at the next validation batch, not after the
whole validation: the emergency checkpoint holds the last completed training step, the interrupted
validation runs again on resume, and the run ends bit-identical (metrics lines included)."""
import json
import signal
import time

import pytest

from jobhelpers import assert_same_training, checkpoints, finish, last_step, start, wait_until

ARGS = ("--max-steps", 120, "--every-steps", 40, "--val-every", 50, "--log-every", 0)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    code, out = finish(start("traind.jobs.examples.tiny", "--run-dir", run_dir, *ARGS))
    assert code == 0, out
    return run_dir


@pytest.mark.slow
def test_sigterm_during_validation_exits_at_the_next_batch_and_resumes_bit_identical(tmp_path, reference):
    run_dir = tmp_path / "run"
    proc = start("traind.jobs.examples.tiny", "--run-dir", run_dir, *ARGS, "--val-batch-seconds", 1.0)
    wait_until(lambda: last_step(run_dir) >= 49, proc)
    time.sleep(1.5)                                 # step 50 is done; its validation (8 x 1 s) runs
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    code, out = finish(proc)
    waited = time.monotonic() - sent
    assert code == 75, out
    assert waited < 5.0, f"{waited:.1f} s from SIGTERM to exit: the validation was not interrupted"
    assert "stop requested during the validation after step 50" in out, out
    newest = checkpoints(run_dir)[-1]
    manifest = json.loads((newest / "MANIFEST.json").read_text())
    assert (manifest["step"], manifest["reason"]) == (50, "emergency"), manifest
    assert last_step(run_dir) == 49                 # step 50's line comes with its validation, on resume

    code, out = finish(start("traind.jobs.examples.tiny", "--run-dir", run_dir, *ARGS))
    assert code == 0, out
    assert_same_training(reference, run_dir)


@pytest.mark.slow
def test_stopped_again_while_finishing_the_last_steps_validation_the_step_is_not_counted_twice(tmp_path):
    """Found by the stop-anywhere campaign: a resumed run finishing the interrupted validation of
    the last step, stopped again, counted the step a second time and ended 0 at step 101."""
    args = ("--max-steps", 100, "--every-steps", 40, "--val-every", 50, "--log-every", 0)
    reference = tmp_path / "reference"
    assert finish(start("traind.jobs.examples.tiny", "--run-dir", reference, *args))[0] == 0
    run_dir = tmp_path / "run"
    for attempt in range(2):                      # the first run, then the rerun finishing step 100
        proc = start("traind.jobs.examples.tiny", "--run-dir", run_dir, *args, "--val-batch-seconds", 1.0)
        wait_until(lambda: last_step(run_dir) >= 99 or (attempt and checkpoints(run_dir)), proc)
        time.sleep(2.0)                           # in the validation of step 100
        proc.send_signal(signal.SIGTERM)
        code, out = finish(proc)
        assert code == 75, out
        assert "stop requested during the validation after step 100" in out, out
        assert checkpoints(run_dir)[-1].name == "step-000000100" and last_step(run_dir) == 99
    code, out = finish(start("traind.jobs.examples.tiny", "--run-dir", run_dir, *args))
    assert code == 0 and "finished at step 100" in out, out
    assert_same_training(reference, run_dir)
    # Found by CI's campaign: the final checkpoint was the emergency one (step 100 counted durable),
    # boundary still pending, so one more run did the validation again and wrote step 100's line twice.
    final = json.loads((checkpoints(run_dir)[-1] / "MANIFEST.json").read_text())
    assert (final["step"], final["reason"]) == (100, "final"), final
    code, out = finish(start("traind.jobs.examples.tiny", "--run-dir", run_dir, *args))
    assert code == 0, out
    assert_same_training(reference, run_dir)
