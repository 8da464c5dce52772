"""The filesystem primitives crash safety rests on (stdlib only): one implementation of each,
used by the store, the supervisor's run files and the service's job table and spool.

Durability on Linux needs an fsync of the file AND of the directory holding its name; a rename is
atomic but only durable once the parent directory is fsynced.
"""
from __future__ import annotations

import ctypes
import errno
import os
import shutil
from pathlib import Path

from .libc import libc_fn


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
    fn = libc_fn("sync_file_range")
    if fn is not None:
        fn(fd, ctypes.c_longlong(offset), ctypes.c_longlong(nbytes), ctypes.c_uint(_SYNC_FILE_RANGE_WRITE))


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_path(path: Path) -> None:
    """fsync a file someone else wrote, by name."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durably(fd: int, data) -> None:
    """Every byte (short writes retried), then fsync."""
    write_all(fd, memoryview(data).cast("B"))
    os.fsync(fd)


def rename_durably(src: Path, dst: Path) -> None:
    """rename, then fsync the directory holding the new name: only then does the rename survive
    a power loss."""
    os.rename(src, dst)
    fsync_dir(Path(dst).parent)


def atomic_write(path: Path, data: bytes, *, mode: int = 0o600, durable: bool = True) -> None:
    """Replace path with data: temp file + write + fsync + rename + directory fsync, so that after
    a crash a reader finds the old file or the new one, whole. `durable=False` skips both fsyncs
    (a status file rewritten every few seconds: a reader still never sees half of it)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        if durable:
            write_durably(fd, data)
        else:
            write_all(fd, memoryview(data).cast("B"))
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    if durable:
        rename_durably(tmp, path)
    else:
        os.replace(tmp, path)


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


def swap_into_place(src: Path, dst: Path, trash: Path) -> None:
    """Make src appear at dst although dst exists; the old dst ends at trash.

    With renameat2(RENAME_EXCHANGE) dst is complete at every instant. Without it (old kernel or
    filesystem) there is a short window where dst is absent: discovery then falls back to an older
    checkpoint, which is still correct, never partial."""
    fn = libc_fn("renameat2")
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
