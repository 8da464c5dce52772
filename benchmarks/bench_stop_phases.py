"""Signal -> exit 75, per phase of a run: the quick-start Trainer job under `traind run`, SIGTERM
in start-up, in a training step, and in a validation (8 batches of 0.5 s), several stops each.

    python benchmarks/bench_stop_phases.py [--stops 3]

Prints, per phase: the median and the worst time from the SIGTERM to `traind run`'s exit, the
exit codes, and the step of the resume point against the last completed step."""
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
ARGS = ["--max-steps", "100000", "--every-steps", "40", "--val-every", "50", "--log-every", "0", "--workers", "2",
        "--val-batch-seconds", "0.5"]


def last_step(run_dir: Path) -> int:
    try:
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
        return json.loads(lines[-1])["step"] if lines else 0
    except (OSError, ValueError, KeyError):
        return 0


def resume_step(run_dir: Path) -> int | None:
    sys.path.insert(0, str(REPO))
    from traind.store import format as fmt
    info, _ = fmt.latest_valid(run_dir / "checkpoints")
    return None if info is None else info.step


def one_stop(tmp: Path, phase: str, i: int) -> tuple[float, int, int | None, int]:
    name = f"{phase.replace(' ', '-')}-{i}"          # a job name has no spaces
    run_dir, spec = tmp / name, tmp / f"{name}.yaml"
    spec.write_text(yaml.safe_dump({
        "name": name, "command": [sys.executable, "-m", "traind.jobs.examples.tiny", *ARGS],
        "workdir": str(REPO), "run_dir": str(run_dir), "env": {"OMP_NUM_THREADS": "1"},
        "restart": {"max_restarts": 0}, "preemption": {"grace_seconds": 60}}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAIND_")}
    proc = subprocess.Popen([sys.executable, "-m", "traind", "run", str(spec)], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    if phase == "start-up":
        time.sleep(0.5)
    elif phase == "training step":
        while last_step(run_dir) < 10 and time.monotonic() < deadline:
            time.sleep(0.005)
    elif phase == "validation":
        while last_step(run_dir) < 49 and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(1.0)                       # step 50 done; its validation (4 s) runs
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(180)
    return time.monotonic() - sent, code, resume_step(run_dir), last_step(run_dir)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--stops", type=int, default=3)
    args = p.parse_args()
    print(f"{'phase':<15} {'median':>8} {'worst':>8}  exits   resume point vs last completed step")
    with tempfile.TemporaryDirectory(prefix="traind-stops-") as tmp:
        for phase in ("start-up", "training step", "validation"):
            runs = [one_stop(Path(tmp), phase, i) for i in range(args.stops)]
            times = [r[0] for r in runs]
            points = ", ".join(f"{r[2]}/{r[3]}" for r in runs)
            print(f"{phase:<15} {statistics.median(times):>7.2f}s {max(times):>7.2f}s  "
                  f"{sorted({r[1] for r in runs})}  {points}", flush=True)


if __name__ == "__main__":
    main()
