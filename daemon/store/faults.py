"""Named points of the store's write and prune protocols, for fault-injection tests.

Tests set `fault_hook` to a callable(point_name) to stop the writer at a point (e.g. SIGKILL
itself there); production code never sets it.
"""
from __future__ import annotations

from typing import Callable

fault_hook: Callable[[str], None] | None = None


def reach(point: str) -> None:
    if fault_hook is not None:
        fault_hook(point)
