"""Issue 21's table: each framework's job under `traind run`, stopped mid-run by SIGTERM and by
SIGUSR1 to the supervisor; exit code, steps lost (the last step trained minus the step of the
checkpoint the rerun resumes from) and where the rerun resumes. One row per job and signal.

    python benchmarks/bench_frameworks_stop.py [--only hf,accelerate,...]
"""
import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
PY = sys.executable


def jobs(run_dir: Path) -> dict:
    return {
        "torchrun script, own format (2 ranks)": (
            [PY, "-m", "traind.jobs.examples.torchrun_traind", str(run_dir)], 2, 60),
        "HF Trainer, GPT-2 (1 rank)": (
            [PY, "-m", "traind.jobs.examples.hf_gpt2", "--output-dir", str(run_dir / "out"), "--max-steps", "120"], 1, 20),
        "HF Trainer, GPT-2 (2 ranks)": (
            [PY, "-m", "traind.jobs.examples.hf_gpt2", "--output-dir", str(run_dir / "out"), "--max-steps", "120"], 2, 20),
        "accelerate loop (1 rank)": (
            [PY, "-m", "traind.jobs.examples.accelerate_loop", "--project-dir", str(run_dir), "--max-steps", "300"], 1, 60),
        "accelerate loop (2 ranks)": (
            [PY, "-m", "traind.jobs.examples.accelerate_loop", "--project-dir", str(run_dir), "--max-steps", "300"], 2, 60),
        "Lightning + traind.lightning.Checkpointing (1 rank)": (
            [PY, "-m", "traind.jobs.examples.lightning_job", "--max-steps", "600"], 1, 60),
    }


def last_step(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    steps = [json.loads(line)["step"] for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    return steps[-1] if steps else 0


def traind(spec: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAIND_")}
    return subprocess.Popen([PY, "-m", "traind", "run", str(spec)], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def one(name: str, command, ranks: int, at: int, sig, tmp: Path) -> dict:
    run_dir = tmp / re.sub(r"\W+", "-", name) / sig.name
    body = {"name": "bench", "command": command, "workdir": str(REPO), "run_dir": str(run_dir),
            "env": {"OMP_NUM_THREADS": "1"}, "restart": {"max_restarts": 0}, "preemption": {"grace_seconds": 60}}
    if ranks > 1:
        body["distributed"] = {"nproc_per_node": ranks}
    spec = run_dir.parent / f"{sig.name}.yaml"
    spec.parent.mkdir(parents=True, exist_ok=True)
    spec.write_text(yaml.safe_dump(body))
    proc = traind(spec)
    deadline = time.monotonic() + 300
    while last_step(run_dir) < at and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    sent = time.monotonic()
    proc.send_signal(sig)
    proc.communicate(timeout=120)
    took = time.monotonic() - sent
    trained = last_step(run_dir)
    rerun = traind(spec)                   # its spawn line names the resume point; then stop it
    resumed = None
    for line in rerun.stdout:
        m = re.search(r"resuming from step (\d+)", line) or re.search(r"no checkpoint in traind's store", line)
        if m:
            resumed = int(m.group(1)) if m.groups() else 0
            break
    rerun.send_signal(signal.SIGTERM)
    rerun.communicate(timeout=120)
    return {"job": name, "signal": sig.name, "exit": proc.returncode, "stop_seconds": round(took, 2),
            "trained_to": trained, "rerun_resumes_at": resumed,
            "steps_lost": None if resumed is None else trained - resumed}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default="", help="comma-separated words that select jobs by name")
    a = ap.parse_args()
    words = [w.lower() for w in a.only.split(",") if w]
    with tempfile.TemporaryDirectory() as tmp:
        rows = []
        for name, (command, ranks, at) in jobs(Path(tmp) / "x").items():
            if words and not any(w in name.lower() for w in words):
                continue
            for sig in (signal.SIGTERM, signal.SIGUSR1):
                cmd = [c.replace(str(Path(tmp) / "x"), str(Path(tmp) / re.sub(r"\W+", "-", name) / sig.name))
                       for c in command]
                rows.append(one(name, cmd, ranks, at, sig, Path(tmp)))
                r = rows[-1]
                print(f"{r['job']:<52} {r['signal']:<8} exit {r['exit']:<4} stop {r['stop_seconds']:>5.2f} s  "
                      f"trained to {r['trained_to']:>4}  rerun resumes at {r['rerun_resumes_at']}  "
                      f"steps lost {r['steps_lost']}", flush=True)
    lost = [r["steps_lost"] for r in rows]
    print(f"{len(rows)} stops: exit 75 in {sum(r['exit'] == 75 for r in rows)}, steps lost max "
          f"{max((x for x in lost if x is not None), default=None)}")


if __name__ == "__main__":
    main()
