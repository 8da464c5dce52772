"""Issue 12 under a real two-node SLURM (tests/cluster/slurm2): `traind slurm submit --nodes 2` runs
the ddp example with one supervisor per node, 2 ranks each (world size 4, as the reference run).

The time-limit warning (--signal=USR1@LEAD) and `scancel --signal=TERM` reach both supervisors:
every rank stops at one step, node 0's supervisor alone requeues the job, the rerun resumes from
that emergency checkpoint and ends bit-identical to the uninterrupted run. A SIGKILLed supervisor
on node 1 leaves no rank of node 0 hanging.

Periodic checkpoints are off (--every-steps 0): the emergency checkpoint is the one resume point,
and a stop can never land on a step that a periodic save already made durable. The first run is
paced (PACED s/step) so that it cannot finish before the stop; the spec is rewritten unpaced once
both supervisors have read it, so the requeued run (which reads it again) is quick: SLURM sends a
requeued job its warning again, and the rerun must be done before then. The pacing changes no result.
"""
import os
import re
import signal
import time

import pytest

from ddphelpers import (alive, assert_same_state, metrics, newest, rank_files, rank_pids, step_of, wait_for,
                        write_spec)
from tests.cluster.helpers import wait_until
from traind.store import format as fmt

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

PACED = 0.7         # s/step: 120 steps take > 84 s, past the latest warning below
TIME, LEAD = "2", 50     # USR1 between 40 and 70 s after the start (SLURM checks on a 30 s tick)
ENDED = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL")
RUN_START = re.compile(r"^(?=\[traind slurm\] \d{4}-\S+ job \d+ on )", re.M)   # the batch shell's first line


def _spec(tmp_path, step_seconds):
    """The ddp example, 2 ranks per node (--nodes 2 sets nnodes), no periodic checkpoints."""
    return write_spec(tmp_path, nproc=2, step_seconds=step_seconds, every_steps=0, checkpoint={"every_steps": None},
                      preemption={"requeue": "auto"})


def _runs(log_path) -> list[str]:
    """The job log, one part per run of the batch script (the first, then each rerun after a requeue)."""
    text = log_path.read_text() if log_path.exists() else ""
    return [part for part in RUN_START.split(text) if part]


def _node(text: str, node: int) -> list[str]:
    """What node NODE's supervisor and ranks wrote (srun --label)."""
    return [line[3:] for line in text.splitlines() if line.startswith(f"{node}: ")]


def _said(text: str, node: int, pattern: str) -> list[str]:
    return [line for line in _node(text, node) if re.search(pattern, line)]


def _both_nodes(log_path, run: int, pattern: str):
    """Run RUN's log once each node's supervisor has said PATTERN, else None."""
    runs = _runs(log_path)
    text = runs[run] if len(runs) > run else ""
    return text if all(_said(text, node, pattern) for node in (0, 1)) else None


def _ended(slurm2, jid):
    record = slurm2.show(jid)
    return record if record.get("JobState") in ENDED else None


def _stopped_at_one_step(run_dir, text: str, trigger: str) -> int:
    """Each node's supervisor stopped on TRIGGER with the one emergency checkpoint every rank is in."""
    steps = set()
    for node in (0, 1):
        assert len(_said(text, node, r"supervising ")) == 1, text            # one supervisor per node
        assert _said(text, node, rf"{trigger}: asked the child for an emergency checkpoint"), text
        found = _said(text, node, rf"preempted: stopped \({trigger}\): emergency checkpoint committed at step \d+; "
                                  r"exit 75$")
        assert len(found) == 1, text
        steps.add(int(re.search(r"at step (\d+)", found[0]).group(1)))
    assert len(steps) == 1, text
    step = steps.pop()
    ranks = {int(m.group(1)) for m in re.finditer(
        rf"\[rank (\d)\] stop requested \({trigger}\): emergency checkpoint at step {step}$", text, re.M)}
    assert ranks == {0, 1, 2, 3}, text
    ckpt = newest(run_dir)
    man, _ = fmt.read_manifest(ckpt)
    assert (man["reason"], man["step"], fmt.shard_world_size(man)) == ("emergency", step, 4), man
    assert [s["global_step"] for s in rank_files(ckpt)] == [step] * 4
    assert 0 < step < 120
    return step


def _one_requeue_by_node_0(text: str, jid: str) -> None:
    wanted = f"traind[ddp #1]: requeued SLURM job {jid} (scontrol requeue {jid})"
    assert _said(text, 0, r"requeued SLURM job") == [wanted], text
    assert not _said(text, 1, r"requeue"), text                          # node 1 leaves it to node 0


def _finished_from(run_dir, reference_run, text: str, step: int) -> None:
    """The rerun: both nodes resume from the emergency checkpoint, and the job ends as the reference did."""
    for node in (0, 1):
        assert _said(text, node, r"SLURM_RESTART_COUNT=1 \(rerun after 1 requeue\(s\)\)"), text
        assert _said(text, node, rf"attempt 2: started pid \d+, resuming from step {step} "), text
        assert _node(text, node)[-1].endswith("exit 0"), text
    said = "\n".join(_node(text, 0) + _node(text, 1))
    assert not re.search(r"SIGUSR1|SIGTERM|stop requested|requeued SLURM", said), text
    assert_same_state(newest(run_dir), newest(reference_run))
    assert metrics(run_dir) == metrics(reference_run)


def _submit_paced(slurm2, tmp_path, *options) -> tuple[str, object]:
    """Submit the paced job; once both supervisors have read the spec, rewrite it unpaced for the rerun."""
    jid = slurm2.submit(_spec(tmp_path, PACED), "--nodes", "2", *options)
    log_path = tmp_path / "ddp" / f"slurm-{jid}.out"
    wait_until(lambda: _both_nodes(log_path, 0, r"supervising "), 60, "a supervisor on each node")
    _spec(tmp_path, 0)
    return jid, log_path


def test_time_limit_warning_stops_both_nodes_at_one_step_and_the_requeued_job_ends_bit_identical(
        slurm2, tmp_path, reference_run):
    started, run_dir = time.monotonic(), tmp_path / "ddp"
    jid, log_path = _submit_paced(slurm2, tmp_path, "--time", TIME, "--lead", str(LEAD))
    first = wait_until(lambda: _both_nodes(log_path, 0, r"preempted: stopped"), 120, "both nodes to stop")
    stopped = time.monotonic()
    step = _stopped_at_one_step(run_dir, first, "SIGUSR1")
    assert _said(first, 0, rf"SLURM job {jid} stopped by time_limit: \d+ s left before the time limit"), first
    _one_requeue_by_node_0(first, jid)
    record = wait_until(lambda: _ended(slurm2, jid), 150, "the requeued job to end")
    assert (record["JobState"], record["ExitCode"], record["Restarts"]) == ("COMPLETED", "0:0", "1"), record
    runs = _runs(log_path)
    assert len(runs) == 2, runs
    _finished_from(run_dir, reference_run, runs[1], step)
    print(f"\nwarned run stopped at step {step} after {stopped - started:.0f} s; "
          f"job done after {time.monotonic() - started:.0f} s")


def test_scancel_signal_term_stops_both_nodes_at_one_step_and_the_job_requeues_once(slurm2, tmp_path, reference_run):
    run_dir = tmp_path / "ddp"
    jid, log_path = _submit_paced(slurm2, tmp_path, "--time", "10")
    wait_until(lambda: step_of(run_dir) >= 10, 60, "step 10")
    slurm2.run("scancel", "--signal=TERM", jid)        # a step signal: every node's supervisor gets TERM
    first = wait_until(lambda: _both_nodes(log_path, 0, r"preempted: stopped"), 60, "both nodes to stop")
    step = _stopped_at_one_step(run_dir, first, "SIGTERM")
    assert _said(first, 0, rf"SLURM job {jid} stopped by unknown: "), first     # not a cancel of the job
    _one_requeue_by_node_0(first, jid)
    record = wait_until(lambda: _ended(slurm2, jid), 120, "the requeued job to end")
    assert (record["JobState"], record["ExitCode"], record["Restarts"]) == ("COMPLETED", "0:0", "1"), record
    _finished_from(run_dir, reference_run, _runs(log_path)[1], step)


def _job_processes(jid: str, node: int) -> dict[int, list[str]]:
    """{pid: argv} of the processes of SLURM job JID on node NODE (by SLURM_JOB_ID and SLURM_NODEID in
    their environment, as tests/cluster/slurm2/stop.sh finds a job's leftovers)."""
    wanted = {f"SLURM_JOB_ID={jid}".encode(), f"SLURM_NODEID={node}".encode()}
    found = {}
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                environ = set(f.read().split(b"\0"))
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
        except (OSError, ValueError):
            continue
        if wanted <= environ and alive(int(entry)):
            found[int(entry)] = argv
    return found


def _supervisor_pid(jid: str, node: int) -> int:
    """The `traind run` of node NODE (its ranks have the same SLURM variables, but run the job)."""
    pids = [pid for pid, argv in _job_processes(jid, node).items() if argv[1:4] == ["-m", "traind", "run"]]
    assert len(pids) == 1, _job_processes(jid, node)
    return pids[0]


def test_sigkill_of_node_1s_supervisor_leaves_no_rank_of_node_0_hanging(slurm2, tmp_path):
    run_dir = tmp_path / "ddp"
    node_dirs = [run_dir, run_dir / "nodes" / "node-1"]
    jid, log_path = _submit_paced(slurm2, tmp_path, "--time", "10")
    wait_until(lambda: step_of(run_dir) >= 10 and all(len(rank_pids(d)) == 2 for d in node_dirs), 60, "step 10")
    victim = _supervisor_pid(jid, 1)
    assert _said(_runs(log_path)[0], 1, rf"supervising .*, pid {victim}\)$")
    firsts = rank_pids(node_dirs[0]) + rank_pids(node_dirs[1])
    started = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    # node 1's ranks read end of file on their channel: the group agrees to stop, every rank saves
    wait_for(lambda: not any(alive(p) for p in firsts), 60, "every rank of the first attempt gone")
    gone = time.monotonic() - started
    ckpt = newest(run_dir)
    man, _ = fmt.read_manifest(ckpt)
    assert man["reason"] == "emergency" and [s["global_step"] for s in rank_files(ckpt)] == [man["step"]] * 4
    assert _supervisor_pid(jid, 0)                    # node 0's supervisor lives on (it waits for node 1)
    print(f"\nnode 1's supervisor SIGKILLed: all 4 ranks gone after {gone:.1f} s, checkpoint at step {man['step']}")


def test_a_warning_after_the_final_checkpoint_ends_the_job_without_a_requeue(slurm2, tmp_path):
    """The time-limit warning may come while the ranks exit after their last step (seen with a rerun
    that ended just before it): the job is done, so it must end COMPLETED with no requeue."""
    run_dir = tmp_path / "ddp"
    jid = slurm2.submit(_spec(tmp_path, 0.05), "--nodes", "2", "--time", "10")
    rank_0 = run_dir / "logs" / "attempt-1.log"
    wait_until(lambda: rank_0.exists() and "[rank 0] finished at step 120" in rank_0.read_text(), 120,
               "rank 0's last step", every=0.02)
    slurm2.run("scancel", "--signal=USR1", jid)   # as the warning does: to every process of the step
    record = wait_until(lambda: _ended(slurm2, jid), 120, "the job to end")
    first = _runs(run_dir / f"slurm-{jid}.out")[0]
    for node in (0, 1):
        assert _node(first, node)[-1].endswith("exit 0"), f"node {node} did not succeed:\n{first}"
    assert (record["JobState"], record["Restarts"]) == ("COMPLETED", "0"), first
