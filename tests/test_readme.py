"""README's set-up commands are the ones CI runs (they must stay true)."""
import re
from pathlib import Path

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
