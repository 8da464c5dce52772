"""Real processes, real signals, real files: `traind run` supervising tests/supervisor/fixture_job.py."""
import json
import os
import random
import signal
import time
from pathlib import Path

import pytest

from traind.fs.locks import pid_alive
from traind.supervisor.runfiles import lock_holder, read_events, read_status

from .conftest import start_traind, traind, write_spec
from .fixture_job import advance

pytestmark = pytest.mark.slow


def expected_x(steps: int) -> int:
    x = 0
    for step in range(1, steps + 1):
        x = advance(x, step)
    return x


def metrics(run_dir: Path) -> list[dict]:
    out = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass   # a line torn by SIGKILL
    return out


def wait_for(predicate, timeout=20.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def heartbeat_step(run_dir: Path) -> int:
    try:
        hb = (read_status(run_dir) or {}).get("last_heartbeat") or {}
    except Exception:
        return 0
    return hb.get("step") or 0


def child_resume_step(run_dir: Path, attempt: int) -> int | None:
    """The step the child itself says it resumed from (its own first line), None if it never said."""
    for line in (run_dir / "logs" / f"attempt-{attempt}.log").read_text().splitlines():
        if line.startswith("fixture: pid ") and f" attempt {attempt} from step " in line:
            return int(line.rsplit(" ", 1)[1])
    return None


def assert_each_attempt_resumed_from_the_latest_checkpoint(run_dir: Path, every: int) -> int:
    """Every attempt was handed the newest checkpoint committed before it started, and the child
    really resumed there (not only the supervisor's log line saying so). Returns how many attempts
    were checked. The fixture saves right after writing the metrics line of each `every`-th step,
    so after an attempt whose last line is step L the newest checkpoint is L rounded down to
    `every`, or one interval earlier when L itself was being saved at the kill."""
    last_line: dict[int, int] = {}
    for m in metrics(run_dir):
        last_line[int(m["attempt"])] = m["step"]
    spawned = [e for e in read_events(run_dir) if e["event"] == "spawned"]
    checked, previous = 0, 0
    for event in spawned:
        n, resumed = event["attempt"], event["checkpoint_step"] or 0
        said = child_resume_step(run_dir, n)
        if said is not None:
            assert said == resumed, (n, said, resumed)
            checked += 1
        if n > 1:
            last = last_line.get(n - 1)
            if last is None:                 # killed before it finished a step: nothing new saved
                assert resumed == previous, (n, resumed, previous)
            elif last % every:
                assert resumed == last - last % every, (n, resumed, last)
            else:
                assert resumed in (last, last - every), (n, resumed, last)
        previous = resumed
    return checked


def test_twenty_random_sigkills_end_equal_to_an_uninterrupted_run(tmp_path, reap):
    steps = 150
    spec = write_spec(tmp_path, job_args=["--steps", steps, "--every", 5, "--step-seconds", 0.02],
                      restart={"max_restarts": 30})
    run_dir = tmp_path / "run"
    p = start_traind("run", spec)
    reap(p)
    rng = random.Random(1234)
    killed = set()
    for _ in range(20):
        pid = wait_for(lambda: (lambda c: c if c and c not in killed and pid_alive(c) else None)(
            lock_holder(run_dir).get("child_pid")), what="a new child")
        time.sleep(rng.uniform(0.02, 0.35))
        os.kill(pid, signal.SIGKILL)
        killed.add(pid)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err[-3000:]
    result = json.loads((run_dir / "result.json").read_text())
    assert result == {"step": steps, "x": expected_x(steps)}
    last = {}
    for m in metrics(run_dir):          # each step's value, as last written, equals the reference
        last[m["step"]] = m["x"]
    assert [last[s] for s in range(1, steps + 1)] == [expected_x(s) for s in range(1, steps + 1)]
    attempts = [e for e in read_events(run_dir) if e["event"] == "spawned"]
    kills = [e for e in read_events(run_dir) if e["event"] == "transition" and e.get("signal") == "SIGKILL"]
    assert len(attempts) == 21 and len(kills) == 20 and all(e["target"] == "backing_off" for e in kills)
    assert assert_each_attempt_resumed_from_the_latest_checkpoint(run_dir, every=5) >= 5


@pytest.mark.parametrize("signo", [signal.SIGTERM, signal.SIGUSR1])
def test_stop_signal_checkpoints_the_current_step_and_rerun_resumes_at_the_next(tmp_path, reap, signo):
    spec = write_spec(tmp_path, job_args=["--steps", 100000, "--every", 1000, "--step-seconds", 0.02])
    run_dir = tmp_path / "run"
    p = start_traind("run", spec)
    reap(p)
    wait_for(lambda: heartbeat_step(run_dir) >= 10, what="10 steps")
    p.send_signal(signo)
    out, err = p.communicate(timeout=30)
    assert p.returncode == 75, err[-2000:]
    done = metrics(run_dir)[-1]["step"]       # the step the job was at when it stopped
    assert f"emergency checkpoint committed at step {done}; exit 75" in err
    assert (run_dir / "checkpoints" / f"step-{done:09d}" / "MANIFEST.json").exists()
    again = traind("run", spec, "--set", f"env.FIXTURE_STEPS={done + 5}")
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"resuming from step {done}" in again.stderr
    assert child_resume_step(run_dir, 2) == done            # the child's own word, not only the log
    assert [m["step"] for m in metrics(run_dir)][-5:] == list(range(done + 1, done + 6))
    assert json.loads((run_dir / "result.json").read_text())["x"] == expected_x(done + 5)
    assert sorted(p.name for p in (run_dir / "logs").iterdir()) == ["attempt-1.log", "attempt-2.log"]


def test_child_ignoring_the_stop_is_killed_at_the_deadline(tmp_path, reap):
    spec = write_spec(tmp_path, job_args=["--steps", 100000, "--every", 5, "--step-seconds", 0.02, "--mode", "ignore-stop"],
                      preemption={"grace_seconds": 1.0})
    run_dir = tmp_path / "run"
    p = start_traind("run", spec)
    reap(p)
    # 12 steps, and a step rate measured (from heartbeats spanning long enough: slower under load)
    wait_for(lambda: heartbeat_step(run_dir) >= 12 and ((read_status(run_dir) or {}).get("last_heartbeat") or {})
             .get("steps_per_second"), what="12 steps and a step rate")
    t0 = time.monotonic()
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=30)
    elapsed = time.monotonic() - t0
    assert p.returncode == 75 and 0.9 <= elapsed <= 6.0, (elapsed, err[-2000:])
    assert "grace period of 1s over: SIGKILL to the process group (a step takes" in err
    assert "the resume point stays the last committed checkpoint, step" in err
    assert "no emergency checkpoint committed; resume point step" in err


def test_hanging_child_is_stopped_killed_and_restarted_as_a_failure(tmp_path, reap):
    spec = write_spec(tmp_path, job_args=["--steps", 8, "--every", 2, "--step-seconds", 0.02, "--mode", "hang-at-3"],
                      health={"hang_timeout_seconds": 2.0}, preemption={"grace_seconds": 0.5})
    out = traind("run", spec, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    events = read_events(Path(spec).parent / "run")
    edges = [e["edge"] for e in events if e["event"] == "transition"]
    assert "no heartbeat: hang" in edges and "hang" in edges          # RUNNING->STOPPING, STOPPING->BACKING_OFF
    assert "resuming from step 2" in out.stderr
    assert read_status(Path(spec).parent / "run")["failures_in_window"] == 1


def test_crash_loop_at_start_gives_up_with_a_summary(tmp_path):
    spec = write_spec(tmp_path, job_args=["--mode", "crash-at-start"], restart={"max_restarts": 3})
    out = traind("run", spec)
    assert out.returncode == 1
    assert "restart budget exhausted: attempt 4 exit code 3; #1 exit code 3; #2 exit code 3; #3 exit code 3; #4 exit code 3" in out.stderr
    assert len(list((tmp_path / "run" / "logs").iterdir())) == 4
    assert "fixture: crashing at start" in out.stderr        # the attempt's output is echoed


def test_supervisor_sigkilled_child_checkpoints_alone_and_a_new_run_resumes(tmp_path, reap):
    spec = write_spec(tmp_path, job_args=["--steps", 100000, "--every", 1000, "--step-seconds", 0.02,
                                          "--emergency-seconds", 4])
    run_dir = tmp_path / "run"
    p = start_traind("run", spec)
    reap(p)
    wait_for(lambda: heartbeat_step(run_dir) >= 8, what="8 steps")
    child = lock_holder(run_dir)["child_pid"]
    p.send_signal(signal.SIGKILL)
    p.wait()
    refused = traind("run", spec)          # the orphan is still writing its emergency checkpoint
    assert refused.returncode == 1
    assert f"run dir still locked by child pid {child} of a supervisor that is gone" in refused.stderr
    wait_for(lambda: not pid_alive(child), timeout=20, what="the orphaned child to exit")
    stopped_at = metrics(run_dir)[-1]["step"]
    manifest = json.loads((run_dir / "checkpoints" / f"step-{stopped_at:09d}" / "MANIFEST.json").read_text())
    assert manifest["reason"] == "emergency"
    again = traind("run", spec, "--set", f"env.FIXTURE_STEPS={stopped_at + 3}")
    assert again.returncode == 0 and f"resuming from step {stopped_at}" in again.stderr
    assert child_resume_step(run_dir, 2) == stopped_at
    assert json.loads((run_dir / "result.json").read_text())["x"] == expected_x(stopped_at + 3)


def test_corrupted_newest_checkpoint_resumes_from_the_one_before(tmp_path):
    spec = write_spec(tmp_path, job_args=["--steps", 20, "--every", 5, "--step-seconds", 0.0])
    run_dir = tmp_path / "run"
    assert traind("run", spec).returncode == 0
    state = run_dir / "checkpoints" / "step-000000020" / "state.json"
    state.write_bytes(state.read_bytes().replace(b'"x"', b'"y"'))       # same size, other bytes
    out = traind("run", spec, "--set", "env.FIXTURE_STEPS=25")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "skipping checkpoint step-000000020:" in out.stderr and "resuming from step 15" in out.stderr
    assert child_resume_step(run_dir, 2) == 15
    skipped = [e for e in read_events(run_dir) if e["event"] == "checkpoint_skipped"]
    assert skipped and skipped[0]["checkpoint_step"] == 20 and skipped[0]["reason"].startswith("step-000000020: ")
    assert json.loads((run_dir / "result.json").read_text())["x"] == expected_x(25)


def test_status_and_a_second_supervisor_refused(tmp_path, reap):
    spec = write_spec(tmp_path, job_args=["--steps", 100000, "--every", 10, "--step-seconds", 0.02])
    run_dir = tmp_path / "run"
    p = start_traind("run", spec)
    reap(p)
    wait_for(lambda: heartbeat_step(run_dir) >= 15, what="15 steps")
    second = traind("run", spec)
    assert second.returncode == 1 and f"run dir in use by traind supervisor pid {p.pid}" in second.stderr
    st = traind("status", run_dir, "--json")
    status = json.loads(st.stdout)
    assert status["state"] == "running" and status["supervisor_alive"] and status["pid"]
    assert status["last_heartbeat"]["step"] >= 15 and status["valid_checkpoint"]["step"] >= 10
    human = traind("status", run_dir).stdout
    assert "state:       running" in human and "heartbeat:   step" in human
    p.send_signal(signal.SIGINT)
    p.communicate(timeout=30)
    assert p.returncode == 75
    assert "state:       preempted" in traind("status", run_dir).stdout
    bad = traind("status", tmp_path / "nothing-here")
    assert bad.returncode == 2 and "no such run dir" in bad.stderr


def test_a_command_that_does_not_speak_is_stopped_with_sigterm_to_its_group(tmp_path, reap):
    spec = write_spec(tmp_path, job_args=["--steps", 100000, "--every", 5, "--step-seconds", 0.02, "--mode", "silent"])
    run_dir = tmp_path / "run"
    p = start_traind("run", spec)
    reap(p)
    wait_for(lambda: (run_dir / "metrics.jsonl").exists() and len(metrics(run_dir)) >= 12, what="12 steps")
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=30)
    assert p.returncode == 75, err[-2000:]
    assert "sent SIGTERM to the group (it has not spoken traind's channel)" in err
    done = metrics(run_dir)[-1]["step"]
    assert f"emergency checkpoint committed at step {done}" in err      # it exited 75: its word for it
    (tmp_path / "plain").mkdir()
    plain = write_spec(tmp_path / "plain", command=["sh", "-c", "sleep 30 & sleep 30; echo never"])
    t0 = time.monotonic()
    p = start_traind("run", plain)
    reap(p)
    wait_for(lambda: lock_holder(tmp_path / "plain" / "run").get("child_pid"), what="the child")
    time.sleep(0.3)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=30)
    assert p.returncode == 75 and time.monotonic() - t0 < 10
    assert "killed by SIGTERM" in err and "no emergency checkpoint committed" in err


def test_a_backoff_longer_than_epoll_allows_waits_instead_of_crashing(tmp_path, reap):
    """restart.backoff of 2e7 s (> ~24 days, epoll's limit) was an OverflowError traceback."""
    spec = tmp_path / "bo.yaml"
    spec.write_text('name: bo\ncommand: ["false"]\nrun_dir: run\n'
                    "restart: {backoff: {initial_seconds: 20000000, max_seconds: 20000000}}\n")
    p = start_traind("run", spec)
    reap(p)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and p.poll() is None:
        status = tmp_path / "run" / "status.json"
        if status.exists() and json.loads(status.read_text() or "{}").get("state") == "backing_off":
            break
        time.sleep(0.05)
    time.sleep(0.3)
    assert p.poll() is None, p.communicate()[1]
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=20)
    assert p.returncode == 75 and "Traceback" not in err, err
