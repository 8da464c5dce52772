"""A sharded save gets the same deadline as a single-process one: a background save starved by a
busy CPU (an idle-priority writer, every core taken by training) is raised back to normal
priority halfway to the next save and commits before that save is due. With the deadline moved
out of reach the same save commits only when the next save waits for it: the test can fail."""
import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.distributed.ddphelpers import env

HERE = Path(__file__).parent
INTERVAL = 6.0        # seconds until the next save is due


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_group(tmp_path, fraction: float) -> list[dict]:
    port = _free_port()
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        ranks = [subprocess.Popen([sys.executable, str(HERE / "slow_writer_job.py"), str(tmp_path / "run"),
                                   str(INTERVAL), str(fraction)],
                                  env=env(RANK=r, LOCAL_RANK=r, WORLD_SIZE=2, MASTER_ADDR="127.0.0.1",
                                          MASTER_PORT=port, TRAIND_WRITER_PRIORITY="idle"),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for r in range(2)]
        outs = [p.communicate(timeout=180) for p in ranks]
    finally:
        for b in burners:
            b.kill()
            b.wait()
    for p, (out, err) in zip(ranks, outs):
        assert p.returncode == 0, err[-3000:]
    return [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]


@pytest.mark.slow
def test_a_starved_sharded_save_commits_before_the_next_is_due(tmp_path):
    results = _run_group(tmp_path, fraction=0.5)
    assert all(r["committed_after"] < INTERVAL for r in results), results


@pytest.mark.slow
def test_without_the_deadline_the_starved_save_waits_for_the_next(tmp_path):
    results = _run_group(tmp_path, fraction=1e6)
    assert any(r["committed_after"] >= INTERVAL for r in results), results
