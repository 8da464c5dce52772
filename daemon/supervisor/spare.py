"""The warm spare (`restart.warm_spare: true`): one copy of the job started ahead of need.

While an attempt trains, a spare runs the same command with TRAIND_SPARE=1: it imports, builds
its model, optimizer and datasets, and waits inside `Session` (before it takes any lock or reads
any checkpoint) for a RESUME message. When the attempt ends and the policy restarts, the spare is
handed the resume point and the attempt number instead of a cold start; a new spare is started
behind it once that attempt speaks. Exactness holds because what the spare becomes comes only
from the checkpoint it is handed: the restore overwrites weights, optimizer, RNG and data position.

A spare costs what a started job costs before its first step (its RSS is in status.json; on GPU,
a CUDA context). It holds no checkpoint lock, no port, no GPU memory beyond that context; it shares
the run lock fd, so a supervisor that dies leaves no second job to start before the spare exits
(it sees end of file and exits at once). A spare that dies or hangs never blocks a restart: a
dead one is replaced (up to MAX_SPARE_FAILURES times per run), a promoted one that cannot start
is an ordinary failed attempt.
"""
from __future__ import annotations

from pathlib import Path

from ..contract import protocol
from .osproc import SpareExited, SpareReady, SpawnFailure

MAX_SPARE_FAILURES = 3


class Spares:
    def __init__(self, enabled: bool, os_, files, say, event):
        self.enabled, self.os, self.files, self.say, self.event = enabled, os_, files, say, event
        self.pid: int | None = None
        self.ready = False
        self.failures = 0
        self.started = 0

    def want(self, argv, *, cwd: Path, env: dict, keep_fds) -> None:
        """Keep one spare started (while an attempt trains); no-op if there is one, or after too
        many spares died."""
        if not self.enabled or self.pid is not None or self.failures >= MAX_SPARE_FAILURES:
            return
        self.started += 1
        log = self.files.logs_dir / f"spare-{self.started}.log"
        pid = self.os.spawn_spare(argv, cwd=cwd, env={**env, protocol.ENV_SPARE: "1"}, log_path=log,
                                  keep_fds=keep_fds)
        if isinstance(pid, SpawnFailure):
            self._failed(f"warm spare could not start: {pid.message}")
            return
        self.pid, self.ready = pid, False
        self.event("spare_started", pid=pid)

    def on_event(self, ev) -> None:
        if isinstance(ev, SpareReady) and ev.pid == self.pid:
            self.ready = True
            self.say(f"warm spare pid {ev.pid} ready")
        elif isinstance(ev, SpareExited) and ev.pid == self.pid:
            self.pid, self.ready = None, False
            self._failed(f"warm spare pid {ev.pid} {ev.status.describe()} while waiting")

    def take(self, log_path: Path, *, resume_from: str, attempt: int) -> int | None:
        """The spare as attempt `attempt` (its pid), or None: start cold. A spare still starting is
        taken too: it reads RESUME as soon as it gets there, sooner than a cold start would."""
        if self.pid is None:
            return None
        pid, was_ready = self.pid, self.ready
        self.pid, self.ready = None, False
        if self.os.promote_spare(log_path, resume_from=resume_from, attempt=attempt) is None:
            self._failed(f"warm spare pid {pid} could not take attempt {attempt}")
            return None
        self.event("spare_promoted", pid=pid, ready=was_ready)
        return pid

    def discard(self) -> None:
        if self.pid is not None:
            self.os.discard_spare()
            self.pid, self.ready = None, False

    def summary(self) -> dict | None:
        if not self.enabled:
            return None
        rss = self.os.rss_bytes(self.pid) if self.pid is not None else None
        return {"pid": self.pid, "ready": self.ready, "rss_bytes": rss, "started": self.started,
                "failures": self.failures}

    def _failed(self, why: str) -> None:
        self.failures += 1
        more = "a new one is started" if self.failures < MAX_SPARE_FAILURES else "no more spares for this run"
        self.say(f"{why}; {more}")
        self.event("spare_failed", reason=why)
