"""Sharded checkpoints and group restarts (issue 12), side by side in one run.

Run by hand (not a test):  python benchmarks/bench_distributed.py [--mib 192] [--saves 3]

1. Blocked time per non-blocking checkpoint, for 1, 2 and 4 ranks (gloo, CPU) holding the SAME
   total state (a DDP replica of --mib MiB of parameters + Adam moments on every rank): traind's
   save (1 rank: the single-process store; 2 and 4: the sharded store, DCP under one manifest)
   beside torch DCP's own `async_save` of the same state, and beside a plain memcpy (clone) of
   one rank's tensors, the floor of any snapshot. Also the time until each save is committed.
2. Time from one rank's death (SIGKILL) to the group training again, for the ddp example under
   `traind run` with 4 ranks: the kill to the first heartbeat of the new attempt.
3. What the per-step stop/checkpoint agreement costs 4 ranks with a ~5 ms step while nothing is
   pending: none, a blocking all_reduce, the one-step-late all_reduce (started at one step, read at
   the next; the rule across nodes), and the shared word (the rule on one node); then the step at
   which each rank stops when rank 2 alone is asked to, for both rules.
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

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml

REPO = Path(__file__).resolve().parent.parent


def _model(mib: int) -> torch.nn.Module:
    width = 1024
    layers = max(1, (mib << 20) // (3 * 4 * width * width))      # params + 2 Adam moments, fp32
    return torch.nn.Sequential(*[torch.nn.Linear(width, width, bias=False) for _ in range(layers)])


def _worker(rank: int, world: int, port: int, mib: int, saves: int, out_dir: str, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    from torch.nn.parallel import DistributedDataParallel
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict
    from traind.jobs.runtime.group import Group
    from traind.jobs.engine.sharded import Sharded
    from traind.jobs.runtime import schema
    from traind.jobs.engine import CheckpointEngine
    torch.manual_seed(0)
    model = DistributedDataParallel(_model(mib))
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    model(torch.randn(4, 1024)).sum().backward()
    opt.step()
    group = Group.from_env() if world > 1 else None
    run_dir = Path(out_dir) / f"traind-{world}"
    if group is None:
        store = CheckpointEngine(run_dir, keep_last=1)
    else:
        store = CheckpointEngine(run_dir, Sharded(group, model, [opt], schema.rank_part), keep_last=1)
    state = {"state_dict": model.module.state_dict(), "optimizer_states": [opt.state_dict()], "global_step": 0}
    store.prepare(state)
    time.sleep(1.0)                        # the warm-up thread allocates the snapshot buffers
    figures = {"traind_blocked": [], "traind_commit": [], "dcp_blocked": [], "dcp_commit": [], "memcpy": []}
    dcp_group = dist.new_group(backend="gloo")
    for i in range(saves):
        dist.barrier()
        t0 = time.monotonic()
        store.save(state, step=i + 1, epoch=0, blocking=False)
        figures["traind_blocked"].append(time.monotonic() - t0)
        store.flush()
        figures["traind_commit"].append(time.monotonic() - t0)
        dist.barrier()
        msd, osd = get_state_dict(model, opt)
        t0 = time.monotonic()
        future = dcp.async_save({"model": msd, "optim": osd}, checkpoint_id=Path(out_dir) / f"dcp-{world}-{i}",
                                process_group=dcp_group)
        figures["dcp_blocked"].append(time.monotonic() - t0)
        future.result()
        figures["dcp_commit"].append(time.monotonic() - t0)
        tensors = [t for t in list(msd.values()) + [v for s in osd["state"].values() for v in s.values()]
                   if isinstance(t, torch.Tensor)]
        t0 = time.monotonic()
        copies = [t.clone() for t in tensors]
        figures["memcpy"].append(time.monotonic() - t0)
        del copies
    store.close()
    queue.put((rank, {k: statistics.median(v) for k, v in figures.items()}))
    dist.destroy_process_group()


def checkpoint_table(mib: int, saves: int) -> None:
    print(f"blocked time per non-blocking checkpoint, {mib} MiB of state on every rank (DDP replica), "
          f"median of {saves}")
    print(f"{'ranks':>5}  {'traind blocked':>14}  {'dcp async_save blocked':>22}  {'memcpy':>7}  "
          f"{'traind/memcpy':>13}  {'traind commit':>13}  {'dcp commit':>10}")
    ctx = mp.get_context("spawn")
    for world in (1, 2, 4):
        with tempfile.TemporaryDirectory(prefix="traind-bench-dist-") as tmp:
            queue = ctx.Queue()
            import socket
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            procs = [ctx.Process(target=_worker, args=(r, world, port, mib, saves, tmp, queue)) for r in range(world)]
            for p in procs:
                p.start()
            results = dict(queue.get(timeout=600) for _ in procs)
            for p in procs:
                p.join()
        worst = {k: max(r[k] for r in results.values()) for k in results[0]}   # the group waits for its slowest
        print(f"{world:>5}  {worst['traind_blocked']:>13.3f}s  {worst['dcp_blocked']:>21.3f}s  "
              f"{worst['memcpy']:>6.3f}s  {worst['traind_blocked'] / worst['memcpy']:>12.2f}x  "
              f"{worst['traind_commit']:>12.3f}s  {worst['dcp_commit']:>9.3f}s", flush=True)


def _agreement_worker(rank: int, port: int, steps: int, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=4)
    from traind.jobs.runtime import agreement
    from traind.jobs.runtime.group import Group
    group, a = Group(rank, 4, rank), torch.randn(256, 256)
    word = agreement.for_group(group)
    out, stopped = {}, {}
    modes = ("none", "blocking", "late", "word")
    for mode in modes * 2:                 # twice, interleaved: the second round is reported
        dist.barrier()
        t0 = time.perf_counter()
        for step in range(1, steps + 1):
            for _ in range(6):
                a @ a                      # the step's compute
            if mode == "blocking":
                group.agree(False, False)
            elif mode == "late":
                group.finish_agreement()
                group.start_agreement(False, False)
            elif mode == "word":
                word.at_step(step, stop=False, checkpoint=False)
        group.finish_agreement()
        out[mode] = (time.perf_counter() - t0) / steps
    for mode in ("late", "word"):          # and a stop asked by rank 2 alone: where does each rank stop?
        dist.barrier()
        rule = agreement.OneStepLate(group) if mode == "late" else agreement.for_group(group)
        grad = torch.ones(1000)
        for step in range(1, steps + 1):
            dist.all_reduce(grad)          # a data-parallel step reduces its gradients: lockstep
            stop, _ = rule.at_step(step, stop=rank == 2 and step >= steps // 2, checkpoint=False)
            if stop:
                break
        rule.close()
        stopped[mode] = step
    word.close()
    queue.put((rank, out, stopped))
    dist.destroy_process_group()


def agreement_figures(steps: int = 300) -> None:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_agreement_worker, args=(r, port, steps, queue)) for r in range(4)]
    for p in procs:
        p.start()
    results = sorted(queue.get(timeout=600) for _ in procs)
    for p in procs:
        p.join()
    out = results[0][1]
    print(f"stop/checkpoint agreement, 4 ranks, {steps} steps (rank 0): step {out['none'] * 1000:.2f} ms alone, "
          f"+{(out['blocking'] - out['none']) * 1000:.2f} ms blocking all_reduce, "
          f"+{(out['late'] - out['none']) * 1000:.2f} ms one step late (across nodes), "
          f"+{(out['word'] - out['none']) * 1000:.2f} ms shared word (one node: what Session and Lightning use)")
    for mode in ("late", "word"):
        print(f"  a stop asked by rank 2 at step {steps // 2}, {mode}: ranks stopped at steps "
              f"{[r[2][mode] for r in results]}")


def _status(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / "status.json").read_text())
    except (OSError, ValueError):
        return {}


def _wait(pred, timeout=300.0, every=0.01):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = pred()
        if value:
            return value
        time.sleep(every)
    raise SystemExit("benchmark: timed out")


def restart_figures(kills: int) -> None:
    """Today's way (disk checkpoints every 20 steps) beside the memory tier every 5 steps, one run each."""
    for memory in (None, 5):
        took, lost = _restart_figures(kills, memory)
        how = f"with the memory tier every {memory} steps" if memory else "disk checkpoints only (every 20 steps)"
        print(f"rank SIGKILLed -> group training again (4 ranks, ddp example, {how}): median "
              f"{statistics.median(took):.2f}s over {kills} kills (min {min(took):.2f}, max {max(took):.2f}); "
              f"steps lost per crash {sorted(lost)}; includes 4 interpreters importing torch on 2 cores, the "
              "rendezvous and the sharded restore", flush=True)


def _restart_figures(kills: int, memory: int | None) -> tuple[list, list]:
    with tempfile.TemporaryDirectory(prefix="traind-bench-restart-") as tmp:
        run_dir = Path(tmp) / "run"
        spec = {"name": "ddp-bench", "workdir": str(REPO), "run_dir": str(run_dir),
                "command": [sys.executable, "-m", "traind.jobs.examples.ddp", "--max-steps", "100000",
                            "--every-steps", "20", "--step-seconds", "0.02"],
                "env": {"OMP_NUM_THREADS": "1"}, "distributed": {"nproc_per_node": 4},
                "checkpoint": {"every_steps": 20, "keep_last": 2, **({"memory": {"every_steps": memory}} if memory else {})},
                "restart": {"max_restarts": kills + 2, "backoff": {"initial_seconds": 0, "max_seconds": 0, "jitter": 0}}}
        (Path(tmp) / "spec.yaml").write_text(yaml.safe_dump(spec))
        sup = subprocess.Popen([sys.executable, "-m", "traind", "run", str(Path(tmp) / "spec.yaml")], cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=open(Path(tmp) / "sup.log", "wb"))
        took, lost = [], []
        try:
            for attempt in range(1, kills + 1):
                _wait(lambda: (lambda st: st if st.get("attempt") == attempt and st.get("state") == "running"
                                   and (st.get("last_heartbeat") or {}).get("step", 0) >= 5 and
                                   all(r.get("pid") for r in st.get("ranks", [])) else None)(_status(run_dir)))
                time.sleep(0.5)
                victim = _status(run_dir)["ranks"][attempt % 4]["pid"]
                t0 = time.monotonic()
                os.kill(victim, signal.SIGKILL)
                crashed = _last_step(run_dir)
                # a heartbeat of the new group (its rank list is new each attempt): it trains again
                _wait(lambda: (lambda st: st.get("attempt") == attempt + 1 and (st.get("ranks") or [{}])[0]
                               .get("step") is not None)(_status(run_dir)), every=0.005)
                took.append(time.monotonic() - t0)
                spawned = [json.loads(x) for x in (run_dir / "events.jsonl").read_text().splitlines() if '"spawned"' in x]
                lost.append(crashed - (spawned[-1].get("checkpoint_step") or 0))
        finally:
            sup.send_signal(signal.SIGTERM)
            sup.wait(120)
    return took, lost


def _last_step(run_dir: Path) -> int:
    """The last step the group finished (rank 0's metrics line), once the killed rank's group is gone."""
    time.sleep(0.3)                  # the other ranks block in the next all-reduce: no more lines
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return max((json.loads(x)["step"] for x in lines if x.startswith("{") and x.endswith("}")), default=0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mib", type=int, default=192)
    p.add_argument("--saves", type=int, default=3)
    p.add_argument("--kills", type=int, default=3)
    p.add_argument("--only", choices=("checkpoints", "restart", "agreement"), default=None)
    args = p.parse_args()
    if args.only in (None, "checkpoints"):
        checkpoint_table(args.mib, args.saves)
    if args.only in (None, "restart"):
        restart_figures(args.kills)
    if args.only in (None, "agreement"):
        agreement_figures()


if __name__ == "__main__":
    main()
