"""Small filesystem primitives the checkpoint store's crash safety rests on (torch-free).

Durability on Linux needs an fsync of the file AND of the directory holding its name; a rename is
atomic but only durable once the parent directory is fsynced.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import os
import shutil
import weakref
from pathlib import Path

from daemon.errors import TraindError


def write_all(fd: int, view: memoryview) -> None:
    """os.write until every byte is written (a write may be short; ENOSPC/EIO raise OSError)."""
    while len(view):
        n = os.write(fd, view)
        view = view[n:]


_SYNC_FILE_RANGE_WRITE = 2


def start_writeback(fd: int, offset: int, nbytes: int) -> None:
    """Ask the kernel to start writing this range to disk now (sync_file_range WRITE: no wait,
    no durability promise). The disk then works while we are still serialising, and the final
    fsync has little left to do. A no-op where unavailable; fsync still makes it durable."""
    fn = _libc_fn("sync_file_range")
    if fn is not None:
        fn(fd, ctypes.c_longlong(offset), ctypes.c_longlong(nbytes), ctypes.c_uint(_SYNC_FILE_RANGE_WRITE))


def fsync_file(fd: int) -> None:
    os.fsync(fd)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dirs_durable(path: Path) -> None:
    """mkdir -p, then fsync the parent of every directory it created, so that after a power loss
    the checkpoints dir itself (not only its contents) is still there."""
    path = Path(path)
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    path.mkdir(parents=True, exist_ok=True)
    for created in reversed(missing):
        fsync_dir(created.parent)


def remove_tree(path: Path) -> None:
    """rmtree that tolerates entries vanishing under it (another cleaner got there first)."""
    def onerror(func, p, exc_info):
        if not isinstance(exc_info[1], FileNotFoundError):
            raise exc_info[1]
    if os.path.islink(path):
        os.unlink(path)
        return
    shutil.rmtree(path, onerror=onerror)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100
_libc = None


def _libc_fn(name: str):
    global _libc
    if _libc is None:
        try:
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        except OSError:
            _libc = False
    return getattr(_libc, name, None) if _libc else None


def swap_into_place(src: Path, dst: Path, trash: Path) -> None:
    """Make src appear at dst although dst exists; the old dst ends at trash.

    With renameat2(RENAME_EXCHANGE) dst is complete at every instant. Without it (old kernel or
    filesystem) there is a short window where dst is absent: discovery then falls back to an older
    checkpoint, which is still correct, never partial."""
    fn = _libc_fn("renameat2")
    if fn is not None:
        rc = fn(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_EXCHANGE)
        if rc == 0:
            os.rename(src, trash)      # src now names the old checkpoint
            return
        err = ctypes.get_errno()
        if err not in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
            raise OSError(err, os.strerror(err), str(dst))
    os.rename(dst, trash)
    os.rename(src, dst)


_held_fork_private: "weakref.WeakSet[ExclusiveFileLock]" = weakref.WeakSet()


def _drop_fork_private_locks() -> None:
    """In a forked child: close its copies of the parent's fork-private locks. flock belongs to
    the open file description, which a fork shares: a DataLoader worker notices its SIGKILLed
    parent only within ~5 s, and until then its copy would keep the lock held, refusing the
    restarted job as "another writer". Closing a copy never unlocks the parent's."""
    for lock in list(_held_fork_private):
        fd, lock._fd = lock._fd, -1
        if fd >= 0:
            try:
                os.close(fd)
            except OSError:
                pass
    _held_fork_private.clear()


os.register_at_fork(after_in_child=_drop_fork_private_locks)


class ExclusiveFileLock:
    """flock(LOCK_EX|LOCK_NB) on a file that records the holder's pid.

    flock belongs to the open file description, so the lock dies with the holder's process (no
    stale lock after a crash) and two locks in one process conflict too. With `fork_private`, a
    forked child (a DataLoader worker, say) does not keep the lock: only its holder does."""

    fork_private = False

    def __init__(self, path: Path, what: str):
        self.path = Path(path)
        self.what = what
        self._fd = -1

    @property
    def held(self) -> bool:
        return self._fd >= 0

    def acquire(self):
        if self._fd >= 0:
            return self
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as err:   # a read-only mount, a directory in the way
            raise TraindError(f"{self.what}: cannot open lock file {self.path}: {err.strerror or err}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            who = f"pid {holder}" if holder else "another process"
            raise TraindError(f"{self.what} is locked by {who} (another writer); lock file {self.path}") from None
        except OSError:
            os.close(fd)
            raise
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:   # a full disk: the flock holds all the same, only the holder's pid is missing
            pass
        self._fd = fd
        if self.fork_private:
            _held_fork_private.add(self)
        return self

    def release(self) -> None:
        if self._fd >= 0:
            _held_fork_private.discard(self)
            fd, self._fd = self._fd, -1
            try:
                os.ftruncate(fd, 0)
            finally:
                os.close(fd)      # closing drops the flock

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode(errors="replace").strip()
        return int(text) if text.isdigit() else None
    except OSError:
        return None
