"""How long checkpoints stall training on the job side, with the large example (~0.8 GiB state).

Run by hand (not a test):  OMP_NUM_THREADS=2 python benchmarks/jobs_checkpoint_stalls.py [--steps 12]

Prints, side by side from one run:
  1. mean step time without periodic checkpoints vs with a non-blocking one every K steps
     (the stall a periodic save adds, per save and as a ratio);
  2. in one process: Session.save(blocking=True) vs how long Session.save(blocking=False) blocks;
  3. the emergency path: SIGTERM -> exit 75 (wait for the step, blocking save, exit), and the save alone.
"""
from __future__ import annotations

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

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def launch(run_dir, *args):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.setdefault("OMP_NUM_THREADS", "2")
    return subprocess.Popen([sys.executable, "-m", "traind.jobs.examples.large", "--run-dir", str(run_dir), *map(str, args)],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def step_times(run_dir) -> list[float]:
    rows = [json.loads(l) for l in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    times = [r["time"] for r in rows]
    return [b - a for a, b in zip(times, times[1:])]


def mean(xs):
    return sum(xs) / len(xs) if xs else float("nan")


def periodic_stall(tmp: Path, steps: int, every: int) -> None:
    plain, saving = tmp / "plain", tmp / "saving"
    for run_dir, k in ((plain, 0), (saving, every)):
        out = launch(run_dir, "--max-steps", steps, "--every-steps", k).communicate()[0]
        if "finished at step" not in out:
            raise SystemExit(out)
    a, b = step_times(plain)[1:], step_times(saving)[1:]      # the first step warms up
    after_save = [t for i, t in enumerate(step_times(saving)) if (i + 1) % every == 0][:-1]
    print(f"1. step time, no periodic saves:           {mean(a):7.3f} s")
    print(f"   step time, non-blocking save every {every}:  {mean(b):7.3f} s  (ratio {mean(b) / mean(a):.2f}x)")
    print(f"   step right after a save:                {mean(after_save):7.3f} s  "
          f"(+{mean(after_save) - mean(a):.3f} s stall per save)")


def in_process_saves(tmp: Path) -> None:
    import torch
    from traind.jobs.examples.large import WideMLP
    from traind.jobs.session import Session
    from traind.jobs.store import tensor_bytes
    model = WideMLP()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model(torch.randn(2, 4096)).sum().backward()
    opt.step()
    session = Session(tmp / "inproc", model=model, optimizers=opt, every_steps=0)
    gib = tensor_bytes(session.checkpoint_state()) / 2**30
    rows = []
    for label, blocking in (("blocking", True), ("non-blocking (warm-up)", False),
                            ("non-blocking", False)):
        session.store.flush()
        session.step += 1
        t = time.perf_counter()
        session.save(blocking=blocking)
        rows.append((label, time.perf_counter() - t))
    t = time.perf_counter()
    session.store.flush()
    bg = time.perf_counter() - t
    session.close()
    print(f"2. state {gib:.2f} GiB:")
    for label, seconds in rows:
        print(f"   save {label:24s} blocks the caller {seconds:7.3f} s  ({seconds / gib:.3f} s/GiB)")
    print(f"   ratio blocking / non-blocking: {rows[0][1] / rows[2][1]:.1f}x "
          f"(background part finished {bg:.2f} s later)")


def emergency(tmp: Path) -> None:
    run_dir = tmp / "emergency"
    proc = launch(run_dir, "--max-steps", 1000, "--every-steps", 0)
    metrics = run_dir / "metrics.jsonl"
    while not metrics.exists() or len(metrics.read_text().splitlines()) < 3:
        if proc.poll() is not None:
            raise SystemExit(proc.communicate()[0])
        time.sleep(0.05)
    t = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate()[0]
    total = time.monotonic() - t
    durable = re.search(r"durable after ([0-9.]+) s", out)
    steps = step_times(run_dir)
    print(f"3. SIGTERM -> exit {proc.returncode}: {total:.2f} s (one step is {mean(steps[1:]):.2f} s; "
          f"emergency save alone {float(durable.group(1)) if durable else float('nan'):.2f} s)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--every", type=int, default=4)
    p.add_argument("--skip-periodic", action="store_true", help="skip part 1 (the slowest)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(dir=REPO / "benchmarks") as tmp:   # same disk as runs/
        if not args.skip_periodic:
            periodic_stall(Path(tmp), args.steps, args.every)
        in_process_saves(Path(tmp))
        emergency(Path(tmp))


if __name__ == "__main__":
    main()
