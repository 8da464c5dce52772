"""Issue 22's campaign, shorter, for the Lightning callback: the Lightning example with a DataLoader
worker under `traind run`, stopped at random moments of its run (start-up, restore, training
steps, validation at each epoch end, saves), half of the stops SIGTERM to `traind run`, half to
every process of the tree at once (`systemctl stop` with KillMode=control-group, `scancel`), each
followed by a rerun. Every stop exits 75 within the grace with no SIGKILL, the resume point is
never older than the last completed training step, and the run ends bit-identical."""
import os
import random
import signal
import subprocess
import time

import pytest

from jobhelpers import assert_identical, final_state, last_step, metrics, process_tree, signal_all
from test_lightning_supervised import JOB, ENV, REPO, finish, spec, traind
from traind import store as ck

pytest.importorskip("pytorch_lightning")
pytestmark = pytest.mark.slow
ARGS = ["--max-steps", 240, "--every-steps", 40, "--workers", 1]
GRACE, STOPS = 30, 6




def _resume_step(run_dir) -> int:
    info, _ = ck.latest_valid(run_dir / "checkpoints")
    return 0 if info is None else info.step


def test_sigterm_anywhere_to_traind_or_the_whole_tree_exits_75_and_ends_bit_identical(tmp_path):
    alone = tmp_path / "alone"
    subprocess.run([*JOB, "--run-dir", str(alone), *map(str, ARGS)], cwd=REPO, env={**os.environ, **ENV},
                   check=True, capture_output=True, timeout=600)
    run_dir, rng = tmp_path / "run", random.Random(2207)
    path = spec(tmp_path, "lit", run_dir, [*ARGS, "--step-seconds", 0.02], preemption={"grace_seconds": GRACE},
                restart={"max_restarts": 0})
    stopped = 0
    for i in range(STOPS):
        p = traind("run", path)
        time.sleep(rng.uniform(1.0, 12.0))          # Lightning's start-up takes ~5-8 s here
        if p.poll() is not None:
            break
        whole_tree = i % 2 == 1
        signal_all(process_tree(p.pid) if whole_tree else [p.pid])
        sent = time.monotonic()
        code, out = finish(p, timeout=GRACE + 60)
        took = time.monotonic() - sent
        if code == 0 and "succeeded" in out:
            break                                    # the stop came after the last step
        if code == -signal.SIGTERM and not out:
            continue                                 # before `traind run` had its handlers: nothing launched
        assert code == 75, f"stop {i}: exit {code}\n{out[-3000:]}"
        assert took < GRACE and "SIGKILL" not in out, f"stop {i}: {took:.1f} s\n{out[-3000:]}"
        assert _resume_step(run_dir) >= last_step(run_dir), f"stop {i}: resume point older than the last step"
        stopped += 1
    code, out = finish(traind("run", path), timeout=600)
    assert code == 0 and stopped >= STOPS - 2, (stopped, out[-3000:])
    assert metrics(run_dir) == metrics(alone)
    a, b = final_state(alone), final_state(run_dir)
    for key in ("state_dict", "optimizer_states", "lr_schedulers", "global_step", "epoch", "data_position"):
        assert_identical(a[key], b[key], key)
