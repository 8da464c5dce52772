"""The daemon's scheduling decisions on a scripted fake OS (fast, deterministic, no processes)."""
import signal

import pytest

from traind.service import spool
from traind.service.jobqueue import JobRecord, JobState, JobTable
from traind.service.daemon import Daemon, ServeConfig


class FakeProc:
    def __init__(self, pid):
        self.pid, self.rc, self.signals = pid, None, []


class FakeOS:
    def __init__(self):
        self.now, self.spawned, self.held = 0.0, [], set()
        self.killed_holders, self.busy_gpus = [], set()     # busy_gpus: a faked NVML reading

    def spawn(self, argv, env, log_path):
        proc = FakeProc(100 + len(self.spawned))
        self.spawned.append((argv[-1].split("/")[-2], env["CUDA_VISIBLE_DEVICES"], proc))
        return proc

    def signal(self, proc, sig, group=False):
        proc.signals.append(sig)

    def kill_job_tree(self, proc, run_dir):
        proc.signals.append(signal.SIGKILL)

    def poll(self, proc):
        return proc.rc

    def monotonic(self):
        return self.now

    def run_dir_holder(self, run_dir):
        return "old pid" if run_dir.parent.name in self.held else None

    def kill_holder(self, run_dir):
        self.killed_holders.append(run_dir.parent.name)

    def gpu_busy(self, device):
        return None if self.busy_gpus is None else device in self.busy_gpus


class Quiet:
    def __getattr__(self, name):
        return lambda *a, **k: False


def make(tmp_path, records, slots=2, held=(), **cfg):
    table = JobTable(tmp_path)
    table.jobs_dir.mkdir(parents=True, exist_ok=True)
    for rec in records:
        table.job_dir(rec.name).mkdir()
        table.save(rec)
    (tmp_path / "control").mkdir(exist_ok=True)
    osx = FakeOS()
    osx.held = set(held)
    d = Daemon(ServeConfig(state_dir=tmp_path, slots=slots, gpus=["a", "b"], **cfg), osx, Quiet())
    d._recover()
    return d, osx, table


def test_after_a_crash_running_jobs_resume_first_and_an_old_process_keeps_its_slot(tmp_path):
    """Issue 24: r2's orphaned `traind run` still checkpoints after the restart: it holds its slot
    (no third job beside it on two slots) and nothing queued overtakes the interrupted jobs."""
    recs = [JobRecord("q1", 1), JobRecord("r2", 2, state=JobState.RUNNING, slot=0),
            JobRecord("r3", 3, state=JobState.RUNNING, slot=1),
            JobRecord("q4", 4), JobRecord("c5", 5, state=JobState.CANCELLING), JobRecord("d6", 6, state=JobState.DONE)]
    d, osx, table = make(tmp_path, recs, held={"r2"})     # r2's old `traind run` is still checkpointing
    assert {n: r.state for n, r in d.records.items()}["c5"] is JobState.CANCELLED
    d._fill_slots()
    assert [(n, gpu) for n, gpu, _ in osx.spawned] == [("r3", "b")]        # r2 keeps slot 0 (gpu a)
    assert table.load("r2").state is JobState.QUEUED and "holds slot 0" in table.load("r2").reason
    d._fill_slots()
    assert len(osx.spawned) == 1                                          # q1 waits behind r2
    osx.held = set()
    d._fill_slots()                                                        # r2's old process is gone
    assert [(n, gpu) for n, gpu, _ in osx.spawned] == [("r3", "b"), ("r2", "a")]
    osx.spawned[0][2].rc = 0               # r3 finishes; its slot goes to q1, then q4 after it
    d._reap()
    d._fill_slots()
    assert [n for n, _, _ in osx.spawned] == ["r3", "r2", "q1"] and table.load("r3").state is JobState.DONE


def test_an_old_process_past_its_grace_is_killed_and_its_slot_freed(tmp_path):
    d, osx, table = make(tmp_path, [JobRecord("r1", 1, state=JobState.RUNNING, slot=0), JobRecord("q2", 2)],
                         slots=1, held={"r1"})
    (table.job_dir("r1") / "spec.yaml").write_text("preemption: {grace_seconds: 10}\n")
    d.book.draining["r1"].bound = 10 + 30
    osx.now = 39.0
    d._fill_slots()
    assert osx.killed_holders == [] and osx.spawned == []
    osx.now = 41.0
    d._fill_slots()
    assert osx.killed_holders == ["r1"] and osx.spawned == []         # killed; gone at the next look
    osx.held = set()
    d._fill_slots()
    assert [n for n, _, _ in osx.spawned] == ["r1"]


def test_a_slot_is_handed_on_only_once_its_gpu_is_empty(tmp_path):
    """Issue 24: NVML read faked. The job that left slot 0 still shows on GPU a: q2 waits, for at
    most GPU_SETTLE_SECONDS; a slot nobody left recently is not asked about."""
    from traind.service.slots import GPU_SETTLE_SECONDS
    d, osx, table = make(tmp_path, [JobRecord("q1", 1), JobRecord("q2", 2)], slots=1)
    d._fill_slots()
    osx.spawned[0][2].rc = 0
    osx.busy_gpus = {"a"}
    d._reap()
    d._fill_slots()
    assert [n for n, _, _ in osx.spawned] == ["q1"]                   # GPU a still busy
    osx.busy_gpus = set()
    d._fill_slots()
    assert [(n, gpu) for n, gpu, _ in osx.spawned] == [("q1", "a"), ("q2", "a")]
    osx.spawned[1][2].rc = 0
    osx.busy_gpus = {"a"}
    d._reap()
    osx.now += GPU_SETTLE_SECONDS + 1                                  # busy for too long: handed on
    d._fill_slots()
    assert len(osx.spawned) == 2        # q2 was the last job: nothing left to launch
    osx.busy_gpus = None                                               # no NVML: not a reason to wait
    assert d._settled_slot([0], osx.now) == 0


def test_stop_signals_all_then_kills_at_the_deadline_and_keeps_them_queued(tmp_path):
    d, osx, table = make(tmp_path, [JobRecord("a", 1), JobRecord("b", 2)], stop_timeout=10)
    d._fill_slots()
    (_, _, pa), (_, _, pb) = osx.spawned
    d._signals.append(signal.SIGTERM)
    d._handle_signals()
    assert pa.signals == [signal.SIGTERM] and pb.signals == [signal.SIGTERM]
    pa.rc = 75                              # a checkpointed in time
    osx.now = 11.0                          # b did not
    d._reap()
    d._enforce_deadlines()
    assert pb.signals == [signal.SIGTERM, signal.SIGKILL]
    pb.rc = 137
    d._reap()
    assert table.load("a").state is JobState.QUEUED and table.load("b").state is JobState.QUEUED
    assert d.stopping and not d.running


def test_a_runner_that_cannot_start_fails_that_job_only(tmp_path):
    d, osx, table = make(tmp_path, [JobRecord("a", 1), JobRecord("b", 2)], slots=1)

    def broken_spawn(argv, env, log_path):
        raise FileNotFoundError(2, "No such file or directory", argv[0])
    osx.spawn = broken_spawn
    d._fill_slots()
    assert table.load("a").state is JobState.FAILED and "cannot start" in table.load("a").reason
    assert table.load("b").state is JobState.QUEUED     # tried next tick, the daemon keeps serving


def test_retention_sweep_removes_only_old_refusals_and_stale_temp_files(tmp_path):
    import os
    import time
    d, osx, table = make(tmp_path, [])
    refused = tmp_path / "spool/.refused"
    refused.mkdir(parents=True)
    old, new, tmp_old, folder = refused / "old.yaml.1", refused / "new.yaml.2", tmp_path / "spool/.tmp-x-1", refused / "d"
    for p in (old, new, tmp_old):
        p.write_text("x")
    folder.mkdir()
    week = time.time() - 8 * 86400
    for p in (old, tmp_old, folder):
        os.utime(p, (week, week))
    spool.sweep(d.cfg.spool_dir, d.cfg.keep_refused_days)
    assert sorted(p.name for p in refused.iterdir()) == ["d", "new.yaml.2"] and not tmp_old.exists()


def test_cancel_requested_while_the_daemon_was_down_is_applied_before_any_relaunch(tmp_path):
    d, osx, table = make(tmp_path, [JobRecord("r1", 1, state=JobState.RUNNING), JobRecord("q2", 2)])
    (tmp_path / "control/cancel-r1").write_text("")
    d._handle_cancel_requests()             # serve_forever's order: cancels, then fill the slots
    d._fill_slots()
    assert [n for n, _, _ in osx.spawned] == ["q2"] and table.load("r1").state is JobState.CANCELLED


def test_ready_is_sent_once_running_jobs_are_relaunched(tmp_path):
    """READY=1 (what `systemctl start` waits for) comes after the spool is watched and the jobs
    that were running are relaunched, not before."""
    import pytest

    class Ready(Exception):
        pass
    calls = []

    class Notify(Quiet):
        def ready(self, status):
            calls.append(("ready", [n for n, _, _ in osx.spawned], status))
            raise Ready

    class Thread:
        def stop(self):
            pass

        def shutdown(self, wait=True):
            pass
    (tmp_path / "spool").mkdir(exist_ok=True)
    d, osx, table = make(tmp_path, [JobRecord("r1", 1, state=JobState.RUNNING), JobRecord("q2", 2)])
    d.notify = Notify()

    def observer(*a):
        calls.append(("watching", list(osx.spawned)))
        return Thread()
    with pytest.raises(Ready):
        d.serve_forever(observer_factory=observer, scheduler_factory=lambda *a: Thread())
    assert [c[0] for c in calls] == ["watching", "ready"] and calls[0][1] == []
    assert calls[1][1] == ["r1", "q2"] and "2 running" in calls[1][2], calls


def test_cancel_request_for_a_spec_still_in_the_spool_waits_for_it_and_it_never_runs(tmp_path):
    """`traind submit X && traind cancel X`: the request can land before the daemon accepts X."""
    import yaml
    from traind.service import spool
    d, osx, table = make(tmp_path, [])
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir(mode=0o700, exist_ok=True)
    spec = {"name": "early", "command": ["true"], "workdir": str(tmp_path)}
    spool.submit(spool_dir, "early", yaml.safe_dump(spec).encode())
    (tmp_path / "control/cancel-early").write_text("")
    d._handle_cancel_requests()              # before intake: the request must survive
    assert (tmp_path / "control/cancel-early").exists()
    d._rescan(settle=0)                      # the spec is accepted (queued) ...
    d._handle_cancel_requests()              # ... and cancelled before any slot is filled
    d._fill_slots()
    assert osx.spawned == [] and table.load("early").state is JobState.CANCELLED
    assert not (tmp_path / "control/cancel-early").exists()


def test_ls_says_which_slot_an_old_process_still_holds(tmp_path):
    import subprocess
    import sys
    make(tmp_path, [JobRecord("r1", 1, state=JobState.RUNNING, slot=1)], held={"r1"})
    out = subprocess.run([sys.executable, "-m", "traind", "ls", "--state-dir", str(tmp_path)],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert "(its old process still stops (holds slot 1))" in out.stdout, out.stdout
