"""Spot preemption end to end on one machine, with the checkpoints mirrored to an object store.

The example job (torch) runs under `traind run` with checkpoint.remote set (a real S3 server, moto,
on 127.0.0.1). A termination notice from the fake AWS metadata server -> emergency checkpoint,
uploaded, exit 75. Then the whole run dir is deleted (a new instance: its disk is gone) and
`traind run` resumes from the remote checkpoint at the next step. The result is bit-identical to
an uninterrupted run: the final checkpoint's tensors, and every metrics line without its timing."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from traind.store.remote import Remote
from traind.supervisor.runfiles import read_events
from tests.cluster.fakemeta import FakeMetadata
from tests.store.s3fixture import moto_server, s3  # noqa: F401  (fixtures)
from tests.supervisor.test_tiny_example import last_step, same

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
STEPS, EVERY = 400, 50
JOB = [sys.executable, "-m", "traind.jobs.examples.tiny", "--max-steps", str(STEPS), "--every-steps", str(EVERY)]
ENV = {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
TIMING = ("time", "steps_per_s")


def metrics(lines: list[str]) -> dict[int, dict]:
    """step -> its metrics line without the timing fields (a resumed step rewrites its line)."""
    out = {}
    for line in lines:
        try:
            m = json.loads(line)
        except ValueError:
            continue
        out[m["step"]] = {k: v for k, v in m.items() if k not in TIMING}
    return out


def test_spot_notice_upload_exit_75_then_a_new_instance_resumes_bit_for_bit(s3, tmp_path):
    alone = tmp_path / "alone"
    subprocess.run([*JOB, "--run-dir", str(alone)], cwd=ROOT, env={**os.environ, **ENV}, check=True,
                   capture_output=True, timeout=300)
    run_dir = tmp_path / "run"
    with FakeMetadata("aws") as fake:
        spec = tmp_path / "spot.yaml"
        spec.write_text(yaml.safe_dump({
            "name": "spot-remote", "run_dir": str(run_dir), "workdir": str(ROOT), "env": ENV,
            "command": [*JOB, "--step-seconds", "0.02"],
            "checkpoint": {"remote": s3.url("spot"), "remote_options": s3.options(fast_fail=False)},
            "preemption": {"grace_seconds": 60, "spot": {"provider": "aws", "base_url": fake.url, "poll_seconds": 0.5}}}))
        proc = subprocess.Popen([sys.executable, "-m", "traind", "run", str(spec)], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, env={**os.environ, **ENV})
        try:
            deadline = time.monotonic() + 120
            while (not [e for e in read_events(run_dir) if e.get("event") == "remote_committed"]
                   or last_step(run_dir) < 120) and time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.1)
            assert last_step(run_dir) < STEPS - 50, "the run got too close to its end before the notice"
            fake.preempt()
            out, _ = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 75, out[-4000:]
    assert "spot aws: termination notice" in out
    final = [line for line in out.splitlines() if "preempted: stopped" in line][-1]
    step = int(re.search(r"emergency checkpoint committed at step (\d+)", final).group(1))
    assert f"remotely committed at {s3.url('spot')}" in final and final.endswith("exit 75"), final
    assert 0 < step < STEPS
    newest, _ = Remote(s3.url("spot"), s3.options()).latest_valid()          # every remote byte hashed
    assert newest.step == step and newest.reason == "emergency"
    first_metrics = (run_dir / "metrics.jsonl").read_text().splitlines()

    shutil.rmtree(run_dir)                                                  # the instance is gone
    rerun = subprocess.run([sys.executable, "-m", "traind", "run", str(spec), "--set", "preemption.spot.provider=none"],
                           capture_output=True, text=True, env={**os.environ, **ENV}, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-4000:]
    assert f"downloaded step {step}" in rerun.stderr
    spawned = [e for e in read_events(run_dir) if e.get("event") == "spawned"]
    assert spawned[0]["checkpoint_step"] == step
    resumed = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert json.loads(resumed[0])["step"] == step + 1                        # the next step
    combined = {**{k: v for k, v in metrics(first_metrics).items() if k <= step}, **metrics(resumed)}
    assert combined == metrics((alone / "metrics.jsonl").read_text().splitlines())
    import torch
    ours = torch.load(run_dir / "checkpoints" / f"step-{STEPS:09d}" / "state.pt", weights_only=True)
    theirs = torch.load(alone / "checkpoints" / f"step-{STEPS:09d}" / "state.pt", weights_only=True)
    for key in ("state_dict", "optimizer_states", "lr_schedulers", "global_step", "data_position", "rng_states"):
        assert same(ours[key], theirs[key]), key                             # tensor for tensor
    final_remote, _ = Remote(s3.url("spot"), s3.options()).latest_valid()
    assert final_remote.step == STEPS and final_remote.reason == "final"
