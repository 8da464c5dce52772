"""The client side of `traind serve`: where its state dir is, whether a daemon serves it, a job's
run dir, and cancel requests. Used by the CLI (`traind status NAME`, ls, cancel) and by the
daemon itself; it never imports the daemon.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from ..contract.errors import UsageError
from ..fs.durable import atomic_write
from ..fs.locks import ExclusiveFileLock, is_locked
from . import spool
from .jobqueue import JobRecord, JobTable

SERVE_LOCK_NAME = "serve.lock"
SERVE_STATE_NAME = "serve.json"


class ServeLock(ExclusiveFileLock):
    """STATE/serve.lock: one daemon per state dir."""

    mode = 0o600

    def __init__(self, state_dir: Path):
        super().__init__(Path(state_dir) / SERVE_LOCK_NAME, what=f"state dir {state_dir}")

    def busy_message(self, holder_text: str) -> str:
        return f"{self.path}: another traind serve (pid {holder_text.strip()}) uses this state dir"


def default_state_dir(environ=os.environ) -> Path:
    """$TRAIND_STATE_DIR, else systemd's $STATE_DIRECTORY, else /var/lib/traind (root) or
    $XDG_STATE_HOME/traind. The CLI clients use the same rule to find the daemon."""
    if environ.get("TRAIND_STATE_DIR"):
        return Path(environ["TRAIND_STATE_DIR"])
    if environ.get("STATE_DIRECTORY"):
        return Path(environ["STATE_DIRECTORY"].split(":")[0])
    if os.geteuid() == 0:
        return Path("/var/lib/traind")
    return Path(environ.get("XDG_STATE_HOME") or Path.home() / ".local/state") / "traind"


def daemon_status(state_dir: Path) -> dict | None:
    """serve.json of the daemon using state_dir if one holds serve.lock now, else None."""
    if not is_locked(Path(state_dir) / SERVE_LOCK_NAME):
        return None
    try:
        return json.loads((Path(state_dir) / SERVE_STATE_NAME).read_text())
    except (OSError, ValueError):
        return {}


def lookup_run_dir(name: str, state_dir: Path | None = None) -> Path | None:
    """RUN_DIR of the job NAME known to the daemon (for `traind status NAME`), or None."""
    if not spool.valid_name(name):
        return None
    rec_dir = JobTable(state_dir or default_state_dir()).job_dir(name)
    return rec_dir / "run" if (rec_dir / "job.json").is_file() else None


def request_cancel(state_dir: Path, name: str) -> JobRecord | None:
    """Client side of `traind cancel`: drop a request file the daemon's loop picks up.
    None: the spec is still in the spool (submitted, not accepted yet); the request waits for it."""
    rec = JobTable(state_dir).load(name) if spool.valid_name(name) else None
    pending = rec is None and spool.valid_name(name) and (state_dir / "spool" / f"{name}{spool.SPEC_SUFFIX}").exists()
    if rec is None and not pending:
        raise UsageError(f"{state_dir}/jobs: no job named {name!r}")
    atomic_write(state_dir / "control" / f"cancel-{name}", b"")
    return rec
