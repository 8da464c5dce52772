"""The daemon's durable job table: one JSON record per job, written atomically, and the job
lifecycle as an explicit state machine.

State dir layout (all owner-only):
    STATE/spool/                  incoming NAME.yaml (see daemon/service/spool.py); .refused/ keeps refusals
    STATE/jobs/NAME/job.json      the record below (temp + fsync + rename + dir fsync)
    STATE/jobs/NAME/spec.yaml     the accepted spec, as the daemon rewrote it (absolute paths)
    STATE/jobs/NAME/runner.log    stdout/stderr of the job's `traind run` process
    STATE/jobs/NAME/run/          the job's RUN_DIR (checkpoints, status.json, logs/attempt-N.log)
    STATE/control/cancel-NAME     a cancel request from `traind cancel`
    STATE/serve.json              the daemon's own status (pid, slots, heartbeat)
    STATE/serve.lock              flock: one daemon per state dir

Lifecycle (one transition function; every edge is named below and in `transition`):
    QUEUED  --launched-->         RUNNING
    QUEUED  --cancel-->           CANCELLED
    QUEUED  --launch failed-->    FAILED      (its `traind run` could not even be started)
    RUNNING --exit 0-->           DONE
    RUNNING --exit 75-->          QUEUED      (emergency checkpoint written: resume later, same place in line)
    RUNNING --exit other-->       FAILED
    RUNNING --cancel-->           CANCELLING  (the daemon sends SIGTERM: emergency checkpoint, then stop)
    RUNNING --interrupted-->      QUEUED      (died with the daemon, or SIGKILLed at the daemon's stop
                                               deadline: resumes first, from its latest valid checkpoint)
    CANCELLING --exit 0-->        DONE        (it finished before the request landed)
    CANCELLING --exit other-->    CANCELLED
    CANCELLING --interrupted-->   CANCELLED
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path

from ..contract import exitcodes
from ..contract.errors import IllegalTransition, TraindError
from ..fs.durable import atomic_write


class JobState(str, Enum):
    QUEUED = "queued"
    RUNNING = "running"
    CANCELLING = "cancelling"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


ACTIVE_STATES = frozenset({JobState.RUNNING, JobState.CANCELLING})
FINAL_STATES = frozenset({JobState.DONE, JobState.FAILED, JobState.CANCELLED})


class Event(str, Enum):
    LAUNCHED = "launched"
    LAUNCH_FAILED = "launch_failed"
    EXITED = "exited"            # with an exit code
    CANCEL = "cancel"
    INTERRUPTED = "interrupted"  # the daemon stopped supervising it (kill -9 of the daemon, stop deadline)


def transition(state: JobState, event: Event, exit_code: int | None = None) -> JobState:
    S = JobState
    if state is S.QUEUED and event is Event.LAUNCHED:
        return S.RUNNING                                   # QUEUED -> RUNNING
    if state is S.QUEUED and event is Event.CANCEL:
        return S.CANCELLED                                 # QUEUED -> CANCELLED
    if state is S.QUEUED and event is Event.LAUNCH_FAILED:
        return S.FAILED                                    # QUEUED -> FAILED
    if state is S.RUNNING and event is Event.EXITED:
        if exit_code == exitcodes.OK:
            return S.DONE                                  # RUNNING -> DONE
        if exit_code == exitcodes.PREEMPTED:
            return S.QUEUED                                # RUNNING -> QUEUED (checkpointed)
        return S.FAILED                                    # RUNNING -> FAILED
    if state is S.RUNNING and event is Event.CANCEL:
        return S.CANCELLING                                # RUNNING -> CANCELLING
    if state is S.RUNNING and event is Event.INTERRUPTED:
        return S.QUEUED                                    # RUNNING -> QUEUED (resume)
    if state is S.CANCELLING and event is Event.EXITED:
        return S.DONE if exit_code == exitcodes.OK else S.CANCELLED  # CANCELLING -> DONE | CANCELLED
    if state is S.CANCELLING and event is Event.INTERRUPTED:
        return S.CANCELLED                                 # CANCELLING -> CANCELLED
    if state is S.CANCELLING and event is Event.CANCEL:
        return S.CANCELLING                                # a repeated request changes nothing
    if state in FINAL_STATES and event is Event.CANCEL:
        return state                                       # cancelling a finished job is a no-op
    raise IllegalTransition(f"illegal job transition: {state.value} --{event.value}-->")


@dataclass
class JobRecord:
    name: str
    seq: int                      # submit order; a requeued job keeps its place
    state: JobState = JobState.QUEUED
    submitted: float = field(default_factory=time.time)
    owner_uid: int | None = None
    resume_first: bool = False    # was running when the daemon died: goes before the queue
    slot: int | None = None
    pid: int | None = None
    launches: int = 0
    exit_code: int | None = None
    started: float | None = None
    finished: float | None = None
    reason: str = ""

    def to_json(self) -> dict:
        d = asdict(self)
        d["state"] = self.state.value
        return d

    @classmethod
    def from_json(cls, d: dict) -> "JobRecord":
        if not isinstance(d, dict):
            raise ValueError("not a JSON object")
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        known["state"] = JobState(known.get("state", "queued"))
        return cls(**known)


class JobTable:
    """Reads and writes the records under STATE/jobs. Only the daemon writes; clients read."""

    def __init__(self, state_dir: Path):
        self.jobs_dir = Path(state_dir) / "jobs"

    def job_dir(self, name: str) -> Path:
        return self.jobs_dir / name

    def record_path(self, name: str) -> Path:
        return self.job_dir(name) / "job.json"

    def save(self, rec: JobRecord) -> None:
        atomic_write(self.record_path(rec.name), (json.dumps(rec.to_json(), indent=1) + "\n").encode())

    def load(self, name: str) -> JobRecord | None:
        path = self.record_path(name)
        try:
            return JobRecord.from_json(json.loads(path.read_text()))
        except FileNotFoundError:
            return None
        except OSError as err:
            raise TraindError(f"{path}: unreadable job record: {err.strerror or err}") from None
        except (ValueError, TypeError) as err:   # hand-edited or damaged: say which file, not a traceback
            raise TraindError(f"{path}: unreadable job record: {err}") from None

    def load_all(self) -> list[JobRecord]:
        """Every readable record, in submit order. A job dir without a record (accept interrupted
        before its record was written) is skipped; its spool file is still there to re-accept."""
        recs = []
        if self.jobs_dir.is_dir():
            for d in self.jobs_dir.iterdir():
                rec = self.load(d.name)
                if rec is not None:
                    recs.append(rec)
        return sorted(recs, key=lambda r: r.seq)
