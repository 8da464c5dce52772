"""Stand-in for `traind run SPEC [--set k=v]` (docs/contracts.md section 3), used while testing the
daemon on its own: holds RUN_DIR/supervisor.lock (inherited by the child, so it outlives a killed
supervisor while the child runs), runs the spec's command with the protocol env, forwards SIGTERM
(= emergency checkpoint, exit 75) and exits with the child's code. No restarts.
"""
import fcntl
import json
import os
import signal
import subprocess
import sys
import time

import yaml

spec_path, sets = sys.argv[1], sys.argv[2:]
spec = yaml.safe_load(open(spec_path))
for i in range(0, len(sets), 2):
    assert sets[i] == "--set", sets
    key, value = sets[i + 1].split("=", 1)
    spec[key] = value
workdir = os.path.join(os.path.dirname(os.path.abspath(spec_path)), spec.get("workdir", "."))
run_dir = os.path.join(workdir, spec.get("run_dir", "runs/" + spec["name"]))
os.makedirs(os.path.join(run_dir, "logs"), exist_ok=True)
lock = os.open(os.path.join(run_dir, "supervisor.lock"), os.O_RDWR | os.O_CREAT)
try:
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
except BlockingIOError:
    print(f"{run_dir}/supervisor.lock: locked", file=sys.stderr)
    sys.exit(1)
os.ftruncate(lock, 0)
os.write(lock, f"{os.getpid()}\n".encode())
os.set_inheritable(lock, True)

term = []
signal.signal(signal.SIGTERM, lambda *_: term.append(1))
attempt = len(os.listdir(os.path.join(run_dir, "logs"))) + 1
env = dict(os.environ, TRAIND_RUN_DIR=run_dir, TRAIND_JOB_NAME=spec["name"], TRAIND_ATTEMPT=str(attempt),
           **{k: str(v) for k, v in (spec.get("env") or {}).items()})
with open(os.path.join(run_dir, "logs", f"attempt-{attempt}.log"), "ab") as out:
    child = subprocess.Popen(spec["command"], cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT,
                             pass_fds=(lock,))
forwarded = False
while child.poll() is None:
    if term and not forwarded:
        child.send_signal(signal.SIGTERM)
        forwarded = True
    time.sleep(0.05)
rc = child.returncode if child.returncode >= 0 else 128 - child.returncode
with open(os.path.join(run_dir, "status.json"), "w") as f:
    json.dump({"name": spec["name"], "exit_code": rc}, f)
sys.exit(rc)
