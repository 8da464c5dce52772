"""A fresh venv, as a new user has it: one import name, nothing installed as `daemon` or `jobs`,
and PyPI's python-daemon (import name `daemon`) side by side with traind."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def run(argv, cwd, **kw):
    out = subprocess.run([str(a) for a in argv], cwd=cwd, capture_output=True, text=True, timeout=900, **kw)
    assert out.returncode == 0, f"{argv}: {out.stdout[-2000:]}\n{out.stderr[-3000:]}"
    return out


CHECK = textwrap.dedent("""
    import importlib.util, sys
    assert importlib.util.find_spec("jobs") is None, "a top-level jobs module is installed"
    want_daemon = sys.argv[1] == "python-daemon"
    spec = importlib.util.find_spec("daemon")
    if want_daemon:
        import daemon
        assert hasattr(daemon, "DaemonContext"), daemon.__file__    # python-daemon's, not ours
    else:
        assert spec is None, f"a top-level daemon module is installed: {spec}"
    import traind
    assert "torch" not in sys.modules, "import traind imported torch"
    import traind.cli, traind.supervisor.loop, traind.service.daemon
    assert "torch" not in sys.modules, "the supervisor side imported torch"
    assert traind.Session.__module__ == "traind.jobs.runtime.session" and "torch" in sys.modules
    print("ok", traind.__file__)
""")


def test_fresh_venv_one_import_name_and_python_daemon_side_by_side(tmp_path):
    venv, outside = tmp_path / "venv", tmp_path / "elsewhere"
    outside.mkdir()
    run([sys.executable, "-m", "venv", venv], cwd=outside)
    py = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    run([py, "-m", "pip", "install", "-q", "torch==2.13.0"], cwd=outside, env=env)
    run([py, "-m", "pip", "install", "-q", "-e", REPO, "torch==2.13.0"], cwd=outside, env=env)
    assert run([py, "-c", CHECK, "alone"], cwd=outside, env=env).stdout.startswith("ok")

    run([py, "-m", "pip", "install", "-q", "python-daemon", "torch==2.13.0"], cwd=outside, env=env)
    assert run([py, "-c", CHECK, "python-daemon"], cwd=outside, env=env).stdout.startswith("ok")
    # ... and the quick start still runs under supervision, with the venv's own traind
    traind = venv / "bin" / "traind"
    out = run([traind, "run", REPO / "jobs/examples/tiny.yaml", "--set", f"run_dir={tmp_path / 'runs/tiny'}"],
              cwd=outside, env=env)
    assert "succeeded" in out.stderr, out.stderr[-2000:]
    assert (tmp_path / "runs/tiny/checkpoints").is_dir()
