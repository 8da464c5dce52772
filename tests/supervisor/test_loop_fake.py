"""The whole Supervisor loop driven by a scripted fake OS and clock: no processes, exact times."""
import signal
import threading
from pathlib import Path

import pytest

from traind.contract import protocol
from traind.supervisor.osproc import SignalArrived
from traind.supervisor.runfiles import read_events, read_status
from traind.supervisor.spec import validate
from traind.supervisor.states import State
from traind.supervisor.loop import Supervisor

from .fakeos import FakeOS, Info, exited, msg


def make_spec(tmp_path, **sections):
    raw = {"name": "fake", "command": ["job"], "run_dir": str(tmp_path / "run"),
           "restart": {"max_restarts": 3, "window_seconds": 100,
                       "backoff": {"initial_seconds": 1, "max_seconds": 10, "factor": 2, "jitter": 0.1}},
           "preemption": {"grace_seconds": 5}, "health": {"hang_timeout_seconds": 10}}
    for k, v in sections.items():
        raw[k] = {**raw.get(k, {}), **v} if isinstance(v, dict) else v
    return validate(raw, Path(tmp_path / "spec.yaml"))


class Resume:
    """The store's latest_valid, scripted: tests move `step` to model checkpoints being written."""
    def __init__(self):
        self.step = None
        self.skipped = []

    def __call__(self, run_dir):
        return (None if self.step is None else Info(self.step)), self.skipped


def run(tmp_path, fake, resume=None, followup=None, **sections):
    lines = []
    sup = Supervisor(make_spec(tmp_path, **sections), os_=fake, find_resume=resume or Resume(),
                     followup=followup, log=lines.append)
    result = sup.run()
    return sup, result, lines


def speaking_child(step_every=0.5, steps=10_000):
    def on_spawn(n):
        return [(0.1, msg("hello", pid=1, resumed_step=None))] + [
            (0.1 + step_every * i, msg("heartbeat", step=i, epoch=0, metrics={})) for i in range(1, steps)]
    return on_spawn


def test_crash_loop_backs_off_exponentially_then_fails_with_summary(tmp_path):
    fake = FakeOS(on_spawn=lambda n: [(0.5, exited(code=1))])
    sup, result, lines = run(tmp_path, fake)
    assert result.state is State.FAILED and result.exit_code == 1
    assert len(fake.spawns) == 4                                  # first + max_restarts (3)
    gaps = [b - a for a, b in zip(fake.spawns, fake.spawns[1:])]
    assert gaps == pytest.approx([0.5 + 1, 0.5 + 2, 0.5 + 4])     # crash after 0.5s, then 1, 2, 4
    assert "restart budget exhausted" in result.message and "#4 exit code 1" in result.message
    assert read_status(tmp_path / "run")["state"] == "failed"


def test_progress_resets_the_backoff(tmp_path):
    resume = Resume()

    def on_spawn(n):
        resume.step = n * 100            # every attempt commits a newer checkpoint before crashing
        return [(0.5, exited(sig=signal.SIGKILL))]
    fake = FakeOS(on_spawn=on_spawn)
    run(tmp_path, fake, resume=resume)
    gaps = [b - a for a, b in zip(fake.spawns, fake.spawns[1:])]
    assert gaps == pytest.approx([1.5, 1.5, 1.5])


def test_restart_window_forgets_old_failures(tmp_path):
    fake = FakeOS(on_spawn=lambda n: [(60, exited(code=1))] if n < 6 else [(1, exited(code=0))])
    _, result, _ = run(tmp_path, fake, restart={"max_restarts": 2, "window_seconds": 100})
    assert result.state is State.SUCCEEDED and len(fake.spawns) == 6


def test_exit_75_without_stop_restarts_at_once_and_is_not_a_failure(tmp_path):
    resume = Resume()

    def on_spawn(n):
        resume.step = n * 10          # each self-stop left a newer (emergency) checkpoint
        return [(1, exited(code=75 if n < 6 else 0))]
    fake = FakeOS(on_spawn=on_spawn)
    sup, result, _ = run(tmp_path, fake, resume=resume, restart={"max_restarts": 0})
    assert result.state is State.SUCCEEDED and len(fake.spawns) == 6
    assert [b - a for a, b in zip(fake.spawns, fake.spawns[1:])] == pytest.approx([1] * 5)
    assert sup.budget.failure_times == []


def test_exit_75_again_and_again_without_progress_is_a_crash_loop(tmp_path):
    fake = FakeOS(on_spawn=lambda n: [(1, exited(code=75))])
    _, result, _ = run(tmp_path, fake, restart={"max_restarts": 2})
    assert result.state is State.FAILED and "restart budget exhausted" in result.message
    # 1st unasked 75: at once; from the 2nd on: counted, with backoff 1, 2
    assert [b - a for a, b in zip(fake.spawns, fake.spawns[1:])] == pytest.approx([1, 1 + 1, 1 + 2])


def test_do_not_retry_exit_code(tmp_path):
    fake = FakeOS(on_spawn=lambda n: [(0.2, exited(code=2))])
    _, result, _ = run(tmp_path, fake)
    assert result.state is State.FAILED and len(fake.spawns) == 1 and "do-not-retry" in result.message


def test_spawn_failure_fails_at_once(tmp_path):
    _, result, _ = run(tmp_path, FakeOS(spawn_fails=True))
    assert result.state is State.FAILED and "cannot start 'job'" in result.message


def test_sigterm_asks_for_emergency_checkpoint_and_exits_75(tmp_path):
    resume = Resume()
    fake = FakeOS(on_spawn=speaking_child(), on_send={"checkpoint_and_stop": [
        (0.3, msg("checkpoint", step=7, epoch=0, path="p", reason="emergency", seconds=0.2)),
        (0.4, exited(code=75))]})
    fake.at(3.0, SignalArrived(signal.SIGTERM))
    outcomes = []
    sup, result, lines = run(tmp_path, fake, resume=resume, followup=lambda o: outcomes.append(o) or 75)
    assert result.state is State.PREEMPTED and result.exit_code == 75
    assert [k for _, k, _ in fake.sent] == ["checkpoint_and_stop"] and fake.sent[0][2]["reason"] == "SIGTERM"
    assert fake.signals == []                                    # a speaking child gets no signal
    assert outcomes[0].checkpoint_committed and outcomes[0].trigger == "SIGTERM"
    edges = [(e.get("source"), e.get("target")) for e in read_events(tmp_path / "run") if e["event"] == "transition"]
    assert edges == [("starting", "running"), ("running", "stopping"), ("stopping", "preempted")]


def test_repeated_signals_do_not_skip_the_checkpoint_and_grace_ends_in_sigkill(tmp_path):
    fake = FakeOS(on_spawn=speaking_child())                  # ignores checkpoint_and_stop
    fake.at(3.0, SignalArrived(signal.SIGTERM))
    fake.at(4.0, SignalArrived(signal.SIGINT))
    fake.at(6.0, SignalArrived(signal.SIGTERM))
    sup, result, lines = run(tmp_path, fake)
    assert fake.signals == [(pytest.approx(8.0), signal.SIGKILL)]   # 3.0 + grace 5, not earlier
    assert result.state is State.PREEMPTED and result.exit_code == 75
    assert "no emergency checkpoint committed" in result.message
    assert sum("already stopping" in line for line in lines) == 2


def test_a_child_that_never_spoke_gets_sigterm_on_stop(tmp_path):
    fake = FakeOS(on_spawn=lambda n: [], on_signal={signal.SIGTERM: [(0.1, exited(code=143))]})
    fake.at(2.0, SignalArrived(signal.SIGUSR1))
    _, result, _ = run(tmp_path, fake)
    assert fake.signals == [(2.0, signal.SIGTERM)] and result.state is State.PREEMPTED


def test_hang_requests_checkpoint_kills_after_grace_and_counts_a_failure(tmp_path):
    def on_spawn(n):
        if n == 1:   # speaks twice then goes silent
            return [(0.1, msg("hello", pid=1)), (1.0, msg("heartbeat", step=1, epoch=0))]
        return [(0.1, msg("hello", pid=2)), (1.0, exited(code=0))]
    fake = FakeOS(on_spawn=on_spawn)
    sup, result, lines = run(tmp_path, fake)
    stop = [s for s in fake.sent if s[1] == "checkpoint_and_stop"]
    # the channel is read in 1 s batches, so the last heartbeat is seen at t<=2 and the hang at <=12
    assert len(stop) == 1 and stop[0][2]["reason"] == "hang" and 11.0 <= stop[0][0] <= 12.0
    assert fake.signals[0][1] == signal.SIGKILL and fake.signals[0][0] == pytest.approx(stop[0][0] + 5)
    assert result.state is State.SUCCEEDED and len(fake.spawns) == 2 and len(sup.budget.failure_times) == 1
    assert sup.attempts[0].reason == "hang"


def test_stop_while_backing_off_ends_at_once(tmp_path):
    fake = FakeOS(on_spawn=lambda n: [(0.5, exited(code=1))])
    fake.at(0.8, SignalArrived(signal.SIGTERM))      # during the first 1 s backoff
    _, result, _ = run(tmp_path, fake)
    assert result.state is State.PREEMPTED and len(fake.spawns) == 1 and result.exit_code == 75


def test_request_stop_from_another_thread_uses_the_followup(tmp_path):
    fake = FakeOS(on_spawn=speaking_child(), on_send={"checkpoint_and_stop": [(0.2, exited(code=75))]})
    holder = {}

    def followup(outcome):
        holder["outcome"] = outcome
        return 76
    spec = make_spec(tmp_path)
    sup = Supervisor(spec, os_=fake, find_resume=Resume(), followup=followup, log=lambda line: None)
    fake.at(2.0, SignalArrived(0))  # wakes the loop at 2.0; not a stop signal
    orig_wait = fake.wait

    def wait(timeout, listen_channel):
        if fake.t >= 2.0 and "asked" not in holder:
            holder["asked"] = True
            t = threading.Thread(target=sup.request_stop, args=("spot notice",))
            t.start()
            t.join()
        return orig_wait(timeout, listen_channel=listen_channel)
    fake.wait = wait
    result = sup.run()
    assert result.exit_code == 76 and holder["outcome"].trigger == "request: spot notice"
    # Exit 75 alone is the job's word, not a checkpoint: the store holds none (issue 21).
    assert not holder["outcome"].checkpoint_committed
    assert holder["outcome"].words() == "the job exited 75 itself; traind holds no checkpoint of it"


def test_periodic_checkpoint_requests(tmp_path):
    fake = FakeOS(on_spawn=lambda n: speaking_child()(n)[:3] + [(100, exited(code=0))])
    run(tmp_path, fake, checkpoint={"every_seconds": 30}, health={"hang_timeout_seconds": None})
    times = [t for t, k, _ in fake.sent if k == "checkpoint_now"]
    assert len(times) == 3 and all(b - a == pytest.approx(30) for a, b in zip(times, times[1:]))


def test_every_seconds_runs_on_one_timer_the_jobs_when_it_says_it_times_checkpoints(tmp_path):
    def on_spawn(n):
        return [(0.1, msg("hello", pid=1, resumed_step=None, times_checkpoints=True))] + [
            (0.1 + 0.5 * i, msg("heartbeat", step=i, epoch=0, metrics={})) for i in range(1, 200)] + [(100, exited(code=0))]
    fake = FakeOS(on_spawn=on_spawn)
    run(tmp_path, fake, checkpoint={"every_seconds": 30}, health={"hang_timeout_seconds": None})
    assert [k for _, k, _ in fake.sent if k == "checkpoint_now"] == []      # the job's own policy times them


def test_wakes_at_most_about_once_a_second_while_the_child_chatters(tmp_path):
    fake = FakeOS(on_spawn=lambda n: speaking_child(step_every=0.01, steps=6000)(n) + [(60.1, exited(code=0))])
    sup, result, _ = run(tmp_path, fake)
    assert result.state is State.SUCCEEDED
    assert fake.waits <= 65, fake.waits                 # 6000 heartbeats in 60 s
    assert sup.seen.heartbeat["step"] == 5999


def test_resume_point_and_skipped_checkpoints_reach_the_child_and_the_log(tmp_path):
    resume = Resume()
    resume.step = 40
    resume.skipped = [Info(60, "/x/checkpoints/step-000000060", "state.pt: checksum mismatch")]
    fake = FakeOS(on_spawn=lambda n: [(0.1, exited(code=0))])
    _, _, lines = run(tmp_path, fake, resume=resume)
    assert fake.env[protocol.ENV_RESUME_FROM] == "/x/checkpoints/step"
    assert fake.env[protocol.ENV_ATTEMPT] == "1" and fake.env[protocol.ENV_JOB_NAME] == "fake"
    assert any("skipping checkpoint step-000000060: state.pt: checksum mismatch" in line for line in lines)
    skipped = [e for e in read_events(tmp_path / "run") if e["event"] == "checkpoint_skipped"]
    assert skipped and "checksum mismatch" in skipped[0]["reason"]


def test_a_restarted_child_that_never_says_hello_is_hung_in_start_up(tmp_path):
    """Issue 22: the first attempt spoke, so the next one should; silent past the start-up timeout,
    it is stopped (emergency request, then SIGKILL after the grace) and restarted."""
    def on_spawn(n):
        if n == 1:
            return [(0.1, msg("hello", pid=1, resumed_step=None)), (1.0, exited(code=1))]
        if n == 2:
            return []                               # silent: stuck before hello
        return [(0.1, msg("hello", pid=3, resumed_step=None)), (1.0, exited(code=0))]
    fake = FakeOS(on_spawn=on_spawn)
    sup, result, lines = run(tmp_path, fake, health={"startup_timeout_seconds": 20, "hang_timeout_seconds": None})
    assert result.state is State.SUCCEEDED and len(fake.spawns) == 3, lines
    assert any("no hello 20s after the start" in line for line in lines), lines
    second = fake.spawns[1]
    assert [(round(t - second, 3), s) for t, s in fake.signals][:2] == [(20.0, signal.SIGTERM), (25.0, signal.SIGKILL)]


def test_a_first_attempt_is_never_hung_in_start_up_unless_the_spec_expects_hello(tmp_path):
    slow = FakeOS(on_spawn=lambda n: [(50.0, msg("hello", pid=1, resumed_step=None)), (51.0, exited(code=0))])
    sup, result, lines = run(tmp_path, slow, health={"startup_timeout_seconds": 20, "hang_timeout_seconds": None})
    assert result.state is State.SUCCEEDED and len(slow.spawns) == 1
    strict = FakeOS(on_spawn=lambda n: [(50.0, msg("hello", pid=1, resumed_step=None)), (51.0, exited(code=0))])
    sup, result, lines = run(tmp_path / "2", strict, health={"startup_timeout_seconds": 20, "expects_hello": True,
                                                             "hang_timeout_seconds": None}, restart={"max_restarts": 0})
    assert any("no hello 20s after the start" in line for line in lines), lines
