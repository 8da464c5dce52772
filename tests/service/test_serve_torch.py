"""The daemon with a real PyTorch job (traind.jobs.examples.tiny under the real `traind run`): kill -9 of
the daemon mid-training, restart, and the job ends exactly as an uninterrupted run does."""
import json
import os
import subprocess
import sys

import pytest
import yaml

from conftest import REPO, traind, wait_for

pytestmark = pytest.mark.slow
STEPS = 1000


def losses(run_dir):
    out = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        m = json.loads(line)
        out[m["step"]] = m["loss"]      # a step repeated after a resume: the last one counts
    return out


def test_tiny_job_resumes_bit_for_bit_across_kill9_of_the_daemon(tmp_path, serve):
    s = serve(slots=1).start()
    cmd = [sys.executable, "-m", "traind.jobs.examples.tiny", "--max-steps", str(STEPS), "--every-steps", "250"]
    spec = tmp_path / "tiny.yaml"
    spec.write_text(yaml.safe_dump({"name": "tiny", "command": cmd, "workdir": str(REPO),
                                    "env": {"OMP_NUM_THREADS": "1"}}))
    traind("submit", str(spec), state_dir=s.state_dir, check=True)
    run_dir = s.state_dir / "jobs/tiny/run"
    wait_for(lambda: 300 <= len((run_dir / "metrics.jsonl").read_text().splitlines()) < STEPS - 200, 90,
             "tiny mid-training", interval=0.05)
    s.kill9()                    # traind run gets SIGTERM (PDEATHSIG): emergency checkpoint, exit 75
    s.start()
    wait_for(lambda: s.states()["tiny"] == "done", 120, "tiny done")
    assert s.records()["tiny"]["launches"] == 2
    events = [json.loads(x) for x in (run_dir / "events.jsonl").read_text().splitlines()]
    assert any("emergency" in json.dumps(e) for e in events), events

    # The same job uninterrupted, outside the daemon.
    ref = tmp_path / "ref"
    subprocess.run([*cmd, "--run-dir", str(ref)], cwd=REPO, check=True, capture_output=True,
                   env=dict(os.environ, OMP_NUM_THREADS="1"))
    got, want = losses(run_dir), losses(ref)
    assert sorted(got) == list(range(1, STEPS + 1)) and got == want
    assert s.stop() == 0
