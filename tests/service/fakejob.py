"""A torch-free job honouring the job contract (docs/contracts.md section 2), for the service tests.

Steps of --step-seconds each; a checkpoint (RUN_DIR/ckpt.json, atomic) every --every steps; resumes
from it; SIGTERM/SIGUSR1, `checkpoint_and_stop` or EOF on the control channel -> checkpoint, exit 75.
Every start, stop and finish is appended to the shared --ledger, which the tests read. A job that
finds its run dir's job.lock taken records OVERLAP (two copies at once: the bug the tests hunt).
"""
import argparse
import fcntl
import json
import os
import signal
import sys
import threading
import time

p = argparse.ArgumentParser()
p.add_argument("--steps", type=int, default=10)
p.add_argument("--step-seconds", type=float, default=0.05)
p.add_argument("--every", type=int, default=3)
p.add_argument("--stop-seconds", type=float, default=0.0, help="a slow emergency checkpoint")
p.add_argument("--ledger", required=True)
a = p.parse_args()

run_dir = os.environ["TRAIND_RUN_DIR"]
name = os.environ.get("TRAIND_JOB_NAME") or os.path.basename(os.path.dirname(run_dir))
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())
signal.signal(signal.SIGUSR1, lambda *_: stop.set())


def ledger(what):
    print(f"fakejob {name}: {what}", flush=True)        # the job's own output (`traind logs`)
    with open(a.ledger, "a") as f:
        f.write(json.dumps({"job": name, "what": what, "pid": os.getpid(), "t": time.time(),
                            "gpu": os.environ.get("CUDA_VISIBLE_DEVICES")}) + "\n")


def watch_control(fd):
    with os.fdopen(fd, "rb", buffering=0) as f:
        while True:
            line = f.readline()
            if not line or b"checkpoint_and_stop" in line:
                stop.set()
                return


if os.environ.get("TRAIND_CONTROL_FD"):
    threading.Thread(target=watch_control, args=(int(os.environ["TRAIND_CONTROL_FD"]),), daemon=True).start()

os.makedirs(run_dir, exist_ok=True)
lock = os.open(os.path.join(run_dir, "job.lock"), os.O_RDWR | os.O_CREAT)
try:
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
except BlockingIOError:
    ledger("OVERLAP")
    sys.exit(1)
ckpt = os.path.join(run_dir, "ckpt.json")


def save(step):
    with open(ckpt + ".tmp", "w") as f:
        json.dump({"step": step}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(ckpt + ".tmp", ckpt)


step = json.load(open(ckpt))["step"] if os.path.exists(ckpt) else 0
ledger(f"start {step}")
while step < a.steps:
    if stop.is_set():
        ledger(f"emergency {step}")
        time.sleep(a.stop_seconds)
        save(step)
        ledger(f"stop {step}")
        sys.exit(75)
    time.sleep(a.step_seconds)
    step += 1
    with open(os.path.join(run_dir, "steps.log"), "a") as f:
        f.write(f"{step}\n")
    if step % a.every == 0:
        save(step)
save(step)
if not os.path.exists(os.path.join(run_dir, "complete")):
    ledger("finished")
    open(os.path.join(run_dir, "complete"), "w").close()
sys.exit(0)
