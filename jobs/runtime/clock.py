"""The job side's one clock: tests replace it with a scripted fake (deadlines use monotonic time)."""
from __future__ import annotations

import time


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()
