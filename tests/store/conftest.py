import os
import signal
import time
from pathlib import Path

import pytest

from traind import store as ck


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
        code = ("import sys, time; from traind.store import WriterLock\n"
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



@pytest.fixture
def durability_trace(monkeypatch):
    """Record, in order, every fsync (by path), rename and rmtree the store makes.

    A SIGKILL test cannot see a missing fsync (the page cache survives a killed process); this
    trace can: tests assert the commit protocol's order of durable steps."""
    import shutil
    events = []
    real_fsync, real_rename, real_rmtree = os.fsync, os.rename, shutil.rmtree

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def rename(src, dst, *a, **kw):
        events.append(("rename", os.fspath(src), os.fspath(dst)))
        return real_rename(src, dst, *a, **kw)

    def rmtree(path, *a, **kw):
        events.append(("rmtree", os.fspath(path)))
        return real_rmtree(path, *a, **kw)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", rename)
    monkeypatch.setattr(shutil, "rmtree", rmtree)
    return events


def assert_commit_order(events, ckpt_dir, step, files):
    """The commit protocol of one checkpoint, in `events` from durability_trace: every file
    fsynced in the temp dir, then the manifest, then the temp dir, then the rename to step-N,
    then the checkpoints dir. Returns the index of that last fsync."""
    ckpt_dir = os.path.realpath(ckpt_dir)
    final = os.path.join(ckpt_dir, ck.step_dir_name(step))
    renames = [i for i, e in enumerate(events) if e[0] == "rename" and e[2] == final]
    assert len(renames) == 1, events
    r = renames[0]
    tmp = events[r][1]
    assert os.path.basename(tmp).startswith(ck.TMP_PREFIX) and os.path.dirname(tmp) == ckpt_dir

    def index(path, lo=0, hi=None, first=False):
        hits = [i for i, e in enumerate(events[lo:hi], lo) if e == ("fsync", path)]
        assert hits, f"no fsync of {path} in {events[lo:hi]}"
        return hits[0] if first else hits[-1]
    manifest = index(os.path.join(tmp, ck.MANIFEST_NAME), 0, r)
    for name in files:
        assert index(os.path.join(tmp, name), 0, r) < manifest, (name, events)
    tmpdir = index(tmp, 0, r)
    assert manifest < tmpdir < r, events
    parent = index(ckpt_dir, r, first=True)
    assert all(e[0] not in ("rename", "rmtree") for e in events[r + 1:parent]), events
    return parent
