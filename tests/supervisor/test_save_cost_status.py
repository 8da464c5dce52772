"""`traind status` says what the last save cost: the job's figures, reported with each commit."""
import json
import sys

from .conftest import traind, write_spec


def test_status_shows_the_last_saves_cost_and_the_slowdown_beside_background_saves(tmp_path):
    spec = write_spec(tmp_path, command=[sys.executable, "-m", "traind.jobs.examples.tiny",
                                         "--max-steps", "200", "--every-steps", "10"],
                      env={"OMP_NUM_THREADS": "1"})
    out = traind("run", spec, timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    run_dir = tmp_path / "run"
    last = json.loads(traind("status", run_dir, "--json").stdout)["last_checkpoint"]
    assert last["step"] == 200 and last["reason"] == "final" and last["bytes"] > 0
    assert last["writer_cpu_seconds"] > 0 and last["seconds"] > 0
    # 19 periodic saves in the background, each beside a step or more, and quiet steps between
    assert isinstance(last["slowdown"], float) and last["slowdown"] > 0
    human = traind("status", run_dir).stdout
    line = next(l for l in human.splitlines() if l.startswith("last save:"))
    assert "step 200 (final)" in line and "writer CPU" in line and "durable after" in line
    assert f"steps beside a save take {last['slowdown']:.2f}x as long" in line
