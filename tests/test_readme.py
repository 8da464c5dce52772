"""README's set-up commands are the ones CI runs, and its code blocks run as written."""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def readme_commands():
    text = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- setup-commands -->\s*```(?:sh|bash)?\n(.*?)```", text, re.S)
    assert block, "README.md lost its setup-commands block"
    return [line for line in block.group(1).splitlines() if line and not line.startswith("#")]


def test_ci_runs_the_readme_test_command():
    run_cmd, test_cmd = readme_commands()
    assert "traind run jobs/examples/tiny.yaml" in run_cmd
    assert "pytest" in test_cmd
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test_cmd in ci_lines, ".ci/run must call README's test command verbatim"


def test_readme_example_spec_exists():
    assert (ROOT / "jobs" / "examples" / "tiny.yaml").is_file()


def test_readme_own_loop_example_is_the_file_the_tests_run():
    """README's plain-PyTorch example is jobs/examples/own_loop.py verbatim; tests/jobs runs,
    interrupts and resumes that file."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- own-loop-example -->\s*```python\n(.*?)```", text, re.S)
    assert block, "README.md lost its own-loop example"
    source = (ROOT / "jobs" / "examples" / "own_loop.py").read_text()
    assert block.group(1).strip() in source
    assert len(block.group(1).strip().splitlines()) >= 15


def blocks(lang: str) -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(rf"```{lang}\n(.*?)```", text, re.S)


def test_readme_spec_block_is_a_valid_spec(tmp_path):
    """The spec README documents field by field loads as it is (from where tiny.yaml lives)."""
    from traind.supervisor.spec import load_spec
    (spec_block,) = blocks("yaml")
    spec_file = ROOT / "jobs" / "examples" / "tiny.yaml"
    path = tmp_path / "jobs" / "examples" / "readme.yaml"
    path.parent.mkdir(parents=True)
    path.write_text(spec_block)
    spec = load_spec(path)
    assert spec.name == "tiny" and spec.checkpoint.keep_best.metric == "val_loss"
    assert spec_file.is_file()


@pytest.mark.slow
@pytest.mark.parametrize("index", range(2))
def test_every_readme_python_block_runs_verbatim(tmp_path, index):
    code = blocks("python")
    assert len(code) == 2, "README's python blocks changed: keep this test in step"
    out = subprocess.run([sys.executable, "-c", code[index]], cwd=tmp_path, capture_output=True, text=True,
                         timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Traceback" not in out.stderr and "warning:" not in out.stderr, out.stderr[-3000:]


@pytest.mark.slow
def test_readme_quick_start_runs_verbatim(tmp_path):
    """Every command of the quick start, as written, from a copy of the repo's layout."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"## Quick start\s*```sh\n(.*?)```", text, re.S).group(1)
    commands = [line.split("  #")[0].strip() for line in block.splitlines()]
    commands = [c for c in commands if c and not c.startswith("#")]
    assert len(commands) == 6, commands
    (tmp_path / "jobs" / "examples").mkdir(parents=True)
    shutil.copy(ROOT / "jobs" / "examples" / "tiny.yaml", tmp_path / "jobs" / "examples")
    bindir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}"}
    for command in commands:
        out = subprocess.run(command, shell=True, cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
        assert out.returncode == 0, f"{command}: {out.stderr[-2000:]}"
    assert out.stdout.splitlines()[1].split()[:3] == ["600", "10", "final"]   # `traind ckpt ls`: the final one
