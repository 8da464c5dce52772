"""Issue 12 on one node, 4 ranks (gloo): a stop reaches every rank at one step, each rank's shard
lands at that step, and the resumed group ends bit-identical to an uninterrupted run."""
import os
import signal
import sys

import pytest

from tests.jobs.jobhelpers import process_tree, signal_all
from ddphelpers import (assert_same_state, metrics, newest, rank_files, run, start, status, step_of, wait_for,
                        write_spec)
from traind.store import format as fmt

pytestmark = pytest.mark.slow


def test_sigterm_mid_epoch_stops_every_rank_at_one_step_and_the_resume_is_bit_identical(tmp_path, reference_run):
    spec = write_spec(tmp_path)
    run_dir, log = tmp_path / "ddp", tmp_path / "supervisor.log"
    sup = start(spec, log)
    wait_for(lambda: step_of(run_dir) >= 41, 120, "step 41 (epoch 1 is 32 steps: mid-epoch)")
    sup.send_signal(signal.SIGTERM)
    assert sup.wait(120) == 75, log.read_text()[-3000:]
    ckpt = newest(run_dir)
    man, _ = fmt.read_manifest(ckpt)
    assert man["reason"] == "emergency" and fmt.shard_world_size(man) == 4
    step = man["step"]
    assert 41 <= step < 120                             # a step after the signal, whichever
    # every rank's files are in the one manifest, and every rank's own state is at that step
    assert {fmt.rank_state_name(r) for r in range(4)} <= set(man["files"])
    assert {f"__{r}_0.distcp" for r in range(4)} <= set(man["files"])
    assert [s["global_step"] for s in rank_files(ckpt)] == [step] * 4
    assert [s["data_position"]["batches_consumed"] for s in rank_files(ckpt)] == [step % 32] * 4   # 32 an epoch
    assert status(run_dir)["state"] == "preempted"

    assert run(spec, log) == 0, log.read_text()[-3000:]
    assert_same_state(newest(run_dir), newest(reference_run))
    assert metrics(run_dir) == metrics(reference_run)


def _recording_stops(parent: int) -> list[int]:
    """The children of `parent` that catch SIGTERM (traind.jobs installed its recording handler)."""
    try:
        children = open(f"/proc/{parent}/task/{parent}/children").read().split()
    except OSError:
        return []
    out = []
    for pid in children:
        try:
            caught = [line for line in open(f"/proc/{pid}/status") if line.startswith("SigCgt:")]
        except OSError:
            continue
        if caught and int(caught[0].split()[1], 16) & (1 << (signal.SIGTERM - 1)):
            out.append(int(pid))
    return out


def test_a_group_stopped_before_its_first_step_resumes_bit_identical(tmp_path, reference_run):
    """Issue 22: stopped during start-up, the group has nothing to save (a step-0 checkpoint through
    DCP counted a fake optimizer step: every weight differed after the resume)."""
    spec = write_spec(tmp_path)
    run_dir, log = tmp_path / "ddp", tmp_path / "supervisor.log"
    sup = start(spec, log)
    wait_for(lambda: len(_recording_stops(sup.pid)) == 4, 60, "every rank records stop signals (imports begun)")
    assert step_of(run_dir) == 0
    sup.send_signal(signal.SIGTERM)
    assert sup.wait(120) == 75, log.read_text()[-3000:]
    first = log.read_text()

    assert run(spec, log) == 0, log.read_text()[-3000:]
    assert_same_state(newest(run_dir), newest(reference_run))
    assert metrics(run_dir) == metrics(reference_run)
    assert "stopped before the first step: nothing to save" in first, first[-3000:]




def test_sigterm_to_every_process_ranks_and_their_dataloader_workers_included_exits_75_bit_identical(tmp_path, reference_run):
    """Issue 22: `systemctl stop` (KillMode=control-group) and `scancel` signal the whole tree at once."""
    command = [sys.executable, "-m", "traind.jobs.examples.ddp", "--max-steps", "120", "--every-steps", "20",
               "--step-seconds", "0.02", "--workers", "1"]
    spec = write_spec(tmp_path, command=command)
    run_dir, log = tmp_path / "ddp", tmp_path / "supervisor.log"
    sup = start(spec, log)
    wait_for(lambda: step_of(run_dir) >= 30, 180, "step 30")
    tree = process_tree(sup.pid)
    assert len(tree) >= 1 + 4 + 4, tree                 # the supervisor, 4 ranks, a worker each
    signal_all(tree)
    assert sup.wait(120) == 75, log.read_text()[-3000:]
    man, _ = fmt.read_manifest(newest(run_dir))
    assert man["reason"] == "emergency" and man["step"] >= 30, man
    assert "killed by signal" not in log.read_text() and "Traceback" not in log.read_text(), log.read_text()[-3000:]

    assert run(spec, log) == 0, log.read_text()[-3000:]
    assert_same_state(newest(run_dir), newest(reference_run))
    assert metrics(run_dir) == metrics(reference_run)


def test_a_rank_killed_during_start_up_then_the_group_stopped_resumes_bit_identical(tmp_path, reference_run):
    """Issue 22: the restarted group is stopped in its own start-up; nothing of either start-up counts."""
    spec = write_spec(tmp_path)
    run_dir, log = tmp_path / "ddp", tmp_path / "supervisor.log"
    sup = start(spec, log)
    wait_for(lambda: len(_recording_stops(sup.pid)) == 4, 60, "every rank records stop signals (imports begun)")
    assert step_of(run_dir) == 0
    first = _recording_stops(sup.pid)
    os.kill(first[1], signal.SIGKILL)
    wait_for(lambda: status(run_dir).get("attempt") == 2 and len(set(_recording_stops(sup.pid)) - set(first)) == 4,
             120, "the restarted group's ranks record stop signals")
    sup.send_signal(signal.SIGTERM)
    assert sup.wait(120) == 75, log.read_text()[-3000:]
    assert run(spec, log) == 0, log.read_text()[-3000:]
    assert_same_state(newest(run_dir), newest(reference_run))
    assert metrics(run_dir) == metrics(reference_run)
