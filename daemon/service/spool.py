"""The spool directory: the trust boundary of `traind serve`.

A spec file names a command the daemon will run, so a file is accepted only if it is a regular
file (not a symlink), owned by the daemon's user (or by the configured group), not group- or
world-writable, and named `NAME.yaml` with a safe NAME. Checks run on the opened descriptor
(O_NOFOLLOW + fstat) so a file swapped after the check is never the one read. Every verdict is a
value (`Accepted` or `Refused`); the daemon logs refusals and moves the file aside, never deletes it.

`submit()` is the client side: write a temp file in the spool, fsync, then rename it into place,
so the daemon never sees half a spec. Names starting with "." are temp files and are ignored.
"""
from __future__ import annotations

import logging
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..contract.errors import TraindError, UsageError
from ..fs.durable import rename_durably, write_durably
from ..supervisor.spec import MAX_SPEC_BYTES, NAME_RE, parse_spec_text, read_spec_text, validate  # the spec's rules

SPEC_SUFFIX = ".yaml"
log = logging.getLogger("traind.serve")
REFUSED_SUBDIR = ".refused"


def valid_name(name: str) -> bool:
    # fullmatch: no "/", no leading ".", so "..", ".x" and "a/../b" can never name a directory.
    return isinstance(name, str) and NAME_RE.fullmatch(name) is not None


@dataclass(frozen=True)
class Accepted:
    path: Path
    name: str
    spec: dict
    owner_uid: int


@dataclass(frozen=True)
class Refused:
    path: Path
    reason: str


def is_candidate(path: Path) -> bool:
    """Files the daemon looks at: anything not hidden (temp files and .refused are hidden)."""
    return not path.name.startswith(".")


def check_and_read(path: Path, *, uid: int | None = None, group: int | None = None) -> Accepted | Refused:
    """Open one spool entry safely and decide. Never raises for a bad file."""
    uid = os.geteuid() if uid is None else uid
    if not path.name.endswith(SPEC_SUFFIX):
        return Refused(path, f"name must be NAME{SPEC_SUFFIX}")
    name = path.name[: -len(SPEC_SUFFIX)]
    if not valid_name(name):
        return Refused(path, f"job name {name!r} must match {NAME_RE.pattern}")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return Refused(path, "vanished before it could be read")
    except OSError as err:  # ELOOP: a symlink (O_NOFOLLOW)
        if path.is_symlink():
            return Refused(path, "is a symlink")
        return Refused(path, f"cannot open: {err.strerror}")
    try:
        st = os.fstat(fd)
        verdict = _check_stat(st, uid, group)
        if verdict:
            return Refused(path, verdict)
        data = os.read(fd, MAX_SPEC_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_SPEC_BYTES:
        return Refused(path, f"larger than {MAX_SPEC_BYTES} bytes")
    try:
        text = data.decode()
    except UnicodeDecodeError as err:
        return Refused(path, f"not UTF-8 text (byte {err.start})")
    spec, why = parse_spec_text(text)
    if spec is None:
        return Refused(path, why)
    if "name" in spec and not valid_name(spec["name"]):
        return Refused(path, f"field 'name': {spec['name']!r} must match {NAME_RE.pattern}")
    return Accepted(path, name, spec, st.st_uid)


def _check_stat(st: os.stat_result, uid: int, group: int | None) -> str | None:
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    if st.st_uid != uid and not (group is not None and st.st_gid == group):
        return f"owned by uid {st.st_uid}, not by the daemon's uid {uid}" + (
            f" or group {group}" if group is not None else "")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"group- or world-writable (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


def move_aside(path: Path, spool: Path) -> Path | None:
    """Keep a refused file for the owner to inspect (never delete user data); None if it vanished."""
    dest_dir = spool / REFUSED_SUBDIR
    dest_dir.mkdir(mode=0o700, exist_ok=True)
    dest = dest_dir / f"{path.name}.{time.time_ns()}"
    try:
        os.rename(path, dest)  # renames a symlink itself, never its target
    except FileNotFoundError:
        return None
    return dest


def make_private_dir(path: Path, mode: int = 0o700) -> Path:
    """Create (or tighten) a directory the daemon owns; other users get no access."""
    path.mkdir(parents=True, exist_ok=True, mode=mode)
    st = path.lstat()
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise UsageError(f"{path}: must be a directory, not a symlink")
    if stat.S_IMODE(st.st_mode) != mode:
        os.chmod(path, mode)
    return path


def prepare_spec(spec_path: Path, name: str | None) -> tuple[str, bytes]:
    """Read a user's spec for submission: (job name, YAML bytes with an absolute workdir).

    `workdir` is relative to the spec file's own folder; once the spec sits in the spool that
    folder is gone, so the client resolves it here, where it still knows.
    """
    spec, why = parse_spec_text(read_spec_text(spec_path))
    if spec is None:
        raise UsageError(f"{spec_path}: {why}")
    job = name or spec.get("name")
    if not job:
        raise UsageError(f"{spec_path}: field 'name' is missing (or pass --name)")
    if not valid_name(job):
        raise UsageError(f"{spec_path}: field 'name': {job!r} must match {NAME_RE.pattern}")
    spec["name"] = job
    validate(spec, spec_path)  # the supervisor's own checks: a mistake is reported now, not in a log
    workdir = (spec_path.resolve().parent / Path(spec.get("workdir", "."))).resolve()
    if not workdir.is_dir():     # as `traind run` checks: else every launch fails the same way, in a log
        raise UsageError(f"{spec_path}: workdir: directory {workdir} does not exist")
    spec["workdir"] = str(workdir)
    return job, yaml.safe_dump(spec, sort_keys=False).encode()


def submit(spool: Path, name: str, data: bytes) -> Path:
    """Atomically drop a spec into the spool: temp file, fsync, rename, dir fsync.

    Run as root, the file is handed to the spool's owner (the daemon's user) before it appears:
    root is trusted anyway, and the daemon accepts only files its own user owns.
    """
    if not spool.is_dir():
        raise UsageError(f"{spool}: spool directory does not exist (is `traind serve` set up?)")
    final = spool / f"{name}{SPEC_SUFFIX}"
    tmp = spool / f".tmp-{name}-{os.getpid()}-{time.time_ns()}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except PermissionError:
        raise TraindError(f"{spool}: no permission to submit (run as the daemon's user, or join its --group)") from None
    try:
        if os.geteuid() == 0:
            owner = os.stat(spool)
            os.fchown(fd, owner.st_uid, owner.st_gid)
        write_durably(fd, data)
    except OSError as err:
        os.unlink(tmp)
        raise TraindError(f"{tmp}: cannot write: {err.strerror}") from None
    finally:
        os.close(fd)
    if final.exists():
        os.unlink(tmp)
        raise UsageError(f"{final}: a spec named {name!r} is already waiting in the spool")
    rename_durably(tmp, final)  # the daemon sees one "moved in" event for a whole file
    return final


def sweep(spool_dir: Path, keep_refused_days: float) -> None:
    """Retention: refused files older than keep_refused_days, abandoned submit temp files."""
    refused = spool_dir / REFUSED_SUBDIR
    candidates = [(p, keep_refused_days * 86400) for p in refused.iterdir()] if refused.is_dir() else []
    candidates += [(p, 3600.0) for p in spool_dir.glob(".tmp-*")]
    for p, max_age in candidates:
        try:
            st = p.lstat()
            if time.time() - st.st_mtime > max_age and not stat.S_ISDIR(st.st_mode):  # folders: left to a human
                p.unlink()
                log.info("retention sweep removed %s", p)
        except FileNotFoundError:
            pass
