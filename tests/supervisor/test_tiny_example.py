"""The real example job (torch) under `traind run`, SIGKILLed 20 times: same result as unsupervised."""
import json
import os
import random
import signal
import subprocess
import sys

import pytest

from traind.fs.locks import pid_alive
from traind.supervisor.runfiles import lock_holder, read_events

from .conftest import REPO, start_traind, write_spec
from .test_real import wait_for

pytestmark = pytest.mark.slow
STEPS, EVERY, KILLS = 3500, 50, 20
JOB = [sys.executable, "-m", "traind.jobs.examples.tiny", "--max-steps", str(STEPS), "--every-steps", str(EVERY)]
ENV = {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def per_step(run_dir):
    """step -> (epoch, loss, lr) as last written (a resumed step rewrites its line)."""
    out = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        try:
            m = json.loads(line)
        except ValueError:
            continue
        out[m["step"]] = (m.get("epoch"), m.get("loss"), m.get("lr"))
    return out


def final_state(run_dir):
    import torch
    return torch.load(run_dir / "checkpoints" / f"step-{STEPS:09d}" / "state.pt", weights_only=True)


def same(a, b) -> bool:
    import torch
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(map(same, a, b))
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    return a == b


def last_step(run_dir) -> int:
    """The newest finished step, from metrics.jsonl (one line per step, written as it finishes)."""
    try:
        tail = (run_dir / "metrics.jsonl").read_bytes()[-400:].splitlines()
        return json.loads(tail[-1])["step"] if tail else 0
    except (OSError, ValueError, KeyError, IndexError):
        return 0


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The example run once, unsupervised: what both variants below must end equal to."""
    alone = tmp_path_factory.mktemp("alone")
    subprocess.run([*JOB, "--run-dir", str(alone)], cwd=REPO, env={**os.environ, **ENV}, check=True,
                   capture_output=True, timeout=180)
    return alone


@pytest.mark.parametrize("warm_spare", [False, True], ids=["cold", "warm-spare"])
def test_tiny_killed_twenty_times_at_random_matches_an_uninterrupted_run(tmp_path, reap, warm_spare, uninterrupted):
    """Issue 4: the example job's child SIGKILLed at random moments, 20 times in one run; issue 14:
    the same with a warm spare taking over each time (ready, or still starting)."""
    alone = uninterrupted
    # Paced to >= 3 ms a step under supervision, so that each attempt trains for a while after its
    # torch start-up and the run can't finish between two kills on a fast or a loaded machine.
    spec = write_spec(tmp_path, command=[*JOB, "--step-seconds", "0.003"], workdir=str(REPO),
                      run_dir=str(tmp_path / "run"), env=ENV,
                      restart={"max_restarts": 25, "warm_spare": warm_spare,
                               "backoff": {"initial_seconds": 0.05, "max_seconds": 0.2}})
    run_dir = tmp_path / "run"
    p = start_traind("run", spec)
    reap(p)
    rng = random.Random(1234)
    killed: set[int] = set()
    for _ in range(KILLS):
        child = wait_for(lambda: (lambda pid: pid if pid and pid not in killed and pid_alive(pid) else 0)(
            lock_holder(run_dir).get("child_pid")), timeout=120, what="a new child")
        resumed = wait_for(lambda: last_step(run_dir), timeout=120, what="the child's first step")
        # A random moment: somewhere in its first 1-120 steps past where it started (mid-epoch,
        # right after a periodic checkpoint, during one: wherever that lands).
        target = resumed + rng.randint(1, 120)
        wait_for(lambda: last_step(run_dir) >= target or not pid_alive(child), timeout=120, what="progress")
        assert last_step(run_dir) < STEPS - 20, "the run got too close to the end to keep killing it"
        os.kill(child, signal.SIGKILL)
        killed.add(child)
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err[-3000:]
    kills = [e for e in read_events(run_dir) if e.get("signal") == "SIGKILL"]
    assert len(kills) == KILLS
    for event in read_events(run_dir):       # each restart really resumed (not a fresh start)
        if event["event"] == "spawned" and event["attempt"] > 1:
            assert event["checkpoint_step"], event
            log = (run_dir / "logs" / f"attempt-{event['attempt']}.log").read_text()
            assert f"(step {event['checkpoint_step']}, epoch" in log, log[-2000:]
    assert per_step(run_dir) == per_step(alone)
    supervised, unsupervised = final_state(run_dir), final_state(alone)
    for key in ("state_dict", "optimizer_states", "lr_schedulers", "global_step", "data_position", "rng_states"):
        assert same(supervised[key], unsupervised[key]), key      # bit-for-bit equal tensors
    promoted = [e for e in read_events(run_dir) if e["event"] == "spare_promoted"]
    assert (len(promoted) >= KILLS // 2) if warm_spare else not promoted, len(promoted)


def test_a_spare_killed_while_waiting_is_replaced_and_the_run_is_unaffected(tmp_path, reap):
    """Issue 14: SIGKILL the waiting spare: a new one is started, the run ends as an uninterrupted one."""
    steps = 600
    job = [sys.executable, "-m", "traind.jobs.examples.tiny", "--max-steps", str(steps), "--every-steps", "100"]
    alone = tmp_path / "alone"
    subprocess.run([*job, "--run-dir", str(alone)], cwd=REPO, env={**os.environ, **ENV}, check=True,
                   capture_output=True, timeout=180)
    spec = write_spec(tmp_path, command=[*job, "--step-seconds", "0.02"], workdir=str(REPO),
                      run_dir=str(tmp_path / "run"), env=ENV, restart={"warm_spare": True})
    run_dir = tmp_path / "run"
    p = start_traind("run", spec)
    reap(p)

    def spare(ready=True):
        s = (json.loads((run_dir / "status.json").read_text()).get("spare") or {}) if (run_dir / "status.json").exists() else {}
        return s.get("pid") if s.get("pid") and (s.get("ready") or not ready) else None
    first = wait_for(spare, timeout=120, what="a ready spare")
    os.kill(first, signal.SIGKILL)
    second = wait_for(lambda: (lambda pid: pid if pid and pid != first else None)(spare()), timeout=120,
                      what="a new ready spare")
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err[-3000:]
    assert f"warm spare pid {first} killed by SIGKILL while waiting; a new one is started" in err
    assert not pid_alive(second)                      # the run is over: its spare went with it
    assert [e["attempt"] for e in read_events(run_dir) if e["event"] == "spawned"] == [1]
    assert per_step(run_dir) == per_step(alone)
    spec_steps = STEPS
    try:
        globals()["STEPS"] = steps
        assert same(final_state(run_dir)["state_dict"], final_state(alone)["state_dict"])
    finally:
        globals()["STEPS"] = spec_steps
