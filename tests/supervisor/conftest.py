import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

HERE = Path(__file__).resolve().parent
FIXTURE_JOB = HERE / "fixture_job.py"
REPO = HERE.parent.parent


def write_spec(tmp_path: Path, *, job_args=(), command=None, **sections) -> Path:
    spec = {"name": "fx", "command": command or [sys.executable, str(FIXTURE_JOB), *map(str, job_args)],
            "run_dir": "run", "env": {"PYTHONPATH": str(REPO)},
            "restart": {"backoff": {"initial_seconds": 0.05, "max_seconds": 0.2}}}
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(spec.get(key), dict):
            spec[key] = {**spec[key], **value}
        else:
            spec[key] = value
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def start_traind(*args, cwd=None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "traind", *map(str, args)], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})


def traind(*args, timeout=60, cwd=None) -> subprocess.CompletedProcess:
    p = start_traind(*args, cwd=cwd)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop(p)
        out, err = p.communicate()
        raise AssertionError(f"traind {args} did not finish in {timeout}s:\n{err}")
    return subprocess.CompletedProcess(p.args, p.returncode, out, err)


def stop(p: subprocess.Popen) -> None:
    """SIGTERM first, so the supervisor stops its child group too; SIGKILL if that takes too long."""
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


@pytest.fixture
def reap():
    """Processes a test started; any still alive at the end are stopped (tests must not leak)."""
    procs = []
    yield procs.append
    for p in procs:
        stop(p)
