"""SIGKILL fault injection: a writer killed anywhere during a save never leaves a partial
checkpoint that discovery trusts; latest_valid() returns the previous one or the complete new one.

Writers are forked from this (already warm, torch-loaded) process, so each kill costs milliseconds.
Deterministic kills stop the writer at every named point of the protocol (each write() of state.pt,
each commit step, each prune step); random kills hit it at a random time during a larger save.
"""
import collections
import os
import random
import signal
import time

import pytest
import torch

from traind import store as ck
from traind.store import faults
from traind.jobs.engine import CheckpointEngine, load_checkpoint

torch.set_num_threads(1)
COMMITTED_AFTER = {"commit:renamed", "commit:parent-durable", "prune:renamed", "prune:durable",
                   "prune:removed", "store:committed"}


def make_state(tag: int, big: bool = False) -> dict:
    sizes = [2 ** (10 + i % 8) for i in range(12)] + ([2 ** 21] * 4 if big else [])
    return {"global_step": tag, "tag": tag,
            "tensors": [torch.full((n,), float(tag)) for n in sizes]}


def record_points(ckpt_dir) -> list[tuple[str, int]]:
    """The (point, occurrence) sequence of one save that also prunes, observed in-process."""
    seen = []
    faults.fault_hook = seen.append
    try:
        with CheckpointEngine(ckpt_dir, keep_last=1) as store:
            store.save(make_state(1), step=1, epoch=0)
            seen.clear()
            store.save(make_state(2), step=2, epoch=0)
    finally:
        faults.fault_hook = None
    counts = collections.Counter()
    points = []
    for name in seen:
        counts[name] += 1
        points.append((name, counts[name]))
    return points


def fork_writer(ckpt_dir, *, step, tag, kill_at=None, blocking=True, big=False, ready_w=None):
    """Fork a child that saves one checkpoint; with kill_at=(point, n) it SIGKILLs itself there."""
    state = make_state(tag, big)        # built before fork: the child only writes
    pid = os.fork()
    if pid:
        return pid
    code = 0
    try:
        counts = collections.Counter()

        def hook(name):
            counts[name] += 1
            if (name, counts[name]) == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
        faults.fault_hook = hook
        store = CheckpointEngine(ckpt_dir, keep_last=2)
        if ready_w is not None:
            os.write(ready_w, b"go")
        store.save(state, step=step, epoch=0, reason="periodic", blocking=blocking)
        store.flush()
        hook("store:committed")
        store.close()
    except BaseException:
        code = 3
    finally:
        os._exit(code)


def check_outcome(ckpt_dir, prev_tag, new_tag, *, must_be_new=None):
    chosen, skipped = ck.latest_valid(ckpt_dir)
    assert skipped == [], f"a partial checkpoint became visible: {skipped}"
    assert chosen is not None and chosen.valid
    state = load_checkpoint(chosen.path)                    # complete: loads and has its content
    assert state["tag"] in {prev_tag, new_tag}
    assert all(torch.all(t == float(state["tag"])) for t in state["tensors"])
    if must_be_new is not None:
        assert (state["tag"] == new_tag) == must_be_new, (state["tag"], new_tag)
    return state["tag"], chosen.step


def wait_for(pid):
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        assert os.WTERMSIG(status) == signal.SIGKILL
        return "killed"
    assert os.WEXITSTATUS(status) == 0, f"writer failed with {os.WEXITSTATUS(status)}"
    return "finished"


@pytest.mark.slow
def test_sigkill_at_every_protocol_point_and_random_times(tmp_path):
    points = record_points(tmp_path / "probe")
    names = {p for p, _ in points}
    assert {"begin:mkdir", "write", "commit:manifest-durable", "commit:renamed",
            "commit:parent-durable", "prune:renamed", "prune:removed"} <= names
    ckpt_dir = tmp_path / "run" / "checkpoints"
    pid = fork_writer(ckpt_dir, step=1, tag=1)
    assert wait_for(pid) == "finished"
    pid = fork_writer(ckpt_dir, step=2, tag=2)
    assert wait_for(pid) == "finished"
    latest_tag, latest_step, step, kills = 2, 2, 2, 0

    # 1. every named point, including each write() of state.pt, plus the same-step replacement
    #    (an emergency save at the step of the newest checkpoint) at each commit point.
    targets = [(p, False) for p in points + [("store:committed", 1)]]
    targets += [(p, True) for p in points if p[0].startswith("commit:")]
    for kill_at, same_step in targets:
        step += 1
        new_tag = latest_tag + 1000
        pid = fork_writer(ckpt_dir, step=latest_step if same_step else step, tag=new_tag, kill_at=kill_at)
        assert wait_for(pid) == "killed", kill_at
        kills += 1
        latest_tag, latest_step = check_outcome(ckpt_dir, latest_tag, new_tag,
                                                must_be_new=kill_at[0] in COMMITTED_AFTER)
        assert len([p for p in ckpt_dir.iterdir() if p.name.startswith("step-")]) >= 1

    # 2. random-time kills over a larger save, blocking and non-blocking.
    rng = random.Random(1234)
    durations = []
    for _ in range(3):          # the median of three uninterrupted saves sets the kill window
        t0 = time.perf_counter()
        step += 1
        pid = fork_writer(ckpt_dir, step=step, tag=latest_tag + 1, big=True)
        assert wait_for(pid) == "finished"
        durations.append(time.perf_counter() - t0)
        latest_tag += 1
    span = sorted(durations)[1] * 1.3
    outcomes = collections.Counter()
    for i in range(50):
        step += 1
        new_tag = latest_tag + 1
        r, w = os.pipe()
        pid = fork_writer(ckpt_dir, step=step, tag=new_tag, blocking=i % 2 == 0, big=True, ready_w=w)
        os.close(w)
        os.read(r, 2)          # the child holds the lock and starts saving now
        os.close(r)
        time.sleep(rng.uniform(0, span))
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        outcome = wait_for(pid)
        outcomes[outcome] += 1
        kills += outcome == "killed"
        latest_tag, latest_step = check_outcome(ckpt_dir, latest_tag, new_tag,
                                                must_be_new=True if outcome == "finished" else None)

    assert kills >= 100, kills
    assert outcomes["killed"] >= 10, outcomes       # the random kills really landed mid-save
    # the next writer cleans every leftover of the dead ones
    with CheckpointEngine(ckpt_dir, keep_last=2):
        pass
    left = sorted(p.name for p in ckpt_dir.iterdir() if p.name.startswith("."))
    assert left == [".lock"], left


def test_writer_lock_where_the_checkpoints_dir_cannot_be_made_or_locked_is_one_line(tmp_path, monkeypatch):
    """A file named `checkpoints`, a `.lock` that is a directory, a full disk: were tracebacks in the job."""
    import errno

    from traind import store as ck
    from traind.fs import durable as ckpt_fs
    from traind.contract.errors import TraindError
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "checkpoints").write_text("keep me")
    with pytest.raises(TraindError, match=r"a/checkpoints: cannot create the checkpoints dir: File exists$"):
        ck.WriterLock(tmp_path / "a").acquire()
    assert (tmp_path / "a" / "checkpoints").read_text() == "keep me"
    (tmp_path / "b" / "checkpoints" / ".lock").mkdir(parents=True)
    with pytest.raises(TraindError, match=r"cannot open lock file .*b/checkpoints/\.lock: Is a directory$"):
        ck.WriterLock(tmp_path / "b").acquire()

    def full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(ckpt_fs.os, "pwrite", full)
    lock = ck.WriterLock(tmp_path / "c").acquire()    # the flock holds; only the pid note is missing
    try:
        with pytest.raises(TraindError, match="locked by another process"):
            ck.WriterLock(tmp_path / "c").acquire()
    finally:
        lock.release()
