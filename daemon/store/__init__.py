"""The checkpoint store (torch-free): one facade over its modules.

format.py owns the on-disk format (layout, manifest, the validity rule); commit.py writes a
checkpoint atomically and holds the one writer's lock; retention.py prunes and cleans up;
hashing.py checksums while writing; inspect.py reads state.pt records without unpickling;
faults.py names the protocol's points for fault-injection tests.
The job side's torch half is the engine in jobs/engine/ (traind.jobs.engine).
"""
from .commit import PendingCheckpoint, WriterLock, attach, begin, check_free_space, free_bytes
from .format import (BLOCKS_FIELD, CHECKPOINTS_SUBDIR, FORMAT_VERSION, MANIFEST_NAME, STATE_NAME,
                                 STEP_DIR_RE, TMP_PREFIX, TRASH_PREFIX, CheckpointInfo, checkpoints_dir, host_tag,
                                 latest_valid, list_checkpoints, read_manifest, step_dir_name, verify)
from .retention import check_retention, choose_keep, clean_stale, prune, set_aside

__all__ = [
    "CHECKPOINTS_SUBDIR", "MANIFEST_NAME", "FORMAT_VERSION", "STATE_NAME", "BLOCKS_FIELD", "STEP_DIR_RE",
    "TMP_PREFIX", "TRASH_PREFIX", "CheckpointInfo", "checkpoints_dir", "verify", "list_checkpoints",
    "latest_valid", "read_manifest", "step_dir_name", "host_tag", "WriterLock", "begin", "attach", "check_free_space",
    "free_bytes", "PendingCheckpoint", "prune", "clean_stale", "choose_keep", "check_retention", "set_aside",
]
