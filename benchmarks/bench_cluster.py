"""Preemption notice to safe exit, side by side for each spot provider, and a SLURM requeue round trip.

    python benchmarks/bench_cluster.py [--repeat 3] [--job fixture|tiny] [--slurm]

Spot: a fake metadata server on 127.0.0.1 posts the termination notice while `traind run` trains;
we time (a) notice posted -> supervisor exited 75 (what the cloud cares about: must fit the window),
(b) the supervisor's own log figure (notice seen -> emergency checkpoint committed), and print
both as a fraction of the provider's window (AWS 120 s, GCP 30 s, Azure 30 s). Poll interval 5 s
(the default), so (a) includes up to 5 s of waiting for the next poll.
--slurm (needs scripts/slurm-start.sh's cluster): one job with --time 1 --lead 30, timing USR1 ->
requeued -> rerun started, from the appended log.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.cluster.fakemeta import FakeMetadata  # noqa: E402

WINDOW = {"aws": 120.0, "gcp": 30.0, "azure": 30.0}
JOBS = {
    "fixture": [sys.executable, str(ROOT / "tests/supervisor/fixture_job.py"), "--steps", "1000000",
                "--every", "100", "--step-seconds", "0.02"],
    "tiny": [sys.executable, "-m", "traind.jobs.examples.tiny", "--max-steps", "1000000"],
}


def steps_done(run_dir: Path) -> int:
    try:
        return len((run_dir / "metrics.jsonl").read_text().splitlines())
    except FileNotFoundError:
        return 0


def one_spot_run(provider: str, job: str, poll: float) -> tuple[float, float | None, int]:
    with tempfile.TemporaryDirectory() as tmp, FakeMetadata(provider) as fake:
        spec = Path(tmp) / "spec.yaml"
        spec.write_text(json.dumps({
            "name": "bench", "run_dir": str(Path(tmp) / "run"), "workdir": str(ROOT), "command": JOBS[job],
            "env": {"OMP_NUM_THREADS": "1"},
            "preemption": {"spot": {"provider": provider, "base_url": fake.url, "poll_seconds": poll}}}))
        proc = subprocess.Popen([sys.executable, "-m", "traind", "run", str(spec)],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 120
        while steps_done(Path(tmp) / "run") < 20 and time.monotonic() < deadline:
            time.sleep(0.1)
        fake.preempt()
        t0 = time.monotonic()
        out, _ = proc.communicate(timeout=300)
        took = time.monotonic() - t0
    m = re.search(r"emergency checkpoint done in ([\d.]+) s", out)
    return took, (float(m.group(1)) if m else None), proc.returncode


def bench_spot(args) -> None:
    print(f"spot notice -> exit 75, job={args.job}, poll every {args.poll:g} s, best/median of {args.repeat}")
    print(f"{'provider':9} {'window':>7} {'notice->exit best':>18} {'median':>8} {'% window':>9} "
          f"{'seen->ckpt (log)':>17} {'exit codes':>11}")
    for provider in ("aws", "gcp", "azure"):
        runs = [one_spot_run(provider, args.job, args.poll) for _ in range(args.repeat)]
        took = [r[0] for r in runs]
        logged = [r[1] for r in runs if r[1] is not None]
        best, med = min(took), statistics.median(took)
        print(f"{provider:9} {WINDOW[provider]:6.0f}s {best:17.2f}s {med:7.2f}s {max(took) / WINDOW[provider]:8.1%} "
              f"{(min(logged) if logged else float('nan')):16.2f}s {','.join(str(r[2]) for r in runs):>11}")


def bench_slurm() -> None:
    with tempfile.TemporaryDirectory(dir="/tmp", ignore_cleanup_errors=True) as tmp:
        spec = Path(tmp) / "spec.yaml"
        spec.write_text(json.dumps({"name": "bench-slurm", "run_dir": str(Path(tmp) / "run"),
                                    "command": JOBS["fixture"][:3] + ["400", "--every", "50",
                                                                      "--step-seconds", "0.1"]}))
        jid = subprocess.run([sys.executable, "-m", "traind", "slurm", "submit", str(spec), "--time", "1",
                              "--lead", "30"], capture_output=True, text=True, check=True).stdout.strip()
        log = Path(tmp) / "run" / f"slurm-{jid}.out"
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and "SLURM_RESTART_COUNT=1 (rerun" not in (
                    log.read_text() if log.exists() else ""):
                time.sleep(0.5)
            text = log.read_text()
        finally:
            subprocess.run(["scancel", jid], capture_output=True)
            for _ in range(60):  # let the cancelled rerun exit before its run dir is removed
                if jid not in subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True,
                                             text=True).stdout.split():
                    break
                time.sleep(0.5)
    starts = re.findall(r"\[traind slurm\] (\S+)Z job", text)
    cancelled = re.search(r"CANCELLED AT (\S+) DUE TO JOB REQUEUE", text)
    if len(starts) < 2 or not cancelled:
        print("slurm: no requeue seen within 120 s\n" + text[-2000:])
        return
    t = [time.mktime(time.strptime(s, "%Y-%m-%dT%H:%M:%S")) for s in (starts[0], cancelled.group(1), starts[1])]
    print(f"slurm (--time 1 --lead 30): USR1+checkpoint+requeue at {t[1] - t[0]:.0f} s into the run; "
          f"requeued -> rerun started {t[2] - t[1]:.0f} s (cred_expire 10 s + sched_interval 5 s)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--job", choices=sorted(JOBS), default="fixture")
    ap.add_argument("--poll", type=float, default=5.0)
    ap.add_argument("--slurm", action="store_true")
    args = ap.parse_args()
    os.environ.pop("SLURM_JOB_ID", None)
    bench_spot(args)
    if args.slurm:
        bench_slurm()


if __name__ == "__main__":
    main()
