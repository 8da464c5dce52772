"""The job lifecycle table and the durable records (fast, no processes)."""
import json

import pytest

from daemon.jobqueue import Event, IllegalTransition, JobRecord, JobState as S, JobTable, transition

EDGES = [
    (S.QUEUED, Event.LAUNCHED, None, S.RUNNING),
    (S.QUEUED, Event.CANCEL, None, S.CANCELLED),
    (S.RUNNING, Event.EXITED, 0, S.DONE),
    (S.RUNNING, Event.EXITED, 75, S.QUEUED),
    (S.RUNNING, Event.EXITED, 1, S.FAILED),
    (S.RUNNING, Event.EXITED, 2, S.FAILED),
    (S.RUNNING, Event.EXITED, 137, S.FAILED),
    (S.RUNNING, Event.CANCEL, None, S.CANCELLING),
    (S.RUNNING, Event.INTERRUPTED, None, S.QUEUED),
    (S.CANCELLING, Event.EXITED, 75, S.CANCELLED),
    (S.CANCELLING, Event.EXITED, 0, S.DONE),
    (S.CANCELLING, Event.INTERRUPTED, None, S.CANCELLED),
    (S.DONE, Event.CANCEL, None, S.DONE),
]


@pytest.mark.parametrize("state,event,code,expected", EDGES)
def test_edges(state, event, code, expected):
    assert transition(state, event, code) is expected


@pytest.mark.parametrize("state,event", [(S.QUEUED, Event.EXITED), (S.DONE, Event.LAUNCHED),
                                         (S.FAILED, Event.EXITED), (S.RUNNING, Event.LAUNCHED)])
def test_illegal_edges_raise(state, event):
    with pytest.raises(IllegalTransition):
        transition(state, event, 0)


def test_records_round_trip_atomically_and_in_submit_order(tmp_path):
    table = JobTable(tmp_path)
    for name, seq in [("b", 2), ("a", 1), ("c", 3)]:
        table.job_dir(name).mkdir(parents=True)
        table.save(JobRecord(name=name, seq=seq))
    table.job_dir("half").mkdir()                 # accept interrupted before its record: skipped
    assert [r.name for r in table.load_all()] == ["a", "b", "c"]
    rec = table.load("b")
    rec.state = S.RUNNING
    table.save(rec)
    assert json.loads(table.record_path("b").read_text())["state"] == "running"
    assert [p.name for p in table.job_dir("b").iterdir()] == ["job.json"]   # no temp file left
