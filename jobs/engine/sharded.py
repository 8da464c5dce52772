"""The sharded layout of a data-parallel group: every rank writes its part, rank 0 commits once.

The model and optimizer tensors go through torch.distributed.checkpoint (DCP: it spreads
replicated tensors over the ranks, so each writes about 1/N, and it reshards on load at another
world size); everything else of the rank (RNG states, data position, callbacks, the optimizer's
param_groups: no pickled objects in DCP's data) is that rank's small `rank-0000R.pt`, loadable
with torch.load(weights_only=True). The commit, on the `ckpt` process group:
  1. rank 0 makes the temp dir (free-space check included) and shares its path;
  2. every rank writes its DCP shard and its rank file, fsyncs and checksums them, in parallel;
  3. every rank reports its files' entries; rank 0 records them, checksums DCP's .metadata and
     commits (manifest last, rename, directory fsync) as a single-process checkpoint commits;
  4. rank 0 shares the outcome: every rank knows the step is durable, or why not.
A rank that dies mid-way makes the others' collectives fail: nothing is committed (.tmp- only).
The engine (jobs/engine/engine.py) runs 1-4 as it runs a single-process save: in the caller when
blocking, else on its one background thread, at idle priority, with the same deadline and hurry.
"""
from __future__ import annotations

import contextlib
import io
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from traind.contract.errors import TraindError
from .group_begin import begin_on_rank0
from .loading import UnusableCheckpoint
from traind.store import format as fmt
from traind.store import hashing



_NONE = object()      # "nothing on this side" (None itself is a value: SGD's momentum_buffer may be None)


def split_tensors(obj):
    """(the tensors of a nested dict, with their nesting; everything else, with its nesting);
    None for a side that has nothing. An empty dict stays on the non-tensor side."""
    tensors, rest = _split(obj)
    return (None if tensors is _NONE else tensors), (None if rest is _NONE else rest)


def _split(obj):
    if isinstance(obj, torch.Tensor):
        return obj, _NONE
    if not isinstance(obj, dict):
        return _NONE, obj
    tensors, rest = {}, {}
    for k, v in obj.items():
        t, r = _split(v)
        if t is not _NONE:
            tensors[k] = t
        if r is not _NONE:
            rest[k] = r
    return tensors or _NONE, rest if rest or not tensors else _NONE


def merge(tensors, rest):
    """split_tensors undone."""
    if tensors is None:
        return rest
    if not isinstance(tensors, dict) or not isinstance(rest, dict):
        return tensors
    out = dict(rest)
    for k, v in tensors.items():
        out[k] = merge(v, rest.get(k))
    return out


class Sharded:
    """The layout of a group's checkpoint; the engine calls it on every rank at the same step.
    `group`: the rank's place in the group (jobs/runtime/group.py: share, collect, its `ckpt`
    process group); `rank_part(state)`: what of a state this rank keeps in its own file, as the
    state schema says (jobs/runtime/schema.py); the model and optimizers go through DCP."""

    # DCP's get_state_dict gives an optimizer without state one by an optimizer step at lr 0, which
    # counts (AdamW's `step` 1 instead of 0): a checkpoint before the first step would not resume
    # exactly, so the runtime does not take one.
    saves_untrained = False

    def __init__(self, group, model, optimizers, rank_part) -> None:
        self.group, self.model, self.optimizers, self.rank_part = group, model, list(optimizers), rank_part
        self.leader = group.leader      # rank 0: lock, temp dirs, commit, pruning
        self.ranks = group.world_size

    def opened(self) -> None:
        self.group.share(None)          # the others start once rank 0 removed stale temp dirs

    def parts(self, state: dict) -> dict:
        """{"t": the model and optimizer tensors (for DCP), "r": this rank's own state}."""
        msd, osd = get_state_dict(self.model, self.optimizers)
        tensors, rest = split_tensors({"model": msd, "optim": osd})
        rank_state = self.rank_part(state)
        rank_state["sharded"] = {"rank": self.group.rank, "world_size": self.group.world_size, "rest": rest}
        return {"t": tensors or {}, "r": rank_state}

    def manifest_fields(self) -> dict:
        return {fmt.SHARDED_FIELD: {"world_size": self.group.world_size, "engine": "torch.distributed.checkpoint"}}

    def begin(self, ckpt_dir, step: int, nbytes: int):
        """Rank 0 makes the temp dir (free space for every rank's part checked) and shares it."""
        return begin_on_rank0(self.group, ckpt_dir, step, nbytes * self.group.world_size, self.group.ckpt)

    def write(self, pending, parts: dict, job) -> dict:
        """This rank's files; then every rank's entries go to rank 0, which records them. A
        failure on any rank is raised on every rank (rank 0 then commits nothing)."""
        g = self.group
        try:
            with job.at_low_priority() if job is not None else contextlib.nullcontext():
                entries, problem = self._write_files(pending, parts), None
        except Exception as err:        # reported to rank 0, which then commits nothing
            entries, problem = {}, f"rank {g.rank}: {type(err).__name__}: {err}"
        reports = g.collect((entries, problem), group=g.ckpt)
        problems = [p for _, p in reports if p]
        if problems:
            raise TraindError(f"checkpoint step {pending.step} not committed: {'; '.join(problems)}")
        if pending.owner:
            for rank_entries, _ in reports:
                for name, entry in rank_entries.items():
                    pending.record(name, entry["size"], entry[fmt.BLOCKS_FIELD], entry["block_size"])
        return {"ranks": g.world_size}

    def _write_files(self, pending, parts: dict) -> dict:
        """This rank's DCP shard and rank file, written, fsynced and checksummed: {name: entry}."""
        g = self.group
        dcp.save(parts["t"], storage_writer=dcp.FileSystemWriter(pending.tmp_path, sync_files=True),
                 process_group=g.ckpt)
        buf, name = io.BytesIO(), fmt.rank_state_name(g.rank)
        torch.save(parts["r"], buf)
        w = pending.open_file(name)
        try:
            w.write(buf.getbuffer())
        except BaseException:
            w.discard()
            raise
        entries = {name: fmt.file_entry(*w.close())}
        for f in sorted(pending.tmp_path.glob(f"__{g.rank}_*.distcp")):
            entries[f.name] = fmt.file_entry(*hashing.hash_blocks(f))
        return entries

    def settle(self, pending, info, failure):
        """Rank 0's outcome on every rank; the others read the committed manifest."""
        g = self.group
        outcome = None
        if g.leader:
            outcome = (str(info.path), None) if failure is None else (None, f"{pending.tmp_path}: "
                                                                     f"{getattr(failure, 'strerror', None) or failure}")
        path, why = g.share(outcome, group=g.ckpt)
        if why is not None:
            raise TraindError(f"checkpoint step {pending.step} not committed: {why}")
        if info is None:
            info = fmt.verify(Path(path), deep=False)       # from the manifest, as after discovery
        return info

    def load(self, path, map_location="cpu") -> dict:
        """Verify (each rank a share of the files), load the tensors into the live model and
        optimizers through DCP (resharded when the world size differs), and return this rank's
        own state; the model and optimizer fields are absent (already loaded)."""
        g, path = self.group, Path(path)
        man, why = fmt.read_manifest(path)
        mine = sorted(man["files"])[g.rank::g.world_size] if man else []
        info = fmt.verify(path, only=set(mine)) if man else None
        problems = [p for p in g.collect(why or (None if info.valid else info.error)) if p]
        if problems:
            raise TraindError(f"cannot load checkpoint: {problems[0]}")
        saved_world = fmt.shard_world_size(man)
        if saved_world is None:
            raise UnusableCheckpoint(path, f"{path}: not a sharded checkpoint (written by one process); "
                                           "run it with the world size of 1 that wrote it")
        rank_file = path / fmt.rank_state_name(g.rank if g.rank < saved_world else 0)
        try:
            rank_state = torch.load(rank_file, map_location=map_location, weights_only=True)
        except Exception as err:
            raise UnusableCheckpoint(path, f"{rank_file}: {type(err).__name__}: {err}") from None
        msd, osd = get_state_dict(self.model, self.optimizers)
        tensors, _ = split_tensors({"model": msd, "optim": osd})
        dcp.load(tensors or {}, checkpoint_id=path, process_group=g.ckpt)
        full = merge(tensors, rank_state["sharded"]["rest"])
        set_state_dict(self.model, self.optimizers, model_state_dict=full["model"], optim_state_dict=full["optim"])
        rank_state["sharded"]["saved_world_size"] = saved_world
        return rank_state
