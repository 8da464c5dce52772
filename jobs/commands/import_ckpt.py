"""`traind ckpt import FILE RUN_DIR`: a Lightning .ckpt (or any torch.save'd checkpoint dict with
`state_dict` and `global_step`) becomes a verified traind checkpoint that `traind run` resumes from.

    python -m traind.jobs.commands.import_ckpt FILE RUN_DIR

The file is read with weights_only=True (a pickle that would run code is refused, never run),
committed with the store's protocol (temp dir, checksums, fsync, rename, manifest last) under the
run dir's writer lock, then loaded back verified. Nothing is pruned and no existing checkpoint is
replaced. The CLI (torch-free) runs this module in a subprocess; it imports torch, not Lightning.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from traind import __version__, store
from traind.contract import protocol
from traind.contract.errors import UsageError
from ..engine.loading import UnusableCheckpoint, load_checkpoint, load_unverified
from ..runtime.lifecycle import one_line_errors
from ..runtime import schema
from ..engine import CheckpointEngine



def _step_of(state: dict, where: Path) -> int:
    if not isinstance(state.get("state_dict"), dict):
        raise UsageError(f"{where}: no 'state_dict' in it; not a traind/Lightning checkpoint")
    step = state.get("global_step")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise UsageError(f"{where}: field 'global_step' is {step!r}, not a step count; "
                         "not a checkpoint of a training run")
    return step


def import_checkpoint(file, run_dir) -> store.CheckpointInfo:
    """Commit `file` into RUN_DIR/checkpoints as step-<its global_step>; returns the verified info."""
    file, run_dir = Path(file), Path(run_dir)
    try:
        state = load_unverified(file)
    except UnusableCheckpoint as err:       # bad input here, not a resume point to set aside
        raise UsageError(str(err)) from None
    step = _step_of(state, file)
    epoch = state.get("epoch") if isinstance(state.get("epoch"), int) else None
    state = dict(state)
    counters = dict(schema.counters(state))
    counters.update(global_step=step, epoch=epoch, imported_from=str(file.resolve()))
    state[schema.COUNTERS_KEY] = counters
    state.setdefault("traind_version", __version__)
    ckpt_dir = store.checkpoints_dir(run_dir)
    with CheckpointEngine(run_dir, prune=False) as engine:    # the writer lock: no job writes meanwhile
        target = ckpt_dir / store.step_dir_name(step)
        if target.exists():
            raise UsageError(f"{target}: {run_dir} already has a checkpoint at step {step}; "
                             "nothing imported (move it away first)")
        info = engine.save(state, step=step, epoch=epoch, reason=protocol.REASON_PERIODIC,
                           extra={"imported_from": str(file.resolve())})
    load_checkpoint(info.path)       # read back through the verified path: it loads, as committed
    return info


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="traind ckpt import", description=__doc__.splitlines()[0])
    parser.add_argument("file", metavar="FILE")
    parser.add_argument("run_dir", metavar="RUN_DIR")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    with one_line_errors():
        info = import_checkpoint(args.file, args.run_dir)
    if args.json:
        print(json.dumps(info.to_json(), default=str))
    else:
        print(f"imported {args.file} as {info.path} (step {info.step}, epoch {info.epoch}, "
              f"{info.size} bytes, verified); `traind run` on {args.run_dir} resumes from it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
