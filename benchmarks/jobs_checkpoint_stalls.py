"""How long checkpoints stall training on the job side, with the large example (~0.8 GiB state).

Run by hand (not a test):  OMP_NUM_THREADS=2 python benchmarks/jobs_checkpoint_stalls.py [--steps 20]

Prints, side by side from one run:
  1. the large example under its Trainer, step time without periodic checkpoints (two runs) vs
     with a non-blocking one every K steps: the extra time each save costs the training loop
     (over the K steps after it, and on the next step), per GiB and as a ratio to the step time;
     when the background commit ended against when the next save was due; the writer's CPU;
  2. the same model and data in one process, windows of K steps alternately without and with a
     save: the extra time per save (robust to other processes' load, which weighs on both kinds
     of window alike); the writer's CPU seconds per GiB beside its floor, a memcpy + xxh3 of the
     same bytes;
  3. in one process: Session.save(blocking=True) vs how long Session.save(blocking=False) blocks,
     the first save with and without store.prepare();
  4. the emergency path: SIGTERM -> exit 75 (wait for the step, blocking save, exit), and the save alone.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
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


def manifests(run_dir, reason: str) -> list[dict]:
    return [json.loads(m.read_text()) for m in sorted((Path(run_dir) / "checkpoints").glob("step-*/MANIFEST.json"))
            if json.loads(m.read_text())["reason"] == reason]


def median(xs):
    return statistics.median(xs) if xs else float("nan")


def periodic_stall(tmp: Path, steps: int, every: int) -> None:
    """Plain, saving, plain again: the plain runs bracket the saving one in time, so load from
    other processes on a shared machine moves the baseline less. Medians, not means: a noisy
    neighbour only ever adds time, in bursts."""
    outs = {}
    for name, k in (("plain", 0), ("saving", every), ("plain2", 0)):
        outs[name] = launch(tmp / name, "--max-steps", steps, "--every-steps", k).communicate()[0]
        if "finished at step" not in outs[name]:
            raise SystemExit(outs[name])
    plain = step_times(tmp / "plain")[1:] + step_times(tmp / "plain2")[1:]     # the first step warms up
    saving = step_times(tmp / "saving")
    base = median(plain)
    # step_times()[j - 2] is step j; the save at step s slows steps s+1 .. s+every
    windows = [saving[s - 1:s - 1 + every] for s in range(every, steps, every)]
    first, later = windows[0], windows[1:]
    right_after = [w[0] - base for w in later]
    whole = [sum(w) - len(w) * base for w in later]
    man = manifests(tmp / "saving", "periodic")[-1]
    gib = man["files"]["state.pt"]["size"] / 2**30
    committed = [float(x) for x in re.findall(r"\(periodic\) committed in ([0-9.]+) s", outs["saving"])]
    extra = man.get("extra", {})
    print(f"1. state {gib:.2f} GiB; step time without periodic saves {base:.3f} s (median of {len(plain)}, "
          f"two runs around the saving one); with a non-blocking save every {every} steps "
          f"{median(saving[1:]):.3f} s ({median(saving[1:]) / base:.2f}x)")
    print(f"   first save (allocates its buffers; the session does not call store.prepare() yet): "
          f"+{first[0] - base:.3f} s on the next step, +{sum(first) - len(first) * base:.3f} s over its {every} steps")
    print(f"   EXTRA TIME PER SAVE as seen by the training loop (later saves, median of {len(later)}): "
          f"+{median(whole):.3f} s over the {every} steps after it = {median(whole) / gib:.3f} s/GiB, "
          f"{median(whole) / base:.2f}x the step time  (each: {', '.join(f'{x:+.3f}' for x in whole)})")
    print(f"   ... of which on the step right after the save: +{median(right_after):.3f} s "
          f"({median(right_after) / gib:.3f} s/GiB)")
    print(f"   background commit (save call -> durable): {', '.join(f'{x:.2f}' for x in committed)} s; "
          f"the next save is due {every} steps = {every * median(saving[1:]):.2f} s later")
    if "writer_cpu_seconds" in extra:
        print(f"   writer CPU (thread_time, last periodic save): {extra['writer_cpu_seconds'] / gib:.3f} s/GiB; "
              f"priority {extra.get('priority')}; O_DIRECT {extra.get('direct_io')}")


def floors(state) -> tuple[float, float]:
    """CPU seconds of one memcpy (into ready buffers) and one xxh3-128 of the state's bytes."""
    import ctypes
    import torch
    import xxhash
    from bench_checkpoint import tensors_of      # this script's folder is on sys.path
    tensors = [t.detach().reshape(-1).contiguous().view(torch.uint8) for t in tensors_of(state) if t.numel()]
    dst = [torch.ones_like(t) for t in tensors]
    t0 = time.thread_time()
    for d, t in zip(dst, tensors):
        ctypes.memmove(d.data_ptr(), t.data_ptr(), t.numel())
    copy = time.thread_time() - t0
    t0 = time.thread_time()
    for t in tensors:
        xxhash.xxh3_128(memoryview(t.numpy())).hexdigest()
    return copy, time.thread_time() - t0


def large_job():
    import torch
    from traind.jobs.examples.large import Synthetic, WideMLP
    torch.manual_seed(0)
    model = WideMLP()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    return model, opt, Synthetic(2048, 4096)


def train(session, model, opt, batches, n: int) -> None:
    import torch
    for _ in range(n):
        x, y = next(batches)
        loss = torch.nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        session.step_done(loss=loss.item())


def alternating(tmp: Path, every: int, pairs: int, per_block: int = 3) -> None:
    """One process, the large example's model and data: blocks of per_block * every steps,
    alternately without saves and with a non-blocking save every `every` steps. A block with
    saves against the mean of its neighbours without gives the extra time per save; blocks a few
    seconds long alternate, so the load of other processes weighs on both kinds alike."""
    from traind.jobs.session import Session
    from traind.jobs.store import tensor_bytes
    model, opt, data = large_job()
    session = Session(tmp / "alternating", model=model, optimizers=opt, every_steps=0)
    batches = iter(session.batches(data, batch_size=16))
    train(session, model, opt, batches, 2)
    if hasattr(session.store, "prepare"):
        session.store.prepare(session.checkpoint_state())    # what the session should do
        while not session.store._snap.prepared():
            time.sleep(0.05)
    else:                                                    # before store.prepare() existed
        session.save(blocking=False)
    session.store.flush()
    committed, stats, listener = [], [], session.store.on_commit

    def on_commit(info):
        committed.append(time.perf_counter())
        stats.append(getattr(info, "stats", None))
        listener(info)
    session.store.on_commit = on_commit
    plain, saving, late = [], [], 0
    for block in range(2 * pairs + 1):                       # plain, saving, plain, ..., plain
        t = time.perf_counter()
        for _ in range(per_block):
            if block % 2:
                called = time.perf_counter()
                session.save(blocking=False)                 # waits for the one before, if need be
            train(session, model, opt, batches, every)
            if block % 2:
                late += not committed or committed[-1] < called
        session.store.flush()     # what is left of the last save is done now, inside its block
        (saving if block % 2 else plain).append(time.perf_counter() - t)
    gib = tensor_bytes(session.checkpoint_state()) / 2**30
    step = median(plain) / (every * per_block)
    extra = [(sv - (plain[i] + plain[i + 1]) / 2) / per_block for i, sv in enumerate(saving)]
    copy, xxh = floors(session.checkpoint_state())
    session.close()
    print(f"2. one process: blocks of {per_block * every} steps, alternately without saves and with a "
          f"non-blocking save every {every} steps ({pairs} with, {pairs + 1} without):")
    print(f"   step {step:.3f} s; EXTRA TIME PER SAVE seen by the training loop: +{median(extra):.3f} s = "
          f"{median(extra) / gib:.3f} s/GiB, {median(extra) / step:.2f}x the step time (median; mean "
          f"{mean(extra):+.3f} s; each block: {', '.join(f'{x:+.2f}' for x in extra)})")
    print(f"   background commits done before the next save was called: {pairs * per_block - late} of "
          f"{pairs * per_block} (the next {every} steps = {every * step:.2f} s)")
    stats = [st for st in stats if st and st.get("background")]
    if not stats:
        return
    cpu = median([st["writer_cpu_seconds"] for st in stats])
    print(f"   caller blocked {median([st['snapshot_seconds'] for st in stats]) / gib:.3f} s/GiB; writer CPU "
          f"(thread_time in the writer thread): {cpu / gib:.3f} s/GiB; floor memcpy + xxh3 of the same bytes "
          f"{copy / gib:.3f} + {xxh / gib:.3f} = {(copy + xxh) / gib:.3f} s/GiB; priority "
          f"{', '.join(sorted({st['priority'] for st in stats}))}; O_DIRECT {stats[-1]['direct_io']}; "
          f"blocks written by flush() or the deadline: {sum(st['helped_blocks'] for st in stats)}")


def in_process_saves(tmp: Path) -> None:
    from traind.jobs.session import Session
    from traind.jobs.store import tensor_bytes
    model, opt, data = large_job()
    rows = []
    for run, prepare in (("inproc", False), ("prepared", True)):
        session = Session(tmp / run, model=model, optimizers=opt, every_steps=0)
        train(session, model, opt, iter(session.batches(data, batch_size=16)), 1)
        gib = tensor_bytes(session.checkpoint_state()) / 2**30
        if prepare:
            session.store.prepare(session.checkpoint_state())
            while not session.store._snap.prepared():
                time.sleep(0.05)
        plan = (("first non-blocking, after prepare()", False),) if prepare else (
            ("blocking", True), ("first non-blocking (allocates)", False), ("non-blocking", False))
        for label, blocking in plan:
            session.store.flush()
            session.step += 1
            t = time.perf_counter()
            session.save(blocking=blocking)
            rows.append((label, time.perf_counter() - t))
        session.close()
    print(f"3. state {gib:.2f} GiB:")
    for label, seconds in rows:
        print(f"   save {label:36s} blocks the caller {seconds:7.3f} s  ({seconds / gib:.3f} s/GiB)")
    steady = rows[2][1]
    print(f"   ratio blocking / non-blocking: {rows[0][1] / steady:.1f}x; first save / steady: "
          f"{rows[1][1] / steady:.1f}x without prepare(), {rows[3][1] / steady:.2f}x with it")


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
    print(f"4. SIGTERM -> exit {proc.returncode}: {total:.2f} s (one step is {mean(steps[1:]):.2f} s; "
          f"emergency save alone {float(durable.group(1)) if durable else float('nan'):.2f} s)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--every", type=int, default=4)
    p.add_argument("--pairs", type=int, default=5, help="part 2: blocks with saves (and one more without)")
    p.add_argument("--skip-periodic", action="store_true", help="skip part 1 (the slowest)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(dir=REPO / "benchmarks") as tmp:   # same disk as runs/
        if not args.skip_periodic:
            periodic_stall(Path(tmp), args.steps, args.every)
        alternating(Path(tmp), args.every, args.pairs)
        in_process_saves(Path(tmp))
        emergency(Path(tmp))


if __name__ == "__main__":
    main()
