"""Issue 10 (items 3, 4, 7, 9) on the scripted fake OS: a job that can never start, a resume point
the job cannot load, the job's own reason in the final message, honest status figures."""
import json
import signal
from pathlib import Path

from traind import store
from traind.contract.exitcodes import UNUSABLE_CHECKPOINT
from traind.supervisor.runfiles import read_events, read_status
from traind.supervisor.states import State

from traind.supervisor.osproc import SignalArrived

from .fakeos import FakeOS, exited, msg
from .test_loop_fake import Resume, run


def test_a_job_that_fails_the_same_way_before_its_first_step_fails_after_a_few_tries(tmp_path):
    def on_spawn(n):
        log = tmp_path / "run" / "logs" / f"attempt-{n}.log"   # n counts spawns from 1
        log.write_text("Traceback (most recent call last):\nModuleNotFoundError: No module named 'nonexistent_mod'\n")
        return [(0.2, exited(code=1))]
    fake = FakeOS(on_spawn=on_spawn)
    _, result, _ = run(tmp_path, fake, restart={"max_restarts": 10, "window_seconds": 3600})
    assert result.state is State.FAILED and len(fake.spawns) == 5      # default max_startup_failures
    assert "fails the same way before its first step" in result.message
    assert "No module named 'nonexistent_mod'" in result.message       # the tail of its output
    assert fake.spawns[-1] < 20      # backoff 1, 2, 4, 8: seconds, not the ~5 minutes of 10 restarts


def test_a_group_whose_ranks_fail_alike_fails_whichever_rank_wrote_the_last_line(tmp_path):
    """Issue 21: the group's log ends with rank 0's or rank 1's copy of one error, by chance."""
    def on_spawn(n):
        log = tmp_path / "run" / "logs" / f"attempt-{n}.log"
        log.write_text(f"[rank{n % 2}]: Traceback (most recent call last):\n"
                       f"[rank{n % 2}]: RuntimeError: snapshot.pt is torn\n")
        return [(0.2, exited(code=1))]
    fake = FakeOS(on_spawn=on_spawn)
    _, result, _ = run(tmp_path, fake, restart={"max_restarts": 10, "max_startup_failures": 3})
    assert result.state is State.FAILED and len(fake.spawns) == 3
    assert "fails the same way before its first step" in result.message


def test_attempts_killed_before_their_first_line_are_left_to_the_budget(tmp_path):
    """Nothing said, nothing known: five silent SIGKILLs (from outside) are not "fails the same way"."""
    fake = FakeOS(on_spawn=lambda n: [(0.2, exited(sig=9))] if n < 7 else [(0.2, exited(code=0))])
    _, result, _ = run(tmp_path, fake, restart={"max_restarts": 10, "max_startup_failures": 2})
    assert result.state is State.SUCCEEDED and len(fake.spawns) == 7


def test_startup_failure_limit_is_configurable_and_progress_resets_it(tmp_path):
    def on_spawn(n):
        (tmp_path / "run" / "logs" / f"attempt-{n}.log").write_text("OSError: cannot open data.bin\n")
        if n == 2:      # the second attempt speaks, then crashes: it did start
            return [(0.1, msg("hello", pid=1, resumed_step=None)), (0.5, exited(code=1))]
        return [(0.2, exited(code=1))]
    fake = FakeOS(on_spawn=on_spawn)
    _, result, _ = run(tmp_path, fake, restart={"max_restarts": 10, "max_startup_failures": 2})
    assert result.state is State.FAILED and "fails the same way before its first step" in result.message
    assert len(fake.spawns) == 4     # #1 silent, #2 spoke (resets), #3 and #4 silent -> 2 in a row


def test_different_failures_before_the_first_step_are_left_to_the_budget(tmp_path):
    def on_spawn(n):
        return [(0.2, exited(code=1 + n % 2))] if n < 4 else [(0.1, exited(code=0))]
    fake = FakeOS(on_spawn=on_spawn)
    _, result, _ = run(tmp_path, fake, restart={"max_restarts": 10, "max_startup_failures": 2,
                                                "no_retry_exit_codes": [9]})
    assert result.state is State.SUCCEEDED


def test_an_unusable_resume_point_is_set_aside_and_the_run_falls_back_unpenalised(tmp_path):
    ckpt_dir = tmp_path / "run" / "checkpoints"
    for step in (50, 100):
        pending = store.begin(ckpt_dir, step, 10)
        pending.write_bytes(store.STATE_NAME, b"state %d" % step)
        pending.commit(step, 0, "periodic", {})

    def on_spawn(n):
        if n == 1:   # refuses step 100 (a pickle weights_only will not load) and says so
            return [(0.1, msg("error", message="step-000000100/state.pt: refused", unusable_checkpoint=True)),
                    (0.2, exited(code=UNUSABLE_CHECKPOINT))]
        return [(0.1, msg("hello", pid=1, resumed_step=50)), (0.5, exited(code=0))]
    fake = FakeOS(on_spawn=on_spawn)
    sup, result, lines = run(tmp_path, fake, resume=lambda run_dir: store.latest_valid(store.checkpoints_dir(run_dir)),
                             restart={"max_restarts": 0})
    assert result.state is State.SUCCEEDED, result.message   # max_restarts 0: it did not count
    assert [a["resume_step"] for a in result.attempts] == [100, 50]
    aside = [p for p in ckpt_dir.iterdir() if p.name.startswith(".unusable-step-000000100")]
    assert len(aside) == 1 and (aside[0] / store.STATE_NAME).read_bytes() == b"state 100"   # nothing deleted
    assert "refused" in (aside[0] / "WHY").read_text()
    assert any(e["event"] == "checkpoint_unusable" for e in read_events(tmp_path / "run"))
    assert store.latest_valid(ckpt_dir)[0].step == 50


def test_exit_65_without_a_resume_point_is_an_ordinary_failure(tmp_path):
    fake = FakeOS(on_spawn=lambda n: [(0.2, exited(code=UNUSABLE_CHECKPOINT))])
    _, result, _ = run(tmp_path, fake, restart={"max_restarts": 1})
    assert result.state is State.FAILED and "restart budget exhausted" in result.message


def test_the_final_message_carries_the_jobs_own_reason(tmp_path):
    reason = "/data/run/metrics.jsonl: cannot write: No space left on device"
    fake = FakeOS(on_spawn=lambda n: [(0.1, msg("hello", pid=1, resumed_step=None)),
                                      (0.2, msg("error", message=reason)), (0.3, exited(code=1))])
    _, result, _ = run(tmp_path, fake, restart={"max_restarts": 0})
    assert result.state is State.FAILED and reason in result.message


def test_status_rate_comes_from_the_job_and_the_final_step_is_shown(tmp_path):
    def on_spawn(n):
        beats = [(0.1, msg("hello", pid=1, resumed_step=None))]
        # heartbeats read in one batch share a receive time: a rate from those explodes
        beats += [(1.0, msg("heartbeat", step=s, epoch=0, metrics={}, steps_per_second=42.0)) for s in (1, 2, 3)]
        beats += [(1.5, msg("checkpoint", step=10, epoch=0, path="p", reason="final", seconds=0.1)),
                  (1.6, exited(code=0))]
        return beats
    fake = FakeOS(on_spawn=on_spawn)
    run(tmp_path, fake)
    status = read_status(tmp_path / "run")
    assert status["last_heartbeat"]["steps_per_second"] == 42.0
    assert status["last_heartbeat"]["step"] == 10      # not the last heartbeat's 3


def test_status_keeps_the_attempts_of_earlier_invocations(tmp_path):
    for _ in range(2):
        fake = FakeOS(on_spawn=lambda n: [(0.1, exited(code=75))])
        run(tmp_path, fake, restart={"max_restarts": 0}, preemption={"grace_seconds": 5})
    attempts = read_status(tmp_path / "run")["attempts"]
    assert len(attempts) >= 2 and attempts[0]["attempt"] < attempts[-1]["attempt"]


def test_backoff_never_overflows_however_many_failures_in_a_row():
    from traind.supervisor.attempts import backoff_delay
    from traind.supervisor.spec import Backoff
    steep = Backoff(initial_seconds=1, max_seconds=60, factor=100, jitter=0.0)
    assert [backoff_delay(steep, n, 0.5) for n in (1, 2, 160, 10**6)] == [1.0, 60.0, 60.0, 60.0]
    assert backoff_delay(Backoff(1, 60, 2, 0.0), 4, 0.5) == 8.0
    assert backoff_delay(Backoff(0, 0, 2, 0.0), 5000, 0.5) == 0.0


def test_a_job_that_never_speaks_runs_once_it_outlives_its_start_and_its_75_claims_no_checkpoint(tmp_path):
    """Issue 21: a plain script was `starting` for its whole run and its own exit 75 read as
    "emergency checkpoint committed at step None"."""
    fake = FakeOS(on_spawn=lambda n: [(30.0, exited(code=75))] if n == 1 else [(0.1, exited(code=0))],
                  on_send={"checkpoint_and_stop": [(0.5, exited(code=75))]})
    fake.at(20.0, SignalArrived(signal.SIGTERM))
    _, result, lines = run(tmp_path, fake, health={"silent_running_seconds": 10})
    moved = [e for e in read_events(tmp_path / "run") if e.get("event") == "transition"]
    assert (moved[0]["source"], moved[0]["target"]) == ("starting", "running")
    assert moved[0]["edge"] == "runs without speaking traind's channel"
    assert result.state is State.PREEMPTED
    assert "the job exited 75 itself; traind holds no checkpoint of it" in result.message
    assert "step None" not in "\n".join(lines)


def test_an_attempt_expected_to_speak_stays_starting_until_it_does(tmp_path):
    def on_spawn(n):
        if n == 1:
            return [(0.1, msg("hello", pid=1, resumed_step=None)), (1.0, exited(code=1))]
        return [(15.0, msg("hello", pid=2, resumed_step=None)), (16.0, exited(code=0))]
    fake = FakeOS(on_spawn=on_spawn)
    _, result, _ = run(tmp_path, fake, health={"silent_running_seconds": 10})
    edges = [e["edge"] for e in read_events(tmp_path / "run") if e.get("event") == "transition"]
    assert "runs without speaking traind's channel" not in edges and result.state is State.SUCCEEDED


def test_a_grace_shorter_than_a_step_is_said_once(tmp_path):
    """Issue 22: a step of 10 s against a 5 s grace: a stop would be SIGKILLed and lose the step."""
    def on_spawn(n):
        return [(0.1, msg("hello", pid=1, resumed_step=None))] + [
            (0.1 + 10 * i, msg("heartbeat", step=i, epoch=0, metrics={}, steps_per_second=0.1)) for i in range(1, 4)] + [
            (40.0, exited(code=0))]
    fake = FakeOS(on_spawn=on_spawn)
    _, result, lines = run(tmp_path, fake, health={"hang_timeout_seconds": 100})
    said = [line for line in lines if "more than preemption.grace_seconds (5 s)" in line]
    assert len(said) == 1 and "a step takes 10.0 s" in said[0], lines
    assert result.state is State.SUCCEEDED
