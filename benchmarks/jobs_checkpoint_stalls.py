"""How long checkpoints stall training on the job side, with the large example (~0.8 GiB state).

Run by hand (not a test):  OMP_NUM_THREADS=2 python benchmarks/jobs_checkpoint_stalls.py [--steps 20]

Prints, side by side from one run:
  1. the large example under its Trainer, step time without periodic checkpoints vs with a
     non-blocking one every K steps (runs of each kind alternately): the extra time each save
     costs the training loop (over the K steps after it, and on the next step), per GiB and as a
     ratio to the step time; when the background commit ended against when the next save was
     due; the writer's CPU;
  2. the same model and data in one process, windows of K steps alternately without and with a
     save, the saves taking turns between traind's writer (O_DIRECT, SCHED_IDLE) and the same
     through the page cache, at idle and at normal priority (as in wave 1): the extra time per
     save of each and their ratios (robust to other processes' load, which weighs on every kind
     of window alike), the caller's blocked time, the writer's CPU seconds per GiB beside its
     floor, a memcpy + xxh3 of the same bytes;
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


def periodic_stall(tmp: Path, steps: int, every: int, rounds: int = 2) -> None:
    """Runs without and with periodic saves, alternately (plain, saving, plain, ...): each saving
    run is set against the two plain runs around it, so a machine whose speed drifts (a shared
    VM) moves the baseline less. Medians, not means: a noisy neighbour only ever adds time."""
    names = ["plain0"] + [name for r in range(rounds) for name in (f"saving{r}", f"plain{r + 1}")]
    outs = {}
    for name in names:
        k = every if name.startswith("saving") else 0
        outs[name] = launch(tmp / name, "--max-steps", steps, "--every-steps", k).communicate()[0]
        if "finished at step" not in outs[name]:
            raise SystemExit(outs[name])
    plain_all, saving_all, firsts, whole, right_after, committed = [], [], [], [], [], []
    for r in range(rounds):
        around = step_times(tmp / f"plain{r}")[1:] + step_times(tmp / f"plain{r + 1}")[1:]   # the first step warms up
        base = median(around)
        saving = step_times(tmp / f"saving{r}")
        plain_all += around
        saving_all += saving[1:]
        # step_times()[j - 2] is step j; the save at step s slows steps s+1 .. s+every
        windows = [saving[s - 1:s - 1 + every] for s in range(every, steps, every)]
        firsts.append(sum(windows[0]) - len(windows[0]) * base)
        whole += [sum(w) - len(w) * base for w in windows[1:]]
        right_after += [w[0] - base for w in windows[1:]]
        committed += [float(x) for x in re.findall(r"\(periodic\) committed in ([0-9.]+) s", outs[f"saving{r}"])]
    base = median(plain_all)
    man = manifests(tmp / "saving0", "periodic")[-1]
    gib = man["files"]["state.pt"]["size"] / 2**30
    extra = man.get("extra", {})
    print(f"1. the large example under its Trainer, state {gib:.2f} GiB; step time without periodic saves "
          f"{base:.3f} s (median of {len(plain_all)}, {rounds + 1} runs); with a non-blocking save every "
          f"{every} steps {median(saving_all):.3f} s ({median(saving_all) / base:.2f}x; {rounds} runs, "
          f"each between two without)")
    print(f"   first save (its buffers warmed by store.prepare() after step 1): "
          f"+{median(firsts):.3f} s over its {every} steps")
    print(f"   EXTRA TIME PER SAVE as seen by the training loop (later saves, median of {len(whole)}): "
          f"+{median(whole):.3f} s over the {every} steps after it = {median(whole) / gib:.3f} s/GiB, "
          f"{median(whole) / base:.2f}x the step time  (each: {', '.join(f'{x:+.3f}' for x in whole)})")
    print(f"   ... of which on the step right after the save: +{median(right_after):.3f} s "
          f"({median(right_after) / gib:.3f} s/GiB)")
    print(f"   background commit (save call -> durable): {', '.join(f'{x:.2f}' for x in committed)} s; "
          f"the next save is due {every} steps = {every * median(saving_all):.2f} s later")
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


MODES = {   # the ways of saving part 2 compares, as environment settings of the store
    "traind": {},
    "page cache, SCHED_IDLE": {"TRAIND_DIRECT_IO": "0"},
    "page cache, normal prio": {"TRAIND_DIRECT_IO": "0", "TRAIND_WRITER_PRIORITY": "normal"},  # as wave 1
}


def set_env(values: dict) -> None:
    for key, value in values.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def alternating(tmp: Path, every: int, pairs: int, per_block: int = 3) -> None:
    """One process, the large example's model and data: blocks of per_block * every steps,
    alternately without saves and with a non-blocking save every `every` steps, the saving blocks
    taking turns between MODES. A block with saves against the mean of its neighbours without
    gives the extra time per save; blocks a few seconds long alternate, so the load of other
    processes weighs on every kind of block alike."""
    from traind.jobs.runtime.session import Session
    from traind.jobs.engine.snapshot import tensor_bytes
    model, opt, data = large_job()
    session = Session(tmp / "alternating", model=model, optimizers=opt, every_steps=None)
    batches = iter(session.batches(data, batch_size=16))
    train(session, model, opt, batches, 2)
    session.store.prepare(session.checkpoint_state())
    while not session.store._snap.prepared():
        time.sleep(0.05)
    session.store.flush()
    saved_env = {k: os.environ.get(k) for env in MODES.values() for k in env}
    committed, listener = [], session.store.on_commit
    stats: dict[str, list] = {mode: [] for mode in MODES}
    mode = None

    def on_commit(info):
        committed.append(time.perf_counter())
        if mode is not None and getattr(info, "stats", None) and info.stats.get("background"):
            stats[mode].append(info.stats)
        listener(info)
    session.store.on_commit = on_commit
    names = list(MODES)
    plain, saving, late = [], [], {name: 0 for name in MODES}
    for block in range(2 * pairs * len(names) + 1):           # plain, A, plain, B, plain, A, ...
        mode = names[(block // 2) % len(names)] if block % 2 else None
        set_env({**saved_env, **MODES.get(mode, {})})
        t = time.perf_counter()
        for _ in range(per_block):
            if mode is not None:
                called = time.perf_counter()
                session.save(blocking=False)                 # waits for the one before, if need be
            train(session, model, opt, batches, every)
            if mode is not None:
                late[mode] += not committed or committed[-1] < called
        session.store.flush()     # what is left of the last save is done now, inside its block
        if mode is None:
            plain.append(time.perf_counter() - t)
        else:
            saving.append((mode, time.perf_counter() - t))
    set_env(saved_env)
    gib = tensor_bytes(session.checkpoint_state()) / 2**30
    step = median(plain) / (every * per_block)
    extra = {name: [] for name in names}
    for i, (name, seconds) in enumerate(saving):
        extra[name].append((seconds - (plain[i] + plain[i + 1]) / 2) / per_block)
    copy, xxh = floors(session.checkpoint_state())
    session.close()
    print(f"2. one process: blocks of {per_block * every} steps, alternately without saves and with a "
          f"non-blocking save every {every} steps ({pairs} blocks with saves per way of saving, "
          f"{len(saving) + 1} without); step {step:.3f} s; EXTRA TIME PER SAVE seen by the training loop:")
    for name in names:
        rows, xs = stats[name], extra[name]
        cpu = median([st["writer_cpu_seconds"] for st in rows])
        print(f"   {name:24s} +{median(xs):.3f} s = {median(xs) / gib:.3f} s/GiB, {median(xs) / step:.2f}x the step "
              f"(median; each block: {', '.join(f'{x:+.2f}' for x in xs)}); caller blocked "
              f"{median([st['snapshot_seconds'] for st in rows]) / gib:.3f} s/GiB; writer CPU {cpu / gib:.3f} s/GiB; "
              f"priority {', '.join(sorted({st['priority'] for st in rows}))}; O_DIRECT {rows[-1]['direct_io']}; "
              f"blocks written by flush()/the deadline {sum(st['helped_blocks'] for st in rows)}; "
              f"commits done before the next save was called {pairs * per_block - late[name]} of {pairs * per_block}")
    ours = median(extra[names[0]])
    print(f"   ratios to traind's: {'; '.join(f'{n} {median(extra[n]) / ours:.2f}x' for n in names[1:])}")
    print(f"   the next save is due {every} steps = {every * step:.2f} s after one; floor, a memcpy + xxh3 of "
          f"the same bytes: {copy / gib:.3f} + {xxh / gib:.3f} = {(copy + xxh) / gib:.3f} s/GiB")


def in_process_saves(tmp: Path) -> None:
    from traind.jobs.runtime.session import Session
    from traind.jobs.engine.snapshot import tensor_bytes
    model, opt, data = large_job()
    rows = []
    for run, prepare in (("inproc", False), ("prepared", True)):
        session = Session(tmp / run, model=model, optimizers=opt, every_steps=None)
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
    p.add_argument("--pairs", type=int, default=4, help="part 2: blocks with saves per way of saving")
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
