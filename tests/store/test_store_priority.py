"""The background writer's CPU priority and the buffer warm-up: the writer really runs under
SCHED_IDLE, flush() (what the emergency path calls) raises it back or does the rest itself, and a
save after prepare() allocates nothing while the caller waits."""
import os
import threading
import time

import pytest
import torch

from traind import store as ck
from traind.store import faults
from traind.jobs.engine import priority, snapshot, writer
from traind.jobs.engine import CheckpointEngine, load_checkpoint

torch.set_num_threads(1)
pytestmark = pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="Linux scheduling policies")


def state_of(tag: float, blocks: int = 3) -> dict:
    """A few 16 MiB blocks of tensors, so a save has several blocks to hand over."""
    return {"global_step": int(tag), "t": [torch.full((4 << 20,), tag) for _ in range(blocks)]}


def can_raise_back() -> bool:
    """Going back from SCHED_IDLE needs CAP_SYS_NICE or RLIMIT_NICE; probed in a thread."""
    result = []

    def probe():
        result.append(priority.lower_priority() and priority.raise_priority())
    t = threading.Thread(target=probe)
    t.start()
    t.join()
    return result[0]


class Points:
    """A fault hook recording, per named point, the thread and its scheduling policy there."""

    def __init__(self, stop_at=None):
        self.seen, self.names, self.stop_at = [], [], stop_at
        self.reached, self.go = threading.Event(), threading.Event()

    def __call__(self, point):
        self.seen.append((point, threading.get_native_id(), os.sched_getscheduler(0)))
        self.names.append((point, threading.current_thread().name, os.getpriority(os.PRIO_PROCESS, 0)))
        if point == self.stop_at and not self.reached.is_set():
            self.reached.set()
            assert self.go.wait(20)

    def policies(self, point, tid=None):
        return [p for name, t, p in self.seen if name == point and (tid is None or t == tid)]


@pytest.fixture(autouse=True)
def no_deadline(monkeypatch):
    """A store's first interval counts from its creation, a moment before these saves: without
    this, the deadline would hurry every save at once."""
    import traind.jobs.engine.engine as store_module
    monkeypatch.setattr(store_module, "DEADLINE_FRACTION", 1e6)


@pytest.fixture
def points():
    def install(stop_at=None):
        faults.fault_hook = Points(stop_at)
        return faults.fault_hook
    yield install
    faults.fault_hook = None


def test_the_writer_thread_runs_under_sched_idle_and_plans_at_normal(tmp_path, points):
    hook = points()
    main = threading.get_native_id()
    committed = threading.Event()
    with CheckpointEngine(tmp_path, on_commit=lambda info: committed.set()) as store:
        store.save(state_of(1.0), step=1, epoch=0, blocking=False)
        assert committed.wait(30)           # no flush(): it would hurry the writer
        writes = [(t, p) for name, t, p in hook.seen if name == "write"]
        assert writes and all(t != main and p == os.SCHED_IDLE for t, p in writes), writes
        assert hook.policies("begin:mkdir") == [os.SCHED_OTHER]   # planning holds the GIL: normal
        assert store.flush().stats["priority"] == "idle"
        assert store.save(state_of(2.0), step=2, epoch=0).stats["writer_cpu_seconds"] > 0
    assert set(hook.policies("write", main)) == {os.SCHED_OTHER}   # a blocking save: the caller's


def test_flush_raises_the_writer_back_to_normal_priority(tmp_path, points):
    if not can_raise_back():
        pytest.skip("no CAP_SYS_NICE / RLIMIT_NICE: SCHED_IDLE cannot be undone here")
    hook = points(stop_at="write")
    with CheckpointEngine(tmp_path) as store:
        store.save(state_of(1.0), step=1, epoch=0, blocking=False)
        assert hook.reached.wait(20)
        tid = store._thread.tid
        assert os.sched_getscheduler(tid) == os.SCHED_IDLE
        flusher = threading.Thread(target=store.flush)     # as the emergency path does
        flusher.start()
        deadline = time.monotonic() + 20
        while os.sched_getscheduler(tid) != os.SCHED_OTHER and time.monotonic() < deadline:
            time.sleep(0.01)
        assert os.sched_getscheduler(tid) == os.SCHED_OTHER
        hook.go.set()
        flusher.join(30)
        info = store.flush()
    assert info.stats["priority"] == "raised"
    assert set(hook.policies("commit:renamed")) == {os.SCHED_OTHER}
    assert torch.equal(load_checkpoint(info.path)["t"][2], state_of(1.0)["t"][2])


def test_where_it_cannot_be_raised_flush_writes_the_rest_itself(tmp_path, points, monkeypatch):
    monkeypatch.setattr(writer, "raise_priority", lambda tid=None: False)    # unprivileged
    hook = points(stop_at="write")
    main = threading.get_native_id()
    with CheckpointEngine(tmp_path) as store:
        store.save(state_of(1.0, blocks=4), step=1, epoch=0, blocking=False)
        assert hook.reached.wait(20)
        releaser = threading.Timer(0.3, hook.go.set)       # the writer is stuck mid-block
        releaser.start()
        info = store.flush()
        releaser.join()
    mine = [p for name, t, p in hook.seen if name == "write" and t == main]
    assert mine and set(mine) == {os.SCHED_OTHER}          # the caller wrote blocks itself
    assert info.stats["priority"] == "idle" and info.stats["writer_cpu_seconds"] > 0
    loaded = load_checkpoint(info.path)
    assert all(torch.equal(t, torch.full((4 << 20,), 1.0)) for t in loaded["t"])


def test_a_save_running_late_goes_back_to_normal_before_the_next_is_due(tmp_path, points, monkeypatch):
    if not can_raise_back():
        pytest.skip("no CAP_SYS_NICE / RLIMIT_NICE: SCHED_IDLE cannot be undone here")
    import traind.jobs.engine.engine as store_module
    monkeypatch.setattr(store_module, "DEADLINE_FRACTION", 0.0)   # due at once
    hook = points()
    committed = threading.Semaphore(0)
    with CheckpointEngine(tmp_path, on_commit=lambda info: committed.release()) as store:
        store.save(state_of(1.0), step=1, epoch=0, blocking=False)
        assert committed.acquire(timeout=30)
        hook.seen.clear()
        store.save(state_of(2.0), step=2, epoch=0, blocking=False)   # has an interval: a deadline
        assert committed.acquire(timeout=30)                 # no flush(): the deadline's timer
        info = store.flush()
    # raised back, or hurried before it went idle at all; either way it ends at normal priority
    assert info.stats["priority"] in ("raised", "normal") and info.stats["priority"] != "idle"
    assert hook.policies("commit:renamed") == [os.SCHED_OTHER]


def test_the_deadline_timer_writes_the_rest_where_raising_is_refused(tmp_path, points, monkeypatch):
    """A starved SCHED_IDLE thread cannot raise itself; the deadline is kept by a timer made by
    the caller (normal priority), which writes the remaining blocks itself if need be."""
    import traind.jobs.engine.engine as store_module
    monkeypatch.setattr(store_module, "DEADLINE_FRACTION", 0.0)
    monkeypatch.setattr(writer, "raise_priority", lambda tid=None: False)    # unprivileged
    hook = points(stop_at="write")
    committed = threading.Event()
    with CheckpointEngine(tmp_path, on_commit=lambda info: committed.set()) as store:
        store.save(state_of(1.0, blocks=4), step=1, epoch=0, blocking=False)
        if hook.reached.wait(20):                   # the writer went idle and is stuck mid-block
            threading.Timer(0.3, hook.go.set).start()
        assert committed.wait(30)                   # no flush(): the timer finished the save
        info = store.flush()
    timer = [(name, nice) for point, name, nice in hook.names if point == "write" and name.endswith("-deadline")]
    assert timer and all(nice == os.getpriority(os.PRIO_PROCESS, 0) for _, nice in timer)
    assert info.stats["helped_blocks"] >= 1
    assert ck.verify(info.path).valid


@pytest.mark.parametrize("policy, lowered_by", [("nice", priority.NICE_STEP), ("normal", 0)])
def test_writer_priority_nice_and_normal_stay_sched_other(tmp_path, points, monkeypatch, policy, lowered_by):
    monkeypatch.setenv(priority.PRIORITY_ENV, policy)
    base = os.getpriority(os.PRIO_PROCESS, 0)
    hook = points()
    committed = threading.Event()
    with CheckpointEngine(tmp_path, on_commit=lambda info: committed.set()) as store:
        store.save(state_of(1.0), step=1, epoch=0, blocking=False)
        assert committed.wait(30)
        assert store.flush().stats["priority"] == policy
    writes = [nice for point, name, nice in hook.names if point == "write"]
    assert writes and set(writes) == {min(19, base + lowered_by)}
    assert set(hook.policies("write")) == {os.SCHED_OTHER}


def test_after_prepare_the_first_save_allocates_nothing_in_the_caller(tmp_path, monkeypatch):
    made = []
    real = snapshot._new_buffer

    def traced(shape, dtype, pin):
        made.append((threading.current_thread().name, os.sched_getscheduler(0)))
        return real(shape, dtype, pin)
    monkeypatch.setattr(snapshot, "_new_buffer", traced)
    model = torch.nn.Sequential(torch.nn.Linear(512, 1024), torch.nn.Linear(1024, 8))
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(4, 512)).sum().backward()
    opt.step()
    state = lambda: {"state_dict": model.state_dict(), "optimizer_states": [opt.state_dict()]}  # noqa: E731
    with CheckpointEngine(tmp_path) as store:
        store.prepare(state())
        deadline = time.monotonic() + 30
        while not store._snap.prepared() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert made and {m for m in made} == {("traind-ckpt-prepare", os.SCHED_IDLE)}
        ready = {k: v.data_ptr() for k, v in store._snap._prepared.items()}
        with torch.no_grad():                           # training goes on after prepare()
            model[0].weight.add_(1.0)
        count = len(made)
        store.save(state(), step=1, epoch=0, blocking=False)
        assert len(made) == count and store._snap.allocated_in_take == 0
        assert {k: v.data_ptr() for k, v in store._snap._buffers.items()} == ready
        info = store.flush()
        store.prepare(state())                          # nothing missing: no thread at all
        assert store._snap._preparing is None
    assert torch.equal(load_checkpoint(info.path)["state_dict"]["0.weight"], model[0].weight.detach())


def test_a_save_during_prepare_takes_over_and_is_exact(tmp_path, monkeypatch):
    started, release = threading.Event(), threading.Event()
    real = snapshot._new_buffer

    def slow(shape, dtype, pin):
        if threading.current_thread().name == "traind-ckpt-prepare":
            started.set()
            release.wait(0.5)
        return real(shape, dtype, pin)
    monkeypatch.setattr(snapshot, "_new_buffer", slow)
    state = state_of(3.0)
    with CheckpointEngine(tmp_path) as store:
        store.prepare(state)
        assert started.wait(10)
        store.save(state, step=1, epoch=0, blocking=False)   # stops the warm-up, adopts its buffers
        assert 0 < store._snap.allocated_in_take < 3
        info = store.flush()
    assert ck.verify(info.path).valid
    assert all(torch.equal(t, torch.full((4 << 20,), 3.0)) for t in load_checkpoint(info.path)["t"])


def test_a_save_that_ran_late_brings_the_next_deadline_forward(tmp_path, monkeypatch):
    """A save still running when the next one is called (a slow disk) makes the following
    deadline come early enough for the time it needed once hurried; quick saves keep halfway."""
    import traind.jobs.engine.engine as store_module
    monkeypatch.setattr(store_module, "DEADLINE_FRACTION", 0.5)
    slow = threading.Event()
    faults.fault_hook = lambda point: time.sleep(0.03) if point == "write" and slow.is_set() else None
    try:
        with CheckpointEngine(tmp_path) as store:
            for step in (1, 2, 3, 4):                  # the first interval counts from the store's start
                store.save(state_of(float(step)), step=step, epoch=0, blocking=False)
                time.sleep(0.4)
            store.flush()
            store._tail = 0.0                          # no save ran late: halfway
            assert store._deadline_after(0.4) == 0.2
            slow.set()                                 # from now on each write takes 30 ms more
            store.save(state_of(5.0), step=5, epoch=0, blocking=False)
            time.sleep(0.4)
            store.save(state_of(6.0), step=6, epoch=0, blocking=False)   # step 5 still running
            assert store._tail > 0.2                   # what step 5 needed after being hurried
            assert store._thread._timer.interval < 0.1     # halfway would be 0.2; 0.4 - 1.5 x the tail
            info = store.flush()
        assert info.step == 6 and ck.verify(info.path).valid
    finally:
        faults.fault_hook = None
