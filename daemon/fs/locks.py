"""The one file-lock mechanism (stdlib only): flock on a file that names its holder.

flock belongs to the open file description, so a lock dies with its holder's process (no stale
lock after a crash) and two locks in one process conflict too. Used for the checkpoint writer's
lock (store), the run lock (supervisor) and the daemon's state-dir lock (service). Asking whether
a lock is held (`is_locked`) never takes it.
"""
from __future__ import annotations

import errno
import fcntl
import os
import time
import weakref
from pathlib import Path

from ..contract.errors import TraindError

_held_fork_private: "weakref.WeakSet[ExclusiveFileLock]" = weakref.WeakSet()


def _drop_fork_private_locks() -> None:
    """In a forked child: close its copies of the parent's fork-private locks. flock belongs to
    the open file description, which a fork shares: a DataLoader worker notices its SIGKILLed
    parent only within ~5 s, and until then its copy would keep the lock held, refusing the
    restarted job as "another writer". Closing a copy never unlocks the parent's."""
    for lock in list(_held_fork_private):
        fd, lock.fd = lock.fd, None
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass
    _held_fork_private.clear()


os.register_at_fork(after_in_child=_drop_fork_private_locks)


class ExclusiveFileLock:
    """flock(LOCK_EX|LOCK_NB) on `path`; the file records the holder (its pid by default).

    Subclasses say who holds it (`holder_text`) and how a refusal reads (`busy_message`).
    `fork_private`: a forked child (a DataLoader worker, say) does not keep the lock.
    `tries`: a reader's brief shared-lock probe (is_locked) must not refuse a real start."""

    fork_private = False
    tries = 1
    retry_seconds = 0.05
    clear_on_release = True
    mode = 0o644

    def __init__(self, path: Path, what: str):
        self.path = Path(path)
        self.what = what
        self.fd: int | None = None

    @property
    def held(self) -> bool:
        return self.fd is not None

    def acquire(self):
        if self.fd is not None:
            return self
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, self.mode)
        except OSError as err:   # a read-only mount, a directory in the way
            raise TraindError(self.open_error(err.strerror or str(err))) from None
        for attempt in range(self.tries):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as err:
                if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    os.close(fd)
                    raise TraindError(f"{self.path}: cannot lock: {err.strerror}") from None
                if attempt == self.tries - 1:
                    text = _read_text(fd)
                    os.close(fd)
                    raise TraindError(self.busy_message(text)) from None
                time.sleep(self.retry_seconds)
        self.fd = fd
        if self.fork_private:
            _held_fork_private.add(self)
        self.write_holder(self.holder_text())
        return self

    def holder_text(self) -> str:
        return f"{os.getpid()}\n"

    def open_error(self, why: str) -> str:
        return f"{self.what}: cannot open lock file {self.path}: {why}"

    def busy_message(self, holder_text: str) -> str:
        pid = holder_text.strip()
        who = f"pid {pid}" if pid.isdigit() else "another process"
        return f"{self.what} is locked by {who} (another writer); lock file {self.path}"

    def write_holder(self, text: str) -> None:
        try:
            os.ftruncate(self.fd, 0)
            os.pwrite(self.fd, text.encode(), 0)
        except OSError:   # a full disk: the flock holds all the same, only the holder's name is missing
            pass

    def release(self) -> None:
        if self.fd is not None:
            _held_fork_private.discard(self)
            fd, self.fd = self.fd, None
            try:
                if self.clear_on_release:
                    os.ftruncate(fd, 0)
            finally:
                os.close(fd)      # closing drops the flock

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def _read_text(fd: int) -> str:
    try:
        return os.pread(fd, 4096, 0).decode(errors="replace")
    except OSError:
        return ""


def read_holder(path: Path) -> str:
    """What the lock file says about its holder ("" when unreadable or absent)."""
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return ""


def is_locked(path: Path) -> bool:
    """Does some process hold an flock on path now? Read from /proc/locks, so asking never takes
    the lock itself; a brief shared-lock probe where /proc/locks cannot decide."""
    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    key = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        with open("/proc/locks") as f:
            held = [fields[5] for fields in map(str.split, f) if fields[1:2] == ["FLOCK"] and len(fields) > 5]
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
    """Is there a process with this pid (ours or another user's)?"""
    try:
        os.kill(int(pid), 0)
        return True
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, TypeError, OverflowError):
        return True
