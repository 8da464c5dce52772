"""The single-process layout: the whole state in one `state.pt` (torch.save's zip format).

The engine (jobs/engine/engine.py) orchestrates the save; this says what the checkpoint holds.
state.pt loads with plain torch.load(weights_only=True).
"""
from __future__ import annotations

from traind import store as ck
from . import writer
from .loading import load_checkpoint
from .snapshot import tensor_bytes
from .writer import write_state
from traind.store.hashing import staging_buffer


class SingleFile:
    leader = True        # this process is the one writer: lock, temp dir, commit, pruning
    ranks = 1
    saves_untrained = True   # a checkpoint before the first step resumes exactly

    def __init__(self) -> None:
        self._staging: memoryview | None = None     # for O_DIRECT writes, kept across saves

    def opened(self) -> None:
        pass

    def parts(self, state: dict) -> dict:
        return state

    def manifest_fields(self) -> dict:
        return {}

    def begin(self, ckpt_dir, step: int, nbytes: int):
        return ck.begin(ckpt_dir, step, nbytes)

    def write(self, pending, state: dict, job) -> dict:
        """state.pt, written (planned first, then block by block by the job when there is one)."""
        if self._staging is None and tensor_bytes(state) >= writer.DIRECT_MIN_BYTES:
            self._staging = staging_buffer()
        return {"direct_io": write_state(pending, state, staging=self._staging, job=job)}

    def settle(self, pending, info, failure):
        if failure is not None:
            raise failure
        return info

    def load(self, path, map_location="cpu") -> dict:
        return load_checkpoint(path, map_location=map_location)
