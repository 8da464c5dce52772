"""Issue 10.11: operators' metrics over HTTP on 127.0.0.1, scraped as Prometheus would."""
import re
import signal
import socket
import sys
import urllib.request

import pytest

from .conftest import start_traind, write_spec
from .test_real import heartbeat_step, wait_for

pytest.importorskip("prometheus_client")
pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    out = {}
    for line in text.splitlines():
        m = re.match(r"^(traind_[a-z_]+(?:\{[^}]*\})?) (\S+)$", line)
        if m:
            out[m.group(1)] = float(m.group(2))
    return out


def test_traind_run_exposes_job_metrics_on_localhost(tmp_path, reap):
    tiny = [sys.executable, "-m", "traind.jobs.examples.tiny", "--max-steps", "400", "--every-steps", "50",
            "--step-seconds", "0.02"]
    port = free_port()
    sup = start_traind("run", write_spec(tmp_path, command=tiny), "--metrics-port", port)
    reap(sup)
    wait_for(lambda: heartbeat_step(tmp_path / "run") >= 120, timeout=120, what="step 120")
    m = scrape(port)
    assert m['traind_job_state{job="fx",state="running"}'] == 1.0
    assert m['traind_job_state{job="fx",state="failed"}'] == 0.0
    assert m['traind_job_attempts_total{job="fx"}'] == 1.0 and m['traind_job_restarts_total{job="fx"}'] == 0.0, m
    assert m['traind_job_last_step{job="fx"}'] >= 120 and m['traind_job_steps_per_second{job="fx"}'] > 0
    assert 0 <= m['traind_job_heartbeat_age_seconds{job="fx"}'] < 30
    assert m['traind_job_checkpoint_bytes{job="fx"}'] > 100_000 and m['traind_job_checkpoint_seconds{job="fx"}'] >= 0
    assert m['traind_job_newest_valid_checkpoint_step{job="fx"}'] >= 100
    assert 0 <= m['traind_job_newest_valid_checkpoint_age_seconds{job="fx"}'] < 60
    sup.send_signal(signal.SIGTERM)       # an emergency checkpoint, exit 75
    assert sup.wait(timeout=120) == 75


def test_a_taken_metrics_port_is_one_line(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        p = start_traind("run", write_spec(tmp_path, command=[sys.executable, "-c", "pass"]), "--metrics-port", port)
        out, err = p.communicate(timeout=60)
    assert p.returncode == 1 and err.count("\n") == 1 and "cannot listen" in err, err
