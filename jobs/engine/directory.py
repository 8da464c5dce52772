"""The layout of a checkpoint the job's own code writes: a directory of files in its own format.

Scripts with their own save code (a torchrun script's `torch.save`, HF Trainer's `checkpoint-N`,
accelerate's `save_state`) keep it; traind gives the directory they write into the same commit as
its own checkpoints: every file fsynced and checksummed, the manifest last, the rename, retention.
The state handed to the engine is {"write": a function of the directory}; the files it leaves
there are the checkpoint. In a group every rank runs its function (rank 0 makes the directory;
each rank writes its own names), then rank 0 commits once every rank is done.

Files sit directly in the directory: the manifest names files, not paths.
"""
from __future__ import annotations

import os
from pathlib import Path

from traind import store as ck
from traind.contract.errors import TraindError
from traind.store import format as fmt
from .group_begin import begin_on_rank0


class Directory:
    saves_untrained = True        # what the job's own code writes resumes as it says

    def __init__(self, group=None) -> None:
        self.group = group
        self.leader = group is None or group.leader
        self.ranks = 1 if group is None else group.world_size

    def opened(self) -> None:
        if self.group is not None:
            self.group.share(None)       # the others start once rank 0 removed stale temp dirs

    def parts(self, state: dict) -> dict:
        return state                     # nothing to snapshot: the writer runs at the save

    def manifest_fields(self) -> dict:
        return {"layout": "directory"}

    def begin(self, ckpt_dir, step: int, nbytes: int):
        if self.group is None:
            return ck.begin(ckpt_dir, step, nbytes)
        return begin_on_rank0(self.group, ckpt_dir, step, nbytes, self.group.ckpt)

    def write(self, pending, parts: dict, job) -> dict:
        """The job's writer, then (a group) every rank's word that it is done; rank 0 checks that
        the files are plain files directly in the directory (the commit checksums them)."""
        problem = None
        try:
            parts["write"](Path(pending.tmp_path))
        except Exception as err:         # on any rank: nothing is committed, every rank hears why
            problem = f"{type(err).__name__}: {err}"
        if self.group is not None:
            problems = [f"rank {r}: {p}" for r, p in enumerate(self.group.collect(problem, group=self.group.ckpt)) if p]
        else:
            problems = [problem] if problem else []
        if problems:
            raise TraindError(f"checkpoint step {pending.step} not committed: the job's writer failed: "
                              f"{'; '.join(problems)}")
        if pending.owner:
            self._check_flat(pending)
        return {"files": len(os.listdir(pending.tmp_path))}

    @staticmethod
    def _check_flat(pending) -> None:
        entries = list(os.scandir(pending.tmp_path))
        nested = sorted(e.name for e in entries if not e.is_file(follow_symlinks=False))
        if nested:
            raise TraindError(f"{pending.tmp_path}: checkpoint step {pending.step} not committed: "
                              f"{', '.join(nested)} is not a plain file (files must sit directly "
                              "in the checkpoint directory)")
        if not any(e.name != fmt.MANIFEST_NAME for e in entries):
            raise TraindError(f"{pending.tmp_path}: checkpoint step {pending.step} not committed: "
                              "the job's writer wrote no file")

    def settle(self, pending, info, failure):
        if self.group is None:
            if failure is not None:
                raise failure
            return info
        g, outcome = self.group, None
        if g.leader:
            outcome = (str(info.path), None) if failure is None else (None, f"{pending.tmp_path}: {failure}")
        path, why = g.share(outcome, group=g.ckpt)
        if why is not None:
            raise TraindError(f"checkpoint step {pending.step} not committed: {why}")
        return info if info is not None else fmt.verify(Path(path), deep=False)

    def load(self, path, map_location="cpu") -> Path:
        """A committed directory, verified (every byte), for the job's own loader to read."""
        info = fmt.verify(Path(path))
        if not info.valid:
            raise TraindError(f"cannot resume from {path}: {info.error}")
        return Path(path)
