"""The state.pt writer: tensor bytes go to disk from the snapshot buffers (O_DIRECT, no copy),
hashed once; the file is byte for byte what torch.save writes and loads with plain torch.load."""
import ctypes
import errno
import io
import mmap
import os
import random

import numpy
import pytest
import torch

from traind import store as ck
from traind.contract.errors import TraindError
from traind.store import hashing
from traind.jobs.engine import writer
from traind.jobs.engine import CheckpointEngine

torch.set_num_threads(1)
MIB = 1 << 20


def big_state(tag: float = 1.0) -> dict:
    """Storages large enough to be mmap buffers (page-aligned), odd sizes, small ones, a tie."""
    torch.manual_seed(int(tag))
    shared = torch.randn(300_001)
    return {"global_step": int(tag), "w": [torch.randn(n) for n in (2 * MIB // 4, 3 * MIB // 4 + 5, 1_000_003)],
            "small": [torch.full((n,), tag) for n in (1, 7, 1000)], "bf16": torch.randn(700_000).to(torch.bfloat16),
            "tied": [shared, shared], "text": "x", "empty": torch.zeros(0)}


def torch_bytes(state: dict, alignment: int) -> bytes:
    """What plain torch.save writes for `state`, with the store's settings (crc32 off)."""
    from torch.utils.serialization import config
    saved = config.save.compute_crc32, config.save.storage_alignment
    config.save.compute_crc32, config.save.storage_alignment = False, alignment
    try:
        buf = io.BytesIO()
        torch.save(state, buf)
        return buf.getvalue()
    finally:
        config.save.compute_crc32, config.save.storage_alignment = saved


def assert_same(a, b):
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys() and all(assert_same(a[k], b[k]) is None for k in a)
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b) and all(assert_same(x, y) is None for x, y in zip(a, b))
    else:
        assert a == b


@pytest.fixture
def direct(monkeypatch):
    monkeypatch.setattr(writer, "DIRECT_MIN_BYTES", 0)
    monkeypatch.setattr(writer, "DIRECT_MAX_PADDING", 1.0)


@pytest.mark.parametrize("blocking", [True, False])
def test_direct_io_file_is_torch_saves_bytes_and_loads_plainly(tmp_path, direct, blocking):
    state = big_state()
    with CheckpointEngine(tmp_path) as store:
        store.save(state, step=1, epoch=0, blocking=blocking)
        info = store.flush()
    assert info.stats["direct_io"] is True and info.stats["writer_cpu_seconds"] > 0
    on_disk = (info.path / ck.STATE_NAME).read_bytes()
    assert on_disk == torch_bytes(state, hashing.PAGE)          # the last page's padding is cut off
    loaded = torch.load(info.path / ck.STATE_NAME, weights_only=True)
    assert_same(state, loaded)
    assert loaded["tied"][0].data_ptr() == loaded["tied"][1].data_ptr()
    assert ck.verify(info.path).valid


def test_page_cache_path_is_torch_saves_bytes(tmp_path, monkeypatch):
    monkeypatch.setenv(writer.DIRECT_ENV, "0")
    state = big_state()
    with CheckpointEngine(tmp_path) as store:
        store.save(state, step=1, epoch=0, blocking=False)
        info = store.flush()
    assert info.stats["direct_io"] is False
    assert (info.path / ck.STATE_NAME).read_bytes() == torch_bytes(state, 64)   # torch's default
    assert ck.verify(info.path).valid


def test_tensor_bytes_go_to_disk_from_the_snapshot_buffers(tmp_path, direct, monkeypatch):
    """No copy through pickling, an in-memory zip or the staging buffer: every write of a large
    storage comes straight from its snapshot buffer."""
    writes = []
    real = hashing.write_all

    def traced(fd, view):
        writes.append((numpy.frombuffer(view, dtype=numpy.uint8).ctypes.data, len(view)))
        real(fd, view)
    monkeypatch.setattr(hashing, "write_all", traced)
    state = big_state()
    with CheckpointEngine(tmp_path) as store:
        store.save(state, step=1, epoch=0, blocking=False)
        store.flush()
        buffers = {b.data_ptr(): b for b in store._snap._buffers.values() if b.numel() * b.element_size() >= MIB}
    assert len(buffers) == 5                                    # the tied pair is one buffer
    buffers = buffers.values()
    for buf in buffers:
        lo, hi = buf.data_ptr(), buf.data_ptr() + buf.numel() * buf.element_size()
        inside = sum(n for at, n in writes if lo <= at < hi)
        assert inside >= (hi - lo) - 2 * hashing.PAGE, "most of the buffer written in place"
    assert sum(n for _, n in writes) < os.path.getsize(store.flush().path / ck.STATE_NAME) + hashing.PAGE


def test_einval_from_o_direct_falls_back_to_the_page_cache(tmp_path, direct, monkeypatch):
    real, failed = hashing.write_all, []

    def refuse_first_direct(fd, view):
        if not failed and os.O_DIRECT & __import__("fcntl").fcntl(fd, __import__("fcntl").F_GETFL):
            failed.append(1)
            raise OSError(errno.EINVAL, "Invalid argument")
        real(fd, view)
    monkeypatch.setattr(hashing, "write_all", refuse_first_direct)
    state = big_state()
    with CheckpointEngine(tmp_path) as store:
        info = store.save(state, step=1, epoch=0)
    assert failed and info.stats["direct_io"] is False
    assert (info.path / ck.STATE_NAME).read_bytes() == torch_bytes(state, hashing.PAGE)


@pytest.mark.parametrize("blocking", [True, False])
def test_eio_during_a_direct_write_is_one_line_and_commits_nothing(tmp_path, direct, monkeypatch, blocking):
    state = big_state()
    with CheckpointEngine(tmp_path) as store:
        good = store.save(state, step=1, epoch=0)
        real, written = hashing.write_all, []

        def failing(fd, view):
            written.append(len(view))
            if sum(written) > 3 * MIB:
                raise OSError(errno.EIO, "Input/output error")
            real(fd, view)
        monkeypatch.setattr(hashing, "write_all", failing)
        with pytest.raises(TraindError, match="step 2 failed: Input/output error; nothing committed") as exc:
            store.save(state, step=2, epoch=0, blocking=blocking)
            store.flush()
        assert "\n" not in str(exc.value)
        monkeypatch.setattr(hashing, "write_all", real)
        assert sorted(p.name for p in store.ckpt_dir.iterdir()) == [".lock", good.path.name]
        store.save(state, step=3, epoch=0, blocking=blocking)
        assert store.flush().step == 3


def _aligned(size: int) -> tuple[memoryview, int]:
    region = mmap.mmap(-1, size)
    return memoryview(region), ctypes.addressof(ctypes.c_char.from_buffer(region))


@pytest.mark.parametrize("direct_io", [True, False])
def test_planned_pieces_write_and_hash_exactly(tmp_path, direct_io):
    """Torch-free: pieces in place (page-aligned, misaligned, straddling blocks) and copied ones,
    written one block at a time; the bytes and block digests match a re-read."""
    rng = random.Random(5)
    mem, base = _aligned(1 << 20)
    mem[:] = rng.randbytes(len(mem))
    w = hashing.HashingWriter(tmp_path / "f", block_size=64 * 1024, direct=direct_io)
    expected = bytearray()
    for _ in range(40):
        kind = rng.choice(["aligned", "odd", "copy"])
        n = rng.choice([1, 100, 4095, 4096, 8192, 70_000])
        at = rng.choice([0, 4096, 12_288]) if kind == "aligned" else rng.randrange(0, 4000)
        piece = mem[at:at + n]
        w.add(piece, None if kind == "copy" else base + at)
        expected += piece
        if rng.random() < 0.3:
            w.write_block()
    size, digests = w.close()
    assert w.direct == direct_io and size == len(expected)
    assert (tmp_path / "f").read_bytes() == bytes(expected)
    assert hashing.hash_blocks(tmp_path / "f", 64 * 1024) == (size, digests)


def test_sigkill_at_every_write_of_a_direct_save_leaves_no_trusted_partial(tmp_path, direct):
    """As test_store_faults.py, for the O_DIRECT path: a writer killed at each write of state.pt
    (blocking, and from the background thread) never leaves a checkpoint discovery trusts."""
    from traind.store import faults
    from .test_store_faults import check_outcome, fork_writer, make_state, wait_for
    seen = []
    faults.fault_hook = seen.append
    try:
        with CheckpointEngine(tmp_path / "probe") as store:
            assert store.save(make_state(1, big=True), step=1, epoch=0).stats["direct_io"]
    finally:
        faults.fault_hook = None
    writes = seen.count("write")
    assert writes >= 3
    ckpt_dir = tmp_path / "run" / "checkpoints"
    assert wait_for(fork_writer(ckpt_dir, step=1, tag=1, big=True)) == "finished"
    latest_tag, step, kills = 1, 1, 0
    for blocking in (True, False):
        for n in range(1, writes + 1):
            # how many writes a save makes depends on where its memory lies (in place or staged)
            step += 1
            pid = fork_writer(ckpt_dir, step=step, tag=latest_tag + 1000, kill_at=("write", n),
                              blocking=blocking, big=True)
            outcome = wait_for(pid)
            kills += outcome == "killed"
            latest_tag, _ = check_outcome(ckpt_dir, latest_tag, latest_tag + 1000,
                                          must_be_new=outcome == "finished")
    assert kills >= writes
