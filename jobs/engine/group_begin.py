"""The start of a group's commit, shared by the layouts a group writes together (sharded.py,
directory.py): rank 0 makes the temp dir, free space checked, and shares its path (or why it
could not); the other ranks attach to it (they never commit or remove it)."""
from __future__ import annotations

from traind import store as ck
from traind.contract.errors import TraindError


def begin_on_rank0(group, ckpt_dir, step: int, nbytes: int, process_group):
    pending, why = None, None
    if group.leader:
        try:
            pending = ck.begin(ckpt_dir, step, nbytes)
        except (OSError, TraindError) as err:
            why = str(err) if isinstance(err, TraindError) else f"{ckpt_dir}: {err.strerror or err}"
    tmp, why = group.share((None if pending is None else str(pending.tmp_path), why), group=process_group)
    if why is not None:
        raise TraindError(f"checkpoint step {step}: {why}")
    return pending or ck.attach(ckpt_dir, step, tmp)
