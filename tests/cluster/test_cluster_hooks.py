"""traind.cluster.hooks: the hooks `traind run` builds from the spec (SLURM follow-up + spot watcher)."""
import json
import threading

from traind.cluster import hooks as cluster
from traind.contract import exitcodes
from traind.supervisor.spec import load_spec
from tests.cluster.fakemeta import FakeMetadata


def spec_with(tmp_path, **preemption):
    path = tmp_path / "job.yaml"
    path.write_text(json.dumps({"name": "hooks", "command": ["true"], "preemption": preemption}))
    return load_spec(path)


def test_outside_slurm_without_spot_nothing_runs(tmp_path):
    lines = []
    hooks = cluster.attach(spec_with(tmp_path), environ={})
    hooks.start(lambda reason: None, lines.append)
    hooks.stop()
    assert hooks.watcher is None and hooks.slurm_job is None and lines == []
    assert hooks.followup(object()) == exitcodes.PREEMPTED


def test_inside_slurm_the_job_and_restart_count_are_logged(tmp_path):
    lines = []
    hooks = cluster.attach(spec_with(tmp_path, requeue=False), environ={"SLURM_JOB_ID": "77",
                                                                        "SLURM_RESTART_COUNT": "3"})
    hooks.start(lambda reason: None, lines.append)
    assert lines == ["SLURM job 77, SLURM_RESTART_COUNT=3 (rerun after 3 requeue(s))"]
    assert hooks.followup(object()) == exitcodes.PREEMPTED      # requeue: false
    assert "requeue disabled" in lines[-1]


def test_spot_notice_requests_one_stop_and_the_timing_is_logged(tmp_path):
    with FakeMetadata("azure") as fake:
        spec = spec_with(tmp_path, spot={"provider": "azure", "base_url": fake.url, "poll_seconds": 0.2})
        stops, lines, stopped = [], [], threading.Event()
        hooks = cluster.attach(spec, environ={})
        hooks.start(lambda reason: (stops.append(reason), stopped.set()), lines.append)
        try:
            fake.preempt()
            assert stopped.wait(5)
        finally:
            hooks.stop()
        assert stops == ["spot termination notice (azure)"]
        assert hooks.followup(object()) == exitcodes.PREEMPTED
        assert any("termination notice to emergency checkpoint done in" in line for line in lines), lines


def test_auto_provider_off_cloud_does_not_poll(tmp_path, monkeypatch):
    monkeypatch.setattr(cluster.spot, "detect_provider", lambda: None)
    lines = []
    hooks = cluster.attach(spec_with(tmp_path, spot={"provider": "auto"}), environ={})
    hooks.start(lambda reason: None, lines.append)
    assert hooks.watcher is None and "no termination-notice polling" in lines[0]
