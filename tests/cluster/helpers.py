"""Helpers shared by the cluster tests: the fixture job, waiting for a condition, reading a supervisor's log."""
from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "supervisor" / "fixture_job.py"   # torch-free protocol-speaking job


def emergency_step(log: str) -> int:
    """The step of the (first) emergency checkpoint the log reports."""
    found = re.search(r"emergency checkpoint committed at step (\d+)", log)
    assert found, log
    return int(found.group(1))


def wait_until(predicate: Callable[[], object], timeout: float, what: str, every: float = 0.5):
    """predicate()'s first true value, polled every `every` s; an AssertionError naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
