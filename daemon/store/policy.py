"""The checkpoint policy's one rule: every_steps, every_seconds, keep_last, keep_best.

Both processes call `check_policy`: the supervisor where it loads the spec's `checkpoint:` section,
the job where it gets its policy (its code's arguments, then $TRAIND_CHECKPOINT, the spec's section
as JSON). Every error names where the value came from and the field, as the spec's errors do.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..contract.checker import Checker
from .retention import KEEP_BEST_FIELDS, check_retention

POLICY_FIELDS = ("every_steps", "every_seconds", "keep_last", "keep_best")
MAX_STEPS = 10**12              # every_steps: more than any run takes, exact in int64 and in JSON doubles
MAX_COUNT = 10**6               # keep_last, keep_best.k
MAX_SECONDS = 10 * 365 * 86400  # every_seconds: ten years, far below threading.TIMEOUT_MAX and time_t


def check_policy(c: Checker, d: dict, prefix: str = "") -> dict:
    """The policy fields of `d` checked and normalised: {every_steps: int >= 1 or None (none),
    every_seconds: number > 0 or None, keep_last: int >= 1, keep_best: {metric, mode, k} or None}.
    Raises the Checker's one-line UsageError naming `prefix` + the field."""
    if isinstance(d.get("keep_best"), dict):
        c.section(d["keep_best"], f"{prefix}keep_best", KEEP_BEST_FIELDS)
    retention, problem = check_retention(d.get("keep_last", 3), d.get("keep_best"))
    if problem is not None:
        raise c.fail(f"{prefix}{problem.field}", problem.expected, problem.value)
    keep_last, keep_best = retention
    c.number(keep_last, f"{prefix}keep_last", minimum=1, integer=True, limit=MAX_COUNT)
    if keep_best is not None:
        c.number(keep_best["k"], f"{prefix}keep_best.k", minimum=1, integer=True, limit=MAX_COUNT)
        c.string(keep_best["metric"], f"{prefix}keep_best.metric")
    return {
        "every_steps": c.number(d.get("every_steps"), f"{prefix}every_steps", minimum=1, integer=True,
                                nullable=True, limit=MAX_STEPS),
        "every_seconds": c.number(d.get("every_seconds"), f"{prefix}every_seconds", minimum=0, strict=True,
                                  nullable=True, limit=MAX_SECONDS),
        "keep_last": keep_last, "keep_best": keep_best}


def check_policy_from(where: str, values: dict[str, Any]) -> dict:
    """check_policy for values that come from `where` (a name, not a file): the job's side."""
    return check_policy(Checker(Path(where)), values)
