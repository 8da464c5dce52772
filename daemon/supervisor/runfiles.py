"""What a supervised run leaves in RUN_DIR: events.jsonl, status.json, logs/, supervisor.lock.

status.json is replaced atomically (temp file + rename), so a reader never sees half of it.
supervisor.lock is an flock whose fd the child inherits: the lock outlives a SIGKILLed supervisor
for as long as its orphaned child runs (writing its emergency checkpoint), so a second supervisor
cannot start a second child on the same run.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from ..contract.errors import TraindError
from ..fs.durable import atomic_write
from ..fs.locks import ExclusiveFileLock, is_locked, pid_alive, read_holder

EVENTS_NAME = "events.jsonl"
STATUS_NAME = "status.json"
LOCK_NAME = "supervisor.lock"
LOGS_SUBDIR = "logs"
LOCK_TRIES, LOCK_RETRY_SECONDS = 5, 0.05


class RunFiles:
    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.logs_dir = self.run_dir / LOGS_SUBDIR
        self.events_path = self.run_dir / EVENTS_NAME
        self.status_path = self.run_dir / STATUS_NAME

    def create(self) -> None:
        try:
            self.logs_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:   # a file where the run dir should be, a read-only mount
            raise TraindError(f"{self.logs_dir}: cannot create the run dir: {err.strerror or err}") from None

    def attempt_log(self, attempt: int) -> Path:
        return self.logs_dir / f"attempt-{attempt}.log"

    def log_tail(self, attempt: int, lines: int = 5) -> list[str]:
        """The last non-empty lines the attempt wrote (its stderr and stdout), for a final message."""
        try:
            with open(self.attempt_log(attempt), "rb") as f:
                f.seek(max(0, f.seek(0, os.SEEK_END) - 16384))
                text = f.read().decode(errors="replace")
        except OSError:
            return []
        return [line.rstrip()[:300] for line in text.splitlines() if line.strip()][-lines:]

    def earlier_attempts(self) -> list[dict]:
        """The attempts an earlier `traind run` of this run dir recorded (status.json), if readable."""
        try:
            status = read_status(self.run_dir) or {}
        except TraindError:
            return []
        attempts = status.get("attempts")
        return [a for a in attempts if isinstance(a, dict)] if isinstance(attempts, list) else []

    def attempts_so_far(self) -> int:
        return sum(1 for p in self.logs_dir.glob("attempt-*.log"))

    def append_event(self, record: dict, *, durable: bool = False) -> None:
        """One JSON line, appended with one write (O_APPEND). A supervisor crash loses nothing (the
        page cache has it); only the final record is fsynced, so a restart is not slowed by a disk flush."""
        line = (json.dumps(record, separators=(",", ":"), default=str) + "\n").encode()
        fd = os.open(self.events_path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        try:
            end = os.lseek(fd, 0, os.SEEK_END)
            if end and os.pread(fd, 1, end - 1) != b"\n":
                line = b"\n" + line        # a torn last line (a crash mid-write) stays on its own
            os.write(fd, line)
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)

    def write_status(self, status: dict, *, durable: bool = False) -> None:
        write_json_atomic(self.status_path, status, durable=durable)


class Recorder:
    """The supervisor's records (events.jsonl, status.json). A write that fails (a full disk, a
    directory in the way) is said once and the supervisor goes on: it must never take the
    supervisor, and with it the child, down."""

    def __init__(self, files: RunFiles, wall, say):
        self.files, self.wall, self.say = files, wall, say
        self.failed: set[str] = set()

    def event(self, kind: str, *, attempt: int | None, state: str, exit_status=None, durable: bool = False,
              **fields) -> None:
        record = {"time": round(self.wall(), 3), "event": kind, "attempt": attempt, "state": state, **fields}
        if exit_status is not None:
            record["exit_code"], record["signal"] = exit_status.code, exit_status.signal_name()
        self._tolerant(EVENTS_NAME, self.files.append_event, record, durable=durable)

    def status(self, status: dict, *, durable: bool = False) -> None:
        self._tolerant(STATUS_NAME, self.files.write_status, status, durable=durable)

    def _tolerant(self, what: str, write, *args, **kw) -> None:
        try:
            write(*args, **kw)
        except OSError as err:
            if what not in self.failed:
                self.failed.add(what)
                self.say(f"cannot write {what} ({err.strerror or err}); supervising on without it")


def write_json_atomic(path: Path, obj: dict, *, durable: bool) -> None:
    atomic_write(path, (json.dumps(obj, indent=1, default=str) + "\n").encode(), mode=0o644, durable=durable)


def read_status(run_dir: Path) -> dict | None:
    try:
        status = json.loads((Path(run_dir) / STATUS_NAME).read_text())
    except FileNotFoundError:
        return None
    except OSError as err:
        raise TraindError(f"{Path(run_dir) / STATUS_NAME}: unreadable: {err.strerror or err}") from None
    except ValueError as err:
        raise TraindError(f"{Path(run_dir) / STATUS_NAME}: unreadable: {err}") from None
    if not isinstance(status, dict):
        raise TraindError(f"{Path(run_dir) / STATUS_NAME}: unreadable: not a JSON object")
    return status


def read_events(run_dir: Path) -> list[dict]:
    out = []
    try:
        with open(Path(run_dir) / EVENTS_NAME) as f:
            for line in f:
                try:
                    out.append(json.loads(line))
                except ValueError:
                    continue  # a torn last line after a crash: skip it
    except FileNotFoundError:
        pass
    return out


class RunLock(ExclusiveFileLock):
    """flock on RUN_DIR/supervisor.lock; the file names the supervisor and its current child.
    The child inherits the fd, so the lock outlives a SIGKILLed supervisor while its child runs."""

    tries = LOCK_TRIES
    retry_seconds = LOCK_RETRY_SECONDS
    clear_on_release = False     # the child may still hold it: keep saying who it is

    def __init__(self, run_dir: Path):
        super().__init__(Path(run_dir) / LOCK_NAME, what="the run lock")
        self._child_pid: int | None = None

    def holder_text(self) -> str:
        return json.dumps({"supervisor_pid": os.getpid(), "child_pid": self._child_pid})

    def record(self, child_pid: int | None) -> None:
        """Who holds the lock now (read by a refused supervisor to say so)."""
        self._child_pid = child_pid
        self.write_holder(self.holder_text())

    def open_error(self, why: str) -> str:
        return f"{self.path}: cannot open the run lock: {why}"

    def busy_message(self, holder_text: str) -> str:
        holder = lock_holder(self.path.parent)
        sup, child = holder.get("supervisor_pid"), holder.get("child_pid")
        if sup and pid_alive(sup):
            return f"{self.path.parent}: run dir in use by traind supervisor pid {sup}" + (
                f" (child pid {child})" if child else "")
        if child and pid_alive(child):
            return (f"{self.path.parent}: run dir still locked by child pid {child} of a supervisor that is gone "
                    f"(pid {sup}); it is writing its emergency checkpoint and will exit; retry when it has")
        return f"{self.path.parent}: run dir locked by another process (supervisor.lock)"


def lock_holder(run_dir: Path) -> dict:
    try:
        holder = json.loads(read_holder(Path(run_dir) / LOCK_NAME) or "{}")
    except ValueError:
        return {}
    return holder if isinstance(holder, dict) else {}


def lock_is_held(run_dir: Path) -> bool:
    """Is a supervisor (or its orphaned child) holding the run?"""
    return is_locked(Path(run_dir) / LOCK_NAME)
