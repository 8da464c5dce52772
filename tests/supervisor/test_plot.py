"""Issue 10.10: `traind plot` draws a real run: a crash (child SIGKILLed) and a preemption
(SIGTERM to traind run), then the rest; the PNG shows the metrics and the marks."""
import json
import os
import signal
import sys
import time

import pytest

from traind.cli.plot import read_history
from traind.supervisor.runfiles import lock_holder

from .conftest import start_traind, stop, traind, write_spec
from .test_real import heartbeat_step, wait_for

pytest.importorskip("matplotlib")
pytestmark = pytest.mark.slow


def test_plot_renders_a_real_run_with_a_crash_and_a_preemption(tmp_path, reap):
    tiny = [sys.executable, "-m", "traind.jobs.examples.tiny", "--max-steps", "300", "--every-steps", "50",
            "--step-seconds", "0.02"]
    spec = write_spec(tmp_path, command=tiny)
    run_dir = tmp_path / "run"
    sup = start_traind("run", spec)
    reap(sup)
    wait_for(lambda: heartbeat_step(run_dir) >= 80, timeout=120, what="step 80")
    os.kill(lock_holder(run_dir)["child_pid"], signal.SIGKILL)                       # a crash
    wait_for(lambda: heartbeat_step(run_dir) >= 180, timeout=120, what="step 180 after the restart")
    sup.send_signal(signal.SIGTERM)                                                   # a preemption
    assert sup.wait(timeout=60) == 75
    assert traind("run", spec, timeout=180).returncode == 0                           # the rest
    history = read_history(run_dir)
    assert [h for _, h, _ in history["ends"]] == ["crash", "preempted"]
    assert len(history["starts"]) == 3 and history["starts"][1][1] >= 50             # resumed from a checkpoint
    steps = [s for s, _ in history["metrics"]["loss"]]
    assert steps == list(range(1, 301)) and "val_loss" in history["metrics"]          # one history, all steps
    assert {s for s, _ in history["checkpoints"]} >= {50, 100, 300}
    out = tmp_path / "run.png"
    done = traind("plot", run_dir, "-o", out)
    assert done.returncode == 0 and out.stat().st_size > 20_000, done.stderr
    import matplotlib.image
    pixels = matplotlib.image.imread(out)
    red = ((pixels[..., 0] > 0.75) & (pixels[..., 1] < 0.3) & (pixels[..., 2] < 0.3)).sum()
    orange = ((pixels[..., 0] > 0.9) & (pixels[..., 1] > 0.4) & (pixels[..., 1] < 0.6) & (pixels[..., 2] < 0.2)).sum()
    assert red > 50 and orange > 50, "the crash and preemption marks are not drawn"
    (tmp_path / "history.json").write_text(json.dumps(history["ends"]))


def test_plot_of_a_dir_without_metrics_is_one_line(tmp_path):
    out = traind("plot", tmp_path)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "no metrics" in out.stderr
