"""Helpers for the job-side tests: launch example jobs as real processes, watch their progress,
interrupt them, and compare runs bit for bit."""
from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

from traind.jobs.runtime.session import TIMING_KEYS

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent


def job_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAIND_")}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
    env.update({k: str(v) for k, v in extra.items()})
    return env


class ZygoteProc:
    """A Popen look-alike for a child forked by the warm zygote (tests/jobs/zygote.py)."""

    def __init__(self, pid: int, out: Path, exited: threading.Event, statuses: dict) -> None:
        self.pid, self._out, self._exited, self._statuses = pid, out, exited, statuses
        self.returncode = None

    def poll(self):
        if self.returncode is None and self._exited.is_set():
            self.returncode = os.waitstatus_to_exitcode(self._statuses[self.pid])
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def communicate(self, timeout=None):
        if not self._exited.wait(timeout):
            raise subprocess.TimeoutExpired(f"zygote child {self.pid}", timeout)
        self.poll()
        return self._out.read_text(errors="replace"), None


class Zygote:
    """Client of tests/jobs/zygote.py: start() forks a warm child instead of a cold interpreter."""

    def __init__(self, tmp_dir: Path) -> None:
        self.tmp_dir = tmp_dir
        self.proc = subprocess.Popen([sys.executable, str(HERE / "zygote.py")], cwd=REPO, env=job_env(),
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self._forked: queue.Queue = queue.Queue()
        self._exited: dict[int, threading.Event] = {}
        self._statuses: dict[int, int] = {}
        self._lock = threading.Lock()
        self._count = 0
        ready = json.loads(self.proc.stdout.readline() or b'{"ready": null}')
        if not ready.get("ready"):
            raise RuntimeError("the job-test zygote did not start")
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            msg = json.loads(line)
            if "pid" in msg:
                self._forked.put(msg["pid"])
            else:
                self._statuses[msg["exited"]] = msg["status"]
                self._event(msg["exited"]).set()

    def _event(self, pid: int) -> threading.Event:
        with self._lock:
            return self._exited.setdefault(pid, threading.Event())

    def start(self, module, argv, *, hold=None, new_session=False, function=None) -> ZygoteProc:
        with self._lock:
            self._count += 1
            out = self.tmp_dir / f"child-{self._count}.out"
            argv = list(argv) if function else [str(a) for a in argv]
            request = {"module": module, "argv": argv, "env": job_env(),
                       "cwd": str(REPO), "out": str(out), "hold": hold, "new_session": new_session,
                       "function": function}
            self.proc.stdin.write((json.dumps(request) + "\n").encode())
            self.proc.stdin.flush()
            pid = self._forked.get(timeout=30)
        return ZygoteProc(pid, out, self._event(pid), self._statuses)

    def close(self) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


ZYGOTE: Zygote | None = None     # set by conftest.py for the session


def start(module: str, *args, hold_saves: float | None = None, env=None, **popen):
    """`python -m module args` (optionally with every save held open `hold_saves` s), output
    captured. Forked from the warm zygote when possible; a cold interpreter when the caller needs
    its own environment or fds (the control-channel tests)."""
    if ZYGOTE is not None and env is None and set(popen) <= {"start_new_session"}:
        return ZYGOTE.start(module, args, hold=hold_saves, new_session=popen.get("start_new_session", False))
    assert hold_saves is None, "holding saves needs the zygote"
    return subprocess.Popen([sys.executable, "-m", module, *map(str, args)], cwd=REPO,
                            env=env or job_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, **popen)


def start_function(module: str, function: str, *args):
    """`module.function(*args)` in a job process (args: JSON values)."""
    if ZYGOTE is not None:
        return ZYGOTE.start(module, args, function=function)
    code = f"import {module} as m; m.{function}(*{list(args)!r})"
    return subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=job_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen, timeout: float = 120) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def metrics(run_dir, timing=False) -> list[dict]:
    """metrics.jsonl rows; without the timing fields unless asked (they differ run to run)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue        # a line torn by SIGKILL
        if not timing:
            for key in TIMING_KEYS:
                row.pop(key, None)
        rows.append(row)
    return rows


def last_step(run_dir) -> int:
    rows = metrics(run_dir)
    return rows[-1]["step"] if rows else 0


def wait_until(predicate, proc: subprocess.Popen, timeout: float = 60, interval: float = 0.002):
    """Poll until predicate() is true; fail if the process exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            raise AssertionError(f"job exited ({proc.returncode}) before the condition:\n{proc.communicate()[0]}")
        time.sleep(interval)
    proc.kill()
    raise AssertionError(f"timed out waiting; output:\n{proc.communicate()[0]}")


def saving_now(run_dir) -> bool:
    ckpt = Path(run_dir) / "checkpoints"
    return ckpt.is_dir() and any(p.name.startswith(".tmp-") for p in ckpt.iterdir())


def checkpoints(run_dir) -> list[Path]:
    ckpt = Path(run_dir) / "checkpoints"
    return sorted(p for p in ckpt.iterdir() if p.name.startswith("step-")) if ckpt.is_dir() else []


def final_state(run_dir) -> dict:
    from traind.jobs.engine.loading import load_state
    return load_state(run_dir)


def assert_identical(a, b, where="state"):
    """Recursive bit-for-bit equality of nested dicts/lists/tensors/plain values."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor), where
        assert a.dtype == b.dtype and a.shape == b.shape, where
        # compare the bytes: torch.equal on floats would call -0.0 == 0.0 and NaN != NaN
        assert torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8)), f"{where} differs"
    elif isinstance(a, dict):
        assert set(a) == set(b), f"{where}: keys {sorted(a)} != {sorted(b)}"
        for key in a:
            assert_identical(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_identical(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def assert_same_training(run_a, run_b, keys=("state_dict", "optimizer_states", "lr_schedulers",
                                             "MixedPrecision", "global_step", "data_position")):
    """Same per-step loss sequence (and every other metric but timing) and same final state."""
    rows_a, rows_b = metrics(run_a), metrics(run_b)
    assert [r["step"] for r in rows_b] == list(range(1, len(rows_b) + 1)), "steps lost or repeated"
    assert rows_a == rows_b
    state_a, state_b = final_state(run_a), final_state(run_b)
    for key in keys:
        assert_identical(state_a[key], state_b[key], key)
    return state_a, state_b


def sigterm_and_expect_75(proc: subprocess.Popen, run_dir) -> int:
    """SIGTERM; exit 75; the newest checkpoint is at the step the signal was acted on. Returns it."""
    proc.send_signal(signal.SIGTERM)
    code, out = finish(proc)
    assert code == 75, out
    acted = last_step(run_dir)
    newest = checkpoints(run_dir)[-1]
    manifest = json.loads((newest / "MANIFEST.json").read_text())
    assert manifest["step"] == acted, (manifest, out)
    assert f"emergency checkpoint at step {acted}" in out, out
    return acted


# --- jobs under `traind run` (the supervisor's own CLI, as users start it) ------------------------
def run_spec(tmp_path, name: str, run_dir, command: list, *, ranks: int = 1, **sections) -> str:
    """A spec for `command` under `traind run` (one thread per rank, no restart unless `sections`
    say otherwise; `ranks` > 1: a `distributed:` group), written to tmp_path/NAME.yaml."""
    import yaml
    body = {"name": name, "workdir": str(REPO), "run_dir": str(run_dir), "command": [str(c) for c in command],
            "env": {"OMP_NUM_THREADS": "1"}, "restart": {"max_restarts": 0}, "preemption": {"grace_seconds": 60},
            **sections}
    if ranks > 1:
        body["distributed"] = {"nproc_per_node": ranks}
    path = Path(tmp_path) / f"{name}.yaml"
    path.write_text(yaml.safe_dump(body))
    return str(path)


def traind_run(spec) -> subprocess.Popen:
    """`traind run SPEC`, its output (supervisor and job) captured."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAIND_")}
    return subprocess.Popen([sys.executable, "-m", "traind", "run", str(spec)], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def wait_for_step(proc, run_dir, step: int, timeout: float = 300) -> None:
    """Until metrics.jsonl reaches `step`; fails if the run ends first."""
    deadline = time.monotonic() + timeout
    while last_step(run_dir) < step:
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0][-3000:]
        time.sleep(0.005)


# --- the memory tier's crash campaign (issue 23) ---------------------------------------------------
def _events(run_dir) -> list[dict]:
    path = Path(run_dir) / "events.jsonl"
    rows = []
    for line in (path.read_text().splitlines() if path.exists() else []):
        try:
            rows.append(json.loads(line))
        except ValueError:
            pass
    return rows


def spawned(run_dir) -> list[dict]:
    """The supervisor's "spawned" events, one per attempt: checkpoint_step is the resume point."""
    return [e for e in _events(run_dir) if e.get("event") == "spawned"]


def _status(run_dir) -> dict:
    try:
        return json.loads((Path(run_dir) / "status.json").read_text())
    except (OSError, ValueError):
        return {}


def crash_campaign(proc, run_dir, crashes: int, rng, *, every: int, ranks: int = 1, timeout: float = 600) -> list[int]:
    """SIGKILL the trainer (or, for a group, one random rank) `crashes` times, each at a random step
    up to 2 x `every` past the attempt's resume point; returns the steps lost per crash: the last
    step the killed attempt finished (its metrics line) minus the step the next attempt resumes at."""
    lost = []
    for i in range(crashes):
        wait = time.monotonic() + timeout
        while len(spawned(run_dir)) < i + 1:
            assert proc.poll() is None and time.monotonic() < wait, proc.communicate()[0][-3000:]
            time.sleep(0.01)
        resume = spawned(run_dir)[i].get("checkpoint_step") or 0
        wait_for_step(proc, run_dir, resume + rng.randint(1, 2 * every), timeout)
        status = _status(run_dir)
        pids = [r["pid"] for r in status.get("ranks") or []] if ranks > 1 else [status["pid"]]
        assert status.get("attempt") == i + 1 and all(pids), status
        os.kill(rng.choice(pids), signal.SIGKILL)
        crash = last_step(run_dir)
        while len(spawned(run_dir)) < i + 2:        # until the next attempt; the killed one writes no more
            crash = max(crash, last_step(run_dir))
            assert proc.poll() is None and time.monotonic() < wait, proc.communicate()[0][-3000:]
            time.sleep(0.005)
        lost.append(crash - (spawned(run_dir)[i + 1].get("checkpoint_step") or 0))
    return lost


def process_tree(pid: int) -> list[int]:
    """pid and every descendant, as a cgroup kill (`systemctl stop`, KillMode=control-group) or
    SLURM's signal to a step (`scancel`) reaches them all."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            todo += [int(c) for c in open(f"/proc/{p}/task/{p}/children").read().split()]
        except OSError:
            pass
    return out


def signal_all(pids, sig=signal.SIGTERM) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
