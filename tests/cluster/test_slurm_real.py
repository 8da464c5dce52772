"""A real one-node SLURM on loopback (scripts/slurm-start.sh): time limit, preemption, scancel, arrays.

Jobs run under `traind run`, submitted with `traind slurm submit`. Mostly tests/supervisor/fixture_job.py
(torch-free, one deterministic integer per step, so "resumed at the next step, nothing lost or
repeated, same final value" is checked exactly); the preemption test runs traind.jobs.examples.tiny.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cluster.helpers import FIXTURE, ROOT, emergency_step, wait_until
from tests.supervisor.fixture_job import advance


pytestmark = [pytest.mark.slurm, pytest.mark.slow]

# Small KillWait/GraceTime and fast requeue (cred_expire + sched_interval) keep each test short.
CLUSTER_ENV = {"TRAIND_SLURM_KILLWAIT": "10", "TRAIND_SLURM_GRACETIME": "20", "TRAIND_SLURM_CRED_EXPIRE": "10"}


def _cluster_up() -> bool:
    return shutil.which("scontrol") is not None and "is UP" in subprocess.run(
        ["scontrol", "ping"], capture_output=True, text=True).stdout


@pytest.fixture(scope="session")
def slurm_cluster():
    if os.geteuid() != 0:
        pytest.skip("the SLURM tests start slurmctld/slurmd/munged and need root")
    was_up = _cluster_up()
    out = subprocess.run(["bash", str(ROOT / "scripts" / "slurm-start.sh")], capture_output=True, text=True,
                         env={**os.environ, **CLUSTER_ENV}, timeout=300)
    assert out.returncode == 0, f"scripts/slurm-start.sh failed:\n{out.stdout}\n{out.stderr}"
    yield
    if not was_up:  # leave a cluster someone else started alone
        subprocess.run(["bash", str(ROOT / "scripts" / "slurm-stop.sh")], capture_output=True, timeout=120)


@pytest.fixture
def jobs_to_cancel():
    ids: list[str] = []
    yield ids
    for jid in ids:  # a failed test must not leave work on the node for the next one
        subprocess.run(["scancel", jid], capture_output=True)


def write_spec(tmp_path: Path, name: str, steps: int, *, step_seconds: float = 0.1, grace: float = 15) -> Path:
    spec = tmp_path / f"{name}.yaml"
    spec.write_text(json.dumps({
        "name": name, "run_dir": "run", "preemption": {"grace_seconds": grace},
        "command": [sys.executable, str(FIXTURE), "--steps", str(steps), "--every", "20",
                    "--step-seconds", str(step_seconds)],
        "restart": {"max_restarts": 0}}))
    return spec


def submit(spec: Path, *options: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    out = subprocess.run([sys.executable, "-m", "traind", "slurm", "submit", str(spec), *options],
                         capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def show(jid: str) -> dict:
    out = subprocess.run(["scontrol", "show", "job", "-o", jid], capture_output=True, text=True)
    return dict(w.split("=", 1) for w in out.stdout.split() if "=" in w)


def steps_done(run_dir: Path) -> list[int]:
    try:
        return [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    except FileNotFoundError:
        return []


def expected_value(steps: int) -> int:
    x = 0
    for step in range(1, steps + 1):
        x = advance(x, step)
    return x


def assert_finished_exactly(run_dir: Path, steps: int) -> None:
    assert steps_done(run_dir) == list(range(1, steps + 1)), "a step was lost or repeated across the requeue"
    assert json.loads((run_dir / "result.json").read_text()) == {"step": steps, "x": expected_value(steps)}


def test_time_limit_warning_checkpoints_requeues_and_resumes(slurm_cluster, tmp_path, jobs_to_cancel):
    steps = 350                              # 35 s of work; the USR1 comes 0-30 s into a 60 s limit
    spec = write_spec(tmp_path, "tlimit", steps)
    jid = submit(spec, "--time", "1", "--lead", "30")
    jobs_to_cancel.append(jid)
    wait_until(lambda: int(show(jid).get("Restarts", 0)) >= 1, 75, "the job to requeue itself")
    # Every rerun gets the same 60 s and would be warned again at the same point; give the rerun
    # room to finish, so the test ends after exactly one requeue.
    subprocess.run(["scontrol", "update", f"JobId={jid}", "TimeLimit=5"], check=True)
    wait_until(lambda: show(jid).get("JobState") == "COMPLETED", 90, "the rerun to finish")

    run_dir = tmp_path / "run"
    log = (run_dir / f"slurm-{jid}.out").read_text()
    assert "SLURM_RESTART_COUNT=0 (first run)" in log
    assert f"SLURM job {jid} stopped by time_limit" in log
    assert f"requeued SLURM job {jid}" in log
    assert "SLURM_RESTART_COUNT=1 (rerun after 1 requeue(s))" in log
    first, rerun = log.split("SLURM_RESTART_COUNT=1 (rerun", 1)
    emergency = emergency_step(first)
    assert f"resuming from step {emergency}" in rerun and f"from step {emergency}" in rerun
    assert "succeeded" in rerun
    assert_finished_exactly(run_dir, steps)


def test_preemption_by_high_partition_checkpoints_requeues_and_resumes(slurm_cluster, tmp_path, jobs_to_cancel):
    """The real example job (traind.jobs.examples.tiny, torch) preempted by a job of partition "high"."""
    steps = 6000                              # ~20-30 s of training on one core
    spec = tmp_path / "victim.yaml"
    spec.write_text(json.dumps({
        "name": "victim", "workdir": str(ROOT), "run_dir": str(tmp_path / "run"),
        "command": [sys.executable, "-m", "traind.jobs.examples.tiny", "--max-steps", str(steps), "--every-steps", "1000"],
        "env": {"OMP_NUM_THREADS": "1"}, "preemption": {"grace_seconds": 15}, "restart": {"max_restarts": 0}}))
    jid = submit(spec, "--time", "5")
    jobs_to_cancel.append(jid)
    run_dir = tmp_path / "run"
    wait_until(lambda: len(steps_done(run_dir)) >= 200, 60, "the victim to make progress")
    high = subprocess.run(["sbatch", "--parsable", "-p", "high", "-c", "8", "-t", "1",
                           "-o", str(tmp_path / "high.out"), "--wrap", "sleep 2"],
                          capture_output=True, text=True, check=True).stdout.strip()
    jobs_to_cancel.append(high)
    wait_until(lambda: show(jid).get("JobState") == "COMPLETED", 120, "the victim to rerun and finish")
    assert show(high).get("JobState") == "COMPLETED"

    log = (run_dir / f"slurm-{jid}.out").read_text()
    assert f"SLURM job {jid} stopped by preemption" in log
    assert f"requeued SLURM job {jid}" in log and "SLURM_RESTART_COUNT=1" in log
    first, rerun = log.split("SLURM_RESTART_COUNT=1 (rerun", 1)
    emergency = emergency_step(first)
    assert 200 <= emergency < steps and f"resuming from step {emergency}" in rerun
    assert steps_done(run_dir) == list(range(1, steps + 1)), "a step was lost or repeated across the requeue"
    assert (run_dir / "checkpoints" / f"step-{steps:09d}" / "MANIFEST.json").is_file()


def test_scancel_checkpoints_and_does_not_requeue(slurm_cluster, tmp_path, jobs_to_cancel):
    spec = write_spec(tmp_path, "cancelme", 10_000, grace=8)
    jid = submit(spec, "--time", "5")
    jobs_to_cancel.append(jid)
    # the same run dir again while the first job is queued: refused, one line, exit 2
    again = subprocess.run([sys.executable, "-m", "traind", "slurm", "submit", str(spec)],
                           capture_output=True, text=True)
    assert again.returncode == 2 and f"already used by queued SLURM job {jid}" in again.stderr
    run_dir = tmp_path / "run"
    wait_until(lambda: len(steps_done(run_dir)) >= 10, 40, "the job to make progress")
    subprocess.run(["scancel", jid], check=True)
    wait_until(lambda: show(jid).get("JobState") in ("CANCELLED", "COMPLETED", "FAILED"), 30, "the job to end")

    log = (run_dir / f"slurm-{jid}.out").read_text()
    assert "stopped by cancelled" in log and "not requeuing" in log
    step = emergency_step(log)
    assert (run_dir / "checkpoints" / f"step-{step:09d}" / "MANIFEST.json").is_file()
    assert show(jid).get("Restarts") == "0" and "requeued" not in log


def test_array_task_requeues_itself_by_array_id(slurm_cluster, tmp_path, jobs_to_cancel):
    """A plain batch script (no supervisor): traind.cluster.slurm detects the array task and requeues it."""
    script = tmp_path / "task.sh"
    script.write_text(
        "#!/bin/bash\n"
        f"cd {ROOT}\n"
        "if [ \"${SLURM_RESTART_COUNT:-0}\" = 0 ]; then\n"
        f"  exec {sys.executable} -c 'from traind.cluster import slurm; j = slurm.detect(); "
        "print(j.describe()); print(slurm.requeue(j).message)'\n"
        "fi\n"
        "echo \"rerun: task ${SLURM_ARRAY_TASK_ID} restart ${SLURM_RESTART_COUNT}\"\n")
    out = subprocess.run(["sbatch", "--parsable", "--requeue", "--open-mode=append", "--array=3",
                          "-o", str(tmp_path / "task-%A_%a.out"), str(script)],
                         capture_output=True, text=True, check=True)
    array_id = out.stdout.strip()
    jobs_to_cancel.append(array_id)
    log_path = tmp_path / f"task-{array_id}_3.out"
    wait_until(lambda: log_path.exists() and "rerun: task 3 restart 1" in log_path.read_text(), 60,
               "the array task to rerun")
    log = log_path.read_text()
    assert f"array task {array_id}_3" in log and f"requeued SLURM job {array_id}_3" in log
