"""A scripted stand-in for traind.supervisor.osproc.RealOS: a fake clock, fake children, recorded effects.

The script is a list of (time, event). Children react to what the supervisor does through
`on_spawn(attempt_index) -> [(delay, event)]` and `on_send` / `on_signal` tables of the same shape.
Control messages only wake the loop when it listens to the channel (as with the real selector);
otherwise they wait for the next wake-up, which is what makes the 1/s batching testable.
"""
from __future__ import annotations

import signal
from dataclasses import dataclass

from traind.supervisor.osproc import ChildExited, ChildMessage, ExitStatus, SpawnFailure, StopRequested


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
    def __init__(self, *, on_spawn=None, on_send=None, on_signal=None, spawn_fails=False):
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

    def send(self, kind, **fields):
        self.sent.append((self.t, kind, fields))
        self._after(self.on_send.get(kind, []))
        return True

    def signal_group(self, signo):
        self.signals.append((self.t, signo))
        self._after(self.on_signal.get(signo, []))
        return True

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
