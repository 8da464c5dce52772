"""What a supervised run leaves in RUN_DIR: events.jsonl, status.json, logs/, supervisor.lock.

status.json is replaced atomically (temp file + rename), so a reader never sees half of it.
supervisor.lock is an flock whose fd the child inherits: the lock outlives a SIGKILLed supervisor
for as long as its orphaned child runs (writing its emergency checkpoint), so a second supervisor
cannot start a second child on the same run.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import time
from pathlib import Path

from daemon.errors import TraindError

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


def write_json_atomic(path: Path, obj: dict, *, durable: bool) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    data = (json.dumps(obj, indent=1, default=str) + "\n").encode()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, data)
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


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


class RunLock:
    """flock on RUN_DIR/supervisor.lock; the file names the supervisor and its current child."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK_NAME
        self.fd: int | None = None

    def acquire(self) -> "RunLock":
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as err:   # a read-only mount, a directory in the way
            raise TraindError(f"{self.path}: cannot open the run lock: {err.strerror or err}") from None
        for attempt in range(LOCK_TRIES):   # a reader's brief probe must not refuse a real start
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as err:
                if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    os.close(fd)
                    raise TraindError(f"{self.path}: cannot lock: {err.strerror}") from None
                if attempt == LOCK_TRIES - 1:
                    os.close(fd)
                    raise TraindError(self._held_message()) from None
                time.sleep(LOCK_RETRY_SECONDS)
        self.fd = fd
        self.record(child_pid=None)
        return self

    def record(self, child_pid: int | None) -> None:
        """Who holds the lock now (read by a refused supervisor to say so)."""
        data = json.dumps({"supervisor_pid": os.getpid(), "child_pid": child_pid}).encode()
        try:
            os.ftruncate(self.fd, 0)
            os.pwrite(self.fd, data, 0)
        except OSError:   # a full disk: the flock holds all the same, only the holder's name is missing
            pass

    def _held_message(self) -> str:
        holder = lock_holder(self.path.parent)
        sup, child = holder.get("supervisor_pid"), holder.get("child_pid")
        if sup and pid_alive(sup):
            return f"{self.path.parent}: run dir in use by traind supervisor pid {sup}" + (
                f" (child pid {child})" if child else "")
        if child and pid_alive(child):
            return (f"{self.path.parent}: run dir still locked by child pid {child} of a supervisor that is gone "
                    f"(pid {sup}); it is writing its emergency checkpoint and will exit; retry when it has")
        return f"{self.path.parent}: run dir locked by another process (supervisor.lock)"

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def lock_holder(run_dir: Path) -> dict:
    try:
        return json.loads((Path(run_dir) / LOCK_NAME).read_text() or "{}")
    except (OSError, ValueError):
        return {}


def lock_is_held(run_dir: Path) -> bool:
    """Is a supervisor (or its orphaned child) holding the run? Read from /proc/locks, so asking
    never takes the lock itself; a brief shared-lock probe where /proc/locks cannot be read."""
    path = Path(run_dir) / LOCK_NAME
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    key = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        with open("/proc/locks") as f:
            held = [line.split()[5] for line in f if line.split()[1:2] == ["FLOCK"] and len(line.split()) > 5]
        if key in held:
            return True
        if not any(h.endswith(f":{st.st_ino}") for h in held):
            return False
        # same inode, other device numbering (btrfs subvolumes, ...): ask the lock itself
    except OSError:
        pass
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(int(pid), 0)
        return True
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, TypeError):
        return True
