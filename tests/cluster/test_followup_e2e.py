"""`traind run` inside a (pretend) SLURM job: SIGUSR1 -> emergency checkpoint -> requeue command -> exit.

No cluster needed: SLURM_JOB_ID is set by hand and the requeue command is a real script, so the
whole path (signal, checkpoint, follow-up, exit code, log lines) runs in real processes.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.cluster.helpers import FIXTURE, emergency_step



def run_until_usr1(tmp_path: Path, requeue_command: list[str], env_extra: dict) -> tuple[int, str]:
    spec = tmp_path / "job.yaml"
    spec.write_text(json.dumps({
        "name": "fake-slurm", "run_dir": "run",
        "command": [sys.executable, str(FIXTURE), "--steps", "100000", "--every", "50", "--step-seconds", "0.02"],
        "slurm": {"requeue_command": requeue_command}}))
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}, **env_extra}
    proc = subprocess.Popen([sys.executable, "-m", "traind", "run", str(spec)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        metrics = tmp_path / "run" / "metrics.jsonl"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (not metrics.exists() or len(metrics.read_text().splitlines()) < 5):
            time.sleep(0.05)
        proc.send_signal(signal.SIGUSR1)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, out


@pytest.mark.slow
def test_requeue_runs_after_the_checkpoint_with_the_array_id(tmp_path):
    record = tmp_path / "requeued.txt"
    script = tmp_path / "requeue.sh"
    # The checkpoint must already be committed when the requeue runs (SLURM kills us right after).
    script.write_text(f"#!/bin/sh\nls {tmp_path}/run/checkpoints > {record}.ckpts\necho \"$@\" > {record}\n")
    script.chmod(0o755)
    code, out = run_until_usr1(tmp_path, [str(script), "{job_id}"],
                               {"SLURM_JOB_ID": "1007", "SLURM_ARRAY_JOB_ID": "1000", "SLURM_ARRAY_TASK_ID": "7",
                                "SLURM_RESTART_COUNT": "2"})
    assert code == 75, out
    assert "SLURM job 1007 (array task 1000_7)" in out and "SLURM_RESTART_COUNT=2" in out
    assert record.read_text().strip() == "1000_7"
    step = emergency_step(out)
    assert f"step-{step:09d}" in (tmp_path / "requeued.txt.ckpts").read_text().split()
    assert "requeued SLURM job 1000_7" in out


@pytest.mark.slow
def test_failed_requeue_is_logged_and_exits_76(tmp_path):
    code, out = run_until_usr1(tmp_path, ["sh", "-c", "echo 'scontrol: error: Job is not requeueable' >&2; exit 1"],
                               {"SLURM_JOB_ID": "555"})
    assert code == 76, out
    assert "requeue of SLURM job 555 FAILED" in out and "not requeueable" in out
    assert "emergency checkpoint committed at step" in out and "Traceback" not in out
