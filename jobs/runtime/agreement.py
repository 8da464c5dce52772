"""The one rule by which a group's ranks stop, or save, at the same step: one step after a rank
asks. Every way in (Session, the Trainer, the Lightning callback) calls `at_step` at each
optimizer-step boundary; it costs nothing measurable while nothing is pending.

Why one step after: the ranks of a data-parallel group train in lockstep. A rank finishes step
s+1 only after every rank has given its part of step s+1's gradient reduction, so only after
every rank has left the boundary after step s. A rank that wants the group to stop (a signal,
its supervisor's message) or to save (a checkpoint request; rank 0's clock for every_seconds)
writes "at step s+1" at its boundary after step s, before it starts step s+1. Every rank then
reads that word at its boundary after step s+1 at the latest, and every rank acts there.

Transports of the word:
- NodeWord: ranks that can all map one file of /dev/shm (one node) share 16 bytes of memory,
  unlinked once every rank has it mapped. Reading it is a memory read, no collective. A proposal
  pending is never replaced (first writer wins, under a file lock), so the step it names is never
  behind any rank.
- OneStepLate: ranks on several nodes share no memory; every rank's flags go into an all_reduce
  started at one boundary and read at the next (behind the step's compute). Same rule, a small
  collective per step.
- Alone: one process; the flags apply at once.
"""
from __future__ import annotations

import fcntl
import mmap
import os
import struct

NONE = -1
_WORD = struct.Struct("qq")       # (stop at step, save at step); NONE when nothing is pending


class Alone:
    """One process: a stop or a checkpoint applies at the step it is asked."""

    def at_step(self, step: int, *, stop: bool, checkpoint: bool) -> tuple[bool, bool]:
        return stop, checkpoint

    def propose_stop(self, step: int) -> None:
        pass

    def stop_pending(self) -> bool:
        """Whether another rank asked the group to stop, known without a collective."""
        return False

    def close(self) -> None:
        pass


class NodeWord:
    """The group's word in memory shared by the ranks of one node."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._map = mmap.mmap(fd, mmap.PAGESIZE)

    @classmethod
    def open(cls, group) -> "NodeWord | None":
        """Collective: rank 0 makes the word, every other rank opens it by its random name; the
        word is the group's only if every rank could (all on one node), else None on every rank.
        Then the name goes (a rank killed later leaves nothing behind in /dev/shm)."""
        name = group.share(f"/dev/shm/traind-agree-{os.getpid()}-{os.urandom(8).hex()}")
        fd = -1
        try:
            if group.leader:
                fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
                os.ftruncate(fd, mmap.PAGESIZE)
                os.pwrite(fd, _WORD.pack(NONE, NONE), 0)
        except OSError:
            fd = -1
        group.share(None)                    # made (or not)
        if not group.leader:
            try:
                fd = os.open(name, os.O_RDWR | os.O_CLOEXEC)
            except OSError:                  # another node: no shared memory with rank 0
                fd = -1
        everyone = all(group.collect(fd >= 0))    # also: every rank has opened it
        if group.leader and fd >= 0:
            os.unlink(name)
        if not everyone:
            if fd >= 0:
                os.close(fd)
            return None
        return cls(fd)

    def read(self) -> tuple[int, int]:
        return _WORD.unpack_from(self._map, 0)

    def at_step(self, step: int, *, stop: bool, checkpoint: bool) -> tuple[bool, bool]:
        stop_at, save_at = _WORD.unpack_from(self._map, 0)
        if (stop and stop_at == NONE) or (checkpoint and save_at < step):
            stop_at, save_at = self._propose(step + 1, stop, checkpoint)
        return stop_at != NONE and step >= stop_at, save_at == step

    def propose_stop(self, step: int) -> None:
        """Mid-phase (an evaluation): the others read it at their next look, not just at a boundary."""
        if _WORD.unpack_from(self._map, 0)[0] == NONE:
            self._propose(step + 1, True, False)

    def stop_pending(self) -> bool:
        return _WORD.unpack_from(self._map, 0)[0] != NONE

    def _propose(self, at: int, stop: bool, checkpoint: bool) -> tuple[int, int]:
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            stop_at, save_at = _WORD.unpack_from(self._map, 0)
            if stop and stop_at == NONE:
                stop_at = at
            if checkpoint and save_at < at - 1:       # none pending (one at this step is due now)
                save_at = at
            _WORD.pack_into(self._map, 0, stop_at, save_at)
            return stop_at, save_at
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        if self._fd >= 0:
            self._map.close()
            os.close(self._fd)
            self._fd = -1


class OneStepLate(Alone):
    """Ranks on several nodes: the flags of each boundary, reduced over the group, read at the next.
    Mid-phase, another node's stop is not seen (no collective there): the phase's end agrees."""

    def __init__(self, group) -> None:
        self.group = group

    def at_step(self, step: int, *, stop: bool, checkpoint: bool) -> tuple[bool, bool]:
        previous = self.group.finish_agreement() or (False, False)
        self.group.start_agreement(stop, checkpoint and not previous[1])
        return previous

    def close(self) -> None:
        self.group.finish_agreement()      # every rank has one in flight: end it together


def for_group(group):
    """The rule's transport for this group (None: one process): the word in shared memory when
    every rank can map it, else the collective read one step late. A collective call."""
    if group is None:
        return Alone()
    word = NodeWord.open(group)
    return word if word is not None else OneStepLate(group)
