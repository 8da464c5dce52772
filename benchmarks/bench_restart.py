"""Crash -> training again, with and without a warm spare (issue 14), side by side in one run.

Run by hand (not a test):  python benchmarks/bench_restart.py [--restarts 5]

For the tiny example and for the large one at ~0.5 GiB of model + Adam state, under `traind run`
with no backoff: the child is SIGKILLed `--restarts` times, each time just after a periodic
checkpoint and (with the spare) once the spare is ready; "restart -> first step" is from the
kill to the end of the first step the new attempt finishes (its metrics.jsonl line). Prints the
medians, the spare's RSS, and last the line
    restart -> first step: spare X s, cold Y s, ratio Z      (the tiny job)
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def status(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / "status.json").read_text())
    except (OSError, ValueError):
        return {}


def wait_for(pred, timeout=300.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = pred()
        if value:
            return value
        time.sleep(0.01)
    raise SystemExit("benchmark: timed out")


def first_step_after(run_dir: Path, t_kill: float) -> float:
    def find():
        for line in (run_dir / "metrics.jsonl").read_text().splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if row.get("time", 0) > t_kill:
                return row["time"]
        return None
    return wait_for(find)


def measure(tmp: Path, name: str, command: list[str], spare: bool, restarts: int, every: int) -> tuple[list, dict]:
    run_dir = tmp / f"{name}-{'spare' if spare else 'cold'}"
    spec = tmp / f"{run_dir.name}.yaml"
    spec.write_text(yaml.safe_dump({
        "name": name, "command": command, "workdir": str(REPO), "run_dir": str(run_dir), "env": {"OMP_NUM_THREADS": "1"},
        "restart": {"warm_spare": spare, "max_restarts": restarts + 5,
                    "backoff": {"initial_seconds": 0, "max_seconds": 0, "jitter": 0}},
        "health": {"hang_timeout_seconds": 600}}))
    p = subprocess.Popen([sys.executable, "-m", "traind", "run", str(spec)], env=ENV,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    times, spare_info = [], {}
    try:
        for i in range(restarts):
            def ready():
                s = status(run_dir)
                hb, ck = s.get("last_heartbeat") or {}, s.get("last_checkpoint") or {}
                spare_ok = not spare or (s.get("spare") or {}).get("ready")
                new_ckpt = (ck.get("step") or 0) >= (hb.get("step") or 0) - every // 2 > 0
                return s if s.get("state") == "running" and s.get("attempt") == i + 1 and spare_ok \
                    and (ck.get("step") or 0) > 0 and new_ckpt else None
            s = wait_for(ready)
            spare_info = s.get("spare") or spare_info
            t_kill = time.time()
            os.kill(s["pid"], signal.SIGKILL)
            times.append(first_step_after(run_dir, t_kill) - t_kill)
    finally:
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=300)
    return times, spare_info


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--restarts", type=int, default=5)
    args = ap.parse_args()
    jobs = {
        "tiny": ([sys.executable, "-m", "traind.jobs.examples.tiny", "--max-steps", "100000", "--every-steps", "20",
                  "--step-seconds", "0.01"], 20),
        # 3 x Linear(3072) + AdamW: ~0.42 GiB params+grads-free state + Adam moments ~ 0.5 GiB checkpoint
        "large-0.5GiB": ([sys.executable, "-m", "traind.jobs.examples.large", "--max-steps", "100000", "--every-steps",
                          "2", "--width", "3072", "--layers", "4"], 2),
    }
    results = {}
    with tempfile.TemporaryDirectory(prefix="traind-bench-restart-") as tmp:
        for name, (command, every) in jobs.items():
            for spare in (False, True):
                times, info = measure(Path(tmp), name, command, spare, args.restarts, every)
                results[(name, spare)] = statistics.median(times)
                extra = f", spare RSS {info['rss_bytes'] / 2**20:.0f} MiB" if spare and info.get("rss_bytes") else ""
                print(f"{name:13s} {'spare' if spare else 'cold ':5s}: restart -> first step median "
                      f"{results[(name, spare)]:.3f} s over {len(times)} restarts "
                      f"({', '.join(f'{t:.2f}' for t in times)}){extra}", flush=True)
    for name in jobs:
        cold, warm = results[(name, False)], results[(name, True)]
        print(f"{name}: cold {cold:.3f} s, spare {warm:.3f} s: {cold / warm:.1f}x faster")
    cold, warm = results[("tiny", False)], results[("tiny", True)]
    print(f"restart -> first step: spare {warm:.3f} s, cold {cold:.3f} s, ratio {cold / warm:.1f}")


if __name__ == "__main__":
    main()
