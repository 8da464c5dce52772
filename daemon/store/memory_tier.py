"""The memory tier's place and its way back to disk (torch-free).

A run's memory tier is a checkpoints dir in tmpfs (/dev/shm): the same format and commit protocol
as the disk store (format.py, commit.py), so it survives the trainer's death (a SIGKILL, a
segfault, an OOM kill) but not the node's. Its path follows from the run dir's real path, so the
`traind run` after a SIGKILLed supervisor finds what the last one left, uses it and removes it.
The job side writes it (jobs/runtime/memory_tier.py); the supervisor chooses from it, persists
the checkpoint it resumes from to disk (`persist`), and frees the tier when it exits (`release`).
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
from pathlib import Path

from ..fs.durable import fsync_path, remove_tree
from . import format as fmt
from .commit import begin

ROOT_ENV = "TRAIND_SHM_ROOT"       # where tiers live (default /dev/shm); tests point it elsewhere
DEFAULT_ROOT = "/dev/shm"
PREFIX = "traind-"


def root() -> Path:
    return Path(os.environ.get(ROOT_ENV) or DEFAULT_ROOT)


def tier_dir(run_dir) -> Path:
    """ROOT/traind-<run dir name>-<hash of its real path>: readable in `ls /dev/shm`, unique per run dir."""
    real = os.path.realpath(run_dir)
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", Path(real).name)[:40]
    return root() / f"{PREFIX}{name}-{hashlib.sha1(real.encode()).hexdigest()[:12]}"


def used_bytes(tier: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(tier):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass
    return total


def newest(tier: Path) -> tuple[fmt.CheckpointInfo | None, list[fmt.CheckpointInfo]]:
    """The tier's newest checkpoint that verifies (every byte), and the newer ones skipped."""
    if not fmt.checkpoints_dir(tier).is_dir():
        return None, []
    return fmt.latest_valid(tier)


def persist(info: fmt.CheckpointInfo, ckpt_dir) -> fmt.CheckpointInfo:
    """Copy a tier checkpoint into the disk store through the commit protocol: every file copied
    and fsynced, then the tier's manifest, byte for byte, verified against the copies before the
    rename. Returns the committed CheckpointInfo, or an invalid one (nothing committed).
    OSError when the disk fails. The job may hold the disk store's writer lock meanwhile: the
    commit is atomic without it, and our temp dir names this live process, so no one removes it."""
    src = Path(info.path)
    raw = (src / fmt.MANIFEST_NAME).read_bytes()
    man, err = fmt.parse_manifest(raw, src / fmt.MANIFEST_NAME)
    if man is None:
        return fmt.CheckpointInfo(path=src, step=info.step, error=err)
    pending = begin(ckpt_dir, info.step, sum(e["size"] for e in man["files"].values()))
    try:
        for name in sorted(man["files"]):
            shutil.copyfile(src / name, pending.file_path(name))
            fsync_path(pending.file_path(name))
        return pending.commit_manifest(raw)
    finally:
        pending.abort()        # nothing, once committed


def release(run_dir) -> fmt.CheckpointInfo | None:
    """Free the run's tier, first copying to disk a checkpoint only memory holds (one newer than
    the disk's newest valid one). Returns that copy's CheckpointInfo (invalid: why it failed), or
    None when nothing needed copying. Used by the supervisor as it exits and by the service daemon
    after it killed a job's supervisor. OSError from the disk propagates; the tier stays then."""
    tier = tier_dir(run_dir)
    if not tier.exists():
        return None
    memory, _ = newest(tier)
    disk, _ = fmt.latest_valid(fmt.checkpoints_dir(run_dir))
    copied = None
    if memory is not None and (disk is None or memory.step > disk.step):
        copied = persist(memory, fmt.checkpoints_dir(run_dir))
    remove_tree(tier)
    return copied
