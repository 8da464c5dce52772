"""Helpers shared by the cluster tests that read a supervisor's log."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "supervisor" / "fixture_job.py"   # torch-free protocol-speaking job


def emergency_step(log: str) -> int:
    """The step of the (first) emergency checkpoint the log reports."""
    found = re.search(r"emergency checkpoint committed at step (\d+)", log)
    assert found, log
    return int(found.group(1))
