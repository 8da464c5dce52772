"""traind serve: figures side by side in one run (torch-free fake jobs, so the daemon is measured).

    OMP_NUM_THREADS=1 python benchmarks/bench_serve.py

1. pick-up latency: `traind submit` (rename -> inotify event) vs a file the observer cannot see
   whole (hard link -> only the APScheduler rescan finds it): submit -> job's first line.
2. throughput: 12 one-step jobs with 1, 2 and 4 slots (per-job cost = 3 Python start-ups:
   the deathsig exec wrapper, `traind run`, the job).
3. graceful stop: 4 running jobs whose emergency checkpoint takes 1 s each: SIGTERM -> daemon exit,
   against the 4 s a one-after-the-other stop would need.
4. idle cost: CPU seconds the daemon uses in 10 s with nothing to do.
"""
from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "service"))
from conftest import Serve, read_ledger, traind, wait_for, write_spec  # noqa: E402


def first_lines(ledger: Path) -> dict[str, float]:
    out: dict[str, float] = {}
    for e in read_ledger(ledger):
        out.setdefault(e["job"], e["t"])
    return out


def pickup(tmp: Path) -> tuple[list[float], list[float]]:
    s = Serve(tmp / "state", slots=4).start()
    ledger = tmp / "ledger"
    event, rescan = [], []
    for i in range(4):
        spec = write_spec(tmp, f"ev{i}", ledger, steps=1)
        t0 = time.time()
        traind("submit", str(spec), state_dir=s.state_dir, check=True)
        wait_for(lambda: f"ev{i}" in first_lines(ledger), 30, "start")
        event.append(first_lines(ledger)[f"ev{i}"] - t0)
    for i in range(2):
        spec = write_spec(tmp, f"rs{i}", ledger, steps=1)
        spec.chmod(0o600)
        t0 = time.time()
        os.link(spec, s.state_dir / "spool" / spec.name)   # created, never closed or moved in
        wait_for(lambda: f"rs{i}" in first_lines(ledger), 30, "start")
        rescan.append(first_lines(ledger)[f"rs{i}"] - t0)
    s.stop()
    return event, rescan


def throughput(tmp: Path, slots: int, n: int = 12) -> float:
    """Seconds from daemon start to all n done; the jobs wait in the spool while it is down."""
    s = Serve(tmp / f"state{slots}", slots=slots).start()
    s.stop()
    ledger = tmp / f"ledger{slots}"
    for i in range(n):
        spec = write_spec(tmp, f"t{slots}-{i}", ledger, steps=1, step_seconds=0.01)
        traind("submit", str(spec), state_dir=s.state_dir, check=True)
    t0 = time.monotonic()
    s.start()
    wait_for(lambda: sum(v == "done" for v in s.states().values()) == n, 300, "all done", interval=0.02)
    took = time.monotonic() - t0
    s.stop()
    return took


def graceful_stop(tmp: Path, jobs: int = 4, ckpt_seconds: float = 1.0) -> float:
    s = Serve(tmp / "state-stop", slots=jobs).start()
    ledger = tmp / "ledger-stop"
    for i in range(jobs):
        spec = write_spec(tmp, f"g{i}", ledger, steps=100000, step_seconds=0.02, stop_seconds=ckpt_seconds)
        traind("submit", str(spec), state_dir=s.state_dir, check=True)
    wait_for(lambda: len(first_lines(ledger)) == jobs, 60, "all running")
    t0 = time.monotonic()
    assert s.stop(timeout=60) == 0
    return time.monotonic() - t0


def idle_cpu(tmp: Path, seconds: float = 10.0) -> float:
    s = Serve(tmp / "state-idle", slots=2).start()
    def cpu():
        f = Path(f"/proc/{s.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
    time.sleep(2)
    c0 = cpu()
    time.sleep(seconds)
    used = cpu() - c0
    s.stop()
    return used


def main() -> None:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        event, rescan = pickup(tmp)
        print(f"pick-up latency, submit -> job's first line (median of {len(event)} / {len(rescan)}):")
        print(f"  inotify (traind submit renames): {statistics.median(event):6.2f} s")
        print(f"  rescan only (hard link)        : {statistics.median(rescan):6.2f} s   "
              f"ratio {statistics.median(rescan) / statistics.median(event):.1f}x")
        base = None
        print("throughput, 12 one-step jobs waiting in the spool, daemon start -> all done:")
        for slots in (1, 2, 4):
            took = throughput(tmp, slots)
            base = base or took
            print(f"  {slots} slot(s): {took:6.2f} s  {12 / took:5.2f} jobs/s  speed-up {base / took:.2f}x")
        jobs, ckpt = 4, 1.0
        took = graceful_stop(tmp, jobs, ckpt)
        print(f"graceful stop, {jobs} jobs x {ckpt:.1f} s emergency checkpoint: {took:.2f} s "
              f"(one after the other: {jobs * ckpt:.1f} s; ratio {jobs * ckpt / took:.1f}x)")
        print(f"idle daemon: {idle_cpu(tmp):.3f} CPU s per 10 s")


if __name__ == "__main__":
    main()
