"""A trivial torch-free job for the two-node SLURM tests: `traind run` starts one on each node.

    python node_job.py OUT_DIR [--seconds S]

Writes OUT_DIR/node-<SLURM_NODEID>.json (the node, its ranks, its supervisor's pid), appends every
signal it gets to OUT_DIR/node-<id>.signals, and ends after S seconds (exit 0) or on SIGTERM (exit 75,
what a job does after its emergency checkpoint). USR1 is recorded and survived: SLURM sends a step
signal (--signal=USR1@LEAD, `scancel --signal=USR1 JOB`) to every process of the step, so a job that
does not handle USR1 would die of it.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

ENV_KEYS = ("SLURM_NODEID", "SLURMD_NODENAME", "SLURM_PROCID", "SLURM_JOB_ID", "SLURM_JOB_NODELIST",
            "RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--seconds", type=float, default=300.0)
    args = parser.parse_args()
    node = os.environ.get("SLURM_NODEID", "none")
    signals = args.out / f"node-{node}.signals"
    stop = []

    def record(signo, _frame):
        stop.append(signo)

    for signo in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT):
        signal.signal(signo, record)
    info = {key: os.environ.get(key) for key in ENV_KEYS}
    info.update(pid=os.getpid(), supervisor_pid=os.getppid(), started=time.time())
    (args.out / f"node-{node}.json").write_text(json.dumps(info))
    print(f"node {node} on {info['SLURMD_NODENAME']}: pid {info['pid']}, supervisor {info['supervisor_pid']}",
          flush=True)
    deadline = time.monotonic() + args.seconds
    while time.monotonic() < deadline:
        time.sleep(0.1)
        while stop:           # handlers only record; the loop writes
            name = signal.Signals(stop.pop(0)).name
            with signals.open("a") as f:
                f.write(f"{name} {time.time():.2f}\n")
            print(f"node {node}: got {name}", flush=True)
            if name == "SIGTERM":
                return 75
    return 0


if __name__ == "__main__":
    sys.exit(main())
