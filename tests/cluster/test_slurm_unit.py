"""traind.cluster.slurm without a cluster: detection, classification, requeue and the follow-up's exit codes."""
import stat
from datetime import datetime

import pytest

from traind.contract import exitcodes
from traind.cluster import slurm
from traind.cluster.slurm import CommandResult, StopCause

NOW = datetime(2026, 11, 28, 12, 0, 0).timestamp()


def show_job(**fields):
    base = {"JobId": "42", "JobState": "RUNNING", "PreemptTime": "None", "TimeLimit": "00:10:00",
            "EndTime": "2026-11-28T12:05:00"}
    base.update(fields)
    return " ".join(f"{k}={v}" for k, v in base.items()) + "\n"


class FakeRunner:
    """Scripted answers per command name; records every argv."""

    def __init__(self, **answers):
        self.answers = answers
        self.calls = []

    def run(self, argv, *, timeout=30.0, stdin=None):
        self.calls.append(tuple(argv))
        answer = self.answers.get(argv[0])
        if answer is None:
            return CommandResult(tuple(argv), None, error=f"{argv[0]}: command not found")
        return answer if isinstance(answer, CommandResult) else CommandResult(tuple(argv), 0, answer)


def test_detect_outside_and_inside_slurm():
    assert slurm.detect({}) is None
    job = slurm.detect({"SLURM_JOB_ID": "42", "SLURM_RESTART_COUNT": "2", "SLURM_JOB_PARTITION": "debug"})
    assert (job.job_id, job.restart_count, job.requeue_id) == ("42", 2, "42")
    assert "SLURM_RESTART_COUNT=2" in job.describe() and "debug" in job.describe()
    first = slurm.detect({"SLURM_JOB_ID": "42"})
    assert first.restart_count == 0 and "first run" in first.describe()


def test_array_task_is_requeued_by_its_array_id():
    job = slurm.detect({"SLURM_JOB_ID": "57", "SLURM_ARRAY_JOB_ID": "50", "SLURM_ARRAY_TASK_ID": "7"})
    assert job.requeue_id == "50_7"
    assert slurm.requeue_argv(job, slurm.DEFAULT_REQUEUE_COMMAND) == ("scontrol", "requeue", "50_7")
    assert slurm.requeue_argv(job, ["x", "{raw_job_id}", "{array_task_id}"]) == ("x", "57", "7")


@pytest.mark.parametrize("fields,cause", [
    ({"JobState": "CANCELLED"}, StopCause.CANCELLED),
    ({"JobState": "TIMEOUT"}, StopCause.TIME_LIMIT),
    ({"PreemptTime": "2026-11-28T11:59:50"}, StopCause.PREEMPTION),
    ({"EndTime": "2026-11-28T12:01:30"}, StopCause.TIME_LIMIT),      # 90 s left, lead 60
    ({"EndTime": "2026-11-28T13:00:00"}, StopCause.UNKNOWN),         # an hour left: a manual signal
    ({"EndTime": "Unknown"}, StopCause.UNKNOWN),
    # what scontrol shows right after a plain scancel: COMPLETING, EndTime = the cancel, long before the limit
    ({"JobState": "COMPLETING", "StartTime": "2026-11-28T11:55:00", "TimeLimit": "00:10:00",
      "EndTime": "2026-11-28T11:59:59"}, StopCause.CANCELLED),
    ({"JobState": "COMPLETING", "StartTime": "2026-11-28T11:50:00", "TimeLimit": "00:10:00",
      "EndTime": "2026-11-28T12:00:00"}, StopCause.TIME_LIMIT),
])
def test_classify(fields, cause):
    verdict = slurm.classify(slurm.parse_show_job(show_job(**fields)), NOW, lead_seconds=60)
    assert verdict.cause is cause, verdict.detail


def test_parse_duration():
    assert slurm.parse_duration("00:01:00") == 60
    assert slurm.parse_duration("2-01:00:05") == 2 * 86400 + 3605
    assert slurm.parse_duration("45:00") == 2700
    assert slurm.parse_duration("UNLIMITED") is None and slurm.parse_duration(None) is None


def test_a_long_lead_from_submit_still_reads_as_the_time_limit():
    fields = slurm.parse_show_job(show_job(EndTime="2026-11-28T12:05:00"))   # 300 s left
    assert slurm.classify(fields, NOW, lead_seconds=None).cause is StopCause.UNKNOWN
    lead = slurm.submitted_lead({slurm.ENV_SUBMITTED_LEAD: "280"})
    assert slurm.classify(fields, NOW, lead_seconds=lead).cause is StopCause.TIME_LIMIT
    assert slurm.submitted_lead({}) is None and slurm.submitted_lead({slurm.ENV_SUBMITTED_LEAD: "x"}) is None


def test_classify_without_a_record():
    assert slurm.classify({}, NOW, None).cause is StopCause.UNKNOWN


def test_requeue_missing_command_is_a_value():
    job = slurm.SlurmJob("42")
    result = slurm.requeue(job, ["no-such-scontrol-xyz", "requeue", "{job_id}"])
    assert not result.requeued and "not found" in result.message and "NOT run again" in result.message


def test_requeue_with_a_real_command(tmp_path):
    script = tmp_path / "fake-requeue"
    out = tmp_path / "called"
    script.write_text(f"#!/bin/sh\necho \"$@\" > {out}\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    result = slurm.requeue(slurm.SlurmJob("9", "8", "1"), [str(script), "requeue", "{job_id}"])
    assert result.requeued and out.read_text().strip() == "requeue 8_1"
    failing = slurm.requeue(slurm.SlurmJob("9"), ["sh", "-c", "echo 'Invalid job id' >&2; exit 1"])
    assert not failing.requeued and "Invalid job id" in failing.message


def followup(job, runner, **kw):
    lines = []
    f = slurm.SlurmFollowup(job, log=lines.append, runner=runner, clock=lambda: NOW, **kw)
    return f, lines


def Outcome():
    from traind.supervisor.attempts import Outcome as RealOutcome
    return RealOutcome(trigger="SIGTERM", checkpoint_committed=False, checkpoint_step=120, exit=None, attempt=1)


def test_followup_requeues_after_time_limit_warning():
    runner = FakeRunner(scontrol=show_job(EndTime="2026-11-28T12:01:00"))
    f, lines = followup(slurm.SlurmJob("42"), runner)
    assert f(Outcome()) == exitcodes.PREEMPTED
    assert runner.calls[-1] == ("scontrol", "requeue", "42")
    text = "\n".join(lines)
    assert "time_limit" in text and "step 120" in text and "requeued SLURM job 42" in text


def test_followup_requeues_after_preemption():
    runner = FakeRunner(scontrol=show_job(PreemptTime="2026-11-28T11:59:59"))
    f, lines = followup(slurm.SlurmJob("42"), runner)
    assert f(Outcome()) == exitcodes.PREEMPTED and "preemption" in lines[0]
    assert ("scontrol", "requeue", "42") in runner.calls


def test_followup_does_not_requeue_a_cancelled_job():
    runner = FakeRunner(scontrol=show_job(JobState="CANCELLED"))
    f, lines = followup(slurm.SlurmJob("42"), runner)
    assert f(Outcome()) == exitcodes.PREEMPTED
    assert not any(c[:2] == ("scontrol", "requeue") for c in runner.calls)
    assert "not requeuing" in "\n".join(lines)


def test_followup_failed_requeue_exits_76():
    failed = CommandResult(("scontrol",), 1, "", "scontrol: error: Job has already finished")
    runner = FakeRunner(scontrol=show_job())

    def run(argv, **kw):
        runner.calls.append(tuple(argv))
        return failed if argv[1] == "requeue" else CommandResult(tuple(argv), 0, show_job())
    runner.run = run
    f, lines = followup(slurm.SlurmJob("42"), runner)
    assert f(Outcome()) == exitcodes.NOT_REQUEUED == 76
    assert "FAILED" in "\n".join(lines) and "already finished" in "\n".join(lines)


def test_followup_requeue_command_missing_exits_76():
    f, lines = followup(slurm.SlurmJob("42"), FakeRunner())   # neither scontrol show nor requeue exist
    assert f(Outcome()) == exitcodes.NOT_REQUEUED
    assert "not found" in "\n".join(lines)


def test_followup_outside_slurm_and_with_requeue_disabled():
    f, lines = followup(None, FakeRunner())
    assert f(Outcome()) == exitcodes.PREEMPTED and lines == []
    f, lines = followup(None, FakeRunner(), requeue_policy=True)
    assert f(Outcome()) == exitcodes.NOT_REQUEUED and "not a SLURM job" in lines[0]
    runner = FakeRunner(scontrol=show_job())
    f, lines = followup(slurm.SlurmJob("42"), runner, requeue_policy=False)
    assert f(Outcome()) == exitcodes.PREEMPTED and runner.calls == []


def test_followup_forced_requeue_even_after_cancel():
    runner = FakeRunner(scontrol=show_job(JobState="CANCELLED"))
    f, _ = followup(slurm.SlurmJob("42"), runner, requeue_policy=True)
    assert f(Outcome()) == exitcodes.PREEMPTED and ("scontrol", "requeue", "42") in runner.calls


def test_command_runner_reports_problems_as_values():
    r = slurm.CommandRunner()
    assert r.run(["no-such-binary-xyz"]).error.endswith("command not found")
    slow = r.run(["sleep", "5"], timeout=0.2)
    assert slow.returncode is None and "timed out" in slow.error
    ok = r.run(["cat"], stdin="hello")
    assert ok.ok and ok.stdout == "hello"


@pytest.mark.parametrize("policy,job,cause,requeue,code", [
    ("auto", slurm.SlurmJob("1"), StopCause.TIME_LIMIT, True, 75),
    ("auto", slurm.SlurmJob("1"), StopCause.PREEMPTION, True, 75),
    ("auto", slurm.SlurmJob("1"), StopCause.UNKNOWN, True, 75),
    ("auto", slurm.SlurmJob("1"), StopCause.CANCELLED, False, 75),
    (True, slurm.SlurmJob("1"), StopCause.CANCELLED, True, 75),
    (False, slurm.SlurmJob("1"), StopCause.PREEMPTION, False, 75),
    ("auto", None, None, False, 75),
    (True, None, None, False, 76),
])
def test_decide(policy, job, cause, requeue, code):
    decision = slurm.decide(policy, job, cause)
    assert (decision.requeue, decision.exit_code) == (requeue, code), decision.why
