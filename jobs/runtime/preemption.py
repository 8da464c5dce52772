"""Stop and checkpoint requests: recorded by signal handlers and the control reader, acted on by the loop.

Handlers only assign attributes (atomic under the GIL; no locks, no I/O), so a handler can never
deadlock against the code it interrupted. The training loop reads the flags at step boundaries,
which is the only place a checkpoint can capture a consistent state.
"""
from __future__ import annotations

import signal
import threading
from dataclasses import dataclass

RECORDED_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)   # the job's own stop signals


@dataclass(frozen=True)
class StopRequest:
    reason: str          # e.g. "SIGTERM", "supervisor: spot notice", "supervisor gone"


class StopFlags:
    """The process-wide record of what was asked of the job. Only the first stop reason is kept."""

    def __init__(self) -> None:
        self.stop: StopRequest | None = None
        self.checkpoint_reason: str | None = None   # a periodic checkpoint asked for from outside

    def request_stop(self, reason: str) -> None:
        if self.stop is None:
            self.stop = StopRequest(reason)

    def request_checkpoint(self, reason: str) -> None:
        self.checkpoint_reason = reason

    def take_checkpoint_request(self) -> str | None:
        reason, self.checkpoint_reason = self.checkpoint_reason, None
        return reason

    def clear(self) -> None:  # for tests and for a second Session in one process
        self.stop, self.checkpoint_reason = None, None


FLAGS = StopFlags()
_installed: set[int] = set()


def _on_signal(signum, _frame) -> None:
    # Record only. A second SIGTERM during the emergency save lands here too and changes nothing.
    FLAGS.request_stop(signal.Signals(signum).name)


def install(signals=RECORDED_SIGNALS) -> None:
    """Install the recording handlers (idempotent). Must run in the main thread; elsewhere it is a no-op."""
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in signals:
        if sig not in _installed:
            signal.signal(sig, _on_signal)
            _installed.add(sig)


def chain(signals=RECORDED_SIGNALS) -> None:
    """Record stops, then hand the signal on to the handler installed before ours (a framework's
    own, e.g. HF's enable_jit_checkpoint): ours goes in front of it instead of replacing it."""
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in signals:
        previous = signal.getsignal(sig)
        if previous is _on_signal or getattr(previous, "traind_chained", False):
            continue
        if not callable(previous):          # SIG_DFL / SIG_IGN: nothing to hand on to
            signal.signal(sig, _on_signal)
            continue

        def recorded_then_passed_on(signum, frame, _previous=previous):
            _on_signal(signum, frame)
            _previous(signum, frame)
        recorded_then_passed_on.traind_chained = True
        signal.signal(sig, recorded_then_passed_on)
        _installed.add(sig)
