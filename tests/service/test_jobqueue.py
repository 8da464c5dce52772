"""The job lifecycle table and the durable records (fast, no processes)."""
import json

import pytest

from traind.service.jobqueue import Event, IllegalTransition, JobRecord, JobState as S, JobTable, transition

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


@pytest.mark.parametrize("text,why", [("{bad", "Expecting property name"), ("[1]\n", "not a JSON object"),
                                      ('{"name": "j", "seq": 1, "state": "bogus"}', "'bogus' is not a valid JobState"),
                                      ('{"state": "queued"}', "missing 2 required positional arguments")])
def test_a_damaged_job_record_is_one_line_naming_the_file(tmp_path, text, why):
    """A hand-edited or damaged job.json was a traceback from ls, logs, cancel and serve's start-up."""
    import subprocess
    import sys
    from traind.contract.errors import TraindError
    table = JobTable(tmp_path)
    table.job_dir("j").mkdir(parents=True)
    table.record_path("j").write_text(text)
    with pytest.raises(TraindError, match=why) as err:
        table.load_all()
    assert str(err.value).startswith(f"{table.record_path('j')}: unreadable job record: ")
    out = subprocess.run([sys.executable, "-m", "traind", "ls", "--state-dir", str(tmp_path)],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines() == [f"traind: {err.value}"]
    assert table.record_path("j").read_text() == text
