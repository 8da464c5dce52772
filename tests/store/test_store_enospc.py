"""A full disk on a real (tmpfs, 4 MiB) filesystem: clear errors, earlier checkpoints intact."""
import os
import subprocess

import pytest
import torch

from traind import store as ck
from traind.store import faults
from traind.contract.errors import TraindError
from traind.jobs.engine import CheckpointEngine, load_checkpoint

MIB = 1 << 20


@pytest.fixture
def small_fs(tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)],
                         capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (needs root/CAP_SYS_ADMIN): {res.stderr.strip()}")
    try:
        yield mnt
    finally:
        faults.fault_hook = None
        subprocess.run(["umount", "-l", str(mnt)], check=True)


def state_of(nbytes: int, tag: float) -> dict:
    return {"global_step": int(tag), "w": torch.full((nbytes // 4,), tag)}


def fill_disk_at(point: str, path, leave: int):
    """fault_hook that fills the filesystem (leaving `leave` bytes) when the writer reaches point."""
    def hook(name):
        if name == point and not path.exists():
            with open(path, "wb") as f:
                try:
                    f.write(b"\0" * max(0, ck.free_bytes(path.parent) - leave))
                except OSError:
                    pass
    return hook


def assert_only_a_intact(store, a_info):
    names = sorted(p.name for p in store.ckpt_dir.iterdir() if p.name != ".lock")
    assert names == [a_info.path.name], names                 # the temp dir was removed
    chosen, skipped = ck.latest_valid(store.ckpt_dir)
    assert chosen.path == a_info.path and skipped == []
    assert torch.equal(load_checkpoint(a_info.path)["w"], torch.full((MIB // 4,), 1.0))


def test_free_space_check_refuses_up_front(small_fs):
    with CheckpointEngine(small_fs / "run") as store:
        a = store.save(state_of(MIB, 1.0), step=1, epoch=0)
        for blocking in (True, False):        # non-blocking too: refused by save() itself
            with pytest.raises(TraindError, match=r"not enough free space for checkpoint step 2"):
                store.save(state_of(3 * MIB, 2.0), step=2, epoch=0, blocking=blocking)
            assert store._thread is None
            assert_only_a_intact(store, a)


@pytest.mark.parametrize("point, leave, blocking", [
    ("begin:mkdir", MIB // 2, True),               # ENOSPC in the middle of state.pt
    ("begin:mkdir", MIB // 2, False),              # ... in the background writer
    ("commit:files-durable", 0, True),             # ENOSPC writing the manifest
])
def test_enospc_mid_write_cleans_up_and_keeps_earlier_checkpoints(small_fs, point, leave, blocking):
    filler = small_fs / "filler"
    with CheckpointEngine(small_fs / "run", keep_last=1) as store:
        a = store.save(state_of(MIB, 1.0), step=1, epoch=0)
        faults.fault_hook = fill_disk_at(point, filler, leave)
        with pytest.raises(TraindError, match=r"step 2 failed: No space left on device; nothing committed"):
            store.save(state_of(MIB, 2.0), step=2, epoch=0, blocking=blocking)
            store.flush()
        faults.fault_hook = None
        assert_only_a_intact(store, a)
        filler.unlink()                                   # space is back: saving works again
        assert store.save(state_of(MIB, 3.0), step=3, epoch=0).valid
        assert [i.step for i in ck.list_checkpoints(store.ckpt_dir)] == [3]
    assert sorted(os.listdir(small_fs / "run" / "checkpoints")) == [".lock", "step-000000003"]
