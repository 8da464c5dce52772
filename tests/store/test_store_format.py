"""The on-disk format (torch-free): commit, verify, discovery, corruption, lock, cleanup, retention."""
import json
from pathlib import Path
import os
import shutil
import signal
import subprocess
import sys

import pytest

from traind import store as ck
from traind.contract.errors import TraindError

from .conftest import commit_bytes, payload, wait_dead


def test_commit_writes_manifest_last_and_verifies(ckpt_dir):
    info = commit_bytes(ckpt_dir, 12, payload(12), epoch=3, reason="final", metrics={"val_loss": 0.5},
                        extra_files={"extra.bin": b"abc"})
    assert info.valid and info.path == ckpt_dir / "step-000000012"
    man = json.loads((info.path / ck.MANIFEST_NAME).read_text())
    assert man["format_version"] == ck.FORMAT_VERSION
    assert (man["step"], man["epoch"], man["reason"]) == (12, 3, "final")
    assert man["metrics"] == {"val_loss": 0.5}
    assert man["files"]["state.pt"]["size"] == len(payload(12))
    assert man["files"]["extra.bin"]["size"] == 3
    assert man["versions"]["traind"]
    got = ck.verify(info.path)
    assert got.valid and got.error is None and got.size == len(payload(12)) + 3
    assert [p.name for p in ckpt_dir.iterdir()] == ["step-000000012"]   # no temp dir left


def test_checkpoints_dir_accepts_run_dir_or_checkpoints_dir(ckpt_dir):
    commit_bytes(ckpt_dir, 1, b"x")
    assert ck.checkpoints_dir(ckpt_dir.parent) == ckpt_dir
    assert ck.checkpoints_dir(ckpt_dir) == ckpt_dir


def _corrupt_cases():
    def flip(path, pos):
        data = bytearray(path.read_bytes())
        data[pos % len(data)] ^= 0x01
        path.write_bytes(bytes(data))
    return {
        "flip-first": (lambda c: flip(c / "state.pt", 0), "checksum mismatch"),
        "flip-middle": (lambda c: flip(c / "state.pt", 30000), "checksum mismatch"),
        "flip-last": (lambda c: flip(c / "state.pt", -1), "checksum mismatch"),
        "truncated": (lambda c: os.truncate(c / "state.pt", 1000), "truncated"),
        "extended": (lambda c: open(c / "state.pt", "ab").write(b"\0"), "size"),
        "missing-file": (lambda c: (c / "state.pt").unlink(), "missing file"),
        "missing-manifest": (lambda c: (c / ck.MANIFEST_NAME).unlink(), "missing manifest"),
        "malformed-manifest": (lambda c: (c / ck.MANIFEST_NAME).write_text("{\"step\": "), "malformed JSON"),
        "empty-manifest": (lambda c: (c / ck.MANIFEST_NAME).write_text(""), "malformed JSON"),
        "manifest-not-object": (lambda c: (c / ck.MANIFEST_NAME).write_text("[1]"), "not a JSON object"),
        "manifest-edited": (lambda c: _edit_manifest(c, step=7), "mismatch"),
    }


def _edit_manifest(c, **fields):
    path = c / ck.MANIFEST_NAME
    man = json.loads(path.read_text())
    man.update(fields)
    path.write_text(json.dumps(man, indent=1, sort_keys=True) + "\n")


@pytest.mark.parametrize("case", sorted(_corrupt_cases()))
def test_corruption_detected_and_skipped(ckpt_dir, case):
    damage, expect = _corrupt_cases()[case]
    good = commit_bytes(ckpt_dir, 1, payload(1))
    bad = commit_bytes(ckpt_dir, 2, payload(2))
    damage(bad.path)
    got = ck.verify(bad.path)
    assert not got.valid and expect in got.error, got.error
    chosen, skipped = ck.latest_valid(ckpt_dir)
    assert chosen.path == good.path and chosen.valid
    assert [s.path for s in skipped] == [bad.path] and expect in skipped[0].error


def test_every_single_byte_flip_is_detected(ckpt_dir):
    """Flip each byte of the manifest, and bytes spread over state.pt (first, last, every 997th)."""
    info = commit_bytes(ckpt_dir, 5, payload(5, 20000), metrics={"loss": 0.25})
    targets = [(info.path / ck.MANIFEST_NAME, None), (info.path / "state.pt", 997)]
    flips = 0
    for path, stride in targets:
        original = path.read_bytes()
        positions = range(len(original)) if stride is None else [*range(0, len(original), stride), len(original) - 1]
        for pos in positions:
            for mask in (0x01, 0x80, 0x20):
                data = bytearray(original)
                data[pos] ^= mask
                path.write_bytes(bytes(data))
                got = ck.verify(info.path)
                assert not got.valid, f"{path.name} byte {pos} ^ {mask:#x} went undetected"
                flips += 1
        path.write_bytes(original)
    assert ck.verify(info.path).valid
    assert flips > 1000


def test_discovery_ignores_temp_and_trash_dirs(ckpt_dir):
    good = commit_bytes(ckpt_dir, 1, payload(1))
    newer = commit_bytes(ckpt_dir, 9, payload(9))
    shutil.copytree(newer.path, ckpt_dir / ".tmp-step-000000010-host-1-1")
    os.rename(newer.path, ckpt_dir / ".trash-step-000000009-1-1")
    (ckpt_dir / "step-000000011").mkdir()                     # crashed before the manifest: no
    chosen, skipped = ck.latest_valid(ckpt_dir)
    assert chosen.path == good.path
    assert [s.step for s in skipped] == [11] and "missing manifest" in skipped[0].error
    assert [i.step for i in ck.list_checkpoints(ckpt_dir)] == [11, 1]


def test_latest_valid_on_empty_or_missing_dir(tmp_path):
    assert ck.latest_valid(tmp_path / "nope") == (None, [])
    assert ck.latest_valid(tmp_path) == (None, [])


def test_recommit_same_step_replaces_atomically(ckpt_dir):
    commit_bytes(ckpt_dir, 3, payload(3), reason="periodic")
    info = commit_bytes(ckpt_dir, 3, payload(4), reason="emergency")
    assert ck.verify(info.path).reason == "emergency"
    assert (info.path / "state.pt").read_bytes() == payload(4)
    assert sorted(p.name for p in ckpt_dir.iterdir()) == ["step-000000003"]


def test_abort_removes_temp_dir(ckpt_dir):
    pending = ck.begin(ckpt_dir, 4, 10)
    pending.write_bytes("state.pt", b"partial")
    pending.abort()
    assert list(ckpt_dir.iterdir()) == []


def test_free_space_check_refuses_before_writing(ckpt_dir):
    commit_bytes(ckpt_dir, 1, payload(1))
    with pytest.raises(TraindError, match="not enough free space"):
        ck.begin(ckpt_dir, 2, ck.free_bytes(ckpt_dir) * 2)
    assert [p.name for p in ckpt_dir.iterdir()] == ["step-000000001"]


# --- the one writer ---------------------------------------------------------------------------

def test_second_writer_refused_naming_holder_pid(ckpt_dir, spawn_holder):
    holder = spawn_holder(ckpt_dir)
    with pytest.raises(TraindError, match=f"locked by pid {holder.pid}"):
        ck.WriterLock(ckpt_dir).acquire()
    holder.send_signal(signal.SIGKILL)          # a dead holder's lock does not block
    holder.wait()
    lock = ck.WriterLock(ckpt_dir).acquire()
    try:
        with pytest.raises(TraindError, match=f"locked by pid {os.getpid()}"):
            ck.WriterLock(ckpt_dir.parent).acquire()
    finally:
        lock.release()
    with ck.WriterLock(ckpt_dir):
        pass


def test_forked_child_does_not_keep_the_writer_lock(ckpt_dir):
    """A DataLoader worker forked while the lock is held must not hold it after the parent dies."""
    import time
    lock = ck.WriterLock(ckpt_dir).acquire()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:                         # the "worker": outlives its parent's lock for a while
        os.close(r)
        os.write(w, b"x" if not lock.held else b"!")
        time.sleep(30)
        os._exit(0)
    try:
        os.close(w)
        assert os.read(r, 1) == b"x", "the forked child still believed it held the lock"
        lock.release()                   # as if the parent had died: only the child is left
        with ck.WriterLock(ckpt_dir) as again:
            assert again.held
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(r)


def test_acquire_cleans_dead_writers_temp_dirs_but_not_live_ones(ckpt_dir, spawn_holder):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    wait_dead(dead.pid)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        host = ck.host_tag()
        stale = ckpt_dir / f".tmp-step-000000005-{host}-{dead.pid}-1"
        owned = ckpt_dir / f".tmp-step-000000006-{host}-{live.pid}-1"
        trash = ckpt_dir / ".trash-step-000000001-1-1"
        for d in (stale, owned, trash):
            d.mkdir()
            (d / "state.pt").write_bytes(b"x")
        with ck.WriterLock(ckpt_dir):
            pass
        assert sorted(p.name for p in ckpt_dir.iterdir() if p.name != ".lock") == [owned.name]
    finally:
        live.kill()
        live.wait()


# --- retention --------------------------------------------------------------------------------

def _names(ckpt_dir):
    return sorted(p.name for p in ckpt_dir.iterdir() if not p.name.startswith("."))


def test_prune_keeps_last_n_and_best_k(ckpt_dir):
    losses = {1: 0.1, 2: 0.9, 3: 0.2, 4: 0.8, 5: 0.7, 6: 0.6}
    for step, loss in losses.items():
        commit_bytes(ckpt_dir, step, payload(step, 100), metrics={"val_loss": loss})
    removed = ck.prune(ckpt_dir, keep_last=2, keep_best={"metric": "val_loss", "mode": "min", "k": 2})
    assert _names(ckpt_dir) == ["step-000000001", "step-000000003", "step-000000005", "step-000000006"]
    assert sorted(p.name for p in removed) == ["step-000000002", "step-000000004"]
    ck.prune(ckpt_dir, keep_last=1, keep_best={"metric": "val_loss", "mode": "max", "k": 1})
    assert _names(ckpt_dir) == ["step-000000005", "step-000000006"]   # 0.7 is the max left
    assert not any(p.name.startswith(".trash") for p in ckpt_dir.iterdir())


def test_prune_never_removes_protected_newest_or_outside(ckpt_dir, tmp_path):
    for step in (1, 2, 3):
        commit_bytes(ckpt_dir, step, payload(step, 100))
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "precious").write_text("keep me")
    os.symlink(outside, ckpt_dir / "step-000000000")           # a symlink is never a candidate
    ck.prune(ckpt_dir, keep_last=1, protect=[ckpt_dir / "step-000000001"])
    assert _names(ckpt_dir) == ["step-000000000", "step-000000001", "step-000000003"]
    assert (outside / "precious").read_text() == "keep me"


def test_prune_keeps_corrupt_newer_ones_and_deletes_nothing_without_a_valid_one(ckpt_dir):
    for step in (1, 2, 3):
        commit_bytes(ckpt_dir, step, payload(step, 100))
    os.truncate(ckpt_dir / "step-000000003" / "state.pt", 1)
    ck.prune(ckpt_dir, keep_last=1)
    assert _names(ckpt_dir) == ["step-000000002", "step-000000003"]
    os.truncate(ckpt_dir / "step-000000002" / "state.pt", 1)
    ck.prune(ckpt_dir, keep_last=1)
    assert _names(ckpt_dir) == ["step-000000002", "step-000000003"]


# --- block checksums --------------------------------------------------------------------------

def test_block_checksums_written_inline_match_parallel_verify(tmp_path):
    import random
    from traind.store import hashing as ckpt_hash
    rng = random.Random(7)
    data = rng.randbytes(100_000)
    w = ckpt_hash.HashingWriter(tmp_path / "f", block_size=4096)
    pos = 0
    while pos < len(data):                      # irregular writes that straddle block boundaries
        n = rng.choice([1, 100, 4095, 4096, 4097, 9000])
        w.write(data[pos:pos + n])
        pos += n
    size, digests = w.close()
    assert size == len(data) and len(digests) == ckpt_hash.block_count(len(data), 4096) == 25
    for threads in (1, 3):
        assert ckpt_hash.hash_blocks(tmp_path / "f", 4096, threads=threads) == (size, digests)
    assert len(set(digests)) == 25


def test_flip_names_the_damaged_block(ckpt_dir, monkeypatch):
    from traind.store import hashing as ckpt_hash
    monkeypatch.setattr(ckpt_hash, "BLOCK_SIZE", 4096)
    info = commit_bytes(ckpt_dir, 1, payload(1, 65536))
    man = json.loads((info.path / ck.MANIFEST_NAME).read_text())
    assert man["files"]["state.pt"]["block_size"] == 4096
    assert len(man["files"]["state.pt"][ck.BLOCKS_FIELD]) == 16
    data = bytearray((info.path / "state.pt").read_bytes())
    data[7 * 4096 + 5] ^= 0x10
    (info.path / "state.pt").write_bytes(bytes(data))
    got = ck.verify(info.path)
    assert not got.valid and "in 1 block(s), first at bytes 28672-32768" in got.error, got.error


def test_first_begin_makes_the_new_checkpoints_dir_durable(tmp_path, monkeypatch):
    from traind.fs import durable as ckpt_fs
    synced = []
    real = ckpt_fs.fsync_dir
    monkeypatch.setattr(ckpt_fs, "fsync_dir", lambda p: (synced.append(Path(p)), real(p)))
    ck.begin(tmp_path / "a" / "run" / "checkpoints", 1, 0).abort()
    assert synced == [tmp_path, tmp_path / "a", tmp_path / "a" / "run"]
    synced.clear()
    ck.begin(tmp_path / "a" / "run" / "checkpoints", 2, 0).abort()
    assert synced == []                                   # nothing new: no extra fsync


def test_commit_makes_every_step_durable_in_order(ckpt_dir, durability_trace):
    """files fsynced -> manifest written last and fsynced -> temp dir fsynced -> rename -> parent
    fsynced. Removing any one of these fsyncs (or reordering them) fails here."""
    from .conftest import assert_commit_order
    info = commit_bytes(ckpt_dir, 4, payload(4, 10000), extra_files={"extra.bin": b"abc"})
    assert_commit_order(durability_trace, ckpt_dir, 4, ["state.pt", "extra.bin"])
    assert ck.verify(info.path).valid


def test_prune_trashes_then_syncs_then_deletes(ckpt_dir, durability_trace):
    for step in (1, 2, 3):
        commit_bytes(ckpt_dir, step, payload(step, 100))
    durability_trace.clear()
    ck.prune(ckpt_dir, keep_last=1)
    real = os.path.realpath(ckpt_dir)
    kinds = [e[0] for e in durability_trace]
    assert kinds == ["rename", "rename", "fsync", "rmtree", "rmtree"], durability_trace
    assert all(os.path.basename(e[2]).startswith(ck.TRASH_PREFIX) for e in durability_trace[:2])
    assert durability_trace[2] == ("fsync", real)
