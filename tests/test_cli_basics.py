import subprocess
import sys

import pytest

from traind import __version__


def traind(*args):
    return subprocess.run([sys.executable, "-m", "traind", *args], capture_output=True, text=True)


def test_version():
    out = traind("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"traind {__version__}"


def test_unknown_command_is_usage_error_without_traceback():
    out = traind("no-such-command")
    assert out.returncode == 2
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize("cmd", [["run"], ["status"], ["ckpt", "ls"], ["ckpt", "verify"], ["ckpt", "inspect"],
                                 ["serve"], ["submit"], ["ls"], ["cancel"], ["logs"], ["slurm", "submit"]])
def test_every_command_has_help(cmd):
    out = traind(*cmd, "--help")
    assert out.returncode == 0, out.stderr
    assert "usage:" in out.stdout
