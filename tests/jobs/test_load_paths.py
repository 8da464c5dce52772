"""Every way of loading a checkpoint verifies it, refuses what is not one with one clear line,
and never runs a pickle's code (issue 10, items 1-3). Real checkpoints, real torch."""
import os
import struct
import zipfile

import pytest
import torch
from torch import nn

from traind import store as ck
from traind.contract.errors import TraindError, UsageError
from traind.jobs.engine.loading import UnusableCheckpoint, load_state, load_unverified
from traind.jobs.training.module import TrainModule
from traind.jobs.engine import CheckpointEngine, load_checkpoint


class Tiny(TrainModule):
    def __init__(self, width=4):
        super().__init__()
        self.save_hyperparameters()
        self.lin = nn.Linear(width, 3)


def module_state(seed: int, width: int = 4) -> dict:
    torch.manual_seed(seed)
    model = Tiny(width)
    return {"epoch": 0, "global_step": seed, "state_dict": model.state_dict(),
            "hyper_parameters": dict(model.hparams)}


def save_steps(run_dir, *steps) -> list:
    with CheckpointEngine(run_dir) as store:
        return [store.save(module_state(step), step=step, epoch=0) for step in steps]


def commit_raw(run_dir, step: int, data: bytes):
    """A checkpoint whose state.pt holds exactly `data`, with a valid manifest and checksums."""
    pending = ck.begin(ck.checkpoints_dir(run_dir), step, len(data))
    pending.write_bytes(ck.STATE_NAME, data)
    return pending.commit(step, 0, "periodic", {})


def flip_a_weight_byte(path) -> None:
    """Flip one byte of a tensor record (not of the pickle): torch.load alone cannot tell."""
    with zipfile.ZipFile(path) as z:
        record = next(i for i in z.infolist() if "/data/" in i.filename and i.file_size)
    data = bytearray(path.read_bytes())
    name_len, extra_len = struct.unpack("<HH", data[record.header_offset + 26:record.header_offset + 30])
    data[record.header_offset + 30 + name_len + extra_len] ^= 0xFF
    path.write_bytes(bytes(data))


def one_line(err) -> str:
    text = str(err)
    assert "\n" not in text, text
    return text


def same_weights(model, state) -> bool:
    return all(torch.equal(v, state["state_dict"][k]) for k, v in model.state_dict().items())


def test_every_form_of_path_loads_the_same_verified_checkpoint(tmp_path):
    older, newest = save_steps(tmp_path, 1, 2)
    want = module_state(2)
    for path in (tmp_path, newest.path.parent, newest.path, newest.path / ck.STATE_NAME,
                 newest.path / ck.MANIFEST_NAME):
        assert same_weights(Tiny.load_from_checkpoint(path), want), path
        assert load_checkpoint(path)["global_step"] == 2 and load_state(path)["global_step"] == 2
    flip_a_weight_byte(newest.path / ck.STATE_NAME)     # a run dir falls back to the newest valid one
    assert same_weights(Tiny.load_from_checkpoint(tmp_path), module_state(1))


@pytest.mark.parametrize("form", ["state.pt", "manifest", "step dir", "run dir"])
def test_a_flipped_byte_in_state_pt_is_refused_whatever_path_names_it(tmp_path, form):
    (info,) = save_steps(tmp_path, 5)
    flip_a_weight_byte(info.path / ck.STATE_NAME)       # same size: only the checksum can tell
    torch.load(info.path / ck.STATE_NAME, weights_only=True)   # torch alone loads it, wrong weights
    path = {"state.pt": info.path / ck.STATE_NAME, "manifest": info.path / ck.MANIFEST_NAME,
            "step dir": info.path, "run dir": tmp_path}[form]
    for load in (Tiny.load_from_checkpoint, load_state, load_checkpoint):
        with pytest.raises(TraindError, match="checksum mismatch") as err:
            load(path)
        assert str(info.path / ck.STATE_NAME) in one_line(err.value)
    with CheckpointEngine(tmp_path) as store, pytest.raises(TraindError, match="checksum mismatch"):
        store.load(path)


def test_a_state_pt_whose_step_dir_was_never_committed_is_refused(tmp_path):
    (info,) = save_steps(tmp_path, 3)
    (info.path / ck.MANIFEST_NAME).unlink()
    with pytest.raises(TraindError, match="missing manifest"):
        Tiny.load_from_checkpoint(info.path / ck.STATE_NAME)


def test_a_foreign_file_loads_only_through_the_explicit_unverified_call(tmp_path):
    foreign = tmp_path / "model.ckpt"                  # e.g. a Lightning checkpoint: no manifest
    torch.save(module_state(7), foreign)
    for load in (Tiny.load_from_checkpoint, load_state, load_checkpoint):
        with pytest.raises(UsageError) as err:
            load(foreign)
        text = one_line(err.value)
        assert text.startswith(f"{foreign}: ") and "MANIFEST.json" in text and "unverified=True" in text
    assert same_weights(Tiny.load_from_checkpoint(foreign, unverified=True), module_state(7))
    assert load_unverified(foreign)["global_step"] == 7
    assert load_state(foreign, unverified=True)["global_step"] == 7
    with pytest.raises(UsageError, match="takes one file"):
        load_unverified(tmp_path)


def test_what_is_not_a_checkpoint_is_one_line_naming_the_file(tmp_path):
    text_file = tmp_path / "notes.txt"
    text_file.write_text("hello world\n")               # was KeyError: 101
    with pytest.raises(TraindError) as err:
        Tiny.load_from_checkpoint(text_file, unverified=True)
    assert one_line(err.value).startswith(f"{text_file}: not a torch checkpoint (")
    plain = tmp_path / "plain.pt"
    torch.save({"weights": torch.ones(2)}, plain)      # was KeyError: 'state_dict'
    with pytest.raises(UsageError) as err:
        Tiny.load_from_checkpoint(plain, unverified=True)
    assert one_line(err.value) == f"{plain}: no 'state_dict' in it; not a traind/Lightning checkpoint"
    tensor_only = tmp_path / "tensor.pt"
    torch.save(torch.ones(2), tensor_only)
    with pytest.raises(TraindError, match="holds a Tensor, not a dict"):
        load_unverified(tensor_only)


def test_a_verified_state_pt_torch_cannot_read_is_an_unusable_checkpoint(tmp_path):
    info = commit_raw(tmp_path, 4, bytes(range(256)) * 16)   # valid manifest over garbage
    assert ck.verify(info.path).valid
    state_file = info.path / ck.STATE_NAME
    with CheckpointEngine(tmp_path) as store:
        loads = [store.load, lambda: store.load(info.path), lambda: load_checkpoint(state_file),
                 lambda: Tiny.load_from_checkpoint(tmp_path)]
        for load in loads:
            with pytest.raises(UnusableCheckpoint) as err:
                load()
            assert err.value.path == info.path
            assert one_line(err.value).startswith(f"{state_file}: not a torch checkpoint (")


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > MARKER",))


def test_a_malicious_pickle_is_refused_in_one_line_and_never_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)                        # where the payload would write MARKER
    foreign = tmp_path / "evil.pt"
    torch.save({"epoch": 0, "state_dict": {}, "payload": _Evil()}, foreign)
    info = commit_raw(tmp_path / "run", 9, foreign.read_bytes())
    assert ck.verify(info.path).valid                  # the bytes are as committed: it is the content
    state_file = info.path / ck.STATE_NAME
    with CheckpointEngine(tmp_path / "run") as store:
        loads = [(store.load, info.path), (lambda: store.load(info.path), info.path),
                 (lambda: load_checkpoint(info.path), info.path),
                 (lambda: Tiny.load_from_checkpoint(state_file), info.path),
                 (lambda: load_unverified(foreign), foreign)]
        for load, unusable in loads:
            with pytest.raises(UnusableCheckpoint) as err:
                load()
            named = foreign if unusable == foreign else state_file
            assert err.value.path == unusable
            assert one_line(err.value) == (
                f"{named}: refused: it holds objects other than tensors and plain containers "
                f"(GLOBAL {os.system.__module__}.system); traind loads checkpoints with weights_only=True only")
            assert "weights_only=False" not in str(err.value)
    assert not (tmp_path / "MARKER").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_bad_map_location_is_not_blamed_on_the_checkpoint(tmp_path):
    (info,) = save_steps(tmp_path, 1)
    with pytest.raises(RuntimeError) as err:
        load_checkpoint(info.path, map_location="cuda")
    assert not isinstance(err.value, UnusableCheckpoint)
