"""The supervisor side must never import torch (it must start fast and stay small)."""
import pkgutil
import subprocess
import sys

import traind


def test_daemon_modules_do_not_import_torch():
    names = [m.name for m in pkgutil.walk_packages(traind.__path__, "traind.")
             if m.name != "traind.__main__" and not m.name.startswith("traind.jobs")]
    code = (
        "import importlib, sys\n"
        f"for n in {names!r}: importlib.import_module(n)\n"
        "bad = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"torch imported by the daemon side: {out.stdout}"
    assert len(names) >= 5
