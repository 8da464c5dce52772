"""`traind systemd install`: copy the shipped units, pointing ExecStart at this traind executable.

The unit files in `systemd/` say `/usr/local/bin/traind`; pip may have put traind elsewhere (a
virtualenv, ~/.local/bin), so the installer rewrites that path. Returns lines for the CLI to print;
those starting with WARNING are for stderr.
"""
from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
import sys
from pathlib import Path

from ..contract.errors import TraindError, UsageError

UNIT_NAMES = ("traind.service", "traind@.service")
SHIPPED_EXE = "/usr/local/bin/traind"
WARNING = "warning: "
PRIVATE_TMP_DIRS = ("/tmp", "/var/tmp")
PRIVATE_TMP_RE = re.compile(r"^\s*PrivateTmp\s*=\s*(yes|true|on|1)\s*$", re.M | re.I)
SUBMIT_HINT = "sudo traind submit SPEC"    # as root, submit hands the file to the spool's owner (spool.submit)


def units_dir() -> Path:
    return Path(__file__).resolve().parents[2] / "systemd"   # daemon/service/ -> the source tree


def render(unit_text: str, exe: str) -> str:
    return unit_text.replace(SHIPPED_EXE, exe)


def install(unit_dir: Path, *, exe: str | None = None, create_user: bool = False, reload: bool = True,
            jobs_dir: Path = Path("/etc/traind/jobs")) -> list[str]:
    exe = exe or shutil.which("traind") or os.path.abspath(sys.argv[0])
    if not os.path.isabs(exe) or not os.access(exe, os.X_OK):
        raise UsageError(f"--exec: {exe!r} is not an absolute path to an executable")
    src = units_dir()
    if not all((src / n).is_file() for n in UNIT_NAMES):
        raise TraindError(f"{src}: shipped unit files not found (install traind from its source tree)")
    for flag, path in (("--unit-dir", unit_dir), ("--jobs-dir", jobs_dir)):
        if path.exists() and not path.is_dir():
            raise UsageError(f"{path}: {flag}: not a directory")
    units = {name: render((src / name).read_text(), exe) for name in UNIT_NAMES}
    problem = private_tmp_problem(exe, units)
    out = [WARNING + problem] if problem else []
    unit_dir.mkdir(parents=True, exist_ok=True)
    for name, text in units.items():
        (unit_dir / name).write_text(text)
        out.append(f"installed {unit_dir / name} (ExecStart uses {exe})")
    jobs_dir.mkdir(parents=True, exist_ok=True)   # where traind@NAME finds NAME.yaml
    out.append(f"template instances read {jobs_dir}/NAME.yaml")
    if create_user:
        try:
            pwd.getpwnam("traind")
        except KeyError:
            try:
                subprocess.run(["useradd", "--system", "--home-dir", "/var/lib/traind", "--no-create-home",
                                "--shell", "/usr/sbin/nologin", "traind"], check=True)
            except (OSError, subprocess.CalledProcessError) as err:   # no useradd, not root
                raise TraindError(f"--create-user: useradd failed ({err}); the units are installed, "
                                  "create the user 'traind' yourself") from None
            out.append("created system user traind")
    if reload and Path("/run/systemd/system").is_dir():
        subprocess.run(["systemctl", "daemon-reload"], check=False)
        out.append("systemctl daemon-reload done")
    out.append(f"next: systemctl enable --now traind.service; submit with `{SUBMIT_HINT}`")
    return out


def private_tmp_problem(exe: str, units: dict[str, str]) -> str | None:
    """Why the units could not start, if ExecStart's program lives under /tmp or /var/tmp while they set
    PrivateTmp=yes: the service gets its own empty /tmp and /var/tmp, so the executable, the interpreter
    its #! line names (or the virtualenv around them) is not there (status 203/EXEC)."""
    hiding = [name for name, text in units.items() if PRIVATE_TMP_RE.search(text)]
    for path in _exec_paths(exe) if hiding else ():
        top = next((d for d in PRIVATE_TMP_DIRS if path == d or path.startswith(d + "/")), None)
        if top:
            return (f"--exec: ExecStart runs {path}, under {top}, but {' and '.join(hiding)} set PrivateTmp=yes: "
                    f"the service sees an empty private {top} and cannot start; install traind outside "
                    f"{' and '.join(PRIVATE_TMP_DIRS)} and pass --exec")
    return None


def _exec_paths(exe: str) -> list[str]:
    """The executable and the interpreter its #! line names, each as written and resolved."""
    paths = [exe, os.path.realpath(exe)]
    try:
        with open(exe, "rb") as f:
            head = f.readline(512)
    except OSError:
        head = b""
    interpreter = head[2:].split()[:1] if head.startswith(b"#!") else []
    for word in interpreter:
        paths += [os.fsdecode(word), os.path.realpath(os.fsdecode(word))]
    return paths
