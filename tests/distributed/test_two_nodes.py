"""Issue 12, two nodes: two supervisors (node ranks 0 and 1, 2 ranks each) sharing one run dir on
this host, rendezvous on 127.0.0.1. A stop on one node stops every rank at one step; a node whose
supervisor is SIGKILLed leaves no rank hanging, and the group comes back when that node's
supervisor does; both end bit-identical to the uninterrupted 4-rank run."""
import signal
import socket
import time

import pytest

from ddphelpers import (alive, assert_same_state, metrics, newest, rank_files, rank_pids, start, status, step_of,
                        wait_for, write_spec)
from traind.store import format as fmt

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_nodes(tmp_path):
    port, run_dir = _free_port(), tmp_path / "ddp"
    specs = [write_spec(tmp_path, name=f"node{k}", run_dir=run_dir, nproc=2, step_seconds=0.03,
                        distributed={"nnodes": 2, "node_rank": k, "master_addr": "127.0.0.1", "master_port": port})
             for k in (0, 1)]
    return run_dir, specs, [run_dir, run_dir / "nodes" / "node-1"]


def _one_step_on_every_rank(run_dir):
    ckpt = newest(run_dir)
    man, _ = fmt.read_manifest(ckpt)
    steps = [s["global_step"] for s in rank_files(ckpt)]
    assert man["reason"] == "emergency" and steps == [man["step"]] * 4, (man["reason"], steps)
    return man["step"]


def _finish(sups, logs, timeout=300):
    for sup, log in zip(sups, logs):
        assert sup.wait(timeout) == 0, log.read_text()[-3000:]


def test_sigterm_to_one_node_stops_both_at_one_step_and_the_group_resumes_bit_identical(tmp_path, reference_run):
    run_dir, specs, node_dirs = _two_nodes(tmp_path)
    logs = [tmp_path / f"node{k}.log" for k in (0, 1)]
    sups = [start(specs[k], logs[k]) for k in (0, 1)]
    try:
        wait_for(lambda: step_of(node_dirs[0]) >= 41, 120, "step 41")
        sups[1].send_signal(signal.SIGTERM)
        assert sups[1].wait(120) == 75, logs[1].read_text()[-3000:]
        step = _one_step_on_every_rank(run_dir)
        # node 0's ranks stopped with node 1's (75, unasked): node 0 restarts them to wait for node 1
        wait_for(lambda: status(node_dirs[0]).get("attempt") == 2, 60, "node 0 restarting its ranks")
        assert "another rank of the group was asked to stop" in (node_dirs[0] / "logs" / "attempt-1.log").read_text()
        sups[1] = start(specs[1], logs[1])          # the node comes back (a requeue, a replacement)
        _finish(sups, logs)
    finally:
        for sup in sups:
            if sup.poll() is None:
                sup.kill()
    assert f"resuming from step {step}" in logs[1].read_text()
    assert_same_state(newest(run_dir), newest(reference_run))
    assert metrics(run_dir) == metrics(reference_run)


def test_sigkill_of_one_nodes_supervisor_leaves_no_rank_hanging_and_the_group_restarts(tmp_path, reference_run):
    run_dir, specs, node_dirs = _two_nodes(tmp_path)
    logs = [tmp_path / f"node{k}.log" for k in (0, 1)]
    sups = [start(specs[k], logs[k]) for k in (0, 1)]
    try:
        wait_for(lambda: step_of(node_dirs[0]) >= 41 and len(rank_pids(node_dirs[1])) == 2, 120, "step 41")
        orphans = rank_pids(node_dirs[1])
        firsts = rank_pids(node_dirs[0])
        sups[1].kill()
        sups[1].wait(10)
        # node 1's ranks read end of file on their channel: the group agrees to stop, every rank saves
        wait_for(lambda: not any(alive(p) for p in orphans + firsts), 60, "every rank of the first attempt gone")
        _one_step_on_every_rank(run_dir)
        time.sleep(1)
        sups[1] = start(specs[1], logs[1])
        _finish(sups, logs)
    finally:
        for sup in sups:
            if sup.poll() is None:
                sup.kill()
    assert_same_state(newest(run_dir), newest(reference_run))
