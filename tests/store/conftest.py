import os
import signal
import time
from pathlib import Path

import pytest

from daemon import checkpoints as ck


def commit_bytes(ckpt_dir, step, payload: bytes, *, epoch=0, reason="periodic", metrics=None,
                 extra_files=None):
    """A committed checkpoint written through the real protocol, without torch."""
    pending = ck.begin(ckpt_dir, step, len(payload))
    pending.write_bytes(ck.STATE_NAME, payload)
    for name, data in (extra_files or {}).items():
        pending.file_path(name).write_bytes(data)     # hashed by commit()
    return pending.commit(step, epoch, reason, metrics or {})


@pytest.fixture
def ckpt_dir(tmp_path) -> Path:
    d = tmp_path / "run" / ck.CHECKPOINTS_SUBDIR
    d.mkdir(parents=True)
    return d


def payload(step: int, size: int = 64 * 1024) -> bytes:
    return bytes((step * 31 + i * 7) % 251 for i in range(size))


@pytest.fixture
def spawn_holder():
    """Start a real process that holds the writer lock of a dir; reaped in teardown."""
    procs = []

    def start(ckpt_dir):
        import subprocess
        import sys
        code = ("import sys, time; from daemon.checkpoints import WriterLock\n"
                f"WriterLock({str(ckpt_dir)!r}).acquire(); print('locked', flush=True); time.sleep(60)")
        p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        procs.append(p)
        assert p.stdout.readline().strip() == "locked"
        return p

    yield start
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()


def wait_dead(pid, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.01)
    raise AssertionError(f"pid {pid} still alive")

