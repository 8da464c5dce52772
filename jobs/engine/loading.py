"""Loading a checkpoint: the one place where state.pt bytes become a state dict.

Every load is verified first (sizes + xxh3 checksums from MANIFEST.json, traind.store.verify),
whatever names the checkpoint: a run dir or checkpoints dir (its newest valid checkpoint), a step
dir, or any file inside one (state.pt). A file without a manifest (a plain torch.save, a Lightning
.ckpt) cannot be verified, so it loads only through the explicit `load_unverified(path)`
(`TrainModule.load_from_checkpoint(path, unverified=True)`). Every load is
torch.load(weights_only=True): a checkpoint is data, and a crafted pickle must never run code.
There is no way to turn that off here, and no message suggests it.
"""
from __future__ import annotations

import logging
import pickle
import re
import zipfile
from pathlib import Path

import torch

from traind import store
from traind.contract import exitcodes
from traind.contract.errors import TraindError, UsageError

log = logging.getLogger("traind.store")

# torch.save's legacy (non-zip) format opens with a pickled magic number (protocol 2, LONG1).
_LEGACY_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"
_REFUSED_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


class UnusableCheckpoint(TraindError):
    """A checkpoint whose bytes are as committed (it verifies) but that can never be loaded:
    torch cannot read its state.pt, or weights_only=True refuses what it holds. Loading it
    again fails the same way, so a resume must fall back to another checkpoint.
    `.path`: the checkpoint dir (the file itself for `load_unverified`). A job that cannot load
    the resume point it was given exits 65: its supervisor sets that checkpoint aside (never
    deleting it) and restarts from the previous valid one, without spending the restart budget."""

    exit_code = exitcodes.UNUSABLE_CHECKPOINT

    def __init__(self, path, message: str) -> None:
        super().__init__(message)
        self.path = Path(path)


def find_checkpoint(path) -> store.CheckpointInfo:
    """The verified checkpoint `path` names: a step dir or a file in one (state.pt, MANIFEST.json),
    or a run/checkpoints dir (its newest valid checkpoint). Raises a one-line TraindError."""
    path = Path(path)
    if not path.exists():
        raise TraindError(f"{path}: no such file or directory")
    if path.is_file():
        if not (path.parent / store.MANIFEST_NAME).exists() and not store.STEP_DIR_RE.match(path.parent.name):
            raise UsageError(
                f"{path}: no {store.MANIFEST_NAME} next to it, so it cannot be verified; to load a file "
                f"you trust as it is, call load_from_checkpoint(path, unverified=True) or "
                f"traind.jobs.engine.loading.load_unverified(path)")
        path = path.parent
    if (path / store.MANIFEST_NAME).exists() or store.STEP_DIR_RE.match(path.name):
        info = store.verify(path)
        if not info.valid:
            raise TraindError(f"cannot load checkpoint: {info.error}")
        return info
    chosen, skipped = store.latest_valid(store.checkpoints_dir(path))
    for bad in skipped:
        log.warning("skipped checkpoint %s: %s", bad.path, bad.error)
    if chosen is None:
        why = f" ({len(skipped)} invalid, newest: {skipped[0].error})" if skipped else ""
        raise TraindError(f"{path}: no valid checkpoint{why}")
    return chosen


def load_checkpoint(path, map_location="cpu") -> dict:
    """Verify the checkpoint `path` names (see find_checkpoint), then load its state.pt.
    A state.pt torch cannot read, or one weights_only=True refuses, is an UnusableCheckpoint."""
    return read_state(path, map_location)[1]


def load_unverified(path, map_location="cpu") -> dict:
    """Load one file as it is, without a manifest to check it against: the explicit way to load a
    file that is not a traind checkpoint (a plain torch.save, a Lightning .ckpt) and that you trust
    to be intact. Still weights_only=True: it never runs code from the file."""
    path = Path(path)
    if not path.is_file():
        why = "is a directory" if path.is_dir() else "no such file"
        raise UsageError(f"{path}: {why}; load_unverified takes one file (load_checkpoint takes a directory)")
    return _read(path, map_location, unusable=path)


def read_state(path, map_location="cpu", *, unverified: bool = False) -> tuple[Path, dict]:
    """(the file read, its state): load_unverified if asked for, else load_checkpoint."""
    if unverified:
        return Path(path), load_unverified(path, map_location)
    info = find_checkpoint(path)
    state_file = info.path / store.STATE_NAME
    return state_file, _read(state_file, map_location, unusable=info.path)


def load_state(path, map_location="cpu", *, unverified: bool = False) -> dict:
    """The state dict of a checkpoint (verified), or of one trusted file (unverified=True)."""
    return read_state(path, map_location, unverified=unverified)[1]


def _read(state_file: Path, map_location, unusable: Path) -> dict:
    try:
        state = torch.load(state_file, map_location=map_location, weights_only=True)
    except Exception as err:
        why = _unreadable_because(state_file, err)
        if why is None:
            raise          # the file is torch's; the failure is elsewhere (e.g. a CUDA map_location)
        raise UnusableCheckpoint(unusable, f"{state_file}: {why}") from None
    if not isinstance(state, dict):
        raise UnusableCheckpoint(unusable, f"{state_file}: not a traind/Lightning checkpoint "
                                           f"(it holds a {type(state).__name__}, not a dict)")
    return state


def _unreadable_because(state_file: Path, err: Exception) -> str | None:
    """Why torch.load failed, when the file's content is the cause; None when it is not."""
    if isinstance(err, pickle.UnpicklingError):
        refused = _REFUSED_GLOBAL.search(str(err))
        if refused:
            return _refusal(f"GLOBAL {refused.group(1)}")
        if _torch_file(state_file):
            return _refusal(_torch_reason(str(err)))
    elif _torch_file(state_file):
        return None
    try:
        with open(state_file, "rb") as f:
            head = f.read(16)
    except OSError as read_err:
        return f"unreadable: {read_err.strerror or read_err}"
    what = f"it starts with {head!r}" if head else "it is empty"
    return f"not a torch checkpoint (neither torch's zip format nor its legacy format; {what})"


def _refusal(what: str) -> str:
    return (f"refused: it holds objects other than tensors and plain containers ({what}); "
            f"traind loads checkpoints with weights_only=True only")


def _torch_file(path: Path) -> bool:
    """Written by torch.save: a zip holding a data.pkl record, or the legacy format's magic."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                return any(n == "data.pkl" or n.endswith("/data.pkl") for n in z.namelist())
        with open(path, "rb") as f:
            return f.read(len(_LEGACY_MAGIC)) == _LEGACY_MAGIC
    except (OSError, zipfile.BadZipFile):
        return False


def _torch_reason(message: str) -> str:
    """The one line of torch's weights-only refusal that says what was refused, without its advice
    (which is to retry with weights_only=False: never for a checkpoint)."""
    advice = ("weights_only", "trusted source", "file an issue", "documentation")
    for line in message.splitlines():
        line = line.replace("WeightsUnpickler error:", "").strip()
        if line and not any(a in line for a in advice):
            return line[:200]
    return "the weights-only unpickler refused it"
