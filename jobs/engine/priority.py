"""CPU priority of the store's background threads (writer, buffer warm-up).

TRAIND_WRITER_PRIORITY picks how they give way to training:
- "idle" (default): SCHED_IDLE. The kernel runs them only on a core that training leaves idle,
  so a background save takes idle cycles first instead of time slices from the training threads.
- "nice": nice +10. They still get ~10 % of a core that training keeps busy.
- "normal": as the training threads.
On Linux both calls change the calling thread only (a thread is a task with its own policy).

Going back (SCHED_OTHER, the process's nice) needs CAP_SYS_NICE or an RLIMIT_NICE that allows
it; where neither is there, raise_priority() says False and the store's hurrying thread does the
remaining work itself instead.
"""
from __future__ import annotations

import os
import threading

PRIORITY_ENV = "TRAIND_WRITER_PRIORITY"
POLICIES = ("idle", "nice", "normal")
NICE_STEP = 10
_BASE_NICE = os.getpriority(os.PRIO_PROCESS, 0) if hasattr(os, "getpriority") else 0


def background_policy() -> str:
    value = os.environ.get(PRIORITY_ENV, "").strip().lower()
    return value if value in POLICIES else POLICIES[0]


def lower_priority() -> bool:
    """Lower the calling thread as TRAIND_WRITER_PRIORITY says; False if it stays as it is."""
    policy = background_policy()
    try:
        if policy == "idle" and hasattr(os, "SCHED_IDLE"):
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
            return True
        if policy == "nice" and hasattr(os, "setpriority"):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), _BASE_NICE + NICE_STEP)
            return True
    except OSError:
        pass
    return False


def raise_priority(tid: int | None = None) -> bool:
    """Back to SCHED_OTHER and the process's nice for thread `tid` (default: the calling one)."""
    tid = tid or threading.get_native_id()
    try:
        if hasattr(os, "SCHED_OTHER") and os.sched_getscheduler(tid) != os.SCHED_OTHER:
            os.sched_setscheduler(tid, os.SCHED_OTHER, os.sched_param(0))
        if hasattr(os, "setpriority") and os.getpriority(os.PRIO_PROCESS, tid) != _BASE_NICE:
            os.setpriority(os.PRIO_PROCESS, tid, _BASE_NICE)
    except OSError:        # EPERM without CAP_SYS_NICE / RLIMIT_NICE; ESRCH: the thread ended
        return False
    return True
