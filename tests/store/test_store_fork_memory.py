"""The store's own buffers and forked children (DataLoader workers fork from the training process).

A child inherits whatever garbage the parent had: a store that is gone but not yet collected (a
reference cycle) still holds its snapshot buffers and staging block. When the child's garbage
collector frees them, their munmap must not take away memory the child mapped since. With
MADV_DONTFORK it did (the range was free in the child, the child's next mapping landed there):
a SIGSEGV in a forked checkpoint writer, seen in the fault tests.
"""
from __future__ import annotations

import faulthandler
import gc
import mmap
import os

import torch

from traind.fs import memory
from traind.jobs.engine.snapshot import Snapshotter
from traind.store.hashing import staging_buffer

MIB = 1 << 20


def _child_survives_inherited_garbage() -> int:
    snap = Snapshotter(threads=1)
    snap.take({"w": torch.ones(4 * MIB), "m": torch.zeros(2 * MIB)})     # 16 + 8 MiB buffers
    garbage = [snap, staging_buffer()]
    garbage.append(garbage)                                              # a cycle: gc frees it
    del snap, garbage
    gc.disable()
    try:
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                faulthandler.disable()       # the crash the second test expects: no dump
                mine = [mmap.mmap(-1, 16 * MIB, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
                        for _ in range(8)]
                gc.collect()
                for region in mine:
                    region[:1], region[-1:] = b"x", b"y"
                code = 0
            finally:
                os._exit(code)
    finally:
        gc.enable()
    _, status = os.waitpid(pid, 0)
    return os.WTERMSIG(status) if os.WIFSIGNALED(status) else -os.WEXITSTATUS(status)


def test_a_forked_child_freeing_inherited_buffers_keeps_its_own_memory():
    assert _child_survives_inherited_garbage() == 0


def test_the_same_child_crashes_with_dontfork(monkeypatch):
    """The test above can fail: with the advice that was used before, the child is killed."""
    monkeypatch.setattr(memory, "MADV_WIPEONFORK", mmap.MADV_DONTFORK)
    assert _child_survives_inherited_garbage() == 11      # SIGSEGV
