"""How the command line shows times and sizes (one way for every command)."""
from __future__ import annotations

import math
import time


def duration(seconds: float) -> str:
    """12.3s, 4.5min, 2.0h, 3.1d."""
    s = max(0.0, float(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if s >= 2 * size:
            return f"{s / size:.1f}{unit}"
    return f"{s:.1f}s"


def ago(then, now: float | None = None, missing: str = "?") -> str:
    """How long ago a wall-clock time (epoch seconds) was; `missing` when it is not a time."""
    if isinstance(then, bool) or not isinstance(then, (int, float)) or not math.isfinite(then):
        return missing
    return duration((time.time() if now is None else now) - then)


def timestamp(then, missing: str = "-") -> str:
    """Epoch seconds as local time people read: 2026-12-01 08:27:37 UTC."""
    if isinstance(then, bool) or not isinstance(then, (int, float)) or not math.isfinite(then):
        return missing
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(then))
    except (OverflowError, OSError, ValueError):
        return missing


def size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)
