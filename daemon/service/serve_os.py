"""The one object through which `traind serve` touches processes: spawn, signal, poll, clock, and
the run-dir lock probes. Tests replace it with a scripted fake (tests/service/test_loop_fake_os.py)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from ..contract.errors import TraindError
from ..store import memory_tier
from ..supervisor import runfiles


class ServeOS:
    """Every OS effect of the daemon: spawn, signal, poll, clock, lock probes. Tests may replace it."""

    def spawn(self, argv: list[str], env: dict, log_path: Path) -> subprocess.Popen:
        with open(log_path, "ab", buffering=0) as out:
            # Own session: a stop can signal the whole group; deathsig: it dies with the daemon.
            return subprocess.Popen([sys.executable, "-m", "traind.service.deathsig", str(os.getpid()), "--", *argv],
                                    env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)

    def signal(self, proc: subprocess.Popen, sig: int, group: bool = False) -> None:
        try:
            os.killpg(proc.pid, sig) if group else proc.send_signal(sig)
        except ProcessLookupError:
            pass

    def poll(self, proc: subprocess.Popen) -> int | None:
        rc = proc.poll()
        return None if rc is None else (128 - rc if rc < 0 else rc)  # killed by N -> 128+N

    def monotonic(self) -> float:
        return time.monotonic()

    def kill_job_tree(self, proc: subprocess.Popen, run_dir: Path) -> None:
        """SIGKILL a job's `traind run` (its process group) and the job itself: the supervisor runs
        its child in a session of its own, so the child's group is found through the run lock."""
        self.signal(proc, signal.SIGKILL, group=True)
        _kill_lock_holders(run_dir, ("child_pid",))
        _release_memory_tier(run_dir)

    def kill_holder(self, run_dir: Path) -> None:
        """SIGKILL an orphaned job found at start-up: the `traind run` and the child named by its
        lock, each with its process group."""
        _kill_lock_holders(run_dir, ("supervisor_pid", "child_pid"))
        _release_memory_tier(run_dir)

    def gpu_busy(self, device: str) -> bool | None:
        """Whether a process still runs on the GPU `device` (an index or a UUID), by NVML; None
        where NVML is not there (no nvidia-ml-py, no driver)."""
        try:
            import pynvml
            pynvml.nvmlInit()
        except Exception:       # ImportError, or NVMLError without a driver: nothing to ask
            return None
        try:
            handle = (pynvml.nvmlDeviceGetHandleByIndex(int(device)) if device.isdigit()
                      else pynvml.nvmlDeviceGetHandleByUUID(device))
            return bool(pynvml.nvmlDeviceGetComputeRunningProcesses(handle))
        except Exception:
            return None
        finally:
            pynvml.nvmlShutdown()

    def run_dir_holder(self, run_dir: Path) -> str | None:
        """Who still holds RUN_DIR/supervisor.lock (an old `traind run` or its child), None if free."""
        if not runfiles.lock_is_held(run_dir):
            return None
        holder = runfiles.lock_holder(run_dir)
        return f"supervisor pid {holder.get('supervisor_pid')}, child pid {holder.get('child_pid')}"


def _release_memory_tier(run_dir: Path) -> None:
    """A killed supervisor cannot free its memory tier (checkpoint.memory): keep on disk what only
    memory held, and free the tmpfs the job's slot used."""
    try:
        memory_tier.release(run_dir)
    except (OSError, TraindError) as err:    # the tier stays: the job's next `traind run` uses it
        print(f"traind serve: {run_dir}: cannot free its memory tier: {err}", file=sys.stderr)


def _kill_lock_holders(run_dir: Path, keys) -> None:
    """SIGKILL the processes RUN_DIR's lock names under `keys`, each with its process group."""
    holder = runfiles.lock_holder(run_dir) if runfiles.lock_is_held(run_dir) else {}
    for pid in (holder.get(key) for key in keys):
        if isinstance(pid, int) and pid > 1:
            for kill in (os.killpg, os.kill):
                try:
                    kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
