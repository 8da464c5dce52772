"""What background saves cost the training, as the training loop itself sees it.

The caller of a non-blocking save is blocked only for the snapshot, but the writer's work may
still slow the steps that run beside it (on busy cores, through memory bandwidth). So the
session times its steps and keeps two means: steps during which a save was called or in flight,
and steps with none. Their ratio goes with each commit to the supervisor (`traind status`).
"""
from __future__ import annotations

import threading

WEIGHT = 0.1        # of the newest step in each moving mean: about the last ten steps count
MIN_STEPS = 3       # of each kind before a ratio is given


class SaveCost:
    def __init__(self) -> None:
        self._lock = threading.Lock()   # commits are reported from the store's thread
        self._in_flight = False         # a save was called and has not committed yet
        self._touched = False           # ... or was, at some time during the current step
        self._last: float | None = None
        self._means = {True: [0.0, 0], False: [0.0, 0]}   # saving -> [mean seconds, steps]

    def save_started(self) -> None:
        with self._lock:
            self._in_flight = self._touched = True

    def save_committed(self) -> None:
        with self._lock:
            self._in_flight = False

    def step(self, now: float) -> None:
        """A step ended at `now` (monotonic seconds); the first one only starts the clock."""
        with self._lock:
            if self._last is not None:
                mean = self._means[self._touched]
                seconds = now - self._last
                mean[0] = seconds if mean[1] == 0 else mean[0] + WEIGHT * (seconds - mean[0])
                mean[1] += 1
            self._last = now
            self._touched = self._in_flight

    def slowdown(self) -> float | None:
        """Mean step time with a save beside it over the mean without; None until both are known."""
        with self._lock:
            (saving, n), (quiet, m) = self._means[True], self._means[False]
        if n < MIN_STEPS or m < MIN_STEPS or quiet <= 0:
            return None
        return round(saving / quiet, 3)
