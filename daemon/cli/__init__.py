"""The `traind` command line: the one edge where failures become messages and exit codes.

Each command group lives in its own module exposing `register(subparsers)`; the handler it sets
(`func`) returns an exit code. TraindError/UsageError raised below become one line on stderr.
"""
from __future__ import annotations

import argparse
import errno
import importlib
import sys

from .. import __version__
from ..contract.errors import TraindError

# Modules that add commands, in the order they appear in --help.
COMMAND_MODULES = (
    "traind.cli.run",      # run, status
    "traind.cli.serve",    # serve, submit, ls, cancel, logs, systemd
    "traind.cli.ckpt",     # ckpt ls|verify|inspect
    "traind.cli.slurm",    # slurm submit
    "traind.cli.plot",     # plot
)


# OSErrors that mean the path given is wrong (bad input, exit 2) rather than the system failing (exit 1).
PATH_ERRNOS = (errno.ENAMETOOLONG, errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.ELOOP)


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's own usage errors: one line, exit 2
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="traind", description="Fault-tolerant training daemon for PyTorch.")
    parser.add_argument("--version", action="version", version=f"traind {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        parser = build_parser()     # in the try: a Ctrl-C while the command modules import is exit 130 too
        args = parser.parse_args(argv)
        if not getattr(args, "func", None):
            parser.print_help(sys.stderr)
            return 2
        return int(args.func(args) or 0)
    except TraindError as err:
        print(f"traind: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    except OSError as err:   # a path the OS refuses that no check named (a name too long, ...): one line
        where = f"{err.filename}: " if err.filename else ""
        print(f"traind: {where}{err.strerror or err}", file=sys.stderr)
        return 2 if err.errno in PATH_ERRNOS else 1


if __name__ == "__main__":
    raise SystemExit(main())
