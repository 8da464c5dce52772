"""The supervisor's remote mirror (traind.supervisor.mirror) against a real S3 server (moto) on
127.0.0.1: background upload, retries and their reports, drain before exit, and the resume finder
(remote newer, fresh machine, bad remote copies, the server down). Torch-free."""
from __future__ import annotations

import json
import shutil
import time

import pytest

from traind import store as ck
from traind.supervisor.mirror import FIGURES_NAME, UPLOAD_DIR, Mirror, upload_seconds_per_gib
from traind.supervisor.osproc import SpawnFailure
from traind.store.remote import Remote
from tests.store.conftest import commit_bytes, payload
from tests.store.s3fixture import BUCKET, moto_server, s3  # noqa: F401  (fixtures)
from tests.supervisor.test_real import wait_for


class Log:
    def __init__(self):
        self.lines, self.events = [], []

    def say(self, text):
        self.lines.append(text)

    def event(self, kind, **fields):
        self.events.append((kind, fields))

    def kinds(self):
        return [k for k, _ in self.events]


@pytest.fixture
def run_dir(tmp_path):
    d = tmp_path / "run"
    (d / ck.CHECKPOINTS_SUBDIR).mkdir(parents=True)
    return d


@pytest.fixture
def mirrors():
    made = []
    yield made
    for m in made:
        m.close()


def make(s3, run_dir, mirrors, log, prefix="run1", **kw) -> Mirror:
    m = Mirror(Remote(s3.url(prefix), s3.options()), run_dir, say=log.say, event=log.event, **kw).start()
    mirrors.append(m)
    return m


def commit(run_dir, step, size=32 * 1024, reason="periodic"):
    return commit_bytes(run_dir / ck.CHECKPOINTS_SUBDIR, step, payload(step, size), reason=reason).path


def wait(cond, timeout=30.0, what="condition"):
    return wait_for(cond, timeout=timeout, what=what)


def test_each_commit_is_uploaded_in_the_background_and_measured(s3, run_dir, mirrors):
    log = Log()
    m = make(s3, run_dir, mirrors, log, keep_last=2)
    for step in (10, 20, 30):
        assert m.enqueue(commit(run_dir, step), step, "periodic")
        wait(lambda: m.committed_step == step, what=f"step {step} committed")
    wait(lambda: m.status()["uploading"] is None and "remote_pruned" in log.kinds(), what="retention")
    remote = Remote(s3.url("run1"), s3.options())
    assert [i.step for i in remote.list_checkpoints(deep=True) if i.valid] == [30, 20]   # keep_last 2, remotely too
    figures = json.loads((run_dir / FIGURES_NAME).read_text())
    assert figures["committed_step"] == 30 and figures["uploads"][-1]["step"] == 30
    assert upload_seconds_per_gib(run_dir) == figures["seconds_per_gib"] > 0
    status = m.status()
    assert status["url"] == s3.url("run1") and status["last_error"] is None and status["pending"] == []
    wait(lambda: not list((run_dir / UPLOAD_DIR).iterdir()), what="staging cleaned")


def test_failures_are_retried_with_backoff_and_reported(s3, run_dir, mirrors):
    log = Log()
    m = make(s3, run_dir, mirrors, log)
    s3.proxy.kill()
    path = commit(run_dir, 5)
    m.enqueue(path, 5, "periodic")
    wait(lambda: log.kinds().count("remote_upload_failed") >= 2, what="two failed tries")
    status = m.status()
    assert status["failures_in_a_row"] >= 2 and status["last_error"]["step"] == 5
    assert "upload" in status["last_error"]["error"] or "list" in status["last_error"]["error"]
    assert json.loads((run_dir / FIGURES_NAME).read_text())["last_error"]["step"] == 5
    fields = dict(log.events)["remote_upload_failed"]
    assert fields["checkpoint_step"] == 5 and fields["retry_in"] >= 1
    shutil.rmtree(path)                      # the job pruned it meanwhile: the staged links keep its bytes
    s3.proxy.revive()
    wait(lambda: m.committed_step == 5, what="the retry")
    assert m.status()["last_error"] is None and m.status()["failures_in_a_row"] == 0
    assert Remote(s3.url("run1"), s3.options()).latest_valid()[0].step == 5


def test_drain_waits_for_the_emergency_checkpoint(s3, run_dir, mirrors):
    log = Log()
    m = make(s3, run_dir, mirrors, log)
    m.enqueue(commit(run_dir, 3), 3, "periodic")
    wait(lambda: m.committed_step == 3)
    commit(run_dir, 4, reason="emergency")          # never announced: drain queues it itself
    said = m.drain(4, time.monotonic() + 20)
    assert said.startswith("; remotely committed at s3://") and m.committed_step == 4


def test_drain_says_when_the_grace_runs_out_and_which_step_stays(s3, run_dir, mirrors):
    log = Log()
    m = make(s3, run_dir, mirrors, log)
    m.enqueue(commit(run_dir, 3), 3, "periodic")
    wait(lambda: m.committed_step == 3)
    s3.proxy.kill()
    m.enqueue(commit(run_dir, 4, reason="emergency"), 4, "emergency")
    started = time.monotonic()
    said = m.drain(4, time.monotonic() + 2.5)
    assert time.monotonic() - started < 6
    assert "remote upload of step 4 NOT committed within the grace period" in said
    assert "the remote resume point stays step 3" in said
    assert "remote_not_committed" in log.kinds()


def test_an_urgent_checkpoint_cancels_an_older_upload():
    m = Mirror.__new__(Mirror)
    import threading
    m.cond, m.closed = threading.Condition(), False
    m.pending = {}
    older = type("I", (), {"step": 10, "reason": "periodic"})()
    assert not m._cancelled(older)
    m.pending[12] = type("I", (), {"step": 12, "reason": "periodic"})()
    assert not m._cancelled(older)                    # periodic: the older one finishes first
    m.pending[14] = type("I", (), {"step": 14, "reason": "emergency"})()
    assert m._cancelled(older)


def local_finder(run_dir):
    return ck.latest_valid(ck.checkpoints_dir(run_dir))


def seed_remote(s3, tmp_path, steps, prefix="run1"):
    """Upload checkpoints from another machine's run dir."""
    other = tmp_path / "other-machine"
    (other / ck.CHECKPOINTS_SUBDIR).mkdir(parents=True, exist_ok=True)
    remote = Remote(s3.url(prefix), s3.options())
    for step in steps:
        remote.upload(commit(other, step), step)
    return remote


def test_a_fresh_machine_resumes_from_the_newest_remote_checkpoint(s3, run_dir, tmp_path, mirrors):
    seed_remote(s3, tmp_path, [10, 20])
    shutil.rmtree(run_dir)                                        # nothing local at all
    log = Log()
    m = make(s3, tmp_path / "run", mirrors, log)
    info, skipped = m.resume_finder(local_finder)(tmp_path / "run")
    assert info.step == 20 and info.path == tmp_path / "run" / "checkpoints" / "step-000000020"
    assert ck.verify(info.path).valid and skipped == []
    assert "remote_downloaded" in log.kinds() and m.committed_step == 20 and m.refuse_spawn() is None
    assert any("downloaded step 20" in line and "every checksum verified" in line for line in log.lines)


def test_a_newer_remote_wins_over_local_and_an_older_one_does_not(s3, run_dir, tmp_path, mirrors):
    seed_remote(s3, tmp_path, [10, 30])
    commit(run_dir, 20)
    m = make(s3, run_dir, mirrors, Log())
    info, _ = m.resume_finder(local_finder)(run_dir)
    assert info.step == 30 and info.path.parent == run_dir / "checkpoints"
    commit(run_dir, 40)
    info, _ = m.resume_finder(local_finder)(run_dir)
    assert info.step == 40


def test_a_bad_remote_copy_is_skipped_with_its_reason(s3, run_dir, tmp_path, mirrors):
    seed_remote(s3, tmp_path, [10, 20, 30])
    fs = s3.fs()
    key = f"{BUCKET}/run1/step-000000030/state.pt"
    data = bytearray(fs.cat_file(key))
    data[7] ^= 1
    fs.pipe_file(key, bytes(data))                               # 30: a flipped byte
    fs.rm_file(f"{BUCKET}/run1/step-000000020/MANIFEST.json")    # 20: no manifest
    m = make(s3, run_dir, mirrors, Log())
    info, skipped = m.resume_finder(local_finder)(run_dir)
    assert info.step == 10
    reasons = {s.step: s.error for s in skipped}
    assert "checksum mismatch" in reasons[30] and "missing manifest" in reasons[20]
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir() if p.name != ".lock") == ["step-000000010"]


def test_the_server_down_at_resume_time(s3, run_dir, tmp_path, mirrors):
    seed_remote(s3, tmp_path, [10])
    s3.proxy.kill()
    commit(run_dir, 5)
    log = Log()
    m = make(s3, run_dir, mirrors, log)
    info, _ = m.resume_finder(local_finder)(run_dir)              # falls back to local
    assert info.step == 5 and m.refuse_spawn() is None
    assert any("cannot use the remote" in line and "resuming from local step 5" in line for line in log.lines)
    shutil.rmtree(run_dir / "checkpoints")
    info, _ = m.resume_finder(local_finder)(run_dir)              # nothing local: refuse, one line
    refusal = m.refuse_spawn()
    assert info is None and isinstance(refusal, SpawnFailure)
    assert refusal.message.startswith("no local checkpoint and the remote cannot be used (s3://")
    assert "not starting fresh" in refusal.message and "\n" not in refusal.message
    assert m.refuse_spawn() is None                               # said once


def test_only_checkpoints_of_this_run_are_uploaded(s3, run_dir, tmp_path, mirrors):
    log = Log()
    m = make(s3, run_dir, mirrors, log)
    elsewhere = tmp_path / "elsewhere" / ck.CHECKPOINTS_SUBDIR          # a path the job named: not ours
    elsewhere.mkdir(parents=True)
    foreign = commit_bytes(elsewhere, 7, payload(7)).path
    assert not m.enqueue(foreign, 7, "periodic")
    assert any("not a checkpoint of this run's checkpoints dir" in line for line in log.lines)
    assert m.status()["pending"] == [] and not m.enqueue(None, 7, "periodic") and not m.enqueue(foreign, "7", None)
