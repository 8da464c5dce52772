"""Issue 22's campaign, shorter, for a 2-rank DDP group: the tiny Trainer job (a DataLoader worker
per rank, a validation of slow batches every 25 steps) under `traind run`, stopped at random
moments (start-up, rendezvous, restore, steps, validation, saves), half of the stops SIGTERM to
`traind run`, half to every process of the tree at once, each followed by a rerun. Every stop
exits 75 within the grace with no SIGKILL, every rank's files of the newest checkpoint are at one
step, never older than the last completed step, and the run ends bit-identical."""
import random
import signal
import sys
import time

import pytest

from tests.jobs.jobhelpers import process_tree, signal_all
from ddphelpers import assert_same_state, metrics, newest, rank_files, run, start, write_spec
from traind.store import format as fmt

pytestmark = pytest.mark.slow
GRACE, STOPS = 30, 8




def _tiny(tmp_path, name, *extra):
    command = [sys.executable, "-m", "traind.jobs.examples.tiny", "--max-steps", "120", "--every-steps", "20",
               "--val-every", "25", "--workers", "1", "--log-every", "0", *extra]
    return write_spec(tmp_path, name=name, nproc=2, every_steps=20, command=command,
                      preemption={"grace_seconds": GRACE}, restart={"max_restarts": 0}), tmp_path / name


def _last_step(run_dir) -> int:
    rows = metrics(run_dir) if (run_dir / "metrics.jsonl").exists() else []
    return rows[-1]["step"] if rows else 0


def test_a_two_rank_group_stopped_anywhere_exits_75_at_one_step_and_ends_bit_identical(tmp_path):
    ref_spec, ref_dir = _tiny(tmp_path, "reference")
    assert run(ref_spec, tmp_path / "reference.log", 600) == 0, (tmp_path / "reference.log").read_text()[-3000:]
    spec, run_dir = _tiny(tmp_path, "tiny", "--step-seconds", "0.03", "--val-batch-seconds", "0.1")
    log, rng, stopped = tmp_path / "tiny.log", random.Random(2222), 0
    for i in range(STOPS):
        mark = log.stat().st_size if log.exists() else 0
        sup = start(spec, log)
        time.sleep(rng.uniform(0.5, 12.0))          # start-up of 2 ranks takes ~4-8 s here
        if sup.poll() is not None:
            break
        signal_all(process_tree(sup.pid) if i % 2 else [sup.pid])
        sent = time.monotonic()
        code = sup.wait(GRACE + 60)
        took, out = time.monotonic() - sent, log.read_text()[mark:]
        if code == 0:
            break                                    # the stop came after the last step
        if code == -signal.SIGTERM and "supervising" not in out:
            continue                                 # before `traind run` had its handlers: nothing launched
        assert code == 75, f"stop {i}: exit {code}\n{out[-3000:]}"
        assert took < GRACE and "SIGKILL" not in out, f"stop {i}: {took:.1f} s\n{out[-3000:]}"
        info, _ = fmt.latest_valid(run_dir / "checkpoints")
        if info is not None:
            assert len({s["global_step"] for s in rank_files(info.path)}) == 1, f"stop {i}: ranks at different steps"
        assert (info.step if info else 0) >= _last_step(run_dir), f"stop {i}: resume point older than the last step"
        stopped += 1
    assert run(spec, log, 600) == 0, log.read_text()[-3000:]
    assert stopped >= STOPS - 3, stopped
    assert_same_state(newest(run_dir), newest(ref_dir))
    assert metrics(run_dir) == metrics(ref_dir)
