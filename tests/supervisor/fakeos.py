"""A scripted stand-in for traind.supervisor.osproc.RealOS (the SupervisorOS Protocol of
traind.supervisor.os_interface, warm spare included): a fake clock, fake children, recorded effects.

The script is a list of (time, event). Children react to what the supervisor does through
`on_spawn(attempt_index) -> [(delay, event)]` and `on_send` / `on_signal` tables of the same shape.
Control messages only wake the loop when it listens to the channel (as with the real selector);
otherwise they wait for the next wake-up, which is what makes the 1/s batching testable.
"""
from __future__ import annotations

import signal
from dataclasses import dataclass

from traind.supervisor.osproc import (ChildExited, ChildMessage, ExitStatus, SpareExited, SpareReady, SpawnFailure,
                                      StopRequested)


def exited(code=None, sig=None):
    return ChildExited(0, ExitStatus(code, sig))


def msg(kind, **fields):
    return ChildMessage({"type": kind, **fields})


@dataclass
class Info:   # what the store's latest_valid returns, reduced to what the supervisor reads
    step: int
    path: str = "/x/checkpoints/step"
    error: str | None = None


class FakeOS:
    def __init__(self, *, on_spawn=None, on_send=None, on_signal=None, spawn_fails=False, spare_ready_after=None):
        self.t = 0.0
        self.script: list[tuple[float, object]] = []
        self.on_spawn = on_spawn or (lambda n: [])
        self.on_send = on_send or {}
        self.on_signal = on_signal or {signal.SIGKILL: [(0.01, exited(sig=signal.SIGKILL))]}
        self.spawn_fails = spawn_fails
        self.spawns: list[float] = []
        self.sent: list[tuple[float, str, dict]] = []
        self.signals: list[tuple[float, int]] = []
        self.waits = 0
        self.child_alive = False
        # the warm spare: it says ready this long after it starts (None: it never does)
        self.spare_ready_after = spare_ready_after
        self.spare_pid: int | None = None
        self.spares_started: list[float] = []
        self.promoted: list[tuple[float, dict]] = []
        self.spares_discarded = 0

    def at(self, when, event):
        self.script.append((when, event))

    def _after(self, items):
        for delay, event in items:
            self.script.append((self.t + delay, event))

    # the RealOS interface
    def monotonic(self):
        return self.t

    def wall(self):
        return 1_000_000.0 + self.t

    def random(self):
        return 0.5          # jitter term 2*r-1 == 0: delays are exact

    def install_signal_handlers(self, signos):
        pass

    def restore_signal_handlers(self):
        pass

    def request_stop(self, reason):
        self.script.append((self.t, StopRequested(reason)))

    def spawn(self, argv, *, cwd, env, log_path, keep_fds=(), rank_envs=None):
        if self.spawn_fails:
            return SpawnFailure(f"cannot start {argv[0]!r}: No such file or directory")
        self.spawns.append(self.t)
        self.env, self.rank_envs = env, rank_envs
        self.child_alive = True
        self._after(self.on_spawn(len(self.spawns)))
        return 1000 + len(self.spawns)

    def rank_pids(self):
        return {r: 1000 + len(self.spawns) + 100 * r for r in range(len(self.rank_envs or [{}]))}

    def send(self, msg_type, **fields):
        self.sent.append((self.t, msg_type, fields))
        self._after(self.on_send.get(msg_type, []))
        return True

    def signal_group(self, signo):
        self.signals.append((self.t, signo))
        self._after(self.on_signal.get(signo, []))
        return True

    def spawn_spare(self, argv, *, cwd, env, log_path, keep_fds=()):
        if self.spawn_fails:
            return SpawnFailure(f"cannot start {argv[0]!r}: No such file or directory")
        self.spares_started.append(self.t)
        self.spare_pid = 5000 + len(self.spares_started)
        if self.spare_ready_after is not None:
            self._after([(self.spare_ready_after, SpareReady(self.spare_pid))])
        return self.spare_pid

    def promote_spare(self, log_path, **resume):
        """The spare becomes the attempt: it behaves as on_spawn says for that attempt."""
        if self.spare_pid is None:
            return None
        pid, self.spare_pid = self.spare_pid, None
        self.script = [(w, e) for w, e in self.script if not (isinstance(e, SpareReady) and e.pid == pid)]
        self.promoted.append((self.t, dict(resume)))
        self.spawns.append(self.t)
        self.child_alive = True
        self._after(self.on_spawn(len(self.spawns)))
        return pid

    def discard_spare(self):
        if self.spare_pid is not None:
            self.spares_discarded += 1
            self.spare_pid = None

    def kill_spare(self, status=None):
        """Script the waiting spare's death (its exit event, now)."""
        pid, self.spare_pid = self.spare_pid, None
        self._after([(0.0, SpareExited(pid, status or ExitStatus(None, signal.SIGKILL)))])

    def rss_bytes(self, pid):
        return 100 << 20 if pid in (self.spare_pid,) else None

    def wait(self, timeout, *, listen_channel):
        self.waits += 1
        if self.waits > 100_000:
            raise AssertionError("the loop does not end")
        wakers = [w for w, e in self.script if listen_channel or not isinstance(e, ChildMessage)]
        limit = float("inf") if timeout is None else self.t + timeout
        first = min(wakers, default=float("inf"))
        if first > limit:
            if timeout is None:
                raise AssertionError("the supervisor would block forever")
            self.t = limit
        else:
            self.t = max(self.t, first)
        due = sorted([(w, i, e) for i, (w, e) in enumerate(self.script) if w <= self.t], key=lambda x: x[:2])
        self.script = [(w, e) for w, e in self.script if w > self.t]
        events = [e for _, _, e in due]
        # an exit makes pending messages of that child arrive first, and nothing after it
        return [e for e in events if not isinstance(e, ChildExited)] + [e for e in events if isinstance(e, ChildExited)]
