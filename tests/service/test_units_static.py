"""Static checks of the shipped units: `systemd-analyze verify` must print NOTHING (it exits 0 on
misspelled keys), and `systemd-analyze security` exposure must be <= 4.0. Also the installer."""
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import REPO, traind

UNITS = REPO / "systemd"
MAX_EXPOSURE = 4.0
pytestmark = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd not installed")


def make_root(tmp_path, units: dict[str, str]) -> Path:
    """A --root with the distribution's units (so After=/Wants= resolve) plus ours, and a stub at
    every ExecStart path (verify checks the executable exists inside the root)."""
    root = tmp_path / "root"
    (root / "usr/lib/systemd").mkdir(parents=True)
    shutil.copytree("/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    for name, text in units.items():
        (root / "etc/systemd/system" / name).write_text(text)
        for exe in re.findall(r"^Exec\w+=[-@:+!]*(/\S+)", text, re.M):
            stub = root / exe.lstrip("/")
            stub.parent.mkdir(parents=True, exist_ok=True)
            stub.write_text("#!/bin/sh\n")
            stub.chmod(0o755)
    return root


def shipped() -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(UNITS.glob("*.service"))}


def instance_names(units) -> list[str]:
    return [n.replace("@.service", "@ci.service") for n in units]   # a template is verified as an instance


def verify(root, names) -> subprocess.CompletedProcess:
    return subprocess.run(["systemd-analyze", "verify", "--man=no", f"--root={root}", *names],
                          capture_output=True, text=True)


def test_shipped_units_verify_silently(tmp_path):
    units = shipped()
    assert set(units) == {"traind.service", "traind@.service"}
    out = verify(make_root(tmp_path, units), instance_names(units))
    assert out.returncode == 0 and out.stdout + out.stderr == "", out.stdout + out.stderr


def test_verify_check_catches_a_misspelled_key(tmp_path):
    # The check above can fail: a typo exits 0 but prints a warning.
    bad = {"traind.service": shipped()["traind.service"].replace("WatchdogSec=", "WachdogSec=")}
    out = verify(make_root(tmp_path, bad), ["traind.service"])
    assert out.returncode == 0 and "WachdogSec" in out.stdout + out.stderr


@pytest.mark.parametrize("unit", ["traind.service", "traind@ci.service"])
def test_security_exposure_at_most_4(tmp_path, unit):
    root = make_root(tmp_path, shipped())
    out = subprocess.run(["systemd-analyze", "security", "--offline=true", f"--root={root}", unit],
                         capture_output=True, text=True)
    score = float(re.search(r"Overall exposure level for \S+: ([\d.]+)", out.stdout).group(1))
    print(f"{unit}: exposure {score}")
    assert score <= MAX_EXPOSURE, out.stdout[-3000:]


def test_service_unit_has_the_required_settings():
    text = shipped()["traind.service"]
    for line in ["Type=notify", "Restart=on-failure", "KillMode=mixed", "SuccessExitStatus=75",
                 "NoNewPrivileges=yes", "ProtectSystem=strict", "PrivateTmp=yes", "User=traind"]:
        assert re.search(rf"^{re.escape(line)}$", text, re.M), line
    assert re.search(r"^WatchdogSec=\d+", text, re.M) and re.search(r"^TimeoutStopSec=\d+", text, re.M)
    assert "traind run /etc/traind/jobs/%i.yaml" in shipped()["traind@.service"]


def test_installer_points_execstart_at_this_traind_and_still_verifies(tmp_path):
    exe = tmp_path / "venv/bin/traind"
    exe.parent.mkdir(parents=True)
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    dest = tmp_path / "units"
    out = traind("systemd", "install", "--unit-dir", str(dest), "--exec", str(exe), "--no-reload",
                 "--jobs-dir", str(tmp_path / "jobs"))
    assert out.returncode == 0, out.stderr
    installed = {p.name: p.read_text() for p in dest.iterdir()}
    assert all(f"ExecStart={exe} " in t for t in installed.values())
    out = verify(make_root(tmp_path, installed), instance_names(installed))
    assert out.stdout + out.stderr == ""
    bad = traind("systemd", "install", "--unit-dir", str(dest), "--exec", "relative/traind", "--no-reload")
    assert bad.returncode == 2 and "--exec" in bad.stderr
