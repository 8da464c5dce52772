"""`traind ckpt export CKPT OUT.pt`: one consolidated file of a checkpoint, sharded or not.

    python -m traind.jobs.commands.export CKPT OUT.pt

The checkpoint is verified first (every file against its manifest). A single-process one is its
state.pt, loaded (weights_only=True) and written again. A sharded one is gathered without any
process group: DCP's tensors (dcp_to_torch_save) merged with rank 0's own file, so that
`state_dict` holds the whole model (names as in the unwrapped module: no DDP `module.` prefix)
and `optimizer_states` one optimizer state in torch's own layout (parameter ids in param_group
order), loadable into the unwrapped model's optimizer; RNG and data position are rank 0's.
The result loads with plain torch.load(OUT.pt, weights_only=True); it is written atomically.
"""
from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
from pathlib import Path

import torch

from traind.contract.errors import UsageError
from traind.fs.durable import atomic_write
from ..engine.loading import find_checkpoint, load_checkpoint
from ..runtime.lifecycle import one_line_errors
from ..engine.sharded import merge
from traind.store import format as fmt


def torch_optimizer_state(osd: dict) -> dict:
    """DCP's optimizer state (keyed by parameter name) in torch's layout (keyed by position)."""
    ids: dict[str, int] = {}
    groups = []
    for group in osd.get("param_groups", []):
        groups.append({**group, "params": [ids.setdefault(name, len(ids)) for name in group["params"]]})
    return {"state": {ids[name]: s for name, s in (osd.get("state") or {}).items() if name in ids},
            "param_groups": groups}


def consolidated_state(path) -> dict:
    """The whole state of the checkpoint `path` names, verified, as one dict."""
    info = find_checkpoint(path)
    man, why = fmt.read_manifest(info.path)
    if man is None:
        raise UsageError(why)
    if fmt.shard_world_size(man) is None:
        return load_checkpoint(info.path)
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save
    with tempfile.TemporaryDirectory(prefix="traind-export-") as tmp:
        dcp_to_torch_save(info.path, Path(tmp) / "tensors.pt")
        tensors = torch.load(Path(tmp) / "tensors.pt", map_location="cpu", weights_only=True)
    rank0 = torch.load(info.path / fmt.rank_state_name(0), map_location="cpu", weights_only=True)
    sharded = rank0.pop("sharded")
    full = merge(tensors, sharded["rest"])
    return {**rank0, "state_dict": full.get("model", {}), "optimizer_states": [torch_optimizer_state(full["optim"])]
            if full.get("optim") else [], "exported_from": {"path": str(info.path), "ranks": sharded["world_size"]}}


def export(path, out) -> Path:
    out = Path(out)
    if out.is_dir():
        raise UsageError(f"{out}: is a directory; give the file to write, e.g. {out / 'model.pt'}")
    state = consolidated_state(path)
    buf = io.BytesIO()
    torch.save(state, buf)
    try:
        atomic_write(out, buf.getbuffer(), mode=0o644)
    except OSError as err:
        raise UsageError(f"{out}: cannot write: {err.strerror or err}") from None
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="traind ckpt export", description=__doc__.splitlines()[0])
    parser.add_argument("path", metavar="CKPT")
    parser.add_argument("out", metavar="OUT.pt")
    args = parser.parse_args(argv)
    with one_line_errors():
        out = export(args.path, args.out)
    print(f"exported {args.path} to {out} ({os.path.getsize(out)} bytes); "
          f"torch.load({str(out)!r}, weights_only=True) loads it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
