"""Issue 12, the torch-free half: the `distributed:` spec section, where a node's ranks sit
(torchrun's variables, SLURM's node id and node list), and the group's exit and hang rules, on
plain values and on the scripted fake OS."""
import signal
from pathlib import Path

import pytest

from traind.contract.errors import UsageError
from traind.supervisor import distributed
from traind.supervisor.group import DONE, KILL_REST, WAIT, RankGroup
from traind.supervisor.osproc import ChildExited, ChildMessage, ExitStatus, SignalArrived
from traind.supervisor.runfiles import read_status
from traind.supervisor.spec import validate
from traind.supervisor.states import State

from .fakeos import FakeOS
from .test_loop_fake import run


def spec(**dist):
    return validate({"name": "d", "command": ["job"], "distributed": dist}, Path("/tmp/s.yaml"))


@pytest.mark.parametrize("dist, field", [
    ({"nproc_per_node": 0}, "distributed.nproc_per_node"), ({"nnodes": "two"}, "distributed.nnodes"),
    ({"nnodes": 2, "node_rank": 2}, "distributed.node_rank"), ({"master_port": 70000}, "distributed.master_port"),
    ({"ranks": 4}, "distributed.ranks: unknown field"), ({"exit_timeout_seconds": 0}, "distributed.exit_timeout_seconds"),
])
def test_bad_distributed_fields_are_one_line_errors_naming_the_field(dist, field):
    with pytest.raises(UsageError) as err:
        spec(**dist)
    assert field in str(err.value) and "\n" not in str(err.value)


def test_a_warm_spare_is_refused_for_a_group():
    with pytest.raises(UsageError, match="restart.warm_spare"):
        validate({"name": "d", "command": ["job"], "distributed": {}, "restart": {"warm_spare": True}},
                 Path("/tmp/s.yaml"))


def test_rank_environment_is_torchruns_contract_for_each_local_rank():
    p = distributed.place(spec(nproc_per_node=2, nnodes=2, node_rank=1, master_addr="n1", master_port=29400).distributed,
                          "job", environ={})
    envs = p.rank_envs(attempt=3, max_restarts=10)
    assert [e["RANK"] for e in envs] == ["2", "3"] and [e["LOCAL_RANK"] for e in envs] == ["0", "1"]
    assert {e["WORLD_SIZE"] for e in envs} == {"4"} and {e["GROUP_RANK"] for e in envs} == {"1"}
    assert envs[0]["MASTER_ADDR"] == "n1" and envs[0]["MASTER_PORT"] == "29400"
    assert envs[0]["TORCHELASTIC_RESTART_COUNT"] == "2" and envs[0]["LOCAL_WORLD_SIZE"] == "2"
    assert p.node_dir(Path("/r")) == Path("/r/nodes/node-1")


def test_node_rank_master_and_port_come_from_slurm_or_fail_clearly():
    d = spec(nproc_per_node=1, nnodes=2).distributed
    p = distributed.place(d, "job", environ={"SLURM_NODEID": "1", "SLURM_JOB_NODELIST": "gpu[07-08]",
                                              "SLURM_JOB_ID": "123"})
    assert (p.node_rank, p.master_addr, p.fixed_port, p.run_id) == (1, "gpu07", 20123, "123")
    with pytest.raises(UsageError, match="SLURM_NODEID"):
        distributed.place(d, "job", environ={})
    with pytest.raises(UsageError, match="master_port"):
        distributed.place(d, "job", environ={"SLURM_NODEID": "0"})
    one = distributed.place(spec(nproc_per_node=2).distributed, "job", environ={})
    assert one.master_addr == "127.0.0.1" and one.fixed_port is None
    assert 0 < int(one.rank_envs(1, 0)[0]["MASTER_PORT"]) < 65536


@pytest.mark.parametrize("nodelist, first", [("n1,n2", "n1"), ("gpu[07-12,20]", "gpu07"), ("a[1-2]-ib", "a1-ib"),
                                             ("node5", "node5"), ("", None)])
def test_first_host_of_a_slurm_node_list(nodelist, first):
    assert distributed.first_host(nodelist) == first


def test_a_failed_rank_kills_the_rest_and_is_the_groups_status():
    g = RankGroup(3, exit_timeout=10)
    assert g.exited(1, ExitStatus(None, signal.SIGKILL), now=0) == KILL_REST
    assert g.exited(0, ExitStatus(None, signal.SIGKILL), now=0.1) == WAIT
    assert g.exited(2, ExitStatus(1), now=0.1) == DONE
    status, why = g.status()
    assert status.signal == signal.SIGKILL and why.startswith("rank 1 killed by SIGKILL")


def test_clean_exits_give_the_others_exit_timeout_then_they_are_killed():
    g = RankGroup(2, exit_timeout=10)
    assert g.exited(0, ExitStatus(75), now=5) == WAIT and g.kill_at == 15
    assert not g.stragglers_overdue(14) and g.stragglers_overdue(15)
    assert g.exited(1, ExitStatus(None, signal.SIGKILL), now=15.1) == DONE
    assert g.status()[1] == "rank 1 did not exit within 10s of the others"
    both = RankGroup(2, exit_timeout=10)
    both.exited(0, ExitStatus(75), now=0)
    assert both.exited(1, ExitStatus(0), now=1) == DONE and both.status() == (ExitStatus(75), None)
    assert both.kill_at is None


def test_the_quietest_rank_decides_the_hang_and_a_silent_rank_counts_from_the_first_message():
    g = RankGroup(2, exit_timeout=10)
    assert g.quiet_since() is None
    g.heard(0, 5.0)
    assert g.quiet_since() == 5.0          # rank 1 has not spoken: counts from rank 0's first message
    g.heard(1, 6.0)
    g.heard(0, 9.0)
    assert g.quiet_since() == 6.0


def test_supervisor_kills_the_group_when_one_rank_crashes_and_restarts_it(tmp_path):
    def on_spawn(n):
        events = [(0.1, ChildMessage({"type": "hello", "pid": 10 + r}, r)) for r in range(2)]
        if n == 1:
            return events + [(1.0, ChildExited(11, ExitStatus(1), 1))]
        return events + [(1.0, ChildExited(10, ExitStatus(0), 0)), (1.2, ChildExited(11, ExitStatus(0), 1))]
    fake = FakeOS(on_spawn=on_spawn, on_signal={signal.SIGKILL: [(0.01, ChildExited(10, ExitStatus(None, 9), 0))]})
    sup, result, lines = run(tmp_path, fake, distributed={"nproc_per_node": 2})
    assert result.state is State.SUCCEEDED and len(fake.spawns) == 2
    assert (1.0, signal.SIGKILL) in fake.signals
    assert [e["RANK"] for e in fake.rank_envs] == ["0", "1"]
    assert any("rank 1 exit code 1: SIGKILL to the other ranks" in line for line in lines)
    status = read_status(tmp_path / "run")
    assert [r["rank"] for r in status["ranks"]] == [0, 1] and status["ranks"][1]["pid"] == 11
    assert "rank 1 exit code 1" in (status["last_failure"]["reason"] or "")


def test_a_rank_killed_by_the_stop_signal_is_the_group_stopping_not_a_failure():
    g = RankGroup(2, exit_timeout=10)
    assert g.exited(0, ExitStatus(None, signal.SIGUSR1), now=0) == WAIT     # not KILL_REST
    assert g.exited(1, ExitStatus(75), now=1) == DONE
    assert g.status() == (ExitStatus(None, signal.SIGUSR1), None)


def test_traind_status_shows_every_rank():
    from traind.cli.run import format_status
    text = format_status({"name": "d", "state": "running", "node_rank": 1, "ranks": [
        {"rank": 0, "pid": 10, "step": 5, "exit": None}, {"rank": 1, "pid": 11, "step": 4, "exit": "exit code 1"}]},
        now=0.0)
    assert "ranks:       2 on node 1: 0 pid 10 step 5; 1 pid 11 step 4 (exit code 1)" in text


def test_a_final_checkpoint_then_death_by_the_stop_signal_is_success_not_a_requeue(tmp_path):
    """SLURM's warning reaches every process; it may land while the ranks exit after their final save."""
    def on_spawn(n):
        return [(0.1, ChildMessage({"type": "hello", "pid": 10 + r}, r)) for r in range(2)] + [
            (1.0, ChildMessage({"type": "checkpoint", "step": 9, "reason": "final"}, 0)),
            (1.2, ChildExited(10, ExitStatus(None, signal.SIGUSR1), 0)),
            (1.2, ChildExited(11, ExitStatus(None, signal.SIGUSR1), 1))]
    fake = FakeOS(on_spawn=on_spawn)
    fake.at(1.1, SignalArrived(signal.SIGUSR1))
    asked = []
    sup, result, lines = run(tmp_path, fake, followup=lambda outcome: asked.append(outcome) or 75,
                             distributed={"nproc_per_node": 2})
    assert result.state is State.SUCCEEDED and result.exit_code == 0 and asked == []
    assert any("the job had finished" in line for line in lines)


def test_a_restarted_group_that_never_joins_is_killed_after_the_rendezvous_timeout(tmp_path):
    def on_spawn(n):
        if n == 1:      # the first attempt speaks, then its node-mates' collectives fail
            return [(0.1, ChildMessage({"type": "hello", "pid": 10 + r}, r)) for r in range(2)] + [
                (1.0, ChildExited(10, ExitStatus(75), 0)), (1.0, ChildExited(11, ExitStatus(75), 1))]
        return []       # then it waits in the rendezvous for a node that never comes
    fake = FakeOS(on_spawn=on_spawn, on_signal={signal.SIGKILL: [(0.01, ChildExited(10, ExitStatus(None, 9), 0)),
                                                                  (0.01, ChildExited(11, ExitStatus(None, 9), 1))]})
    sup, result, lines = run(tmp_path, fake, distributed={"nproc_per_node": 2, "rendezvous_timeout_seconds": 20},
                             restart={"max_restarts": 1})
    assert result.state is State.FAILED
    kills = [t for t, sig in fake.signals if sig == signal.SIGKILL]
    assert kills and abs(kills[0] - (fake.spawns[1] + 20)) < 0.01
    assert "did not join the rendezvous" in result.message
