"""Fixtures for the service tests: a real `traind serve` process on a temp state dir, driven
through the real CLI; each job runs under the real `traind run`, and is the torch-free fake job
(fakejob.py) so it takes about a second."""
from __future__ import annotations

import json
import os
import threading
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def traind(*args, state_dir=None, check=False, **kw):
    cmd = [sys.executable, "-m", "traind", *args]
    if state_dir is not None:
        cmd += ["--state-dir", str(state_dir)]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, **kw)
    if check:
        assert out.returncode == 0, out.stderr
    return out


def write_spec(folder: Path, name: str, ledger: Path, steps=10, step_seconds=0.05, every=3, stop_seconds=0.0,
               **extra) -> Path:
    spec = {"name": name, "command": [sys.executable, str(HERE / "fakejob.py"), "--steps", str(steps),
                                      "--step-seconds", str(step_seconds), "--every", str(every),
                                      "--stop-seconds", str(stop_seconds), "--ledger", str(ledger)],
            "env": {"OMP_NUM_THREADS": "1"}, **extra}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def read_ledger(ledger: Path) -> list[dict]:
    return [json.loads(line) for line in ledger.read_text().splitlines()] if ledger.exists() else []


class Serve:
    """One `traind serve` process; start/kill/restart it like systemd would."""

    def __init__(self, state_dir: Path, slots: int = 2, extra_env: dict | None = None):
        self.state_dir, self.slots, self.extra_env = state_dir, slots, extra_env or {}
        self.proc: subprocess.Popen | None = None
        self.log = state_dir.parent / "serve.log"

    def start(self, *extra_args):
        # The daemon's default runner: the real `traind run` of this checkout.
        args = [sys.executable, "-m", "traind", "serve", "--state-dir", str(self.state_dir),
                "--slots", str(self.slots), *extra_args]
        env = dict(os.environ, OMP_NUM_THREADS="1", **self.extra_env)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        wait_for(lambda: (self.state_dir / "serve.json").exists() and
                 json.loads((self.state_dir / "serve.json").read_text())["pid"] == self.proc.pid,
                 what="daemon up")
        return self

    def kill9(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self, timeout=30) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def records(self) -> dict[str, dict]:
        jobs = self.state_dir / "jobs"
        out = {}
        for d in jobs.iterdir() if jobs.is_dir() else []:
            try:
                out[d.name] = json.loads((d / "job.json").read_text())
            except FileNotFoundError:
                pass
        return out

    def states(self) -> dict[str, str]:
        return {n: r["state"] for n, r in self.records().items()}

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def wait_for(cond, timeout=60.0, what="condition", interval=0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if cond():
                return
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            pass
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture
def serve(tmp_path):
    servers: list[Serve] = []

    def make(slots=2, extra_env=None) -> Serve:
        s = Serve(tmp_path / "state", slots, extra_env)
        servers.append(s)
        return s

    yield make
    for s in servers:
        if s.proc and s.proc.poll() is None:
            s.proc.send_signal(signal.SIGTERM)
            try:
                s.proc.wait(30)
            except subprocess.TimeoutExpired:
                s.proc.kill()
    # Jobs die with the daemon (PDEATHSIG); give stragglers a moment so tmp_path can go.
    time.sleep(0.2)


class PeakProcesses:
    """While open, samples the process table every 50 ms: `most` is the largest number of live
    processes whose command line holds `marker` (the fake jobs' training processes)."""

    def __init__(self, marker: bytes = b"fakejob.py") -> None:
        self.marker, self.most = marker, 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def alive(self) -> set[int]:
        found = set()
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                try:
                    with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                        cmd = f.read()
                    with open(f"/proc/{entry.name}/stat") as f:
                        zombie = f.read().rsplit(")", 1)[1].split()[0] == "Z"
                except OSError:
                    continue
                if self.marker in cmd and not zombie:
                    found.add(int(entry.name))
        return found

    def _sample(self) -> None:
        while not self._done.is_set():
            self.most = max(self.most, len(self.alive()))
            time.sleep(0.05)

    def __enter__(self) -> "PeakProcesses":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join()
