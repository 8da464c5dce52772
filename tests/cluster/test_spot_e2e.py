"""`traind run` on a "spot VM": a fake metadata server on 127.0.0.1 posts the termination notice;
the supervisor writes the emergency checkpoint and exits 75 well inside the provider's window,
and logs how long it took."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.cluster.fakemeta import FakeMetadata
from tests.cluster.helpers import FIXTURE, emergency_step

WINDOW = {"aws": 120, "gcp": 30, "azure": 30}


def steps_done(run_dir: Path) -> int:
    try:
        return len((run_dir / "metrics.jsonl").read_text().splitlines())
    except FileNotFoundError:
        return 0


@pytest.mark.slow
@pytest.mark.parametrize("provider", ["aws", "gcp", "azure"])
def test_termination_notice_means_checkpoint_and_exit_75(provider, tmp_path):
    with FakeMetadata(provider) as fake:
        spec = tmp_path / "spot.yaml"
        spec.write_text(json.dumps({
            "name": f"spot-{provider}", "run_dir": "run",
            "command": [sys.executable, str(FIXTURE), "--steps", "100000", "--every", "50", "--step-seconds", "0.05"],
            "preemption": {"grace_seconds": 20, "spot": {"provider": provider, "base_url": fake.url,
                                                         "poll_seconds": 0.5}}}))
        env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
        proc = subprocess.Popen([sys.executable, "-m", "traind", "run", str(spec)], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            run_dir = tmp_path / "run"
            deadline = time.monotonic() + 30
            while steps_done(run_dir) < 10 and time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.1)
            assert steps_done(run_dir) >= 10, "the job never got going"
            polls_before = len(fake.requests)
            assert polls_before >= 1                      # it was polling before the notice
            fake.preempt()
            noticed = time.monotonic()
            out, _ = proc.communicate(timeout=WINDOW[provider])
            took = time.monotonic() - noticed
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 75, out
    # poll interval (0.5 s) + stop + exit: far inside even the 30 s windows
    assert took < WINDOW[provider] / 3, f"{took:.1f} s"
    assert f"spot {provider}: termination notice" in out
    measured = re.search(rf"spot {provider}: termination notice to emergency checkpoint done in ([\d.]+) s", out)
    assert measured and float(measured.group(1)) < took, out
    assert "emergency checkpoint committed at step" in out
    step = emergency_step(out)
    assert (run_dir / "checkpoints" / f"step-{step:09d}" / "MANIFEST.json").is_file()
