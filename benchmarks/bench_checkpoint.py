"""Checkpoint store benchmark (run by hand): side by side, in one run, for a model + Adam state.

    OMP_NUM_THREADS=1 python benchmarks/bench_checkpoint.py [--size-gib 1.0] [--dir DIR] [--repeat 3]

(1) raw write + fsync of the same bytes (the floor)   (2) torch.save + fsync
(3) our blocking save (CheckpointEngine.save)           (4) how long a non-blocking save blocks the caller: steady, the first one without prepare() (it
    allocates its buffers) and the first one after store.prepare(state) (warmed in the background)
(5) verify with the files in page cache
Targets: (3) >= 0.9x the throughput of (1); (4) <= 0.2 s/GiB and >= 15x less than (2), the first
save after prepare() <= 1.5x the steady one; (5) <= 0.15 s/GiB.
Each figure is the best of --repeat runs (the machine is shared; the best run is the least disturbed).
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import xxhash

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from traind import store as ck# noqa: E402
from traind.jobs.engine import CheckpointEngine
from traind.jobs.engine.snapshot import Snapshotter as _Snapshotter, tensor_bytes  # noqa: E402

GIB = 1 << 30


def build_state(size_gib: float, hidden: int = 2048) -> dict:
    """A stack of Linear layers plus Adam's exp_avg/exp_avg_sq: params are a third of the bytes."""
    per_layer = (hidden * hidden + hidden) * 4 * 3
    layers = max(1, round(size_gib * GIB / per_layer))
    model = torch.nn.Sequential(*[torch.nn.Linear(hidden, hidden) for _ in range(layers)])
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    for p in model.parameters():          # materialise Adam's state without a real backward pass
        p.grad = torch.zeros_like(p)
    opt.step()
    return {"epoch": 0, "global_step": 1, "state_dict": model.state_dict(),
            "optimizer_states": [opt.state_dict()], "lr_schedulers": [], "callbacks": {},
            "hyper_parameters": {"hidden": hidden, "layers": layers}}


def tensors_of(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from tensors_of(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from tensors_of(v)


def drop(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    os.sync()


def raw_write(state, out: Path) -> float:
    t = time.perf_counter()
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    for tensor in tensors_of(state):
        view = memoryview(tensor.numpy()).cast("B")
        while len(view):
            view = view[os.write(fd, view):]
    os.fsync(fd)
    os.close(fd)
    return time.perf_counter() - t


def memcpy_floor(state, buffers: list) -> float:
    """copy_ of every tensor into pre-faulted buffers: the floor for a copy-based snapshot."""
    t = time.perf_counter()
    for src, dst in zip(tensors_of(state), buffers):
        dst.copy_(src)
    return time.perf_counter() - t


def hash_floor(state) -> float:
    """xxh3-128 of the tensor bytes already in memory, one thread: the floor for verify."""
    t = time.perf_counter()
    for tensor in tensors_of(state):
        xxhash.xxh3_128(memoryview(tensor.numpy()).cast("B")).hexdigest()
    return time.perf_counter() - t


def torch_save(state, out: Path) -> float:
    t = time.perf_counter()
    with open(out, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    return time.perf_counter() - t


def our_blocking(state, run: Path, step: int) -> float:
    with CheckpointEngine(run, keep_last=1) as store:
        t = time.perf_counter()
        store.save(state, step=step, epoch=0)
        return time.perf_counter() - t


def our_nonblocking(store: CheckpointEngine, state, step: int) -> tuple[float, float]:
    """(time the caller was blocked, time until committed)."""
    t = time.perf_counter()
    store.save(state, step=step, epoch=0, blocking=False)
    blocked = time.perf_counter() - t
    store.flush()
    return blocked, time.perf_counter() - t


def first_after_prepare(state, run: Path) -> float:
    """A fresh store: prepare(), wait for the warm-up, then the first non-blocking save."""
    with CheckpointEngine(run, keep_last=1) as store:
        store.prepare(state)
        while not store._snap.prepared():
            time.sleep(0.01)
        blocked, _ = our_nonblocking(store, state, 1)
        assert store._snap.allocated_in_take == 0
    shutil.rmtree(run, ignore_errors=True)
    return blocked


def snapshot_1_thread(state, snap) -> float:
    t = time.perf_counter()
    snap.take(state)
    return time.perf_counter() - t


def verify_time(path: Path) -> float:
    ck.verify(path)                 # warm the page cache
    t = time.perf_counter()
    info = ck.verify(path)
    assert info.valid, info.error
    return time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-gib", type=float, default=1.0)
    ap.add_argument("--dir", type=Path, default=None, help="where to write (default: a temp dir here)")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    work = Path(tempfile.mkdtemp(prefix=".bench-ckpt-", dir=args.dir or Path.cwd()))
    try:
        state = build_state(args.size_gib)
        nbytes = tensor_bytes(state)
        gib = nbytes / GIB
        print(f"state: {nbytes / GIB:.3f} GiB in {sum(1 for _ in tensors_of(state))} tensors; "
              f"writing under {work}; best of {args.repeat}")
        runs: dict[str, list[float]] = {k: [] for k in ("raw", "torch", "ours", "nb_block", "nb_total",
                                                        "nb_first", "nb_prepared", "verify", "memcpy", "hash",
                                                        "snap1", "writer_cpu")}
        snap1 = _Snapshotter(threads=1)
        buffers = [torch.empty_like(t).zero_() for t in tensors_of(state)]
        with CheckpointEngine(work / "nb", keep_last=1) as nb_store:
            for i in range(args.repeat):
                runs["raw"].append(raw_write(state, work / "raw.bin"))
                (work / "raw.bin").unlink()
                runs["torch"].append(torch_save(state, work / "torch.pt"))
                (work / "torch.pt").unlink()
                runs["ours"].append(our_blocking(state, work / "ours", i + 1))
                blocked, total = our_nonblocking(nb_store, state, i + 1)
                runs["nb_first" if i == 0 else "nb_block"].append(blocked)
                runs["nb_total"].append(total)
                runs["writer_cpu"].append(nb_store.last_stats["writer_cpu_seconds"])
                runs["nb_prepared"].append(first_after_prepare(state, work / f"prep{i}"))
                runs["verify"].append(verify_time(work / "ours" / "checkpoints" / ck.step_dir_name(i + 1)))
                runs["memcpy"].append(memcpy_floor(state, buffers))
                runs["hash"].append(hash_floor(state))
                runs["snap1"].append(snapshot_1_thread(state, snap1))
                os.sync()
        if not runs["nb_block"]:
            runs["nb_block"] = runs["nb_first"]
        best = {k: min(v) for k, v in runs.items() if v}
        med = {k: statistics.median(v) for k, v in runs.items() if v}

        def row(label, key, target=""):
            s = best[key]
            print(f"{label:<44}{s:8.3f} s {s / gib:8.3f} s/GiB {gib / s:8.2f} GiB/s"
                  f"   (median {med[key] / gib:.3f} s/GiB)  {target}")
        print(f"{'':<44}{'best':>10} {'':>14} {'':>14}")
        row("(1) raw write + fsync (floor)", "raw")
        row("(2) torch.save + fsync", "torch")
        row("(3) our blocking save", "ours")
        row("(4) non-blocking save: caller blocked", "nb_block")
        row("    non-blocking, first save (allocates)", "nb_first")
        row("    non-blocking, first save after prepare()", "nb_prepared")
        row(f"    snapshot alone, 1 copy thread (not {_Snapshotter().threads})", "snap1")
        row("    non-blocking: until committed", "nb_total")
        row("(5) verify (page cache)", "verify")
        row("    floor of (4): memcpy (copy_) of the bytes", "memcpy")
        row("    floor of (5): xxh3 of the bytes, 1 thread", "hash")
        row("    writer CPU of (4) (thread_time)", "writer_cpu")
        r3 = best["raw"] / best["ours"]
        r_first = best["nb_prepared"] / best["nb_block"]
        r4 = best["torch"] / best["nb_block"]
        checks = [
            (f"(3) throughput vs floor: {r3:.2f}x (target >= 0.90x)", r3 >= 0.9),
            (f"(4) {best['nb_block'] / gib:.3f} s/GiB (target <= 0.2); {r4:.1f}x less than torch.save "
             f"(target >= 15x)", best["nb_block"] / gib <= 0.2 and r4 >= 15),
            (f"(4) first save after prepare(): {r_first:.2f}x the steady one (target <= 1.5x; "
             f"without prepare(): {best['nb_first'] / best['nb_block']:.1f}x)", r_first <= 1.5),
            (f"(5) verify {best['verify'] / gib:.3f} s/GiB (target <= 0.15)", best["verify"] / gib <= 0.15),
        ]
        print(f"load: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores (others' work slows every row)")
        print(f"INFO  (4) vs its memcpy floor: {best['nb_block'] / best['memcpy']:.2f}x the time; "
              f"(5) vs its 1-thread hash floor: {best['verify'] / best['hash']:.2f}x the time; "
              f"writer CPU {best['writer_cpu'] / gib:.3f} s/GiB vs memcpy + xxh3 "
              f"{(best['memcpy'] + best['hash']) / gib:.3f} s/GiB")
        for text, ok in checks:
            print(f"{'PASS' if ok else 'MISS'}  {text}")
        return 0 if all(ok for _, ok in checks) else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
