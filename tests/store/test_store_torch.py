"""The torch side: CheckpointEngine save/load, non-blocking snapshots, failures, safe loading."""
import json
import os
import zipfile

import pytest
import torch

from traind import store as ck
from traind.store import faults
from traind.contract.errors import TraindError
from traind.jobs.engine.loading import UnusableCheckpoint
from traind.jobs.engine import CheckpointEngine, load_checkpoint

torch.set_num_threads(1)


def make_state(step=0, width=64):
    torch.manual_seed(step)
    model = torch.nn.Sequential(torch.nn.Linear(width, width), torch.nn.BatchNorm1d(width))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(8, width)).sum().backward()
    opt.step()
    return model, opt, {
        "epoch": 1, "global_step": step, "state_dict": model.state_dict(),
        "optimizer_states": [opt.state_dict()], "lr_schedulers": [], "callbacks": {},
        "hyper_parameters": {"lr": 1e-3, "width": width}, "rng_states": {"torch": torch.get_rng_state()},
        "traind_version": "0.1.0",
    }


def assert_same(a, b):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y)
    else:
        assert a == b


@pytest.mark.parametrize("blocking", [True, False])
def test_save_load_roundtrip_bit_exact(tmp_path, blocking):
    model, opt, state = make_state(3)
    commits = []
    with CheckpointEngine(tmp_path, on_commit=commits.append) as store:
        ret = store.save(state, step=3, epoch=1, metrics={"loss": torch.tensor(0.5)}, blocking=blocking)
        info = store.flush()
        assert (ret is not None) == blocking and info.valid and info.step == 3
        assert commits == [info] and info.metrics == {"loss": 0.5}
        loaded = store.load()
    assert_same(state, loaded)
    assert loaded["state_dict"]._metadata == state["state_dict"]._metadata
    fresh = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.BatchNorm1d(64))
    fresh.load_state_dict(loaded["state_dict"])
    opt2 = torch.optim.Adam(fresh.parameters(), lr=1e-3)
    opt2.load_state_dict(loaded["optimizer_states"][0])


def test_nonblocking_snapshot_is_isolated_and_buffers_reused(tmp_path):
    model, opt, state = make_state(1)
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    with CheckpointEngine(tmp_path, keep_last=5) as store:
        store.save(state, step=1, epoch=0, blocking=False)
        ptrs = {k: v.data_ptr() for k, v in store._snap._buffers.items()}
        with torch.no_grad():                      # training goes on while the save runs
            for p in model.parameters():
                p.add_(1.0)
        first = store.flush()
        store.save({"epoch": 1, "global_step": 2, "state_dict": model.state_dict(),
                    "optimizer_states": [opt.state_dict()], "lr_schedulers": [], "callbacks": {},
                    "hyper_parameters": {"lr": 1e-3, "width": 64}, "rng_states": state["rng_states"],
                    "traind_version": "0.1.0"}, step=2, epoch=1, blocking=False)
        second = store.flush()
        reused = {k: v.data_ptr() for k, v in store._snap._buffers.items()}
        assert reused == ptrs and len(ptrs) > 5
        old = load_checkpoint(first.path)["state_dict"]
        new = load_checkpoint(second.path)["state_dict"]
    for k, v in expected.items():
        assert torch.equal(old[k], v)
    assert torch.equal(new["0.weight"], expected["0.weight"] + 1.0)


def test_background_failure_raised_at_next_save_flush_and_close(tmp_path, monkeypatch):
    _, _, state = make_state(1, width=8)
    store = CheckpointEngine(tmp_path)
    real_commit = ck.PendingCheckpoint.commit

    def broken(self, *a, **kw):
        raise OSError(5, "Input/output error")
    monkeypatch.setattr(ck.PendingCheckpoint, "commit", broken)
    store.save(state, step=1, epoch=0, blocking=False)
    with pytest.raises(TraindError, match="Input/output error.*nothing committed"):
        store.flush()
    store.save(state, step=2, epoch=0, blocking=False)
    with pytest.raises(TraindError, match="step 2 failed"):
        store.save(state, step=3, epoch=0, blocking=False)    # raised at the next save
    monkeypatch.setattr(ck.PendingCheckpoint, "commit", real_commit)
    store.save(state, step=4, epoch=0, blocking=False)
    assert store.flush().step == 4
    monkeypatch.setattr(ck.PendingCheckpoint, "commit", broken)
    store.save(state, step=5, epoch=0, blocking=False)
    with pytest.raises(TraindError, match="step 5 failed"):
        store.close()                                          # raised at close
    assert not store._lock.held
    names = sorted(p.name for p in store.ckpt_dir.iterdir())
    assert names == [".lock", "step-000000004"]                # failed saves left no temp dirs


def test_retention_and_protect_through_the_store(tmp_path):
    _, _, state = make_state(1, width=8)
    with CheckpointEngine(tmp_path, keep_last=2, keep_best={"metric": "loss", "mode": "min", "k": 1}) as store:
        store.save(state, step=1, epoch=0, metrics={"loss": 5.0})
        store.protect(store.ckpt_dir / "step-000000001")
        for step, loss in [(2, 1.0), (3, 3.0), (4, 4.0), (5, 2.0)]:
            store.save(state, step=step, epoch=0, metrics={"loss": loss}, blocking=step % 2 == 0)
        store.flush()
    assert sorted(p.name for p in store.ckpt_dir.iterdir() if p.name[0] != ".") == [
        "step-000000001", "step-000000002", "step-000000004", "step-000000005"]


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_not_executed(tmp_path):
    """A checkpoint whose state.pt would run a shell command when unpickled unsafely."""
    marker = tmp_path / "pwned"
    _Evil.marker = marker
    pending = ck.begin(tmp_path / "checkpoints", 1, 0)
    with open(pending.file_path("state.pt"), "wb") as f:
        torch.save({"epoch": 0, "payload": _Evil()}, f)      # pickles os.system(...) as a reduce
    info = pending.commit(1, 0, "periodic", {})
    assert info.valid                                        # checksums are fine: it is the content
    with zipfile.ZipFile(info.path / "state.pt") as z:
        assert any(b"system" in z.read(n) for n in z.namelist() if n.endswith("data.pkl"))
    # refused as one line naming the file (issue 10.3; was torch's raw UnpicklingError)
    with pytest.raises(UnusableCheckpoint, match="state.pt: refused"):
        load_checkpoint(info.path)
    with CheckpointEngine(tmp_path) as store, pytest.raises(UnusableCheckpoint):
        store.load()
    assert not marker.exists()


def test_load_refuses_a_corrupt_checkpoint(tmp_path):
    _, _, state = make_state(1, width=8)
    with CheckpointEngine(tmp_path) as store:
        info = store.save(state, step=1, epoch=0)
    data = bytearray((info.path / "state.pt").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (info.path / "state.pt").write_bytes(bytes(data))
    with pytest.raises(TraindError, match="checksum mismatch"):
        load_checkpoint(info.path)


def test_eio_mid_write_and_unpicklable_state_are_one_line_errors(tmp_path, monkeypatch):
    from traind.store import hashing as ckpt_hash
    _, _, state = make_state(1, width=256)
    real_write_all = ckpt_hash.write_all
    written = []

    def failing_write_all(fd, view):
        written.append(len(view))
        if sum(written) > 100_000:
            raise OSError(5, "Input/output error")
        real_write_all(fd, view)
    with CheckpointEngine(tmp_path) as store:
        good = store.save(state, step=1, epoch=0)
        monkeypatch.setattr(ckpt_hash, "write_all", failing_write_all)
        with pytest.raises(TraindError, match="step 2 failed: Input/output error; nothing committed"):
            store.save(state, step=2, epoch=0)
        monkeypatch.setattr(ckpt_hash, "write_all", real_write_all)
        with pytest.raises(TraindError, match="step 3 failed: .*nothing committed") as exc:
            store.save({"fn": lambda: 0}, step=3, epoch=0, blocking=False)
            store.flush()
        assert "\n" not in str(exc.value)
        assert [p.name for p in store.ckpt_dir.iterdir() if p.name != ".lock"] == [good.path.name]
        info = store.save(state, step=4, epoch=0, blocking=False) or store.flush()
        man = json.loads((info.path / ck.MANIFEST_NAME).read_text())
        assert man["extra"]["write_seconds"] > 0 and man["extra"]["snapshot_seconds"] >= 0
        assert man["versions"]["torch"] == torch.__version__


def test_snapshot_copies_every_kind_of_tensor_exactly():
    from traind.jobs.engine.snapshot import Snapshotter as _Snapshotter
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    state = {
        "big": torch.randn(3_000_000),                           # split into chunks
        "bf16": torch.randn(1000).to(torch.bfloat16),
        "view": base[1:3, 2:5],                                  # non-contiguous
        "offset": base.view(-1)[5:17],                           # contiguous, storage offset
        "conj": torch.randn(8, dtype=torch.complex64).conj(),    # lazy conjugate bit
        "neg": torch.randn(8, dtype=torch.complex64).conj().imag,
        "scalar": torch.tensor(3), "empty": torch.zeros(0), "param": torch.nn.Parameter(torch.ones(3)),
        "nested": [{"t": torch.ones(2, 2)}, (torch.zeros(3), 5)], "text": "x",
    }
    for threads in (1, 3):
        snap = _Snapshotter(threads=threads)
        snap.CHUNK = 1 << 20
        for _ in range(2):                                       # second time: reused buffers
            out = snap.take(state)
            assert_same({k: v for k, v in state.items()}, out)
            assert out["big"].data_ptr() != state["big"].data_ptr()
        snap.close()


def test_failing_on_commit_listener_does_not_fail_the_save(tmp_path):
    _, _, state = make_state(1, width=8)

    def broken_listener(info):
        raise BrokenPipeError("supervisor gone")
    with CheckpointEngine(tmp_path, on_commit=broken_listener) as store:
        assert store.save(state, step=1, epoch=0).valid
        store.save(state, step=2, epoch=0, blocking=False)
        assert store.flush().step == 2


def test_tied_weights_stay_tied_through_a_nonblocking_save(tmp_path):
    emb = torch.nn.Embedding(1000, 64)
    head = torch.nn.Linear(64, 1000, bias=False)
    head.weight = emb.weight                                     # weight tying
    model = torch.nn.ModuleDict({"emb": emb, "head": head})
    sd = model.state_dict(keep_vars=True)
    assert sd["emb.weight"] is sd["head.weight"]
    with CheckpointEngine(tmp_path) as store:
        store.save({"state_dict": model.state_dict()}, step=1, epoch=0, blocking=False)
        info = store.flush()
        loaded = load_checkpoint(info.path)["state_dict"]
    assert loaded["emb.weight"].data_ptr() == loaded["head.weight"].data_ptr()
    assert torch.equal(loaded["emb.weight"], emb.weight.detach())
    assert (info.path / "state.pt").stat().st_size < 1000 * 64 * 4 * 1.5   # written once


@pytest.mark.parametrize("keep_last, keep_best, field", [
    (0, None, "keep_last"), ("3", None, "keep_last"), (2, ["val_loss"], "keep_best"),
    (2, {"metric": "val_loss", "mode": "lowest"}, "keep_best.mode"),
    (2, {"metric": "", "k": 1}, "keep_best.metric"), (2, {"metric": "m", "k": -1}, "keep_best.k"),
    (2, {"metric": "m", "top": 2}, "keep_best.top"),
])
def test_bad_retention_policy_is_a_usage_error_naming_the_field(tmp_path, keep_last, keep_best, field):
    from traind.contract.errors import UsageError
    with pytest.raises(UsageError, match=f"field '{field}'"):
        CheckpointEngine(tmp_path, keep_last=keep_last, keep_best=keep_best)
    with CheckpointEngine(tmp_path, keep_last=1, keep_best={"metric": "m"}):   # lock was not kept
        pass


@pytest.mark.parametrize("blocking", [True, False])
def test_store_commits_durably_before_pruning_the_predecessor(tmp_path, blocking, durability_trace):
    """Through the torch store: state.pt is fsynced before the manifest, the new checkpoint is
    renamed and its parent fsynced before the old one is touched (nothing is deleted before its
    successor commits)."""
    from .conftest import assert_commit_order
    _, _, state = make_state(1)
    with CheckpointEngine(tmp_path / "run", keep_last=1) as store:
        store.save(state, step=1, epoch=0)
        durability_trace.clear()
        store.save(state, step=2, epoch=0, blocking=blocking)
        store.flush()
    ckpt_dir = tmp_path / "run" / "checkpoints"
    committed = assert_commit_order(durability_trace, ckpt_dir, 2, ["state.pt"])
    old = os.path.realpath(ckpt_dir / "step-000000001")
    touches = [i for i, e in enumerate(durability_trace) if e[0] == "rename" and e[1] == old]
    assert len(touches) == 1 and touches[0] > committed, durability_trace
    assert [p.name for p in ckpt_dir.iterdir() if p.name.startswith("step-")] == ["step-000000002"]


def test_a_second_nonblocking_save_waits_for_the_one_in_flight(tmp_path):
    """One save in flight: the next save() waits for it before snapshotting into the reused
    buffers (else the first checkpoint could hold the second one's values), and there is never
    more than one temp dir."""
    import time
    model, _, state = make_state(1, width=32)
    w0 = model[0].weight.detach().clone()
    ckpt_dir = tmp_path / "checkpoints"
    temp_dirs = []

    def slow_begin(point):
        if point == "begin:mkdir":
            temp_dirs.append(sum(p.name.startswith(ck.TMP_PREFIX) for p in ckpt_dir.iterdir()))
            time.sleep(0.3)
    faults.fault_hook = slow_begin
    try:
        with CheckpointEngine(tmp_path, keep_last=5) as store:
            store.save(state, step=1, epoch=0, blocking=False)
            with torch.no_grad():
                model[0].weight.add_(1.0)          # `state` holds the live tensors
            t0 = time.monotonic()
            store.save(state, step=2, epoch=0, blocking=False)
            waited = time.monotonic() - t0
            second = store.flush()
    finally:
        faults.fault_hook = None
    assert waited >= 0.2, waited                    # the first was still held when save() came
    assert temp_dirs == [1, 1]
    first = load_checkpoint(ckpt_dir / "step-000000001")["state_dict"]["0.weight"]
    assert torch.equal(first, w0)
    assert torch.equal(load_checkpoint(second.path)["state_dict"]["0.weight"], w0 + 1.0)
