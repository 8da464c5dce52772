"""The job side end to end: real processes, real signals, a real control channel."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

from traind.contract import protocol
from jobhelpers import (REPO, assert_identical, assert_same_training, checkpoints, finish, job_env,
                        last_step, metrics, saving_now, sigterm_and_expect_75, start, start_function,
                        wait_until)

TINY = "traind.jobs.examples.tiny"


@pytest.mark.slow
def test_sigterm_emergency_checkpoint_at_the_acted_step_survives_a_second_sigterm(tmp_path):
    run_dir = tmp_path / "run"
    # No periodic saves; the emergency save is held open 0.5 s so the second SIGTERM lands inside it.
    proc = start(TINY, "--run-dir", run_dir, "--max-steps", 100000, "--every-steps", 0, hold_saves=0.5)
    wait_until(lambda: last_step(run_dir) >= 30, proc)
    proc.send_signal(signal.SIGTERM)
    wait_until(lambda: saving_now(run_dir), proc)
    proc.send_signal(signal.SIGTERM)
    code, out = finish(proc)
    assert code == 75, out
    acted = last_step(run_dir)
    (ckpt,) = checkpoints(run_dir)
    manifest = json.loads((ckpt / "MANIFEST.json").read_text())
    assert (manifest["step"], manifest["reason"]) == (acted, "emergency")
    assert subprocess.run([sys.executable, "-m", "traind", "ckpt", "verify", str(ckpt)], cwd=REPO,
                          env=job_env(), capture_output=True).returncode == 0

    code, out = finish(start(TINY, "--run-dir", run_dir, "--max-steps", acted + 5))
    assert code == 0, out
    assert f"(step {acted}, epoch" in out
    assert [r["step"] for r in metrics(run_dir)] == list(range(1, acted + 6)), "no step lost or repeated"


@pytest.mark.slow
def test_sigterm_to_the_whole_process_group_with_dataloader_workers_still_exits_75(tmp_path):
    # SLURM and `kill -TERM -PGID` reach the DataLoader workers too; they must not break the step.
    run_dir = tmp_path / "run"
    proc = start(TINY, "--run-dir", run_dir, "--max-steps", 100000, "--workers", 2,
                 start_new_session=True)
    wait_until(lambda: last_step(run_dir) >= 20, proc)
    os.killpg(proc.pid, signal.SIGTERM)
    code, out = finish(proc)
    assert code == 75, out
    assert "killed by signal" not in out, out       # no worker died under the step
    assert checkpoints(run_dir)[-1].name == f"step-{last_step(run_dir):09d}"


@pytest.mark.slow
def test_a_sigkilled_job_with_dataloader_workers_restarts_at_once(tmp_path):
    # Its workers outlive it for a few seconds; they must not hold the checkpoint writer lock.
    run_dir = tmp_path / "run"
    proc = start(TINY, "--run-dir", run_dir, "--max-steps", 100000, "--workers", 2, "--every-steps", 10)
    wait_until(lambda: last_step(run_dir) >= 25, proc)
    proc.kill()
    finish(proc)
    code, out = finish(start(TINY, "--run-dir", run_dir, "--max-steps", last_step(run_dir) + 3))
    assert code == 0, out
    assert "resumed from" in out


def _supervised(run_dir, *args, resume_from=None, policy=None):
    """Launch tiny with the supervisor's environment and a real socketpair; returns (proc, our end)."""
    ours, theirs = socket.socketpair()
    env = job_env(**{protocol.ENV_RUN_DIR: run_dir, protocol.ENV_CONTROL_FD: theirs.fileno(),
                     protocol.ENV_ATTEMPT: 1})
    if resume_from is not None:
        env[protocol.ENV_RESUME_FROM] = str(resume_from)
    if policy is not None:
        env[protocol.ENV_CHECKPOINT_POLICY] = json.dumps(policy)
    proc = start(TINY, "--run-dir", "ignored-under-supervision", *args, env=env,
                 pass_fds=(theirs.fileno(),))
    theirs.close()
    return proc, ours


def _messages(sock) -> list[dict]:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return [protocol.decode(line) for line in data.splitlines() if line.strip()]


@pytest.mark.slow
def test_control_channel_stop_before_first_step_then_resume_and_supervisor_eof(tmp_path):
    run_dir = tmp_path / "run"
    proc, sock = _supervised(run_dir, "--max-steps", 100000, resume_from="")
    sock.sendall(protocol.encode(protocol.CHECKPOINT_AND_STOP, reason="spot notice"))  # before any step
    code, out = finish(proc)
    msgs = _messages(sock)
    assert code == 75, out
    types = [m["type"] for m in msgs]
    assert types == ["hello", "checkpoint", "stopping"], msgs
    assert msgs[0]["resumed_step"] is None and msgs[1]["step"] == 0 and msgs[1]["reason"] == "emergency"
    assert msgs[2]["reason"] == "spot notice"
    (ckpt,) = checkpoints(run_dir)
    assert ckpt.name == "step-000000000"

    # Resume from it (the supervisor's choice) under the spec's policy (every 7 steps instead of
    # the job's 50); ask for checkpoints off that grid (checkpoint_now) until one lands; vanish.
    proc, sock = _supervised(run_dir, "--max-steps", 100000, resume_from=ckpt,
                             policy={"every_steps": 7, "every_seconds": None, "keep_last": 3})
    lines, seen = protocol.LineBuffer(), []

    def saved(on_grid: bool) -> list[int]:
        return [m["step"] for m in seen if m["type"] == "checkpoint" and (m["step"] % 7 == 0) == on_grid]

    while not (saved(on_grid=False) and len(saved(on_grid=True)) >= 2):
        data = sock.recv(65536)
        assert data, f"the job closed the channel early: {seen}"
        new = [protocol.decode(line) for line in lines.feed(data)]
        seen += new
        if not saved(on_grid=False) and any(m["type"] == "heartbeat" for m in new):
            sock.sendall(protocol.encode(protocol.CHECKPOINT_NOW, reason="asked by the test"))
    sock.close()                                  # EOF: the supervisor is gone
    code, out = finish(proc)
    assert code == 75, out
    assert seen[0] == {"type": "hello", "pid": proc.pid, "resumed_step": 0, "times_checkpoints": True}
    assert saved(on_grid=True)[:2] == [7, 14]
    assert any(m["type"] == "heartbeat" and m["metrics"].get("loss") for m in seen)
    assert "supervisor gone" in out
    assert checkpoints(run_dir)[-1].name == f"step-{last_step(run_dir):09d}"


@pytest.mark.slow
def test_exception_in_training_step_shows_the_users_traceback_and_is_not_75(tmp_path):
    code, out = finish(start("failing_job", tmp_path / "run"))
    assert code not in (0, 75), out
    assert "Traceback (most recent call last)" in out
    assert 'failing_job.py", line' in out and "in training_step" in out
    assert "ValueError: boom in the user's training_step" in out
    assert [c.name for c in checkpoints(tmp_path / "run")] == ["step-000000002"]   # the good one stays


@pytest.mark.slow
def test_load_from_checkpoint_in_a_fresh_process(tmp_path):
    run_dir, out_file = tmp_path / "run", tmp_path / "out.pt"
    code, out = finish(start(TINY, "--run-dir", run_dir, "--max-steps", 20))
    assert code == 0, out
    script = (
        "import sys, torch\n"
        "from traind.jobs.examples.tiny import TinyClassifier\n"
        "m = TinyClassifier.load_from_checkpoint(sys.argv[1]).eval()\n"
        "o = TinyClassifier.load_from_checkpoint(sys.argv[1], dropout=0.0)\n"
        "x = torch.linspace(-3, 3, 32 * 5).reshape(5, 32)\n"
        "torch.save({'hp': m.hparams, 'hp_override': o.hparams, 'y': m(x).detach()}, sys.argv[2])\n")
    subprocess.run([sys.executable, "-c", script, str(run_dir), str(out_file)], cwd=REPO, env=job_env(),
                   check=True)
    got = torch.load(out_file, weights_only=True)
    from traind.jobs.engine.loading import load_state
    from traind.jobs.examples.tiny import TinyClassifier
    state = load_state(run_dir)
    assert got["hp"] == state["hyper_parameters"] == TinyClassifier().hparams
    assert got["hp_override"]["dropout"] == 0.0
    model = TinyClassifier(**state["hyper_parameters"])
    model.load_state_dict(state["state_dict"])
    x = torch.linspace(-3, 3, 32 * 5).reshape(5, 32)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)          # as the child (OMP_NUM_THREADS=1): another split of the matmul rounds differently
    try:
        assert_identical(model.eval()(x).detach(), got["y"], "outputs")
    finally:
        torch.set_num_threads(threads)
    with pytest.raises(RuntimeError, match="size mismatch"):      # strict by default
        TinyClassifier.load_from_checkpoint(run_dir, hidden=64)


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["16-mixed", "bf16"])
def test_mixed_precision_state_survives_resume(precision, tmp_path):
    args = ("--max-steps", 60, "--every-steps", 1000, "--precision", precision, "--accumulate", 2)
    straight = tmp_path / "straight"
    code, out = finish(start(TINY, "--run-dir", straight, *args))
    assert code == 0, out
    run_dir = tmp_path / "interrupted"
    proc = start(TINY, "--run-dir", run_dir, *args)
    wait_until(lambda: last_step(run_dir) >= 25, proc)
    sigterm_and_expect_75(proc, run_dir)
    code, out = finish(start(TINY, "--run-dir", run_dir, *args))
    assert code == 0, out
    state, _ = assert_same_training(straight, run_dir)
    if precision == "16-mixed":
        assert state["MixedPrecision"]["_growth_tracker"] == 60    # counted across the resume


@pytest.mark.slow
def test_own_loop_example_runs_and_resumes_exactly(tmp_path):
    def own_loop(run_dir, steps=150):
        return start_function("traind.jobs.examples.own_loop", "main", str(run_dir), steps)
    straight, run_dir = tmp_path / "straight", tmp_path / "interrupted"
    assert finish(own_loop(straight))[0] == 0
    proc = own_loop(run_dir)
    wait_until(lambda: last_step(run_dir) >= 60, proc)
    sigterm_and_expect_75(proc, run_dir)
    code, out = finish(own_loop(run_dir))
    assert code == 0 and "resumed from" in out, out
    assert_same_training(straight, run_dir, keys=("state_dict", "optimizer_states", "lr_schedulers"))


@pytest.mark.slow
def test_trainer_epochs_epoch_end_checkpoints_early_stopping_and_two_optimizers(tmp_path):
    run_dir = tmp_path / "run"
    code, out = finish(start("features_job", run_dir))
    assert code == 0, out
    per_epoch = 56                                  # 3584 training samples / 64
    assert [c.name for c in checkpoints(run_dir)] == [f"step-{per_epoch:09d}", f"step-{2 * per_epoch:09d}"]
    from traind.jobs.engine.loading import load_state
    state = load_state(run_dir)
    assert (state["global_step"], state["epoch"]) == (2 * per_epoch, 2)
    assert state["callbacks"]["EarlyStopping"] == {"best": state["callbacks"]["EarlyStopping"]["best"],
                                                   "wait": 1, "stopped_step": 2 * per_epoch}
    assert len(state["optimizer_states"]) == 2 and "best" in state["lr_schedulers"][0]
    assert state["data_position"] == {"epoch": 2, "shuffle_seed": 3, "batches_consumed": 0}


@pytest.mark.slow
def test_resuming_a_run_dir_of_another_model_is_one_line_naming_the_field(tmp_path):
    run_dir = tmp_path / "run"
    assert finish(start(TINY, "--run-dir", run_dir, "--max-steps", 5))[0] == 0
    code, out = finish(start_function("traind.jobs.examples.own_loop", "main", str(run_dir), 10))
    assert code == 2, out     # bad input: the supervisor does not retry what every attempt would repeat
    assert "Traceback" not in out, out
    (line,) = [l for l in out.splitlines() if l.startswith("traind: ") and "resumed" not in l]
    assert "step-000000005: field 'state_dict' does not fit this job (Error(s) in loading" in line


def test_run_dir_that_is_a_file_is_one_line_exit_2_and_the_file_is_kept(tmp_path):
    blocker = tmp_path / "run"
    blocker.write_text("keep me")
    code, out = finish(start(TINY, "--run-dir", blocker, "--max-steps", 5))
    assert code == 2 and "Traceback" not in out, out
    assert out.strip().splitlines() == [f"traind: {blocker}: cannot use as the run dir: File exists"]
    assert blocker.read_text() == "keep me"


@pytest.mark.parametrize("flag,value", [("--every-steps", "-1"), ("--accumulate", "0"), ("--max-steps", "-5"),
                                        ("--workers", "-1")])
def test_example_bad_flag_is_a_usage_error_not_a_traceback(tmp_path, flag, value):
    code, out = finish(start(TINY, "--run-dir", tmp_path / "run", flag, value))
    assert code == 2 and "Traceback" not in out, out
    assert f"argument {flag}: expected an integer >= " in out
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_periodic_checkpoints_do_not_block_training(tmp_path):
    """While a periodic save is in flight (held open 1 s on the writer thread), steps go on; a
    blocking periodic save would freeze the step count until its temp dir is committed."""
    run_dir = tmp_path / "run"
    proc = start(TINY, "--run-dir", run_dir, "--max-steps", 100000, "--every-steps", 20, hold_saves=1.0)
    wait_until(lambda: saving_now(run_dir), proc, interval=0.001)
    during = [last_step(run_dir)]
    while saving_now(run_dir) and proc.poll() is None:
        during.append(last_step(run_dir))
        time.sleep(0.005)
    assert during[-1] - during[0] >= 5, f"steps during the periodic save: {during[0]} -> {during[-1]}"
    sigterm_and_expect_75(proc, run_dir)


def test_resuming_a_checkpoint_of_another_program_is_one_line_exit_2(tmp_path):
    from traind.jobs.engine import CheckpointEngine
    run_dir = tmp_path / "run"
    store = CheckpointEngine(run_dir)
    store.save({"weights": torch.zeros(3)}, step=7, epoch=0)    # valid, but not a Session's state
    store.close()
    code, out = finish(start_function("traind.jobs.examples.own_loop", "main", str(run_dir), 10))
    assert code == 2 and "Traceback" not in out, out
    (line,) = [l for l in out.splitlines() if l.startswith("traind: ")]
    assert line.endswith("step-000000007: field 'global_step' is missing; not a checkpoint of a traind.Session or Trainer")
    assert [p.name for p in checkpoints(run_dir)] == ["step-000000007"]


@pytest.mark.slow
def test_the_checkpoint_a_run_resumed_from_is_never_pruned(tmp_path):
    """keep_last=1 (through $TRAIND_CHECKPOINT) and no validation metric, so only `protect` keeps
    the resume point while the resumed run commits newer checkpoints."""
    run_dir = tmp_path / "run"
    env = job_env(TRAIND_CHECKPOINT=json.dumps({"every_steps": 5, "keep_last": 1}))
    args = ("--run-dir", run_dir, "--val-every", 0)
    code, out = finish(start(TINY, *args, "--max-steps", 10, env=env))
    assert code == 0, out
    assert [c.name for c in checkpoints(run_dir)] == ["step-000000010"]
    code, out = finish(start(TINY, *args, "--max-steps", 30, env=env))
    assert code == 0 and "resumed from" in out, out
    assert [c.name for c in checkpoints(run_dir)] == ["step-000000010", "step-000000030"]
