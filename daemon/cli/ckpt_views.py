"""How `traind ckpt` shows checkpoints, local or remote (ckpt.py and ckpt_remote.py both print
through these, so neither imports the other's commands)."""
from __future__ import annotations

import json
from pathlib import Path

from .. import store as ck
from .show import ago, size, timestamp
from ..store import format as fmt


def _status(info: ck.CheckpointInfo) -> str:
    return "valid" if info.valid else f"INVALID: {info.error}"


def print_table(infos: list[ck.CheckpointInfo]) -> None:
    rows = [("STEP", "EPOCH", "REASON", "SIZE", "RANKS", "AGE", "STATUS")]
    for i in infos:
        rows.append((str(i.step if i.step is not None else "?"), str(i.epoch if i.epoch is not None else "-"),
                     i.reason or "-", size(i.size), str(i.ranks or 1), ago(i.created, missing="-"), _status(i)))
    widths = [max(len(r[c]) for r in rows) for c in range(6)]
    for r in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(r[:6], widths)) + "  " + r[6])


def print_verdicts(infos: list[ck.CheckpointInfo], as_json: bool, empty: str) -> int:
    """`ckpt verify`'s output, local or remote: exit 0 when there are checkpoints and all verify."""
    if as_json:
        print(json.dumps([i.to_json() for i in infos], indent=1))
    elif not infos:
        print(empty)
    for i in infos if not as_json else ():
        print(f"ok       {i.path}" if i.valid else f"INVALID  {i.error}")
    return 0 if infos and all(i.valid for i in infos) else 1


def show_inspection(info: ck.CheckpointInfo, skipped: list, as_json: bool, shown: str | None = None) -> int:
    """Print what one checkpoint holds; `shown` names it when its files sit elsewhere (a remote one)."""
    from ..store.inspect import summarize_state   # only this command needs it

    out = {"path": shown or str(info.path), "valid": info.valid, "error": info.error, "step": info.step,
           "epoch": info.epoch, "reason": info.reason, "created": info.created,
           "metrics": info.metrics, "size": info.size}
    if skipped:
        out["skipped_newer"] = [f"{Path(bad.path).name}: {bad.error}" for bad in skipped]
    state = info.path / ck.STATE_NAME
    if info.ranks:      # sharded: the tensors are DCP's; rank 0's own file has the rest
        state = info.path / fmt.rank_state_name(0)
        out["sharded"] = {"ranks": info.ranks, "engine": "torch.distributed.checkpoint",
                          "shard_bytes": sum(f.stat().st_size for f in info.path.glob("__*.distcp"))}
    try:
        s = summarize_state(state)
        out.update(global_step=s.global_step, state_epoch=s.epoch, hyper_parameters=s.hyper_parameters,
                   top_level_keys=s.top_level_keys, tensor_count=s.tensor_count,
                   tensor_bytes=s.tensor_bytes, storage_bytes=s.storage_bytes)
    except FileNotFoundError:
        out["state_error"] = f"{state}: missing"
    except (ValueError, OSError) as err:
        out["state_error"] = f"{state}: {err}"
    if as_json:
        print(json.dumps(out, indent=1, default=str))
    else:
        for key, value in out.items():
            if isinstance(value, (dict, list)):
                value = json.dumps(value, default=str)
            elif key == "created":       # people read times, not epoch seconds (--json keeps those)
                value = f"{timestamp(value)} ({ago(value, missing='?')} ago)"
            print(f"{key + ':':<18}{value}")
    return 0 if info.valid and "state_error" not in out else 1
