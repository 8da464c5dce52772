"""The Lightning example under `traind run`, as real processes with real signals (issue 11's
must-shows): SIGKILLed at random moments and SIGTERMed, it ends bit-identical to an uninterrupted
run; SIGTERM to the job itself (Lightning's handler in place) is one emergency checkpoint and 75;
without the addition, SIGTERM to `traind run` still ends in 75 and a rerun continues from Lightning's own
last.ckpt, which `traind ckpt inspect` reads and `traind ckpt import` turns into a resume point;
DDP on 2 CPU ranks stops with one emergency checkpoint and no hang."""
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import yaml

pytest.importorskip("pytorch_lightning")

from traind import store as ck  # noqa: E402
from traind.fs.locks import pid_alive  # noqa: E402
from traind.supervisor.runfiles import lock_holder, read_events, read_status  # noqa: E402
from traind.supervisor.states import Facts, State, Trigger, transition  # noqa: E402

from jobhelpers import REPO, assert_identical, final_state, last_step, metrics  # noqa: E402

JOB = [sys.executable, "-m", "traind.jobs.examples.lightning_job"]
ENV = {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "PYTHONWARNINGS": "ignore"}


def spec(tmp_path, name, run_dir, args, **sections) -> str:
    body = {"name": name, "command": [*JOB, *map(str, args)], "workdir": str(REPO), "run_dir": str(run_dir),
            "env": ENV, "restart": {"max_restarts": 30, "backoff": {"initial_seconds": 0.05, "max_seconds": 0.2}},
            **sections}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(body))
    return str(path)


def traind(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "traind", *map(str, args)], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, **ENV})


def wait_for(predicate, proc, timeout=120, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc.poll() is not None:
            raise AssertionError(f"traind exited {proc.returncode} before {what}:\n{proc.communicate()[0][-4000:]}")
        time.sleep(0.02)
    proc.kill()
    raise AssertionError(f"timed out waiting for {what}:\n{proc.communicate()[0][-4000:]}")


def finish(proc, timeout=240) -> tuple[int, str]:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError(f"traind run did not end in {timeout} s:\n{proc.communicate()[0][-4000:]}")
    return proc.returncode, out


def new_child(run_dir, seen: set):
    pid = lock_holder(run_dir).get("child_pid")
    return pid if pid and pid not in seen and pid_alive(pid) else 0


def running(run_dir, pid) -> bool:
    status = read_status(run_dir) or {}
    return status.get("state") == "running" and status.get("pid") == pid


def newest(run_dir) -> ck.CheckpointInfo:
    return ck.list_checkpoints(run_dir / "checkpoints")[0]


def test_a_silent_child_exiting_0_after_a_stop_request_is_preempted_not_succeeded():
    silent = Facts(exit_code=0, stop_requested=True, silent=True)
    assert transition(State.STOPPING, Trigger.CHILD_EXITED, silent).target is State.PREEMPTED
    spoke = Facts(exit_code=0, stop_requested=True)        # it said it finished: believe it
    assert transition(State.STOPPING, Trigger.CHILD_EXITED, spoke).target is State.SUCCEEDED
    assert transition(State.RUNNING, Trigger.CHILD_EXITED, Facts(exit_code=0, silent=True)).target \
        is State.SUCCEEDED


@pytest.mark.slow
def test_killed_ten_times_and_stopped_twice_it_ends_bit_identical(tmp_path):
    steps, kills, rng = 600, 10, random.Random(11)
    alone = tmp_path / "alone"
    subprocess.run([*JOB, "--run-dir", str(alone), "--max-steps", str(steps), "--every-steps", "40"], cwd=REPO,
                   env={**os.environ, **ENV}, check=True, capture_output=True, timeout=240)
    run_dir = tmp_path / "run"
    path = spec(tmp_path, "lit", run_dir, ["--max-steps", steps, "--every-steps", 40, "--step-seconds", 0.01],
                checkpoint={"every_steps": 15})
    p, seen, stops = traind("run", path), set(), 0
    for i in range(kills + 2):
        child = wait_for(lambda: new_child(run_dir, seen), p, what="a new child")
        seen.add(child)
        wait_for(lambda: running(run_dir, child), p, what="the child's hello")   # metrics cut back to its start
        start = [e for e in read_events(run_dir) if e["event"] == "spawned"][-1]["checkpoint_step"] or 0
        wait_for(lambda: last_step(run_dir) > start and (i or ck.list_checkpoints(run_dir / "checkpoints")),
                 p, what="a step of this attempt (and a first checkpoint)")
        time.sleep(rng.uniform(0.0, 0.6))         # a random moment: mid-epoch, in a save, at a batch end
        assert last_step(run_dir) < steps - 30, "the run got too close to its end to interrupt it"
        if i in (3, 8):                           # SIGTERM to traind run: emergency checkpoint, exit 75
            p.send_signal(signal.SIGTERM)
            code, out = finish(p)
            assert code == 75, out[-3000:]
            acted = last_step(run_dir)
            info = newest(run_dir)
            assert (info.step, info.reason, info.valid) == (acted, "emergency", True), out[-3000:]
            stops += 1
            p = traind("run", path)
        else:
            os.kill(child, signal.SIGKILL)
    code, out = finish(p)
    assert code == 0 and stops == 2, out[-3000:]
    spawned = [e for e in read_events(run_dir) if e["event"] == "spawned"]
    assert len(spawned) == kills + 3 and all(e["checkpoint_step"] for e in spawned[1:]), spawned
    assert metrics(run_dir) == metrics(alone)
    a, b = final_state(alone), final_state(run_dir)
    for key in ("state_dict", "optimizer_states", "lr_schedulers", "global_step", "epoch", "data_position"):
        assert_identical(a[key], b[key], key)


@pytest.mark.slow
def test_sigterm_to_the_job_itself_is_one_emergency_checkpoint_and_75_not_lightnings_exit_0(tmp_path):
    """No supervisor: Lightning's own SIGTERM handler is in place for fit; ours acts instead."""
    run_dir = tmp_path / "alone"
    job = subprocess.Popen([*JOB, "--run-dir", str(run_dir), "--max-steps", "400", "--step-seconds", "0.02"],
                           cwd=REPO, env={**os.environ, **ENV}, text=True, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT)
    wait_for(lambda: last_step(run_dir) >= 5, job, what="5 steps")
    job.send_signal(signal.SIGTERM)
    job.send_signal(signal.SIGTERM)             # a second one changes nothing
    code, out = finish(job, timeout=60)
    assert code == 75, out[-3000:]
    infos = ck.list_checkpoints(run_dir / "checkpoints")
    assert [(i.step, i.reason) for i in infos if i.reason == "emergency"] == [(last_step(run_dir), "emergency")]
    assert "SIGTERMException" not in out


@pytest.mark.slow
def test_plain_lightning_stops_with_75_and_its_ckpt_is_inspected_imported_and_resumed(tmp_path):
    run_dir = tmp_path / "plain"
    path = spec(tmp_path, "plain", run_dir, ["--no-traind", "--max-steps", 200, "--every-steps", 20,
                                             "--step-seconds", 0.02])
    p = traind("run", path)
    status = wait_for(lambda: read_status(run_dir), p, what="status.json of the first attempt")
    assert status["state"] == "starting" and status["attempt"] == 1
    wait_for(lambda: (run_dir / "lightning" / "last.ckpt").exists(), p, what="Lightning's last.ckpt")
    p.send_signal(signal.SIGTERM)
    code, out = finish(p)
    assert code == 75, out[-3000:]
    assert "stopping -> preempted" in out and read_status(run_dir)["state"] == "preempted"
    code, out = finish(traind("run", path))
    assert code == 0 and "Restored all states from the checkpoint at" in out and "last.ckpt" in out, out[-3000:]

    last = run_dir / "lightning" / "last.ckpt"
    shown = subprocess.run([sys.executable, "-m", "traind", "ckpt", "inspect", str(last), "--json"], cwd=REPO,
                           capture_output=True, text=True, env={**os.environ, **ENV})
    summary = json.loads(shown.stdout)
    assert shown.returncode == 0 and summary["kind"] == "Lightning checkpoint" and summary["global_step"] == 200
    assert summary["hyper_parameters"]["hidden"] == 128 and summary["verified"] is False
    imported = tmp_path / "imported"
    done = subprocess.run([sys.executable, "-m", "traind", "ckpt", "import", str(last), str(imported)], cwd=REPO,
                          capture_output=True, text=True, env={**os.environ, **ENV})
    assert done.returncode == 0, done.stdout + done.stderr
    info = ck.verify(imported / "checkpoints" / ck.step_dir_name(200))
    assert info.valid and info.step == 200
    path = spec(tmp_path, "imported", imported, ["--max-steps", 230])
    code, out = finish(traind("run", path))
    assert code == 0 and "resuming from step 200" in out, out[-3000:]
    assert [r["step"] for r in metrics(imported)] == list(range(201, 231))


@pytest.mark.slow
def test_ddp_on_two_cpu_ranks_stops_with_one_emergency_checkpoint_and_resumes(tmp_path):
    run_dir = tmp_path / "ddp"
    path = spec(tmp_path, "ddp", run_dir, ["--devices", 2, "--max-steps", 120, "--every-steps", 50,
                                           "--step-seconds", 0.03], preemption={"grace_seconds": 60})
    p = traind("run", path)
    wait_for(lambda: last_step(run_dir) >= 20, p, timeout=180, what="20 steps on 2 ranks")
    asked = time.monotonic()
    p.send_signal(signal.SIGTERM)
    code, out = finish(p, timeout=60)
    assert code == 75 and time.monotonic() - asked < 30, out[-3000:]    # no hang: well inside the grace
    emergencies = [i for i in ck.list_checkpoints(run_dir / "checkpoints") if i.reason == "emergency"]
    assert len(emergencies) == 1 and emergencies[0].step == last_step(run_dir), out[-3000:]
    code, out = finish(traind("run", path))
    assert code == 0, out[-3000:]
    assert [r["step"] for r in metrics(run_dir)] == list(range(1, 121))
    assert final_state(run_dir)["global_step"] == 120
