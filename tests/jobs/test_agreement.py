"""The group's one stop/checkpoint rule (jobs/runtime/agreement.py): every rank acts one step after
a rank asks, through a word in shared memory on one node (no collective per step), or a collective
read one step late across nodes."""
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from traind.jobs.runtime import agreement
from traind.jobs.runtime.agreement import NONE, NodeWord


class OneProcessGroup:
    world_size, leader = 1, True

    def share(self, obj):
        return obj

    def collect(self, obj):
        return [obj]


class NoSharedMemory(OneProcessGroup):
    """A group whose other rank is on another node: it cannot open rank 0's word."""
    leader = False

    def collect(self, obj):
        return [True, obj]


def test_ranks_that_cannot_all_map_the_word_use_the_collective_rule():
    assert NodeWord.open(NoSharedMemory()) is None


def test_alone_acts_at_the_step_it_is_asked():
    assert agreement.Alone().at_step(3, stop=True, checkpoint=False) == (True, False)
    assert agreement.Alone().at_step(3, stop=False, checkpoint=True) == (False, True)


def test_the_word_names_the_next_step_and_a_pending_proposal_is_never_replaced():
    word = NodeWord.open(OneProcessGroup())
    try:
        assert word.at_step(5, stop=False, checkpoint=False) == (False, False)
        assert word.read() == (NONE, NONE)
        assert word.at_step(5, stop=False, checkpoint=True) == (False, False)     # save at 6
        assert word.at_step(5, stop=False, checkpoint=True) == (False, False)     # still 6, not 6 again
        assert word.read() == (NONE, 6)
        assert word.at_step(6, stop=True, checkpoint=True) == (False, True)       # the save; stop at 7
        assert word.read() == (7, 6)                                              # this step's save answers the request
        assert word.at_step(7, stop=True, checkpoint=False) == (True, False)
        assert word.read() == (7, 6)                                              # the first stop step stays
    finally:
        word.close()
    assert not [n for n in os.listdir("/dev/shm") if n.startswith(f"traind-agree-{os.getpid()}-")]


def _rank(rank: int, world: int, port: int, transport: str, stop_rank: int, stop_step: int,
          ask_steps: dict, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    from traind.jobs.runtime.group import Group
    group = Group(rank, world, rank)
    rule = agreement.for_group(group) if transport == "word" else agreement.OneStepLate(group)
    grad, saves, stopped = torch.ones(1000), [], None
    for step in range(1, 200):
        dist.all_reduce(grad)                           # the step's gradient reduction: lockstep
        grad.fill_(1.0)
        stop, save = rule.at_step(step, stop=rank == stop_rank and step >= stop_step,
                                  checkpoint=step in ask_steps.get(rank, ()))
        if save:
            saves.append(step)
        if stop:
            stopped = step
            break
    rule.close()
    queue.put((rank, stopped, saves, type(rule).__name__))
    dist.destroy_process_group()


@pytest.mark.parametrize("transport", ["word", "late"])
def test_every_rank_stops_and_saves_at_one_step(transport):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    asks = {1: (20, 21), 3: (21, 60), 2: (60,)}        # two ranks ask at once, twice
    procs = [ctx.Process(target=_rank, args=(r, 4, port, transport, 2, 97, asks, queue)) for r in range(4)]
    for p in procs:
        p.start()
    results = sorted(queue.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(30)
    assert {r[3] for r in results} == {"NodeWord" if transport == "word" else "OneStepLate"}
    assert [r[1] for r in results] == [98] * 4, results          # rank 2 asked at 97: all stop at 98
    assert all(r[2] == results[0][2] for r in results), results
    assert results[0][2] == [21, 61], results            # a save due this step answers a request too
