"""SLURM: who we are inside a job, why we are being stopped, and how to come back (requeue).

What SLURM does to a batch job (measured on SLURM 22.05, see docs/cluster.md):
- `--signal=B:USR1@LEAD` sends USR1 to the batch shell only, LEAD..LEAD+30 s before the time limit.
  The generated script `exec`s `traind run`, so the supervisor IS the batch shell and gets it.
- A preemption (PreemptMode=REQUEUE, `preempt_send_user_signal`) sends the same USR1 and sets the
  job's PreemptTime; after the partition's GraceTime everything gets TERM, then KILL.
- `scancel` and the time limit itself send CONT+TERM to every process, KILL after KillWait.
- A job that calls `scontrol requeue` on itself is killed ~20 ms later and reruns under the same job
  id with SLURM_RESTART_COUNT=1, 2, ...; so the requeue is the LAST thing we do, after the
  emergency checkpoint is durable.

Everything here returns values; commands run through `CommandRunner` so tests can script them.
"""
from __future__ import annotations

import enum
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Callable, Mapping, Sequence

from ..contract import exitcodes


# --- running commands (the one replaceable OS effect of this module) ------------------------------

@dataclass(frozen=True)
class CommandResult:
    argv: tuple[str, ...]
    returncode: int | None          # None: could not run at all (see `error`)
    stdout: str = ""
    stderr: str = ""
    error: str | None = None        # "not found", "timed out after 30 s", ...

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def why(self) -> str:
        """One line saying what went wrong (for logs)."""
        if self.error:
            return self.error
        detail = (self.stderr or self.stdout).strip().splitlines()
        return f"exit code {self.returncode}" + (f": {detail[-1]}" if detail else "")


class CommandRunner:
    """Runs short external commands (scontrol, sbatch, squeue) with a timeout; never raises."""

    def run(self, argv: Sequence[str], *, timeout: float = 30.0, stdin: str | None = None) -> CommandResult:
        argv = tuple(argv)
        if shutil.which(argv[0]) is None:
            return CommandResult(argv, None, error=f"{argv[0]}: command not found")
        try:
            done = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return CommandResult(argv, None, error=f"{argv[0]}: timed out after {timeout:g} s")
        except OSError as err:
            return CommandResult(argv, None, error=f"{argv[0]}: {err.strerror or err}")
        return CommandResult(argv, done.returncode, done.stdout, done.stderr)


# --- where we are -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class SlurmJob:
    """The SLURM job this process runs in, from the environment SLURM sets."""
    job_id: str                        # SLURM_JOB_ID (for an array task: its own id)
    array_job_id: str | None = None    # SLURM_ARRAY_JOB_ID
    array_task_id: str | None = None   # SLURM_ARRAY_TASK_ID
    restart_count: int = 0             # SLURM_RESTART_COUNT (unset on the first run)
    name: str | None = None            # SLURM_JOB_NAME
    partition: str | None = None       # SLURM_JOB_PARTITION

    @property
    def requeue_id(self) -> str:
        """The id `scontrol requeue` wants: `<array job>_<task>` for an array task."""
        if self.array_job_id and self.array_task_id:
            return f"{self.array_job_id}_{self.array_task_id}"
        return self.job_id

    def describe(self) -> str:
        what = f"SLURM job {self.job_id}"
        if self.requeue_id != self.job_id:
            what += f" (array task {self.requeue_id})"
        if self.partition:
            what += f" in partition {self.partition}"
        run = "first run" if self.restart_count == 0 else f"rerun after {self.restart_count} requeue(s)"
        return f"{what}, SLURM_RESTART_COUNT={self.restart_count} ({run})"


def detect(environ: Mapping[str, str] = os.environ) -> SlurmJob | None:
    """The SLURM batch job we run in, or None outside SLURM."""
    job_id = environ.get("SLURM_JOB_ID") or environ.get("SLURM_JOBID")
    if not job_id:
        return None
    try:
        restarts = int(environ.get("SLURM_RESTART_COUNT") or 0)
    except ValueError:
        restarts = 0
    return SlurmJob(job_id=job_id, array_job_id=environ.get("SLURM_ARRAY_JOB_ID") or None,
                    array_task_id=environ.get("SLURM_ARRAY_TASK_ID") or None, restart_count=restarts,
                    name=environ.get("SLURM_JOB_NAME") or None,
                    partition=environ.get("SLURM_JOB_PARTITION") or None)


ENV_SUBMITTED_LEAD = "TRAIND_SLURM_LEAD_SECONDS"   # the LEAD `traind slurm submit` asked for


def submitted_lead(environ: Mapping[str, str] = os.environ) -> float | None:
    try:
        return float(environ[ENV_SUBMITTED_LEAD])
    except (KeyError, ValueError):
        return None


# --- why we are being stopped -----------------------------------------------------------------------

class StopCause(str, enum.Enum):
    TIME_LIMIT = "time_limit"    # the --signal warning (or the limit itself): requeue to continue
    PREEMPTION = "preemption"    # a higher-priority job takes the node (PreemptTime is set): requeue
    CANCELLED = "cancelled"      # scancel by a user or admin: they want it stopped, do not requeue
    UNKNOWN = "unknown"          # e.g. a manual `scancel --signal=USR1`, or scontrol did not answer


@dataclass(frozen=True)
class Classification:
    cause: StopCause
    detail: str


# A warning this close to the end time counts as the time-limit warning (SLURM sends it up to 30 s
# earlier than asked, and the stop path itself takes a while before we look).
TIME_LIMIT_SLACK_SECONDS = 90.0


def parse_show_job(text: str) -> dict[str, str]:
    """`scontrol show job -o ID` -> {"JobState": "RUNNING", "PreemptTime": "None", ...}."""
    fields: dict[str, str] = {}
    for word in text.split():
        key, sep, value = word.partition("=")
        if sep and key not in fields:
            fields[key] = value
    return fields


def _parse_time(value: str | None) -> float | None:
    if not value or value in ("None", "Unknown", "N/A"):
        return None
    try:
        return datetime.strptime(value, "%Y-%m-%dT%H:%M:%S").timestamp()  # local time, as SLURM prints
    except ValueError:
        return None


def parse_duration(value: str | None) -> float | None:
    """SLURM's TimeLimit ("[days-]hh:mm:ss", "mm:ss", "UNLIMITED") -> seconds, or None."""
    if not value or not value[0].isdigit():
        return None
    days, _, clock = value.rpartition("-")
    try:
        parts = [int(p) for p in clock.split(":")]
        seconds = sum(p * 60 ** i for i, p in enumerate(reversed(parts)))
        return seconds + (int(days) * 86400 if days else 0)
    except ValueError:
        return None


def classify(fields: Mapping[str, str], now: float, lead_seconds: float | None) -> Classification:
    """Tell a time limit from a preemption from a cancel, from the job's own record in slurmctld."""
    if not fields:
        return Classification(StopCause.UNKNOWN, "no job record (scontrol did not answer)")
    state = fields.get("JobState", "")
    if state.startswith("CANCELLED"):
        return Classification(StopCause.CANCELLED, f"JobState={state} (scancel)")
    if state.startswith("TIMEOUT"):
        return Classification(StopCause.TIME_LIMIT, f"JobState={state} (the time limit itself was reached)")
    if state.startswith("PREEMPTED") or _parse_time(fields.get("PreemptTime")) is not None:
        return Classification(StopCause.PREEMPTION, f"PreemptTime={fields.get('PreemptTime')} JobState={state}")
    end = _parse_time(fields.get("EndTime"))
    start, limit = _parse_time(fields.get("StartTime")), parse_duration(fields.get("TimeLimit"))
    if state.startswith("COMPLETING") and end is not None:
        # The job was ended while we still run. scancel sets EndTime to the moment of the cancel
        # (and keeps JobState=COMPLETING, not CANCELLED, while processes remain); the time limit
        # leaves EndTime at StartTime + TimeLimit.
        if start is not None and limit is not None and end < start + limit - 5:
            return Classification(StopCause.CANCELLED, f"JobState={state}, ended {start + limit - end:.0f} s "
                                                       f"before its time limit (scancel)")
        return Classification(StopCause.TIME_LIMIT, f"JobState={state} at its time limit")
    if end is not None:
        left = end - now
        if left <= (lead_seconds or 0.0) + TIME_LIMIT_SLACK_SECONDS:
            return Classification(StopCause.TIME_LIMIT, f"{left:.0f} s left before the time limit "
                                                        f"(TimeLimit={fields.get('TimeLimit')})")
        return Classification(StopCause.UNKNOWN, f"{left:.0f} s left before the time limit; not preempted, "
                                                 f"JobState={state}")
    return Classification(StopCause.UNKNOWN, f"JobState={state or '?'}, no end time")


def query_job(job: SlurmJob, runner: CommandRunner) -> tuple[dict[str, str], str | None]:
    """(fields of `scontrol show job`, None) or ({}, why not)."""
    res = runner.run(["scontrol", "show", "job", "-o", job.requeue_id], timeout=5)  # on the stop path: keep it short
    if not res.ok:
        return {}, res.why()
    return parse_show_job(res.stdout), None


# --- coming back --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RequeueResult:
    requeued: bool
    command: tuple[str, ...]
    message: str                     # one line for the log


DEFAULT_REQUEUE_COMMAND = ("scontrol", "requeue", "{job_id}")


def requeue_argv(job: SlurmJob, template: Sequence[str]) -> tuple[str, ...]:
    """Fill {job_id} (array-aware), {array_job_id}, {array_task_id}, {raw_job_id} in the command."""
    values = {"job_id": job.requeue_id, "raw_job_id": job.job_id,
              "array_job_id": job.array_job_id or "", "array_task_id": job.array_task_id or ""}
    return tuple(part.format_map(values) for part in template)


def requeue(job: SlurmJob, template: Sequence[str] = DEFAULT_REQUEUE_COMMAND,
            runner: CommandRunner | None = None) -> RequeueResult:
    argv = requeue_argv(job, template)
    res = (runner or CommandRunner()).run(argv, timeout=30)
    if res.ok:
        return RequeueResult(True, argv, f"requeued SLURM job {job.requeue_id} ({' '.join(argv)})")
    return RequeueResult(False, argv, f"requeue of SLURM job {job.requeue_id} FAILED ({' '.join(argv)}: "
                                      f"{res.why()}); the job will NOT run again by itself")


# --- the follow-up after an emergency stop --------------------------------------------------------------

def _outcome_line(outcome) -> str:
    """The supervisor's Outcome (checkpoint_committed, checkpoint_step) in words."""
    return outcome.words()


@dataclass(frozen=True)
class Decision:
    requeue: bool
    exit_code: int          # when not requeuing (a requeue gives 75, or 76 if it fails)
    why: str


def decide(policy: str | bool, job: SlurmJob | None, cause: StopCause | None) -> Decision:
    """The follow-up's policy, pure: requeue or not, given spec `preemption.requeue` and the cause."""
    if policy is False:
        return Decision(False, exitcodes.PREEMPTED, "requeue disabled (preemption.requeue: false)")
    if job is None and policy is True:
        return Decision(False, exitcodes.NOT_REQUEUED, "preemption.requeue is true but this is not a SLURM job "
                                                       "(no SLURM_JOB_ID): NOT requeued")
    if job is None:
        return Decision(False, exitcodes.PREEMPTED, "not a SLURM job: nothing to requeue")
    if cause is StopCause.CANCELLED and policy == "auto":
        return Decision(False, exitcodes.PREEMPTED, "cancelled on purpose: not requeuing "
                                                    "(run `traind slurm submit` again to resume)")
    return Decision(True, exitcodes.PREEMPTED, f"{cause.value if cause else 'stop'}: requeue to continue")


@dataclass
class SlurmFollowup:
    """`followup(outcome) -> exit code`, called by the supervisor after an emergency stop.

    Under SLURM it asks slurmctld why we are stopped (`classify`), applies the policy (`decide`)
    and, after a time-limit warning or a preemption, requeues the job: exit 75 (resumable, the rerun
    resumes from the checkpoint). After an scancel it does not requeue (exit 75). If the requeue is
    wanted but the command is missing or fails, the log says so and the exit code is 76.
    """
    job: SlurmJob | None
    requeue_policy: str | bool = "auto"          # auto | True | False (spec preemption.requeue)
    requeue_command: Sequence[str] = DEFAULT_REQUEUE_COMMAND
    lead_seconds: float | None = None
    log: Callable[[str], None] = print
    runner: CommandRunner = field(default_factory=CommandRunner)
    clock: Callable[[], float] = time.time
    notes: list[Callable[[], str | None]] = field(default_factory=list)  # extra lines (e.g. spot timing)

    def __call__(self, outcome) -> int:
        for note in self.notes:
            line = note()
            if line:
                self.log(line)
        cause = None
        if self.job is not None and self.requeue_policy is not False:
            fields, why_not = query_job(self.job, self.runner)
            verdict = classify(fields, self.clock(), self.lead_seconds)
            cause = verdict.cause
            self.log(f"SLURM job {self.job.requeue_id} stopped by {cause.value}: {verdict.detail}"
                     f"{': ' + why_not if why_not else ''}; {_outcome_line(outcome)}")
        decision = decide(self.requeue_policy, self.job, cause)
        if not decision.requeue:
            if self.job is not None or decision.exit_code != exitcodes.PREEMPTED:
                self.log(f"{decision.why}; exit {decision.exit_code}")
            return decision.exit_code
        result = requeue(self.job, self.requeue_command, self.runner)
        self.log(result.message)
        if not result.requeued:
            self.log(f"exit {exitcodes.NOT_REQUEUED} (checkpoint kept; resubmit to resume)")
            return exitcodes.NOT_REQUEUED
        return exitcodes.PREEMPTED
