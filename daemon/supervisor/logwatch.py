"""Wakes the supervisor's loop when the attempt's log grows, so the job's output reaches the
console line by line instead of at the loop's next batched wake-up (up to 1 s later).

Linux inotify through the one libc handle (daemon/fs/libc.py); where it is missing, `open()`
returns None and the batched echo stays as it was.
"""
from __future__ import annotations

import os

from ..fs.libc import libc_fn

_IN_MODIFY, _IN_NONBLOCK, _IN_CLOEXEC = 0x2, 0o4000, 0o2000000
ECHO_INTERVAL = 0.05      # at most this often while the job prints without pause (20 wake-ups/s)


class LogWatch:
    def __init__(self, fd: int) -> None:
        self._fd, self._wd = fd, -1

    @classmethod
    def open(cls) -> "LogWatch | None":
        init = libc_fn("inotify_init1")
        fd = init(_IN_NONBLOCK | _IN_CLOEXEC) if init is not None else -1
        return cls(fd) if fd >= 0 else None

    def fileno(self) -> int:
        return self._fd

    def watch(self, path) -> None:
        """Watch this file from now on (the previous one, if any, no longer)."""
        if self._wd >= 0:
            libc_fn("inotify_rm_watch")(self._fd, self._wd)
        self._wd = libc_fn("inotify_add_watch")(self._fd, os.fsencode(str(path)), _IN_MODIFY)

    def drain(self) -> None:
        try:
            while os.read(self._fd, 4096):
                pass
        except BlockingIOError:
            pass

    def close(self) -> None:
        os.close(self._fd)
