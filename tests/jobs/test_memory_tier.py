"""Issue 23: the memory tier. A crash (SIGKILL) resumes from the newest checkpoint in tmpfs, at most
`every_steps` (+1) steps back, bit-identical to an uninterrupted run; the tier is freed when the run
ends, when it is stopped, and by the rerun after a SIGKILLed supervisor; bad settings are one line."""
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from jobhelpers import (assert_same_training, crash_campaign, last_step, run_spec, spawned, traind_run,
                        wait_for_step)
from traind.store import format as fmt
from traind.store import memory_tier

pytestmark = pytest.mark.slow
K = 5      # the memory tier's interval in the campaign


def _spec(tmp_path, name, run_dir, *, steps=400, memory=None, **sections) -> str:
    command = [sys.executable, "-m", "traind.jobs.examples.tiny", "--max-steps", str(steps), "--every-steps", "100",
               "--step-seconds", "0.01", "--log-every", "0"]
    return run_spec(tmp_path, name, run_dir, command, checkpoint={"memory": memory or {"every_steps": K}},
                    restart={"max_restarts": 30, "backoff": {"initial_seconds": 0, "max_seconds": 0, "jitter": 0}},
                    **sections)


def _no_tier_left(run_dir) -> None:
    tier = memory_tier.tier_dir(run_dir)
    assert not tier.exists(), sorted(p.name for p in tier.rglob("*"))


def test_twenty_sigkills_lose_at_most_k_plus_one_steps_each_and_the_run_ends_bit_identical(tmp_path):
    reference = tmp_path / "reference"
    proc = traind_run(_spec(tmp_path, "reference", reference))
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]

    run_dir = tmp_path / "run"
    proc = traind_run(_spec(tmp_path, "crashed", run_dir))
    lost = crash_campaign(proc, run_dir, 20, random.Random(23), every=K)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    print(f"steps lost per crash (memory tier every {K} steps): {sorted(lost)}; max {max(lost)}")
    assert all(0 <= n <= K + 1 for n in lost), lost
    # a restart past the tier's first save resumed from memory, and each memory checkpoint it used
    # was copied to disk (once)
    resumed = [line for line in out.splitlines() if "resuming from step" in line or "no checkpoint in" in line]
    assert all("in memory); log" in line for line in resumed[1:] if "no checkpoint in" not in line), resumed
    from_memory = {int(line.split("resuming from step ")[1].split()[0]) for line in resumed if "in memory)" in line}
    copied = [int(line.split("memory tier: step ")[1].split()[0]) for line in out.splitlines() if "copied to disk" in line]
    assert len(from_memory) >= 5 and sorted(copied) == sorted(from_memory), (resumed, copied)
    assert_same_training(reference, run_dir)
    _no_tier_left(run_dir)
    _no_tier_left(reference)


def test_a_stopped_run_frees_the_tier_and_its_resume_point_is_on_disk(tmp_path):
    run_dir = tmp_path / "run"
    proc = traind_run(_spec(tmp_path, "stopped", run_dir))
    wait_for_step(proc, run_dir, 3 * K)
    assert any(memory_tier.tier_dir(run_dir).glob("checkpoints/step-*"))
    shown = subprocess.run([sys.executable, "-m", "traind", "status", str(run_dir)], capture_output=True, text=True)
    assert f"memory tier: every {K} steps, steps " in shown.stdout, shown
    listed = subprocess.run([sys.executable, "-m", "traind", "ckpt", "ls", str(run_dir)], capture_output=True, text=True)
    assert f"in the memory tier ({memory_tier.tier_dir(run_dir)})" in listed.stdout, listed
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 75, out[-3000:]
    _no_tier_left(run_dir)
    info, _ = fmt.latest_valid(run_dir / "checkpoints")
    assert info.reason == "emergency" and info.step == last_step(run_dir)


def test_after_a_supervisor_sigkill_the_rerun_resumes_from_the_tier_it_left_then_frees_it(tmp_path):
    run_dir = tmp_path / "run"
    spec = _spec(tmp_path, "orphan", run_dir, steps=300)
    proc = traind_run(spec)
    wait_for_step(proc, run_dir, 40)        # past the tier's saves, before the disk's first (step 100)
    child = json.loads((run_dir / "status.json").read_text())["pid"]
    # Both die at once (an OOM kill of the whole service, say): the supervisor is held still first so
    # it restarts nothing, and the trainer has no chance to write its emergency checkpoint.
    proc.send_signal(signal.SIGSTOP)
    os.kill(child, signal.SIGKILL)
    proc.kill()
    proc.communicate(timeout=60)
    left, _ = memory_tier.newest(memory_tier.tier_dir(run_dir))
    assert left is not None and left.step >= 40 - K - 1 and not any((run_dir / "checkpoints").glob("step-*"))

    proc = traind_run(spec)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]
    assert spawned(run_dir)[-1]["checkpoint_step"] == left.step, out[-3000:]
    assert f"resuming from step {left.step} ({fmt.step_dir_name(left.step)} in memory)" in out
    _no_tier_left(run_dir)


def test_a_damaged_memory_checkpoint_is_skipped_for_the_one_before_it(tmp_path):
    run_dir = tmp_path / "run"
    proc = traind_run(_spec(tmp_path, "damaged", run_dir, steps=300))
    wait_for_step(proc, run_dir, 3 * K + 1)
    status = json.loads((run_dir / "status.json").read_text())
    os.kill(status["pid"], signal.SIGSTOP)          # hold it still while its newest tier copy is damaged
    newest, older = sorted(memory_tier.tier_dir(run_dir).glob("checkpoints/step-*"))[::-1][:2]
    state = newest / fmt.STATE_NAME
    data = bytearray(state.read_bytes())
    data[len(data) // 2] ^= 0xFF
    state.write_bytes(bytes(data))
    os.kill(status["pid"], signal.SIGKILL)
    os.kill(status["pid"], signal.SIGCONT)
    while len(spawned(run_dir)) < 2:
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert spawned(run_dir)[1]["checkpoint_step"] == int(older.name.split("-")[1]), out[-3000:]
    assert f"skipping checkpoint {newest.name}" in out, out[-3000:]


def test_a_budget_too_small_for_the_state_is_one_line_exit_2_and_no_retry(tmp_path):
    run_dir = tmp_path / "run"      # ~12 MiB of weights and Adam state: 3 x 12 MiB do not fit in 16 MiB
    command = [sys.executable, "-m", "traind.jobs.examples.large", "--width", "1024", "--layers", "1"]
    proc = traind_run(run_spec(tmp_path, "budget", run_dir, command,
                               checkpoint={"memory": {"every_steps": 2, "budget_mib": 16}}))
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 1 and "attempt 1 exit code 2 (checkpoint.memory:" in out, out[-3000:]
    line = next(x for x in out.splitlines() if "checkpoint.memory:" in x)
    assert "budget is 16.0 MiB" in line and "Traceback" not in out, out[-3000:]
    _no_tier_left(run_dir)


@pytest.mark.parametrize("memory, words", [
    ({"every_steps": 0}, "checkpoint.memory.every_steps: expected"),
    ({"keep": 3}, "checkpoint.memory.keep: expected"),
    ({"every": 5}, "checkpoint.memory"),
    ({"budget_mib": 1 << 30}, "checkpoint.memory.budget_mib: 1073741824 MiB, but"),
])
def test_bad_memory_settings_are_one_line_naming_the_field(tmp_path, memory, words):
    proc = traind_run(_spec(tmp_path, "bad", tmp_path / "run", memory=memory))
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 2 and words in out and "Traceback" not in out, out
    assert len(out.strip().splitlines()) == 1, out


def test_the_lightning_callback_resumes_from_memory_after_sigkills_bit_identical(tmp_path):
    pytest.importorskip("pytorch_lightning")
    from test_lightning_supervised import ENV, JOB
    from jobhelpers import assert_identical, final_state, metrics
    args = ["--max-steps", "300", "--every-steps", "100"]
    alone = tmp_path / "alone"
    subprocess.run([*JOB, "--run-dir", str(alone), *args], env={**os.environ, **ENV}, check=True,
                   capture_output=True, timeout=600)
    run_dir = tmp_path / "run"
    proc = traind_run(run_spec(tmp_path, "lit", run_dir, [*JOB, *args, "--step-seconds", "0.01"], env=ENV,
                               checkpoint={"memory": {"every_steps": K}},
                               restart={"max_restarts": 20, "backoff": {"initial_seconds": 0, "max_seconds": 0}}))
    lost = crash_campaign(proc, run_dir, 6, random.Random(2311), every=K)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    print(f"Lightning: steps lost per crash (memory tier every {K} steps): {sorted(lost)}")
    assert all(0 <= n <= K + 1 for n in lost) and "in memory); log" in out, (lost, out[-3000:])
    assert metrics(run_dir) == metrics(alone)
    a, b = final_state(alone), final_state(run_dir)
    for key in ("state_dict", "optimizer_states", "lr_schedulers", "global_step", "epoch", "data_position"):
        assert_identical(a[key], b[key], key)
    _no_tier_left(run_dir)
