"""The memory tier's torch-free half (daemon/store/memory_tier.py): its place, the copy to disk
(verified before the commit), and release (copy what only memory holds, then free the tmpfs)."""
from pathlib import Path

import pytest

from traind import store
from traind.store import format as fmt
from traind.store import memory_tier


@pytest.fixture(autouse=True)
def shm(tmp_path, monkeypatch):
    root = tmp_path / "shm"
    root.mkdir()
    monkeypatch.setenv(memory_tier.ROOT_ENV, str(root))
    return root


def commit(ckpt_dir, step: int, payload: bytes = b"x" * 5000) -> Path:
    pending = store.begin(ckpt_dir, step, len(payload))
    pending.write_bytes(fmt.STATE_NAME, payload + step.to_bytes(4, "little"))
    return pending.commit(step, 0, "periodic").path


def test_the_tier_of_a_run_dir_is_one_place_per_real_path(tmp_path, shm):
    run = tmp_path / "runs" / "my run"
    run.mkdir(parents=True)
    (tmp_path / "link").symlink_to(run)
    tier = memory_tier.tier_dir(run)
    assert tier.parent == shm and tier.name.startswith("traind-my_run-")
    assert memory_tier.tier_dir(tmp_path / "link") == tier
    assert memory_tier.tier_dir(tmp_path / "other") != tier


def test_release_copies_what_only_memory_holds_verified_then_frees_the_tier(tmp_path):
    run = tmp_path / "run"
    commit(run, 10)
    tier = memory_tier.tier_dir(run)
    for step in (15, 20):
        commit(tier, step)
    copied = memory_tier.release(run)
    assert copied.valid and copied.step == 20 and not tier.exists()
    info, _ = store.latest_valid(run)
    assert info.step == 20 and (info.path / fmt.STATE_NAME).read_bytes() == b"x" * 5000 + (20).to_bytes(4, "little")


def test_release_copies_nothing_when_the_disk_is_as_new(tmp_path):
    run = tmp_path / "run"
    commit(run, 20)
    commit(memory_tier.tier_dir(run), 20)
    assert memory_tier.release(run) is None and not memory_tier.tier_dir(run).exists()
    assert memory_tier.release(run) is None       # no tier: nothing to do


def test_a_damaged_newest_memory_checkpoint_is_passed_over_for_the_one_before(tmp_path):
    run = tmp_path / "run"
    tier = memory_tier.tier_dir(run)
    commit(tier, 15)
    bad = commit(tier, 20) / fmt.STATE_NAME
    bad.write_bytes(b"y" + bad.read_bytes()[1:])
    info, skipped = memory_tier.newest(tier)
    assert info.step == 15 and [s.step for s in skipped] == [20]
    assert memory_tier.release(run).step == 15
    assert [i.step for i in store.list_checkpoints(run)] == [15]


def test_a_copy_that_does_not_match_its_manifest_is_not_committed(tmp_path):
    run = tmp_path / "run"
    tier = memory_tier.tier_dir(run)
    src = commit(tier, 20)
    info = fmt.verify(src)
    (src / fmt.STATE_NAME).write_bytes(b"z" * 5004)     # damaged after it was chosen
    copied = memory_tier.persist(info, store.checkpoints_dir(run))
    assert not copied.valid and "state.pt" in copied.error
    assert store.list_checkpoints(run) == [] and not any(store.checkpoints_dir(run).glob(".tmp-*"))


def test_the_supervisor_says_why_it_could_not_copy_or_free_the_tier_and_goes_on(tmp_path, monkeypatch):
    from traind.contract.errors import TraindError
    from traind.supervisor.memory import MemoryTierSpec, Tier
    said = []
    tier = Tier(MemoryTierSpec(every_steps=5), tmp_path / "run", say=said.append, event=lambda *a, **k: None,
                mirror=None, where="job.yaml")

    def full_disk(run_dir):
        raise TraindError(f"{run_dir}/checkpoints: not enough free space for checkpoint step 20")
    monkeypatch.setattr(memory_tier, "release", full_disk)
    tier.close()          # no exception: the supervisor still ends with its own message
    assert said == [f"memory tier: cannot copy to disk or free {tier.dir}: {tmp_path}/run/checkpoints: not enough "
                    f"free space for checkpoint step 20; the next `traind run` of this run dir will use it"]


def test_a_tmpfs_that_is_not_there_or_too_small_for_the_budget_is_one_line(tmp_path, monkeypatch):
    from traind.contract.errors import UsageError
    from traind.supervisor.memory import MemoryTierSpec, Tier
    args = dict(say=print, event=lambda *a, **k: None, mirror=None, where="job.yaml")
    monkeypatch.setenv(memory_tier.ROOT_ENV, str(tmp_path / "missing"))
    with pytest.raises(UsageError, match=r"^job.yaml: checkpoint.memory: .*missing is not a writable directory"):
        Tier(MemoryTierSpec(), tmp_path / "run", **args)
    monkeypatch.setenv(memory_tier.ROOT_ENV, str(tmp_path))
    with pytest.raises(UsageError, match=r"^job.yaml: checkpoint.memory.budget_mib: 1099511627776 MiB, but"):
        Tier(MemoryTierSpec(budget_mib=1 << 40), tmp_path / "run", **args)
