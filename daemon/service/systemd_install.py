"""`traind systemd install`: copy the shipped units, pointing ExecStart at this traind executable.

The unit files in `systemd/` say `/usr/local/bin/traind`; pip may have put traind elsewhere (a
virtualenv, ~/.local/bin), so the installer rewrites that path. Returns lines for the CLI to print.
"""
from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
from pathlib import Path

from traind.contract.errors import TraindError, UsageError

UNIT_NAMES = ("traind.service", "traind@.service")
SHIPPED_EXE = "/usr/local/bin/traind"


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
    out = []
    unit_dir.mkdir(parents=True, exist_ok=True)
    for name in UNIT_NAMES:
        (unit_dir / name).write_text(render((src / name).read_text(), exe))
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
    out.append("next: systemctl enable --now traind.service; submit with `sudo -u traind traind submit SPEC`")
    return out
