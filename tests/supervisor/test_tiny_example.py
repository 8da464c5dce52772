"""The real example job (torch) under `traind run`, SIGKILLed a few times: same result as unsupervised."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from daemon.runfiles import lock_holder, pid_alive, read_events

from .conftest import REPO, start_traind, write_spec
from .test_real import heartbeat_step, wait_for

pytestmark = pytest.mark.slow
STEPS, EVERY = 1500, 50
JOB = [sys.executable, "-m", "jobs.examples.tiny", "--max-steps", str(STEPS), "--every-steps", str(EVERY)]
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


def test_tiny_killed_three_times_matches_an_uninterrupted_run(tmp_path, reap):
    alone = tmp_path / "alone"
    subprocess.run([*JOB, "--run-dir", str(alone)], cwd=REPO, env={**os.environ, **ENV}, check=True,
                   capture_output=True, timeout=180)
    # Paced to >= 3 ms a step under supervision, so each attempt outlives its torch start-up long
    # enough to be killed mid-run (unpaced, a loaded machine let one attempt finish the run).
    spec = write_spec(tmp_path, command=[*JOB, "--step-seconds", "0.003"], workdir=str(REPO),
                      run_dir=str(tmp_path / "run"), env=ENV,
                      restart={"max_restarts": 5})
    run_dir = tmp_path / "run"
    p = start_traind("run", spec)
    reap(p)
    seen = 0
    for _ in range(3):
        seen = wait_for(lambda: (lambda s: s if s > seen + EVERY else 0)(heartbeat_step(run_dir)),
                        timeout=120, what="training progress")
        child = lock_holder(run_dir)["child_pid"]
        if heartbeat_step(run_dir) >= STEPS - EVERY or not pid_alive(child):
            break
        os.kill(child, signal.SIGKILL)
        time.sleep(0.05)
    out, err = p.communicate(timeout=240)
    assert p.returncode == 0, err[-3000:]
    kills = [e for e in read_events(run_dir) if e.get("signal") == "SIGKILL"]
    assert len(kills) >= 2
    for event in read_events(run_dir):       # each restart really resumed (not a fresh start)
        if event["event"] == "spawned" and event["attempt"] > 1:
            assert event["checkpoint_step"], event
            log = (run_dir / "logs" / f"attempt-{event['attempt']}.log").read_text()
            assert f"(step {event['checkpoint_step']}, epoch" in log, log[-2000:]
    assert per_step(run_dir) == per_step(alone)
    supervised, unsupervised = final_state(run_dir), final_state(alone)
    for key in ("state_dict", "optimizer_states", "lr_schedulers", "global_step", "data_position", "rng_states"):
        assert same(supervised[key], unsupervised[key]), key      # bit-for-bit equal tensors
