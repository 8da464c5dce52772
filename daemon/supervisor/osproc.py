"""The one object through which the supervisor touches the OS: spawn, signal, wait, clocks, randomness.

Tests replace it with a scripted fake (tests/supervisor/fakeos.py) that has the same methods.
`wait()` is the only place the supervisor blocks: one selector over the signal self-pipe, a wake
pipe for `request_stop` from other threads, the child's pidfd and (when asked) the control channel.
Nothing here polls: without events it sleeps until the timeout the caller computed.
"""
from __future__ import annotations

import collections
import os
import random
import selectors
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import NamedTuple
from pathlib import Path

from ..fs.libc import PR_SET_CHILD_SUBREAPER, prctl
from .logwatch import ECHO_INTERVAL, LogWatch
from .channel import SupervisorChannel
from ..contract.protocol import ENV_CONTROL_FD, RESUME, SPARE_READY

# epoll refuses a timeout past ~24 days (a spec may ask for a longer backoff or grace): waking
# early is harmless, the loop just computes its deadlines again.
MAX_WAIT_SECONDS = 3600.0


# --- values ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ExitStatus:
    code: int | None          # None when killed by a signal
    signal: int | None = None

    @classmethod
    def from_returncode(cls, rc: int) -> "ExitStatus":
        return cls(None, -rc) if rc < 0 else cls(rc, None)

    def signal_name(self) -> str | None:
        return None if self.signal is None else signal_name(self.signal)

    def describe(self) -> str:
        if self.signal is not None:
            return f"killed by {signal_name(self.signal)}"
        return f"exit code {self.code}"


# What spawn() returns when the command cannot start, and the events wait() returns, in the order
# they happened where that matters (one line each: they are plain records).
class SpawnFailure(NamedTuple): message: str
class SignalArrived(NamedTuple): signo: int
class StopRequested(NamedTuple): reason: str
class ChildMessage(NamedTuple): msg: dict; rank: int = 0   # noqa: E702
class BadMessage(NamedTuple): error: str
class ChildExited(NamedTuple): pid: int; status: ExitStatus; rank: int = 0   # noqa: E702
class SpareReady(NamedTuple): pid: int
class SpareExited(NamedTuple): pid: int; status: ExitStatus   # noqa: E702


def signal_name(signo: int) -> str:
    try:
        return signal.Signals(signo).name
    except ValueError:
        return f"signal {signo}"


# --- the real OS -------------------------------------------------------------------------------

class _Child:
    def __init__(self, popen: subprocess.Popen, channel: SupervisorChannel, log_path: Path, rank: int = 0):
        self.popen = popen
        self.pid = popen.pid
        self.pidfd = os.pidfd_open(popen.pid)
        self.channel = channel
        self.log_path = log_path
        self.rank = rank


class RealOS:
    def __init__(self, echo_to=None) -> None:
        self._echo_to = echo_to if echo_to is not None else sys.stderr
        self._sel = selectors.DefaultSelector()
        self._sig_r, self._sig_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._sel.register(self._sig_r, selectors.EVENT_READ, "signal")
        self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._requests: collections.deque[str] = collections.deque()
        self._lock = threading.Lock()
        self._ranks: dict[int, _Child] = {}     # the attempt's processes: one, or one per local rank
        self._log: list = [None, 0]             # the attempt's log (its ranks share it) and how much we echoed
        self._spare: _Child | None = None    # a warm spare, started ahead of need (restart.warm_spare)
        self._old_handlers: dict[int, object] = {}
        self._old_wakeup_fd: int | None = None
        self._watch, self._echoed_at = LogWatch.open(), 0.0     # the log grew: echo it now (logwatch.py)
        self.wakeups = 0   # times wait() returned: the benchmark reads it
        self.subreaper = False
        self.orphans_reaped = 0

    # clocks and chance
    def monotonic(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()

    def random(self) -> float:
        return random.random()

    # signals: the handler records nothing itself; the C-level wakeup fd writes the signal number
    # into the self-pipe, which the loop reads. No I/O, no decisions in the handler.
    def install_signal_handlers(self, signos) -> None:
        self._old_wakeup_fd = signal.set_wakeup_fd(self._sig_w, warn_on_full_buffer=False)
        for signo in signos:
            self._old_handlers[signo] = signal.signal(signo, _recorded_by_wakeup_fd)

    def restore_signal_handlers(self) -> None:
        for signo, handler in self._old_handlers.items():
            signal.signal(signo, handler)
        self._old_handlers.clear()
        if self._old_wakeup_fd is not None:
            signal.set_wakeup_fd(self._old_wakeup_fd)
            self._old_wakeup_fd = None

    def request_stop(self, reason: str) -> None:
        """Thread-safe: queue the request and wake the loop."""
        with self._lock:
            self._requests.append(reason)
        try:
            os.write(self._wake_w, b"r")
        except BlockingIOError:
            pass  # the pipe is full of wake-ups already; the loop will see the queue

    # the child (or the group of ranks: one process each, each its own session and channel)
    def spawn(self, argv, *, cwd: Path, env: dict, log_path: Path, keep_fds=(),
              rank_envs: list[dict] | None = None) -> int | SpawnFailure:
        """Start the attempt: one process, or one per entry of `rank_envs` (added to `env`). The
        pid of the first; if any rank cannot start, those already started are killed."""
        if not self.subreaper:
            # Processes the job leaves behind (a double-forked worker, say) are re-parented to us
            # rather than to PID 1, which in a container without an init never reaps them; we reap
            # them (_reap_orphans), so they neither linger as zombies nor look alive to lock checks.
            self.subreaper = os.getpid() == 1 or prctl(PR_SET_CHILD_SUBREAPER, 1) == 0
        self._log = [log_path, 0]
        self._watch_log(log_path)
        for rank, extra in enumerate(rank_envs or [{}]):
            child = self._start(argv, cwd, {**env, **extra}, log_path, keep_fds, rank)
            if isinstance(child, SpawnFailure):
                self.signal_group(signal.SIGKILL)
                for started in list(self._ranks.values()):
                    started.popen.wait()
                    self._forget(started)
                return child
            self._ranks[rank] = child
            self._sel.register(child.pidfd, selectors.EVENT_READ, ("exit", rank))
        return self._ranks[0].pid

    def _watch_log(self, log_path) -> None:
        if self._watch is not None:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            log_path.touch()
            self._watch.watch(log_path)

    def rank_pids(self) -> dict[int, int]:
        return {rank: child.pid for rank, child in self._ranks.items()}

    def _start(self, argv, cwd: Path, env: dict, log_path: Path, keep_fds, rank: int = 0) -> _Child | SpawnFailure:
        channel = SupervisorChannel()
        env = {**env, ENV_CONTROL_FD: str(channel.child_fd())}
        log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        try:
            popen = subprocess.Popen(list(argv), cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=log_fd,
                                     stderr=subprocess.STDOUT, pass_fds=(channel.child_fd(), *keep_fds),
                                     start_new_session=True)
        except OSError as err:
            channel.close()
            return SpawnFailure(f"cannot start {argv[0]!r}: {err.strerror or err}")
        finally:
            os.close(log_fd)
        channel.forget_child_end()
        return _Child(popen, channel, log_path, rank)

    # the warm spare: a second copy of the job that waits, built, for the attempt it will be
    def spawn_spare(self, argv, *, cwd: Path, env: dict, log_path: Path, keep_fds=()) -> int | SpawnFailure:
        spare = self._start(argv, cwd, env, log_path, keep_fds)
        if isinstance(spare, SpawnFailure):
            return spare
        self._spare = spare
        self._sel.register(spare.pidfd, selectors.EVENT_READ, "spare-exit")
        self._sel.register(spare.channel.fileno(), selectors.EVENT_READ, "spare-channel")
        return spare.pid

    def promote_spare(self, log_path: Path, **resume) -> int | None:
        """Hand the spare its attempt (the RESUME message); it becomes the child, its log that
        attempt's log. None (and the spare is gone) if it cannot take it."""
        spare = self._spare
        if spare is None or not spare.channel.send(RESUME, **resume):
            self.discard_spare()
            return None
        self._forget_spare()
        os.rename(spare.log_path, log_path)      # it keeps writing to the same file, under its new name
        spare.log_path = log_path
        self._ranks, self._log = {0: spare}, [log_path, 0]
        self._sel.register(spare.pidfd, selectors.EVENT_READ, ("exit", 0))
        return spare.pid

    def discard_spare(self) -> None:
        """SIGKILL the spare's group and reap it (it holds nothing: no checkpoint, no training)."""
        spare = self._forget_spare()
        if spare is not None:
            try:
                os.killpg(spare.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            spare.popen.wait()
            os.close(spare.pidfd)
            spare.channel.close()

    def rss_bytes(self, pid: int) -> int | None:
        """Resident memory of a process (what a waiting spare costs), from /proc."""
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            pass
        return None

    def _forget_spare(self) -> _Child | None:
        spare, self._spare = self._spare, None
        if spare is not None:
            self._sel.unregister(spare.pidfd)
            if not spare.channel.closed:
                self._sel.unregister(spare.channel.fileno())
        return spare

    def _spare_events(self, kinds: set) -> list:
        spare, events = self._spare, []
        if spare is not None and "spare-channel" in kinds:
            got = spare.channel.drain()
            events += [SpareReady(spare.pid) for m in got.messages if m.get("type") == SPARE_READY]
            if got.closed:
                self._sel.unregister(spare.channel.fileno())
        if spare is not None and "spare-exit" in kinds:
            self._forget_spare()
            rc = spare.popen.wait()
            os.close(spare.pidfd)
            spare.channel.close()
            events.append(SpareExited(spare.pid, ExitStatus.from_returncode(rc)))
        return events

    def send(self, msg_type: str, **fields) -> bool:
        """To every running rank; True if any could be reached."""
        return any([c.channel.send(msg_type, **fields) for c in self._ranks.values()])

    def signal_group(self, signo: int) -> bool:
        """Signal each rank's whole process group (each is a session leader: pgid == pid)."""
        sent = False
        for child in self._ranks.values():
            try:
                os.killpg(child.pid, signo)
                sent = True
            except (ProcessLookupError, PermissionError):
                pass
        return sent

    def wait(self, timeout: float | None, *, listen_channel: bool) -> list:
        """Block until something happens or `timeout` passes. Whatever the reason for waking, the
        channel is drained (so a loop that listens to it only once a second loses nothing)."""
        ranks = list(self._ranks.values())
        watching = [c for c in ranks if listen_channel and not c.channel.closed]
        for child in watching:
            self._sel.register(child.channel.fileno(), selectors.EVENT_READ, "channel")
        log_due = self._echoed_at + ECHO_INTERVAL - time.monotonic()      # > 0: echoed just now
        if self._watch is not None and self._log[0] is not None:
            self._sel.register(self._watch.fileno(), selectors.EVENT_READ, "log") if log_due <= 0 else None
            timeout = log_due if log_due > 0 and (timeout is None or log_due < timeout) else timeout
        try:
            ready = self._sel.select(None if timeout is None else min(max(0.0, timeout), MAX_WAIT_SECONDS))
        finally:
            for child in watching:
                self._sel.unregister(child.channel.fileno())
            if self._watch is not None and self._watch.fileno() in self._sel.get_map():
                self._sel.unregister(self._watch.fileno())
                self._watch.drain()
        self.wakeups += 1
        kinds = {key.data for key, _ in ready}
        events: list = []
        if "signal" in kinds:
            events += [SignalArrived(b) for b in _read_all(self._sig_r)]
        if "wake" in kinds:
            _read_all(self._wake_r)
            with self._lock:
                while self._requests:
                    events.append(StopRequested(self._requests.popleft()))
        for child in ranks:
            events += self._drain(child)
        self._echo_output()
        events += [self._reap(c) for c in ranks if ("exit", c.rank) in kinds]
        events += self._spare_events(kinds)
        self._reap_orphans()
        return events

    def _reap_orphans(self) -> int:
        """Reap exited processes that were re-parented to us, never the child or the spare (their
        exit status is read through their pidfds). Only zombies are touched: a live orphan runs on."""
        mine = {c.pid for c in (*self._ranks.values(), self._spare) if c is not None}
        reaped = 0
        for pid in _zombie_children():
            if pid in mine:
                continue
            try:
                reaped += os.waitpid(pid, os.WNOHANG)[0] == pid
            except ChildProcessError:
                pass
        self.orphans_reaped += reaped
        return reaped

    def _drain(self, child: _Child) -> list:
        got = child.channel.drain()
        return [ChildMessage(m, child.rank) for m in got.messages] + [BadMessage(e) for e in got.errors]

    def _reap(self, child: _Child) -> ChildExited:
        rc = child.popen.wait()
        try:  # leftovers of its group (e.g. data loader workers) must not outlive the attempt
            os.killpg(child.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self._forget(child)
        self._echo_output()
        return ChildExited(child.pid, ExitStatus.from_returncode(rc), child.rank)

    def _forget(self, child: _Child) -> None:
        self._sel.unregister(child.pidfd)
        os.close(child.pidfd)
        child.channel.close()
        self._ranks.pop(child.rank, None)

    def _echo_output(self) -> None:
        """Copy what the attempt appended to its log since last time to our stderr. The child
        writes the log file itself, so its output survives us and never hits a broken pipe."""
        log_path, offset = self._log
        if log_path is None or self._echo_to is False:
            return
        try:
            with open(log_path, "rb") as f:
                f.seek(offset)
                while data := f.read(1 << 20):
                    self._log[1] = offset = offset + len(data)
                    self._echoed_at = time.monotonic()
                    if hasattr(self._echo_to, "job_output"):     # a Terminal: prefixed lines
                        self._echo_to.job_output(data, log_path.stem)
                    else:
                        self._echo_to.buffer.write(data)
                if not hasattr(self._echo_to, "job_output"):
                    self._echo_to.flush()
        except (OSError, ValueError, AttributeError):
            pass   # echo is a courtesy; the attempt log has everything



def _zombie_children() -> list[int]:
    """Our children (of every thread) that have exited and wait to be reaped, from /proc."""
    pids = []
    try:
        for tid in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{tid}/children") as f:
                pids += [int(p) for p in f.read().split()]
    except OSError:
        return []
    zombies = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rpartition(")")[2].split()[0] == "Z":
                    zombies.append(pid)
        except (OSError, IndexError):
            pass
    return zombies


def _recorded_by_wakeup_fd(signo, frame) -> None:
    """The wakeup fd already carries the signal number to the loop; nothing else to do here."""


def _read_all(fd: int) -> bytes:
    out = b""
    while True:
        try:
            data = os.read(fd, 4096)
        except (BlockingIOError, InterruptedError):
            return out
        if not data:
            return out
        out += data
