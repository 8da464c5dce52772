"""`python -m traind.service.deathsig PARENT_PID -- CMD...`: exec CMD so that it gets SIGTERM when the
daemon dies.

Why: a job's `traind run` must never outlive `traind serve` unsupervised (after `kill -9` of the
daemon, a restarted daemon relaunches the job; two copies would fight over its run dir). SIGTERM
is the supervisor's "emergency checkpoint, then exit 75". PR_SET_PDEATHSIG survives execve, and
it is set here, in the child, because preexec_fn is unsafe in a process with threads (the daemon
has the watchdog observer and the scheduler). If the parent is already gone, exit 75 at once.
"""
from __future__ import annotations

import os
import signal
import sys

from ..contract import exitcodes
from ..fs.libc import PR_SET_PDEATHSIG, prctl



def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print("usage: python -m traind.service.deathsig PARENT_PID -- CMD...", file=sys.stderr)
        return 2
    parent, cmd = int(argv[0]), argv[2:]
    err = prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM))
    if err != 0:
        print(f"traind: prctl(PR_SET_PDEATHSIG) failed: {'no prctl' if err is None else os.strerror(err)}",
              file=sys.stderr)
        return 1
    if os.getppid() != parent:  # the daemon died before prctl took effect
        return exitcodes.PREEMPTED
    os.execvp(cmd[0], cmd)
    return 127  # not reached


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
