"""`traind ckpt ls|verify|inspect`: look at a run's checkpoints without torch (a remote URL: ckpt_remote.py)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from .. import store as ck
from . import ckpt_remote
from .ckpt_views import print_table, print_verdicts, show_inspection
from ..contract.errors import UsageError


def register(sub) -> None:
    p = sub.add_parser("ckpt", help="list, verify and inspect checkpoints",
                       description="Checkpoints of a run (torch-free; files are verified by size + xxh3).")
    group = p.add_subparsers(dest="ckpt_command", metavar="SUBCOMMAND")
    p.set_defaults(func=lambda args: (p.print_help(sys.stderr), 2)[1])

    # (name, help, description, path help, JSON output, handler); each also takes remote options
    readers = (
        ("ls", "one row per checkpoint, newest first", "List checkpoints, newest first, each verified.",
         "a run dir or its checkpoints dir, or a remote URL (s3://...)", "print a JSON list of objects", cmd_ls),
        ("verify", "check sizes and checksums; exit 1 if any is bad",
         "Verify one checkpoint dir, or every checkpoint of a dir. Exit 0 if all are valid, 1 otherwise.",
         "a checkpoint dir (step-N), a run dir or a checkpoints dir, or a remote URL",
         "print a JSON list of objects", cmd_verify),
        ("inspect", "epoch, step, hyperparameters, keys, tensor count and bytes",
         "Show what a checkpoint holds, without loading torch or running any code from the file. A run or "
         "checkpoints dir means its newest valid checkpoint; a .ckpt/.pt file (a Lightning checkpoint, any "
         "torch.save'd dict) is shown unverified.",
         "a checkpoint dir (step-N), a run dir or a checkpoints dir, or a remote URL", "print one JSON object",
         cmd_inspect),
    )
    for name, help_, description, path_help, json_help, handler in readers:
        cmd = group.add_parser(name, help=help_, description=description)
        cmd.add_argument("dir" if name == "ls" else "path", metavar="DIR" if name == "ls" else "PATH", help=path_help)
        cmd.add_argument("--json", action="store_true", help=json_help)
        if name == "ls":
            cmd.add_argument("--quick", action="store_true", help="check sizes only, skip the checksums")
        cmd.set_defaults(func=handler)
        ckpt_remote.add_options(cmd)

    imp = group.add_parser("import", help="turn a Lightning .ckpt into a verified checkpoint of a run",
                           description="Commit FILE (a Lightning .ckpt or a torch.save'd checkpoint dict "
                                       "with state_dict and global_step, read with weights_only=True) into "
                                       "RUN_DIR/checkpoints as step-<its global_step>, so that `traind run` "
                                       "resumes from it. Needs torch (runs in a subprocess).")
    imp.add_argument("file", metavar="FILE", help="the .ckpt/.pt file")
    imp.add_argument("run_dir", metavar="RUN_DIR", help="the run dir to import into")
    imp.set_defaults(func=cmd_import)
    exp = group.add_parser("export", help="write one consolidated .pt file of a checkpoint (sharded or not)",
                           description="Verify CKPT and write its whole state as one file OUT.pt that loads with "
                                       "torch.load(OUT.pt, weights_only=True): a sharded checkpoint's shards are "
                                       "gathered into one state_dict and one optimizer state (rank 0's RNG and "
                                       "data position). Needs torch (runs in a subprocess).")
    exp.add_argument("path", metavar="CKPT", help="a checkpoint dir (step-N), or a run dir (its newest valid one)")
    exp.add_argument("out", metavar="OUT.pt", help="the file to write (replaced atomically)")
    exp.set_defaults(func=cmd_export)


def _existing_dir(path: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise UsageError(f"{p}: no such file or directory")
    if not p.is_dir():
        raise UsageError(f"{p}: not a directory")
    return p


def _is_checkpoint_dir(p: Path) -> bool:
    return bool(ck.STEP_DIR_RE.match(p.name)) or (p / ck.MANIFEST_NAME).exists()


def cmd_ls(args) -> int:
    if ckpt_remote.is_remote_url(args.dir):
        return ckpt_remote.remote_ls(args)
    ckpt_dir = ck.checkpoints_dir(_existing_dir(args.dir))
    infos = ck.list_checkpoints(ckpt_dir, deep=not args.quick)
    if args.json:
        print(json.dumps([i.to_json() for i in infos], indent=1))
    elif not infos:
        print(f"no checkpoints in {ckpt_dir}")
        _hint_foreign_files(Path(args.dir))
    else:
        print_table(infos)
    _ls_memory_tier(Path(args.dir), args)
    return 0


def _ls_memory_tier(run_dir: Path, args) -> None:
    """A run dir's memory tier (checkpoint.memory), while it holds checkpoints: after the disk's."""
    from ..store import memory_tier
    if args.json or run_dir.name == ck.CHECKPOINTS_SUBDIR:
        return
    infos = ck.list_checkpoints(memory_tier.tier_dir(run_dir), deep=not args.quick)
    if infos:
        print(f"in the memory tier ({memory_tier.tier_dir(run_dir)}):")
        print_table(infos)


def cmd_verify(args) -> int:
    if ckpt_remote.is_remote_url(args.path):
        return ckpt_remote.remote_verify(args)
    p = _existing_dir(args.path)
    infos = ([ck.verify(p, every_file=True)] if _is_checkpoint_dir(p)
             else ck.list_checkpoints(p, every_file=True))
    return print_verdicts(infos, args.json, f"no checkpoints in {ck.checkpoints_dir(p)}")


def cmd_inspect(args) -> int:
    if ckpt_remote.is_remote_url(args.path):
        return ckpt_remote.remote_inspect(args)
    if Path(args.path).is_file():
        if not (Path(args.path).parent / ck.MANIFEST_NAME).exists():
            return _inspect_file(Path(args.path), args.json)
        args.path = str(Path(args.path).parent)      # state.pt of a checkpoint: that checkpoint
    p = _existing_dir(args.path)
    skipped = []
    if _is_checkpoint_dir(p):
        info = ck.verify(p)
    else:
        info, skipped = ck.latest_valid(p)
        if info is None:
            raise UsageError(f"{ck.checkpoints_dir(p)}: no valid checkpoint to inspect"
                             + (f" ({len(skipped)} invalid)" if skipped else ""))
    return show_inspection(info, skipped, args.json)


def _inspect_file(path: Path, as_json: bool) -> int:
    from ..store.inspect import summarize_file   # torch-free, runs no code from the file

    out = summarize_file(path)
    if as_json:
        print(json.dumps(out, indent=1, default=str))
    else:
        for key, value in out.items():
            print(f"{key + ':':<20}{json.dumps(value, default=str) if isinstance(value, (dict, list)) else value}")
    return 1 if "state_error" in out else 0


def _hint_foreign_files(d: Path) -> None:
    files = sorted(f.name for pattern in ("*.ckpt", "*.pt") for f in d.glob(pattern) if f.is_file())
    if files:
        print(f"{len(files)} checkpoint file(s) traind did not write here ({', '.join(files[:3])}"
              f"{', ...' if len(files) > 3 else ''}): `traind ckpt inspect FILE`, "
              f"`traind ckpt import FILE RUN_DIR`")


def cmd_export(args) -> int:
    """torch-free here: the load (DCP for a sharded checkpoint) and the write run in a subprocess."""
    import importlib.util
    import subprocess

    if importlib.util.find_spec("torch") is None:
        raise UsageError("ckpt export needs torch in this Python (pip install torch)")
    return subprocess.run([sys.executable, "-m", "traind.jobs.commands.export", str(args.path), str(args.out)]).returncode


def cmd_import(args) -> int:
    """torch-free here: the load (weights_only=True) and the commit run in a subprocess."""
    import importlib.util
    import subprocess

    src = Path(args.file)
    if not src.is_file():
        raise UsageError(f"{src}: {'is a directory' if src.is_dir() else 'no such file'}; "
                         "ckpt import takes one .ckpt/.pt file")
    if importlib.util.find_spec("torch") is None:
        raise UsageError("ckpt import needs torch in this Python (pip install torch)")
    return subprocess.run([sys.executable, "-m", "traind.jobs.commands.import_ckpt",
                           str(src), str(args.run_dir)]).returncode
