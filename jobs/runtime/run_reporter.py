"""What a run driven by a framework's loop (Lightning, HF, accelerate, a script with its own
save code) tells people and its supervisor, rank 0 only.

The metrics line per optimizer step (RUN_DIR/metrics.jsonl, as a traind.Session writes it), the
control channel's messages (hello, heartbeat at most 5 a second, checkpoint, stopping, error) and
traind's console lines. Other ranks say nothing: rank 0 speaks for the run.
"""
from __future__ import annotations

import os

from traind.contract import protocol
from .clock import SystemClock
from .control import ControlChannel
from .reporting import Console, MetricsLog, checkpoint_message
from .savecost import SaveCost
from .session import HEARTBEAT_MIN_INTERVAL, TIMING_KEYS


class RunReporter:
    def __init__(self, clock=None) -> None:
        self.clock = clock or SystemClock()
        self.console = Console(None)
        self.rank = 0
        self.control: ControlChannel | None = None
        self.metrics_log: MetricsLog | None = None
        self._started_at, self._started_step, self._last_heartbeat = 0.0, 0, -1e18
        self._error_sent = False
        self.save_cost = SaveCost()       # steps beside a background save against steps without

    def open(self, run_dir, rank: int, environ=None) -> None:
        """Rank 0: the control channel named by $TRAIND_CONTROL_FD (if any) and the metrics log."""
        self.rank = rank
        if rank == 0:
            self.control = ControlChannel.from_env(os.environ if environ is None else environ)
            self.metrics_log = MetricsLog(run_dir)

    def line(self, text: str) -> None:
        if self.rank == 0:
            self.console.line(text)

    def started(self, step: int) -> None:
        """Training starts (or resumes) at `step`: metrics past it are dropped; hello."""
        if self.metrics_log is not None:
            self.metrics_log.truncate_after(step)
        self._started_at, self._started_step = self.clock.monotonic(), step
        self.send(protocol.HELLO, pid=os.getpid(), resumed_step=step or None, **{protocol.TIMES_CHECKPOINTS: True})

    def step_done(self, step: int, epoch: int, metrics: dict, total: int | None) -> None:
        if self.metrics_log is None:
            return
        now = self.clock.monotonic()
        self.save_cost.step(now)
        rate = (step - self._started_step) / max(now - self._started_at, 1e-9)
        self.metrics_log.append({"step": step, "epoch": epoch, **metrics,
                                 TIMING_KEYS[0]: round(self.clock.wall(), 3), TIMING_KEYS[1]: round(rate, 3)})
        if now - self._last_heartbeat >= HEARTBEAT_MIN_INTERVAL:
            self._last_heartbeat = now
            self.send(protocol.HEARTBEAT, step=step, epoch=epoch, metrics=metrics,
                      steps_per_second=round(rate, 3), total=total)

    def committed(self, info, seconds: float) -> None:     # may run on the store's background thread
        self.save_cost.save_committed()
        if self.control is None:     # supervised: the supervisor logs each commit, once
            self.line(f"checkpoint step {info.step} ({info.reason}) committed in {seconds:.2f} s")
        self.send(protocol.CHECKPOINT, **checkpoint_message(info, seconds, self.save_cost.slowdown()))

    def send(self, msg_type: str, **fields) -> None:
        if self.control is not None:
            self.control.send(msg_type, **fields)

    def error(self, message: str) -> None:
        """Tell the supervisor why we fail, in the job's own words (once: the first reason wins)."""
        if not self._error_sent:
            self._error_sent = True
            self.send(protocol.ERROR, message=message[:2000])

    def close(self) -> None:
        if self.metrics_log is not None:
            self.metrics_log.close()
        if self.control is not None:
            self.control.close()
        self.console.close()
