"""Issue 10.11: `traind serve --metrics-port` exposes every job's metrics on 127.0.0.1."""
import re
import socket
import urllib.request

import pytest

import sys

import yaml

from conftest import REPO, traind, wait_for

FIXTURE = REPO / "tests" / "supervisor" / "fixture_job.py"

pytest.importorskip("prometheus_client")
pytestmark = pytest.mark.slow


def test_serve_exposes_each_jobs_state_and_progress(tmp_path, serve):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    s = serve(slots=1).start("--metrics-port", str(port))
    specs = tmp_path / "specs"
    specs.mkdir()
    for name, steps in (("first", 8), ("second", 2000)):      # a job that speaks the control channel
        spec = specs / f"{name}.yaml"
        spec.write_text(yaml.safe_dump({"name": name, "command": [sys.executable, str(FIXTURE), "--steps", str(steps),
                                                                   "--every", "4", "--step-seconds", "0.02"],
                                        "env": {"PYTHONPATH": str(REPO)}}))
        traind("submit", str(spec), state_dir=s.state_dir, check=True)
    wait_for(lambda: s.states().get("first") == "done" and s.states().get("second") == "running", 120,
             "first done, second running")
    wait_for(lambda: scrape(port).get('traind_job_last_step{job="second"}', 0) >= 3, 60, "second's progress")
    m = scrape(port)
    assert m['traind_job_state{job="first",state="done"}'] == 1.0
    assert m['traind_job_state{job="second",state="running"}'] == 1.0
    assert m['traind_job_last_step{job="first"}'] == 8 and m['traind_job_attempts_total{job="first"}'] == 1


def scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return {m.group(1): float(m.group(2)) for m in re.finditer(r"^(traind_\S+) (\S+)$", text, re.M)}
