"""A real two-node SLURM (tests/cluster/slurm2/start.sh): `traind slurm submit --nodes 2` runs one
supervisor per node, and the warning and a cancel reach both of them, gracefully.

The job is tests/cluster/slurm2/node_job.py (torch-free): it records its node, its supervisor and
the signals it gets, and exits 75 on SIGTERM. The job log has one line prefix per node (srun
--label: "0: ", "1: ").
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.cluster.helpers import wait_until
from tests.cluster.twonode import NODE_JOB

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

ENDED = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL")


def write_spec(tmp_path: Path, name: str, *, requeue: bool | str = False, seconds: float = 200) -> Path:
    out = tmp_path / "out"
    out.mkdir()
    spec = tmp_path / f"{name}.yaml"
    spec.write_text(json.dumps({
        "name": name, "run_dir": str(tmp_path / "run"),
        "command": [sys.executable, str(NODE_JOB), str(out), "--seconds", str(seconds)],
        "restart": {"max_restarts": 0}, "preemption": {"requeue": requeue, "grace_seconds": 10}}))
    return spec


def node_infos(tmp_path: Path) -> list[dict] | None:
    """Each node's record of itself (node-K.json), once both nodes wrote one."""
    found = sorted((tmp_path / "out").glob("node-*.json"))
    return [json.loads(p.read_text()) for p in found] if len(found) == 2 else None


def node_signals(tmp_path: Path, node: int) -> list[str]:
    path = tmp_path / "out" / f"node-{node}.signals"
    return [line.split()[0] for line in path.read_text().splitlines()] if path.exists() else []


def node_lines(log: str, node: int) -> list[str]:
    """What node NODE's supervisor and job wrote to the job log (srun --label)."""
    prefix = f"{node}: "
    return [line[len(prefix):] for line in log.splitlines() if line.startswith(prefix)]


def assert_one_supervisor_per_node(tmp_path: Path, log: str) -> None:
    infos = node_infos(tmp_path)
    assert infos is not None, "not both nodes ran the job"
    assert [(i["SLURM_NODEID"], i["SLURMD_NODENAME"]) for i in infos] == [("0", "n1"), ("1", "n2")]
    assert len({i["supervisor_pid"] for i in infos}) == 2
    for node, info in enumerate(infos):
        mine = node_lines(log, node)
        supervising = [line for line in mine if "supervising " in line]
        assert len(supervising) == 1, mine              # one supervisor on this node ...
        assert f"pid {info['supervisor_pid']})" in supervising[0]    # ... and it is the job's parent


def ended(slurm2, jid: str) -> str | None:
    state = slurm2.show(jid).get("JobState", "")
    return state if state in ENDED else None


def test_time_limit_warning_reaches_the_supervisor_on_each_node(slurm2, tmp_path):
    """--signal=USR1@LEAD (no B:) goes to both nodes' tasks: each supervisor stops its job."""
    spec = write_spec(tmp_path, "warned")
    jid = slurm2.submit(spec, "--nodes", "2", "--time", "1", "--lead", "50")   # USR1 10-40 s in
    wait_until(lambda: node_infos(tmp_path), 40, "both nodes to start the job")
    state = wait_until(lambda: ended(slurm2, jid), 75, "both nodes to stop on the warning")
    log = (tmp_path / "run" / f"slurm-{jid}.out").read_text()
    assert_one_supervisor_per_node(tmp_path, log)
    for node in (0, 1):
        mine = "\n".join(node_lines(log, node))
        assert "SIGUSR1: asked for an emergency checkpoint" in mine, log
        assert "preempted: stopped (SIGUSR1)" in mine and mine.rstrip().endswith("exit 75"), log
        got = node_signals(tmp_path, node)     # its supervisor's TERM last; SLURM's USR1 too, unless blocked
        assert got[-1:] == ["SIGTERM"] and set(got) <= {"SIGUSR1", "SIGTERM"}, got
    record = slurm2.show(jid)
    assert (state, record["ExitCode"], record["Restarts"]) == ("FAILED", "75:0", "0")
    assert record["RunTime"] < "00:00:55", record["RunTime"]     # stopped by the warning, not the limit


@pytest.mark.parametrize("how", ["scancel", "scancel --batch --signal=TERM"])
def test_a_cancel_stops_each_node_gracefully(slurm2, tmp_path, how):
    """Plain scancel (TERM to everything) and a TERM to the batch shell alone (passed on by it as
    `scancel --signal=TERM`): both supervisors stop their jobs themselves; srun SIGKILLs nothing."""
    spec = write_spec(tmp_path, "cancelled")
    jid = slurm2.submit(spec, "--nodes", "2", "--time", "5")
    wait_until(lambda: node_infos(tmp_path), 40, "both nodes to start the job")
    slurm2.run(*how.split(), jid)
    wait_until(lambda: ended(slurm2, jid), 40, "the job to end")
    log = (tmp_path / "run" / f"slurm-{jid}.out").read_text()
    assert_one_supervisor_per_node(tmp_path, log)
    for node in (0, 1):
        mine = "\n".join(node_lines(log, node))
        assert "SIGTERM" in node_signals(tmp_path, node), log
        assert "preempted: stopped (SIGTERM)" in mine and mine.rstrip().endswith("exit 75"), log
    assert "Killed" not in log and "task 0: Exited with exit code 75" in log, log
    if "--batch" in how:
        assert "SIGTERM to the batch shell: passing it on to every node (scancel --signal=TERM)" in log
    assert slurm2.show(jid)["Restarts"] == "0"


def test_one_requeue_for_the_whole_job(slurm2, tmp_path):
    """A warning stops both nodes; node 0's supervisor alone requeues the job, which reruns on both."""
    spec = write_spec(tmp_path, "requeued", requeue="auto")
    jid = slurm2.submit(spec, "--nodes", "2", "--time", "5")
    wait_until(lambda: node_infos(tmp_path), 40, "both nodes to start the job")
    slurm2.run("scancel", "--signal=USR1", jid)
    log_path = tmp_path / "run" / f"slurm-{jid}.out"
    rerun = "SLURM_RESTART_COUNT=1 (rerun after 1 requeue(s))"

    def both_rerun():
        log = log_path.read_text()
        return all(any(rerun in line for line in node_lines(log, node)) for node in (0, 1)) and log
    log = wait_until(both_rerun, 60, "the job to rerun on both nodes")
    first = log.split(rerun, 1)[0]
    assert [line for line in node_lines(first, 0) if "requeued SLURM job" in line] == [
        f"traind[requeued #1]: requeued SLURM job {jid} (scontrol requeue {jid})"], log
    assert not any("requeue of SLURM job" in line or "requeued SLURM job" in line
                   for line in node_lines(first, 1)), log                          # node 1 leaves it to node 0
    assert slurm2.show(jid)["Restarts"] == "1"
