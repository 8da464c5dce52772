"""Issue 10.16: processes a job leaves behind are re-parented to the supervisor (a child
subreaper, as PID 1 of a container would be) and reaped there: no zombies, nothing that looks
alive to the lock checks."""
import sys
import time
from pathlib import Path

import pytest

from traind.fs.locks import pid_alive

from .conftest import start_traind, stop, write_spec

pytestmark = pytest.mark.slow

JOB = """
import os, sys, time
pid = os.fork()
if pid == 0:                  # the classic daemonising double fork: the grandchild is orphaned
    os.setsid()
    if os.fork() == 0:
        with open(sys.argv[1], "w") as f:
            f.write(str(os.getpid()))
        time.sleep(1.5)
        os._exit(0)
    os._exit(0)
os.waitpid(pid, 0)
time.sleep(6)
"""


def ppid_and_state(pid: int):
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return int(fields[1]), fields[0]


def test_an_orphaned_grandchild_is_adopted_and_reaped_by_the_supervisor(tmp_path, reap):
    pidfile = tmp_path / "grandchild.pid"
    spec = write_spec(tmp_path, command=[sys.executable, "-c", JOB, str(pidfile)])
    sup = start_traind("run", spec)
    reap(sup)
    try:
        deadline = time.monotonic() + 30
        while not (pidfile.exists() and pidfile.read_text()) and time.monotonic() < deadline:
            time.sleep(0.05)
        grandchild = int(pidfile.read_text())
        time.sleep(0.3)
        ppid, state = ppid_and_state(grandchild)
        assert ppid == sup.pid, "the orphan was not re-parented to the supervisor (no subreaper)"
        deadline = time.monotonic() + 4
        while ppid_and_state(grandchild) is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ppid_and_state(grandchild) is None, f"orphan left as {ppid_and_state(grandchild)} (a zombie)"
        assert not pid_alive(grandchild)
        assert sup.poll() is None          # the job itself still runs: it was not reaped by mistake
        out, err = sup.communicate(timeout=30)
        assert sup.returncode == 0, err
    finally:
        stop(sup)
