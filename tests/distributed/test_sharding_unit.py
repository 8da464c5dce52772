"""Issue 12, job-side pieces on plain values: the per-rank batch order, the tensor/rest split of
a sharded state, and `ckpt export` of a single-process checkpoint."""
import torch

from traind.jobs.runtime.data import EpochBatchSampler
from traind.jobs.commands.export import export, torch_optimizer_state
from traind.jobs.engine.sharded import merge, split_tensors
from traind.jobs.engine import CheckpointEngine


def test_each_rank_takes_a_disjoint_equal_share_of_the_epoch_as_a_function_of_seed_epoch_rank():
    shares = [[i for batch in EpochBatchSampler(103, 5, seed=3, epoch=2, rank=r, world_size=4) for i in batch]
              for r in range(4)]
    assert [len(s) for s in shares] == [25] * 4
    assert len(set().union(*map(set, shares))) == 100        # disjoint; 3 samples of 103 left out, as drop_last
    again = [i for b in EpochBatchSampler(103, 5, seed=3, epoch=2, rank=1, world_size=4) for i in b]
    assert again == shares[1]
    assert again != [i for b in EpochBatchSampler(103, 5, seed=3, epoch=3, rank=1, world_size=4) for i in b]
    resumed = [i for b in EpochBatchSampler(103, 5, seed=3, epoch=2, rank=1, world_size=4, start_batch=2) for i in b]
    assert resumed == shares[1][10:]


def test_split_keeps_tensors_and_the_rest_apart_and_merge_puts_them_back():
    state = {"model": {"w": torch.ones(2)}, "optim": {"state": {"w": {"step": torch.tensor(3.0), "flag": None}},
                                                      "param_groups": [{"lr": 0.1, "params": ["w"]}]},
             "empty": {}}
    tensors, rest = split_tensors(state)
    assert tensors == {"model": {"w": tensors["model"]["w"]}, "optim": {"state": {"w": {"step": tensors["optim"]["state"]["w"]["step"]}}}}
    assert rest == {"optim": {"state": {"w": {"flag": None}}, "param_groups": [{"lr": 0.1, "params": ["w"]}]},
                    "empty": {}}
    back = merge(tensors, rest)
    assert back["optim"]["param_groups"] == state["optim"]["param_groups"] and back["empty"] == {}
    assert torch.equal(back["optim"]["state"]["w"]["step"], torch.tensor(3.0))


def test_optimizer_state_by_name_becomes_torchs_layout_by_position():
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.ones(1, 2)).sum().backward()
    opt.step()
    by_name = {"state": {"weight": opt.state[model.weight], "bias": opt.state[model.bias]},
               "param_groups": [{**opt.param_groups[0], "params": ["weight", "bias"]}]}
    converted = torch_optimizer_state(by_name)
    fresh = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    fresh.load_state_dict(converted)
    assert torch.equal(fresh.state_dict()["state"][0]["momentum_buffer"], opt.state_dict()["state"][0]["momentum_buffer"])


def test_export_of_a_single_process_checkpoint_is_its_state(tmp_path):
    with CheckpointEngine(tmp_path / "run") as store:
        info = store.save({"state_dict": {"w": torch.arange(4.0)}, "global_step": 7}, step=7, epoch=0)
    out = export(info.path, tmp_path / "out.pt")
    state = torch.load(out, weights_only=True)
    assert state["global_step"] == 7 and torch.equal(state["state_dict"]["w"], torch.arange(4.0))
