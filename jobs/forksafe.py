"""Keep the checkpoint writer lock out of forked children (DataLoader workers, user multiprocessing).

flock belongs to the open file description, which a fork shares. A DataLoader worker notices
that its SIGKILLed parent is gone only within ~5 s, and until then its copy of the fd would
keep the run's checkpoints dir locked: the restarted job would be refused as "another writer".
So every forked child closes its copies at once (closing never truncates or unlocks the parent's).
"""
from __future__ import annotations

import os

_fds: set[int] = set()


def _close_in_child() -> None:
    for fd in list(_fds):
        try:
            os.close(fd)
        except OSError:
            pass
    _fds.clear()


os.register_at_fork(after_in_child=_close_in_child)


def lock_fd_of(store) -> int | None:
    """The fd of a CheckpointStore's writer lock (None if the store does not expose it)."""
    lock = getattr(store, "_lock", None)
    fd = getattr(lock, "_fd", -1)
    return fd if isinstance(fd, int) and fd >= 0 else None


def keep_out_of_children(fd: int | None) -> None:
    if fd is not None:
        _fds.add(fd)


def forget(fd: int | None) -> None:
    """Call before the fd is closed (its number may be reused by an unrelated file)."""
    _fds.discard(fd)
