"""A torch-free job that speaks the control protocol, for fast supervisor tests.

State is one integer advanced by a fixed recurrence per step, so a run that was interrupted and
resumed any number of times must end with the same value as an uninterrupted one. Checkpoints go
through traind.store (begin / commit), like a real job's store would.

    python fixture_job.py --steps N [--every K] [--step-seconds S] [--mode MODE]

MODE: normal | ignore-stop (ignores SIGTERM and checkpoint_and_stop) | hang-at-3 (in attempt 1, stops
sending anything after step 3 and sleeps) | crash-at-start (exit 3 at once) | silent (never uses the channel,
exits 75 on SIGTERM after a checkpoint) | usage-error (exit 2).
"""
from __future__ import annotations

import argparse
import json
import os
import select
import signal
import socket
import sys
import time
from pathlib import Path

from traind import store as checkpoints
from traind.contract import protocol

MOD = (1 << 61) - 1
STOP = []


def advance(x: int, step: int) -> int:
    return (x * 1_000_003 + step * 7919 + 12345) % MOD


def save(run_dir: Path, step: int, x: int, reason: str) -> Path:
    pending = checkpoints.begin(run_dir / "checkpoints", step, expected_bytes=64)
    pending.write_bytes("state.json", json.dumps({"step": step, "x": x}).encode())
    info = pending.commit(step=step, epoch=0, reason=reason, metrics={"x_mod_1000": x % 1000})
    return info.path


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--every", type=int, default=5)
    ap.add_argument("--step-seconds", type=float, default=0.01)
    ap.add_argument("--mode", default="normal")
    ap.add_argument("--run-dir", default="run")
    ap.add_argument("--emergency-seconds", type=float, default=0.0, help="extra time an emergency checkpoint takes")
    args = ap.parse_args()
    args.steps = int(os.environ.get("FIXTURE_STEPS", args.steps))   # lets a test shorten a rerun via --set env...
    if args.mode == "crash-at-start":
        print("fixture: crashing at start", flush=True)
        return 3
    if args.mode == "usage-error":
        print("fixture: bad usage", flush=True)
        return 2
    run_dir = Path(os.environ.get(protocol.ENV_RUN_DIR) or args.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, signal.SIG_IGN if args.mode == "ignore-stop" else (lambda s, f: STOP.append("SIGTERM")))

    sock = None
    fd = os.environ.get(protocol.ENV_CONTROL_FD)
    if fd and args.mode != "silent":
        sock = socket.socket(fileno=int(fd))

    def send(kind, **fields):
        if sock is not None:
            try:
                sock.sendall(protocol.encode(kind, **fields))
            except OSError:
                pass

    step, x = 0, 0
    resume = os.environ.get(protocol.ENV_RESUME_FROM)
    if resume:
        state = json.loads((Path(resume) / "state.json").read_text())
        step, x = state["step"], state["x"]
    print(f"fixture: pid {os.getpid()} attempt {os.environ.get(protocol.ENV_ATTEMPT)} from step {step}", flush=True)
    send(protocol.HELLO, pid=os.getpid(), resumed_step=step if resume else None)
    lines = protocol.LineBuffer()

    def emergency(why: str) -> int:
        t0 = time.monotonic()
        time.sleep(args.emergency_seconds)
        path = save(run_dir, step, x, "emergency")
        send(protocol.CHECKPOINT, step=step, epoch=0, path=str(path), reason="emergency", seconds=time.monotonic() - t0)
        send(protocol.STOPPING, reason=why)
        print(f"fixture: emergency checkpoint at step {step} ({why})", flush=True)
        return 75

    while step < args.steps:
        step += 1
        x = advance(x, step)
        with open(run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps({"step": step, "x": x, "attempt": os.environ.get(protocol.ENV_ATTEMPT)}) + "\n")
        if args.mode == "hang-at-3" and step == 3 and os.environ.get(protocol.ENV_ATTEMPT) == "1":
            print("fixture: hanging", flush=True)
            while True:
                time.sleep(3600)
        if step % args.every == 0 or step == args.steps:
            t0 = time.monotonic()
            path = save(run_dir, step, x, "final" if step == args.steps else "periodic")
            send(protocol.CHECKPOINT, step=step, epoch=0, path=str(path), reason="periodic", seconds=time.monotonic() - t0)
        send(protocol.HEARTBEAT, step=step, epoch=0, metrics={"x_mod_1000": x % 1000})
        if step == args.steps:
            break
        # wait for the next step, listening to the supervisor
        deadline = time.monotonic() + args.step_seconds
        while True:
            left = deadline - time.monotonic()
            if STOP:
                return emergency(STOP[0])
            if left <= 0:
                break
            ready = select.select([sock] if sock is not None else [], [], [], left)[0] if sock else (time.sleep(left) or [])
            if not ready:
                continue
            try:
                data = sock.recv(4096)
            except OSError:      # ECONNRESET: the supervisor died with our messages unread
                data = b""
            if not data:
                return emergency("supervisor gone (EOF)")
            for line in lines.feed(data):
                msg = protocol.decode(line)
                if msg["type"] == protocol.CHECKPOINT_AND_STOP and args.mode != "ignore-stop":
                    return emergency(msg.get("reason", "stop"))
                if msg["type"] == protocol.CHECKPOINT_NOW:
                    t0 = time.monotonic()
                    path = save(run_dir, step, x, "periodic")
                    send(protocol.CHECKPOINT, step=step, epoch=0, path=str(path), reason="periodic",
                         seconds=time.monotonic() - t0)
    (run_dir / "result.json").write_text(json.dumps({"step": step, "x": x}))
    print(f"fixture: done at step {step}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
