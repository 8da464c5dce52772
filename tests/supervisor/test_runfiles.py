"""RUN_DIR files: the run lock (and asking about it), atomic status.json, tolerant events reading."""
import json
import subprocess
import sys
import threading

import pytest

from traind.contract.errors import TraindError
from traind.supervisor.runfiles import RunFiles, RunLock, lock_is_held, read_events, read_status

from .conftest import REPO

HOLD = """
import sys, time
sys.path.insert(0, {repo!r})
from traind.supervisor.runfiles import RunLock
RunLock({run!r}).acquire()
print("held", flush=True)
time.sleep(30)
"""


def test_lock_refuses_a_second_holder_and_asking_never_takes_it(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD.format(repo=str(REPO), run=str(tmp_path))],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert lock_is_held(tmp_path)
        with pytest.raises(TraindError, match=f"run dir in use by traind supervisor pid {holder.pid}"):
            RunLock(tmp_path).acquire()
    finally:
        holder.kill()
        holder.wait()
    assert not lock_is_held(tmp_path)
    stop = threading.Event()

    def ask():
        while not stop.is_set():
            lock_is_held(tmp_path)
    askers = [threading.Thread(target=ask) for _ in range(2)]
    for t in askers:
        t.start()
    try:
        for _ in range(50):          # status readers polling must never make a start fail
            RunLock(tmp_path).acquire().release()
    finally:
        stop.set()
        for t in askers:
            t.join()


def test_status_is_replaced_atomically_and_events_survive_a_torn_line(tmp_path):
    files = RunFiles(tmp_path)
    files.create()
    seen, stop = [], threading.Event()

    def read():
        while not stop.is_set():
            seen.append(read_status(tmp_path))   # raises on a half-written file
    reader = threading.Thread(target=read)
    reader.start()
    try:
        for i in range(300):
            files.write_status({"n": i, "pad": "x" * 5000})
    finally:
        stop.set()
        reader.join()
    assert read_status(tmp_path)["n"] == 299 and all(s is None or len(s["pad"]) == 5000 for s in seen)
    files.append_event({"event": "a"})
    with open(files.events_path, "a") as f:
        f.write('{"event": "torn')                # a crash in the middle of a line
    files.append_event({"event": "b"}, durable=True)
    assert [e["event"] for e in read_events(tmp_path)] == ["a", "b"]
    assert json.loads(files.events_path.read_text().splitlines()[0]) == {"event": "a"}


def test_lock_holder_record_on_a_full_disk_does_not_fail_the_lock(tmp_path, monkeypatch):
    """A full disk at start-up (or at a respawn) was an OSError traceback from `traind run`."""
    import errno
    import os as os_module

    from traind.supervisor import runfiles

    def full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(runfiles.os, "pwrite", full)
    lock = runfiles.RunLock(tmp_path).acquire()
    try:
        lock.record(child_pid=os_module.getpid())
        assert runfiles.lock_is_held(tmp_path)
    finally:
        lock.release()


def test_run_lock_that_cannot_be_opened_is_one_line(tmp_path):
    (tmp_path / "supervisor.lock").mkdir()      # or a read-only mount: was an OSError traceback
    with pytest.raises(TraindError, match=r"supervisor\.lock: cannot open the run lock: Is a directory$"):
        RunLock(tmp_path).acquire()
