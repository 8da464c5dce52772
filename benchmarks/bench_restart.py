"""Crash -> training again: cold, with a warm spare (issue 14), and with the memory tier + the
spare (issue 23), side by side in one run; and what the memory tier costs the training loop.

Run by hand (not a test):  python benchmarks/bench_restart.py [--restarts 5]

For the tiny example and for the large one at ~0.5 GiB of model + Adam state, under `traind run`
with no backoff: the child is SIGKILLed `--restarts` times, each time just after a periodic
checkpoint (with the tier: just after a memory-tier commit) and (with the spare) once the spare is
ready; "restart -> first step" is from the kill to the end of the first step the new attempt
finishes (its metrics.jsonl line). Then the large job runs without and with the memory tier at its
default interval, alternately: the mean step time with the tier over the mean without. Prints the
medians, the spare's RSS, and last the lines
    restart -> first step: spare X s, cold Y s, ratio Z      (the tiny job)
    crash -> first step (S GiB): memory tier + spare X s, spare Y s, cold Z s
    memory tier every K steps: training pays P % of step time; steps lost per crash max M over N crashes
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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from traind.store import memory_tier                                       # noqa: E402
from traind.supervisor.memory import MemoryTierSpec                        # noqa: E402

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


def newest_in_memory(run_dir: Path) -> int:
    steps = [int(p.name.split("-")[1]) for p in memory_tier.tier_dir(run_dir).glob("checkpoints/step-*")]
    return max(steps, default=0)


def spawned_steps(run_dir: Path) -> list:
    rows = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines() if '"spawned"' in line]
    return [r.get("checkpoint_step") or 0 for r in rows]


def measure(tmp: Path, name: str, command: list[str], spare: bool, restarts: int, every: int,
            memory: int | None = None) -> tuple[list, dict, list]:
    """Restart times, the spare's summary, and (with the tier) the steps each crash lost."""
    run_dir = tmp / f"{name}-{'spare' if spare else 'cold'}{'-tier' if memory else ''}"
    spec = tmp / f"{run_dir.name}.yaml"
    spec.write_text(yaml.safe_dump({
        "name": name, "command": command, "workdir": str(REPO), "run_dir": str(run_dir), "env": {"OMP_NUM_THREADS": "1"},
        "restart": {"warm_spare": spare, "max_restarts": restarts + 5,
                    "backoff": {"initial_seconds": 0, "max_seconds": 0, "jitter": 0}},
        "checkpoint": {"memory": {"every_steps": memory}} if memory else {},
        "health": {"hang_timeout_seconds": 600}}))
    p = subprocess.Popen([sys.executable, "-m", "traind", "run", str(spec)], env=ENV,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    times, spare_info, lost = [], {}, []
    try:
        for i in range(restarts):
            def ready():
                s = status(run_dir)
                hb, ck = s.get("last_heartbeat") or {}, s.get("last_checkpoint") or {}
                spare_ok = not spare or (s.get("spare") or {}).get("ready")
                saved = newest_in_memory(run_dir) if memory else (ck.get("step") or 0)
                new_ckpt = saved >= (hb.get("step") or 0) - every // 2 > 0
                return s if s.get("state") == "running" and s.get("attempt") == i + 1 and spare_ok \
                    and saved > 0 and new_ckpt else None
            s = wait_for(ready)
            spare_info = s.get("spare") or spare_info
            t_kill = time.time()
            os.kill(s["pid"], signal.SIGKILL)
            crashed = last_step(run_dir)
            times.append(first_step_after(run_dir, t_kill) - t_kill)
            lost.append(crashed - spawned_steps(run_dir)[i + 1])
    finally:
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=300)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.endswith("}")]
    steps = [b["time"] - a["time"] for a, b in zip(rows, rows[1:]) if b["step"] == a["step"] + 1]
    return times, {**spare_info, "step_seconds": statistics.median(steps)}, lost


def last_step(run_dir: Path) -> int:
    step = 0
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        try:
            step = json.loads(line)["step"]
        except (ValueError, KeyError):
            pass
    return step


def tier_cost(tmp: Path, command: list[str], every: int, steps: int, rounds: int = 2) -> tuple[float, float, float]:
    """Mean step time of the large job under `traind run` without and with the memory tier every
    `every` steps, runs alternating (without, with, without, ...); and, within the runs with it,
    the extra time of the step a memory save falls in over the median step (robust to the machine
    drifting between runs): (mean without, mean with, extra seconds per save)."""
    means: dict[bool, list[float]] = {False: [], True: []}
    extra: list[float] = []
    for i in range(2 * rounds + 1):
        tier = i % 2 == 1
        run_dir = tmp / f"cost-{i}"
        spec = tmp / f"cost-{i}.yaml"
        spec.write_text(yaml.safe_dump({
            "name": f"cost{i}", "command": [*command, "--max-steps", str(steps)], "workdir": str(REPO),
            "run_dir": str(run_dir), "env": {"OMP_NUM_THREADS": "1"},
            "checkpoint": {"memory": {"every_steps": every}} if tier else {}}))
        subprocess.run([sys.executable, "-m", "traind", "run", str(spec)], env=ENV, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        times = [b["time"] - a["time"] for a, b in zip(rows, rows[1:])][2:]    # the first steps warm up
        means[tier].append(sum(times) / len(times))
        if tier:       # rows[j] is step j + 1; the save at step s (s % every == 0) is paid in step s + 1
            after = [rows[s]["time"] - rows[s - 1]["time"] for s in range(every, len(rows)) if s % every == 0]
            others = [rows[j]["time"] - rows[j - 1]["time"] for j in range(3, len(rows)) if j % every != 0]
            extra += [a - statistics.median(others) for a in after]
    return statistics.mean(means[False]), statistics.mean(means[True]), statistics.median(extra)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--restarts", type=int, default=5)
    ap.add_argument("--cost-steps", type=int, default=60, help="steps of each run measuring the tier's cost")
    args = ap.parse_args()
    jobs = {
        "tiny": ([sys.executable, "-m", "traind.jobs.examples.tiny", "--max-steps", "100000", "--every-steps", "20",
                  "--step-seconds", "0.01"], 20),
        # 3 x Linear(3072) + AdamW: ~0.42 GiB params+grads-free state + Adam moments ~ 0.5 GiB checkpoint
        "large-0.5GiB": ([sys.executable, "-m", "traind.jobs.examples.large", "--max-steps", "100000", "--every-steps",
                          "2", "--width", "3072", "--layers", "4"], 2),
    }
    results, lost = {}, []
    k = MemoryTierSpec().every_steps
    large = "large-0.5GiB"
    with tempfile.TemporaryDirectory(prefix="traind-bench-restart-") as tmp:
        for name, (command, every) in jobs.items():
            for spare, memory in ((False, None), (True, None), (True, every if name == large else None)):
                if (spare, memory) in ((key[1], key[2]) for key in results if key[0] == name):
                    continue
                if memory:     # disk saves far apart, as the tier is meant to be used
                    command = [("50" if prev == "--every-steps" else c) for prev, c in zip(["", *command], command)]
                times, info, crash_lost = measure(Path(tmp), name, command, spare, args.restarts, every, memory)
                results[(name, spare, memory)] = statistics.median(times)
                lost += crash_lost if memory else []
                extra = f", spare RSS {info['rss_bytes'] / 2**20:.0f} MiB" if spare and info.get("rss_bytes") else ""
                extra += f"; a training step takes {info['step_seconds']:.3f} s (median)"
                kind = ("tier+spare" if memory else "spare") if spare else "cold"
                print(f"{name:13s} {kind:10s}: restart -> first step median {results[(name, spare, memory)]:.3f} s "
                      f"over {len(times)} restarts ({', '.join(f'{t:.2f}' for t in times)}){extra}", flush=True)
        without, with_tier, per_save = tier_cost(Path(tmp), [sys.executable, "-m", "traind.jobs.examples.large", "--every-steps",
                                                   "0", "--width", "3072", "--layers", "4"], k, args.cost_steps)
        print(f"{large}: mean step {without:.3f} s without the memory tier, {with_tier:.3f} s with it every {k} steps "
              f"(runs alternating: {100 * (with_tier - without) / without:+.1f} %); the step a memory save falls in "
              f"takes {per_save:+.3f} s longer than the median step", flush=True)
        gib = sum(p.stat().st_size for p in Path(tmp).glob(f"{large}-cold/checkpoints/step-*/state.pt")) / 2**30 \
            / max(1, len(list(Path(tmp).glob(f"{large}-cold/checkpoints/step-*"))))
    for name in jobs:
        cold, warm = results[(name, False, None)], results[(name, True, None)]
        print(f"{name}: cold {cold:.3f} s, spare {warm:.3f} s: {cold / warm:.1f}x faster")
    cold, warm = results[("tiny", False, None)], results[("tiny", True, None)]
    print(f"restart -> first step: spare {warm:.3f} s, cold {cold:.3f} s, ratio {cold / warm:.1f}")
    tier = results[(large, True, jobs[large][1])]
    print(f"crash -> first step ({gib:.2f} GiB): memory tier + spare {tier:.3f} s, "
          f"spare {results[(large, True, None)]:.3f} s, cold {results[(large, False, None)]:.3f} s")
    print(f"memory tier every {k} steps: training pays {100 * per_save / (k * without):.1f} % of step time; "
          f"steps lost per crash max {max(lost)} over {len(lost)} crashes")


if __name__ == "__main__":
    main()
