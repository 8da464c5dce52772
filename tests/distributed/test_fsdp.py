"""Issue 12, FSDP2 where it runs on CPU (fully_shard on a gloo mesh): under a Session on 2 ranks
each rank's shard holds its own half of the parameters, and a SIGTERM mid-epoch resumes
bit-identical to an uninterrupted FSDP run."""
import signal
import sys

import pytest

from ddphelpers import REPO, assert_same_state, metrics, newest, rank_files, run, start, step_of, wait_for, write_spec

pytestmark = pytest.mark.slow


def _fsdp_spec(tmp_path, name, step_seconds):
    command = [sys.executable, str(REPO / "tests" / "distributed" / "fsdp_job.py"), "--step-seconds", str(step_seconds)]
    return write_spec(tmp_path, name=name, nproc=2, every_steps=20, command=command), tmp_path / name


def test_fsdp2_on_two_ranks_stops_at_one_step_and_resumes_bit_identical(tmp_path):
    ref_spec, ref_dir = _fsdp_spec(tmp_path, "reference", 0)
    assert run(ref_spec, tmp_path / "reference.log") == 0, (tmp_path / "reference.log").read_text()[-3000:]
    spec, run_dir = _fsdp_spec(tmp_path, "fsdp", 0.03)
    log = tmp_path / "fsdp.log"
    sup = start(spec, log)
    wait_for(lambda: step_of(run_dir) >= 25, 120, "step 25")
    sup.send_signal(signal.SIGTERM)
    assert sup.wait(120) == 75, log.read_text()[-3000:]
    stopped = newest(run_dir)
    assert len({s["global_step"] for s in rank_files(stopped)}) == 1
    shards = sorted(stopped.glob("__*_0.distcp"))
    sizes = [p.stat().st_size for p in shards]
    assert len(shards) == 2 and min(sizes) > 0.3 * max(sizes)     # each rank wrote its own half
    assert run(spec, log) == 0, log.read_text()[-3000:]
    assert_same_state(newest(run_dir), newest(ref_dir))
    assert metrics(run_dir) == metrics(ref_dir)
