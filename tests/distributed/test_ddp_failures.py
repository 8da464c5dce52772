"""Issue 12: a group fails as one. A rank SIGKILLed at random moments, a rank SIGSTOPped, a
corrupt shard: the group restarts from the newest checkpoint every rank committed, nothing of a
failed attempt is left running, and the final state is bit-identical to an uninterrupted run."""
import random
import signal
import subprocess
import sys
import time

import pytest

from ddphelpers import (REPO, alive, assert_same_state, metrics, newest, rank_pids, run, start, status, step_of,
                        wait_for, write_spec)

pytestmark = pytest.mark.slow


def _running_ranks(run_dir, attempt):
    s = status(run_dir)
    pids = rank_pids(run_dir)
    return pids if s.get("attempt") == attempt and s.get("state") == "running" and len(pids) == 4 else None


def test_a_random_rank_sigkilled_ten_times_restarts_the_group_each_time_and_ends_bit_identical(tmp_path, reference_run):
    seed = random.randrange(1 << 30)
    chance = random.Random(seed)
    spec = write_spec(tmp_path, every_steps=10, step_seconds=0.1)    # <= 5 steps an attempt: 10 kills fit
    run_dir, log = tmp_path / "ddp", tmp_path / "supervisor.log"
    sup = start(spec, log)
    try:
        for kill in range(1, 11):
            pids = wait_for(lambda: _running_ranks(run_dir, kill), 120, f"attempt {kill} training (seed {seed})")
            time.sleep(chance.uniform(0.0, 0.5))
            victim = chance.choice(pids)
            try:
                subprocess.run(["kill", "-KILL", str(victim)], check=True)
            except subprocess.CalledProcessError:
                pytest.fail(f"rank pid {victim} was gone before kill {kill} (seed {seed})")
            # the whole group goes, then a new one comes (each rank a new process)
            wait_for(lambda: not any(alive(p) for p in pids), 30, f"every rank of attempt {kill} gone (seed {seed})")
            assert sup.poll() is None, log.read_text()[-3000:]
        assert sup.wait(300) == 0, log.read_text()[-3000:]
    finally:
        if sup.poll() is None:
            sup.kill()
    s = status(run_dir)
    assert s["restarts"] >= 10 and s["state"] == "succeeded"
    assert_same_state(newest(run_dir), newest(reference_run))
    assert metrics(run_dir) == metrics(reference_run)


def test_a_sigstopped_rank_is_a_hang_the_group_restarts_within_hang_timeout_plus_grace(tmp_path, reference_run):
    hang, grace = 4.0, 3.0
    spec = write_spec(tmp_path, step_seconds=0.02, health={"hang_timeout_seconds": hang},
                      preemption={"grace_seconds": grace})
    run_dir, log = tmp_path / "ddp", tmp_path / "supervisor.log"
    sup = start(spec, log)
    try:
        pids = wait_for(lambda: step_of(run_dir) >= 30 and _running_ranks(run_dir, 1), 120, "step 30")
        stopped = pids[2]
        subprocess.run(["kill", "-STOP", str(stopped)], check=True)
        at = time.monotonic()
        wait_for(lambda: status(run_dir).get("attempt") == 2, hang + grace + 15, "the restart")
        took = time.monotonic() - at
        assert took <= hang + grace + 5, took      # heartbeats are read once a second, spawns take a moment
        assert not any(alive(p) for p in pids), "a rank of the hung attempt is still running"
        assert sup.wait(300) == 0, log.read_text()[-3000:]
    finally:
        if sup.poll() is None:
            sup.kill()
    assert "hang" in log.read_text()
    assert_same_state(newest(run_dir), newest(reference_run))


def test_one_corrupt_shard_invalidates_the_checkpoint_for_every_rank_and_resume_falls_back(tmp_path, reference_run):
    spec = write_spec(tmp_path, step_seconds=0.02, checkpoint={"keep_last": 3})
    run_dir, log = tmp_path / "ddp", tmp_path / "supervisor.log"
    sup = start(spec, log)
    wait_for(lambda: step_of(run_dir) >= 45, 120, "step 45")
    sup.send_signal(signal.SIGTERM)
    assert sup.wait(120) == 75
    emergency = newest(run_dir)
    shard = emergency / "__2_0.distcp"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x40
    shard.write_bytes(bytes(data))
    verify = subprocess.run([sys.executable, "-m", "traind", "ckpt", "verify", str(emergency)], cwd=REPO,
                            capture_output=True, text=True)
    assert verify.returncode == 1 and "__2_0.distcp" in verify.stdout + verify.stderr
    # the one before: the last periodic save (every 20 steps) before the stop, wherever under
    # load the stop landed (seen: 46 to 74)
    emergency_step = int(emergency.name.split("-")[1])
    before = (emergency_step - 1) // 20 * 20
    fallback = newest(run_dir)
    assert fallback != emergency and fallback.name == f"step-{before:09d}"
    assert run(spec, log) == 0, log.read_text()[-3000:]
    text = log.read_text()
    assert f"skipping checkpoint {emergency.name}" in text and f"resuming from step {before}" in text
    assert_same_state(newest(run_dir), newest(reference_run))


def test_a_group_whose_ranks_fail_alike_before_their_first_step_fails_after_max_startup_failures(tmp_path):
    """Issue 21: the startup guard keys on the failure, not on which rank's copy of it came last
    (the ranks' tracebacks end "[rank0]: X" or "[rank1]: X")."""
    job = tmp_path / "torn.py"
    job.write_text("import torch.distributed as dist\ndist.init_process_group('gloo')\n"
                   "raise RuntimeError('snapshot.pt is torn: cannot resume')\n")
    spec = tmp_path / "torn.yaml"
    spec.write_text(f"name: torn\ncommand: [{sys.executable}, {job}]\nrun_dir: {tmp_path / 'run'}\n"
                    "distributed: {nproc_per_node: 2}\n"
                    "restart: {max_restarts: 10, max_startup_failures: 3, backoff: {initial_seconds: 0.1}}\n")
    proc = subprocess.run([sys.executable, "-m", "traind", "run", str(spec)], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "fails the same way before its first step" in proc.stdout + proc.stderr
    assert status(tmp_path / "run")["attempt"] == 3


def _catches_sigterm(pid: int) -> bool:
    try:
        caught = next(line for line in open(f"/proc/{pid}/status") if line.startswith("SigCgt:"))
    except (OSError, StopIteration):
        return False
    return bool(int(caught.split()[1], 16) & (1 << (signal.SIGTERM - 1)))


def test_a_group_that_never_speaks_is_told_honestly(tmp_path):
    """Issue 21, item 4: a 2-rank script that knows nothing of traind and exits 75 itself on
    SIGTERM: `running` once it outlives its start, a pid per rank, no checkpoint claimed, and
    `traind plot` draws its attempts from events.jsonl alone."""
    job = tmp_path / "silent.py"
    job.write_text("import signal, sys, time\nimport torch.distributed as dist\n"
                   "signal.signal(signal.SIGTERM, lambda *a: sys.exit(75))\n"
                   "dist.init_process_group('gloo')\nwhile True:\n    time.sleep(0.1)\n")
    run_dir = tmp_path / "run"
    spec = tmp_path / "silent.yaml"
    spec.write_text(f"name: silent\ncommand: [{sys.executable}, {job}]\nrun_dir: {run_dir}\n"
                    "distributed: {nproc_per_node: 2}\nrestart: {max_restarts: 0}\n"
                    "health: {silent_running_seconds: 5}\n")
    sup = subprocess.Popen([sys.executable, "-m", "traind", "run", str(spec)], cwd=REPO, text=True,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: status(run_dir).get("state") == "running", 60, "running")
        ranks = status(run_dir)["ranks"]
        assert [r["rank"] for r in ranks] == [0, 1] and all(isinstance(r["pid"], int) for r in ranks), ranks
        assert all(alive(r["pid"]) for r in ranks)
        # its own handler in place on both ranks (importing torch.distributed takes long under load)
        wait_for(lambda: all(_catches_sigterm(r["pid"]) for r in ranks), 60, "both ranks handle SIGTERM")
        sup.send_signal(signal.SIGTERM)
        out, _ = sup.communicate(timeout=60)
    finally:
        if sup.poll() is None:
            sup.kill()
    assert sup.returncode == 75, out
    assert "runs without speaking traind's channel" in out and "no checkpoint in traind's store" in out
    assert "the job exited 75 itself; traind holds no checkpoint of it" in out and "step None" not in out
    assert "fresh start" not in out
    picture = tmp_path / "run.png"
    plot = subprocess.run([sys.executable, "-m", "traind", "plot", str(run_dir), "-o", str(picture)], cwd=REPO,
                          capture_output=True, text=True)
    assert plot.returncode == 0 and picture.stat().st_size > 5000, plot.stderr
