"""The daemon's scheduling decisions on a scripted fake OS (fast, deterministic, no processes)."""
import signal

import pytest

from traind.service.jobqueue import JobRecord, JobState, JobTable
from traind.service.daemon import Daemon, ServeConfig


class FakeProc:
    def __init__(self, pid):
        self.pid, self.rc, self.signals = pid, None, []


class FakeOS:
    def __init__(self):
        self.now, self.spawned, self.held = 0.0, [], set()

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


class Quiet:
    def __getattr__(self, name):
        return lambda *a, **k: False


def make(tmp_path, records, slots=2, **cfg):
    table = JobTable(tmp_path)
    table.jobs_dir.mkdir(parents=True, exist_ok=True)
    for rec in records:
        table.job_dir(rec.name).mkdir()
        table.save(rec)
    (tmp_path / "control").mkdir(exist_ok=True)
    osx = FakeOS()
    d = Daemon(ServeConfig(state_dir=tmp_path, slots=slots, gpus=["a", "b"], **cfg), osx, Quiet())
    d._recover()
    return d, osx, table


def test_after_a_crash_running_jobs_resume_first_but_wait_for_their_old_process(tmp_path):
    recs = [JobRecord("q1", 1), JobRecord("r2", 2, state=JobState.RUNNING), JobRecord("r3", 3, state=JobState.RUNNING),
            JobRecord("q4", 4), JobRecord("c5", 5, state=JobState.CANCELLING), JobRecord("d6", 6, state=JobState.DONE)]
    d, osx, table = make(tmp_path, recs)
    assert {n: r.state for n, r in d.records.items()}["c5"] is JobState.CANCELLED
    osx.held = {"r2"}                      # r2's old `traind run` is still checkpointing
    d._fill_slots()
    assert [(n, gpu) for n, gpu, _ in osx.spawned] == [("r3", "a"), ("q1", "b")]
    assert table.load("r3").state is JobState.RUNNING and table.load("r2").state is JobState.QUEUED
    osx.held = set()
    osx.spawned[1][2].rc = 0               # q1 finishes; its slot goes to r2 (resume first), not q4
    d._reap()
    d._fill_slots()
    assert [n for n, _, _ in osx.spawned] == ["r3", "q1", "r2"] and table.load("q1").state is JobState.DONE


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
    d._sweep()
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
