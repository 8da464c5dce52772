"""Helpers for the distributed tests: run jobs/examples/ddp.py under a real `traind run` with N
local ranks (gloo on CPU), watch it through status.json, interrupt it, and compare runs bit for bit."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import torch
import yaml

from tests.cluster.helpers import wait_until
from tests.jobs.jobhelpers import assert_identical as assert_equal   # bit for bit, bytes compared
from traind.jobs.commands.export import consolidated_state
from traind.jobs.runtime.session import TIMING_KEYS
from traind.store import format as fmt

REPO = Path(__file__).resolve().parents[2]


def env(**extra) -> dict:
    out = {k: v for k, v in os.environ.items() if not k.startswith(("TRAIND_", "SLURM_"))}
    out.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **{k: str(v) for k, v in extra.items()})
    return out


STEPS = 120      # the reference run's length: 3.75 epochs of 32 steps per rank


def write_spec(tmp: Path, *, max_steps=STEPS, every_steps=20, nproc=4, step_seconds=0.02, name="ddp",
               run_dir=None, command=None, **sections) -> Path:
    """A spec for the ddp example (or `command`) in tmp/NAME.yaml (run dir tmp/NAME unless given)."""
    spec = {"name": name, "workdir": str(REPO), "run_dir": str(run_dir or tmp / name),
            "command": command or [sys.executable, "-m", "traind.jobs.examples.ddp", "--max-steps", str(max_steps),
                                   "--every-steps", str(every_steps), "--step-seconds", str(step_seconds)],
            "env": {"OMP_NUM_THREADS": "1"},
            "distributed": {"nproc_per_node": nproc, **sections.pop("distributed", {})},
            "checkpoint": {"every_steps": every_steps, "keep_last": 2},
            "restart": {"max_restarts": 20, "backoff": {"initial_seconds": 0.2, "max_seconds": 1}},
            "preemption": {"grace_seconds": 60}, "health": {"hang_timeout_seconds": 120}}
    for key, value in sections.items():
        spec[key] = {**spec.get(key, {}), **value}
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def start(spec: Path, log: Path, *args, **env_extra) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "traind", "run", str(spec), *args], cwd=REPO,
                            env=env(**env_extra), stdout=open(log, "ab"), stderr=subprocess.STDOUT)


def run(spec: Path, log: Path, timeout=300, *args) -> int:
    proc = start(spec, log, *args)
    try:
        return proc.wait(timeout)
    finally:
        if proc.poll() is None:
            proc.kill()


def status(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / "status.json").read_text())
    except (OSError, ValueError):
        return {}


def wait_for(predicate, timeout: float, what: str):
    return wait_until(predicate, timeout, what, every=0.05)     # steps are short: poll often


def step_of(run_dir: Path) -> int:
    return ((status(run_dir).get("last_heartbeat") or {}).get("step")) or 0


def rank_pids(run_dir: Path) -> list[int]:
    return [r["pid"] for r in status(run_dir).get("ranks") or [] if r.get("pid") and r.get("exit") is None]


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def newest(run_dir: Path) -> Path:
    info, _ = fmt.latest_valid(run_dir / "checkpoints")
    assert info is not None, f"no valid checkpoint in {run_dir}"
    return info.path


def rank_files(ckpt: Path) -> list[dict]:
    return [torch.load(p, weights_only=True) for p in sorted(ckpt.glob("rank-*.pt"))]


def metrics(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING_KEYS} for line in lines]


def assert_same_state(a: Path, b: Path) -> None:
    """The two checkpoints hold the same model, optimizer, scheduler and per-rank RNG and data
    position, tensor for tensor, bit for bit."""
    sa, sb = consolidated_state(a), consolidated_state(b)
    assert sa["global_step"] == sb["global_step"]
    assert_equal(sa["state_dict"], sb["state_dict"], "state_dict")
    assert_equal(sa["optimizer_states"], sb["optimizer_states"], "optimizer_states")
    assert sa["lr_schedulers"] == sb["lr_schedulers"]
    ra, rb = rank_files(a), rank_files(b)
    assert len(ra) == len(rb)
    for x, y in zip(ra, rb):
        assert x["data_position"] == y["data_position"]
        assert_equal(x["rng_states"], y["rng_states"], f"rank {x['sharded']['rank']} rng_states")


def stop_group(sup: subprocess.Popen, sig=signal.SIGTERM, timeout=120) -> int:
    sup.send_signal(sig)
    return sup.wait(timeout)
