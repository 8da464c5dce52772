"""Retention and cleanup for the checkpoint store (torch-free; the writer holding the lock runs it).

Pruning is crash-safe: a checkpoint is first renamed to a .trash- name (one atomic step that
discovery never trusts), the rename is made durable, and only then are its files deleted. A kill
mid-prune therefore leaves whole checkpoints or trash, never a half-deleted step-N that verifies.
"""
from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from ..fs.durable import atomic_write, fsync_dir, remove_tree
from ..fs.locks import pid_alive
from . import format as ck
from .faults import reach

log = logging.getLogger("traind.checkpoints")

KEEP_BEST_FIELDS = ("metric", "mode", "k")


@dataclass(frozen=True)
class RetentionProblem:
    field: str          # "keep_last", "keep_best.mode", ...
    expected: str       # "an integer >= 1"
    value: object


def check_retention(keep_last, keep_best) -> tuple[tuple[int, dict | None] | None, RetentionProblem | None]:
    """The one retention rule (spec, Trainer/Session policy and CheckpointEngine all use it):
    keep_last an integer >= 1 (the newest is always kept); keep_best null or
    {metric: a name, mode: min|max (min), k: an integer >= 1 (1)}.
    Returns ((keep_last, keep_best normalised), None) or (None, what is wrong)."""
    def is_int(v):
        return isinstance(v, int) and not isinstance(v, bool)
    if not is_int(keep_last) or keep_last < 1:
        return None, RetentionProblem("keep_last", "an integer >= 1", keep_last)
    if keep_best is None:
        return (keep_last, None), None
    if not isinstance(keep_best, dict):
        return None, RetentionProblem("keep_best", "a mapping {metric, mode, k} or null", keep_best)
    for key in keep_best:
        if key not in KEEP_BEST_FIELDS:
            return None, RetentionProblem(f"keep_best.{key}", "one of the fields metric, mode, k", key)
    metric, mode, k = keep_best.get("metric"), keep_best.get("mode", "min"), keep_best.get("k", 1)
    if not isinstance(metric, str) or not metric:
        return None, RetentionProblem("keep_best.metric", "a metric name", metric)
    if mode not in ("min", "max"):
        return None, RetentionProblem("keep_best.mode", "one of min, max", mode)
    if not is_int(k) or k < 1:
        return None, RetentionProblem("keep_best.k", "an integer >= 1", k)
    return (keep_last, {"metric": metric, "mode": mode, "k": k}), None

# Temp dirs written from another host cannot be checked for a live owner; leave them this long.
FOREIGN_TMP_MAX_AGE_S = 24 * 3600


def clean_stale(ckpt_dir) -> list[Path]:
    """Remove temp dirs of dead writers and leftover trash. Never a live writer's temp dir."""
    ckpt_dir = ck.checkpoints_dir(ckpt_dir)
    removed = []
    try:
        entries = list(os.scandir(ckpt_dir))
    except FileNotFoundError:
        return removed
    host = ck.host_tag()
    for entry in entries:
        path = Path(entry.path)
        if entry.name.startswith(ck.TRASH_PREFIX):
            stale = True
        elif entry.name.startswith(ck.TMP_PREFIX):
            owner = ck.tmp_dir_owner(entry.name)
            if owner is None or owner[0] != host:
                stale = _mtime_age(path) > FOREIGN_TMP_MAX_AGE_S
            else:
                stale = owner[1] != os.getpid() and not pid_alive(owner[1])
        else:
            continue
        if stale:
            log.info("removing stale %s", path)
            remove_tree(path)
            removed.append(path)
    return removed


def set_aside(ckpt_path: Path, why: str) -> Path:
    """Take a committed checkpoint that verifies but that the job cannot use (a pickle that
    weights_only refuses, a state torch cannot read) out of discovery's sight, in one rename.
    Nothing is deleted: it stays as .unusable-step-N-<ns>/ with a WHY file for a human."""
    ckpt_path = Path(ckpt_path)
    dest = ckpt_path.parent / ck.unusable_dir_name(ckpt_path.name)
    os.rename(ckpt_path, dest)
    fsync_dir(ckpt_path.parent)
    try:
        atomic_write(dest / "WHY", (why.strip() + "\n").encode(), mode=0o644)
    except OSError:
        pass      # the rename is what matters; the note is a courtesy
    return dest


def _mtime_age(path: Path) -> float:
    try:
        return time.time() - path.lstat().st_mtime
    except FileNotFoundError:
        return 0.0


def choose_keep(infos: list, keep_last: int, keep_best: dict | None, protect: Iterable) -> set[Path]:
    """Which checkpoints survive (a pure policy over newest-first infos)."""
    keep: set[Path] = {Path(p).resolve() for p in protect}
    if infos:
        keep.add(infos[0].path.resolve())          # never the newest, valid or not
    valid = [i for i in infos if i.valid]
    if not valid:
        return {i.path.resolve() for i in infos}   # nothing good to fall back on: delete nothing
    newest_valid = valid[0]
    for info in infos:                             # keep everything newer than the newest good one
        if info is newest_valid:
            break
        keep.add(info.path.resolve())
    keep.update(i.path.resolve() for i in valid[:max(1, int(keep_last))])
    if keep_best:
        metric, k = keep_best["metric"], int(keep_best.get("k", 1))
        sign = -1.0 if keep_best.get("mode", "min") == "max" else 1.0
        scored = [(sign * float(i.metrics[metric]), -i.step, i) for i in valid
                  if _finite(i.metrics.get(metric))]
        scored.sort(key=lambda t: (t[0], t[1]))
        keep.update(t[2].path.resolve() for t in scored[:max(0, k)])
    return keep


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# Checkpoints that passed (or failed) deep verification in this process, by the identity of their
# manifest. Sizes alone cannot tell a bit-rotted state.pt from a good one, so retention counts a
# checkpoint as a keeper only once its checksums were read (or written, by commit: remember_verified).
_deep_verdicts: dict[tuple, bool] = {}


def _identity(ckpt_path: Path) -> tuple | None:
    try:
        st = (ckpt_path / ck.MANIFEST_NAME).stat()
    except OSError:
        return None
    return str(ckpt_path.resolve()), st.st_dev, st.st_ino, st.st_mtime_ns


def remember_verified(ckpt_path: Path) -> None:
    """The writer hashed every byte as it wrote them: no need to read them back."""
    key = _identity(ckpt_path)
    if key is not None:
        _deep_verdicts[key] = True


def deep_valid(info) -> bool:
    key = _identity(info.path)
    if key is None:
        return False
    if key not in _deep_verdicts:
        verdict = ck.verify(info.path)
        _deep_verdicts[key] = verdict.valid
        if not verdict.valid:
            info.error = verdict.error
    return _deep_verdicts[key]


def prune(ckpt_dir, keep_last: int, keep_best: dict | None = None, protect=()) -> list[Path]:
    """Delete checkpoints beyond the last `keep_last` + the best k; returns what was removed.

    Only step-N dirs directly inside ckpt_dir are candidates (never a path outside it, never a
    symlink's target); the newest checkpoint and the protected ones are always kept. A keeper must
    pass deep verification: a bit-rotted checkpoint of the right size is never counted as one of
    the last N, so it can never cost a newer valid checkpoint its place."""
    ckpt_dir = ck.checkpoints_dir(ckpt_dir)
    infos = ck.list_checkpoints(ckpt_dir, deep=False)
    while True:
        keep = choose_keep(infos, keep_last, keep_best, protect)
        rotten = [i for i in infos if i.valid and i.path.resolve() in keep and not deep_valid(i)]
        if not rotten:
            break
        for info in rotten:       # invalid from now on: choose again without it
            info.valid = False
    doomed = [i.path for i in infos if i.path.resolve() not in keep]
    if not doomed:
        return []
    trashed = []
    for path in doomed:
        trash = ckpt_dir / ck.trash_dir_name(path.name)
        os.rename(path, trash)
        reach("prune:renamed")
        trashed.append(trash)
    fsync_dir(ckpt_dir)
    reach("prune:durable")
    for trash in trashed:
        remove_tree(trash)
        reach("prune:removed")
    return doomed
