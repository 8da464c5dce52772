"""Writing a checkpoint: the commit protocol and the one writer's lock (torch-free).

Protocol (PendingCheckpoint): write + fsync every file in the temp dir -> write + fsync the
manifest (built by format.py) -> fsync the temp dir -> rename it to step-N -> fsync the
checkpoints dir. A kill at any point leaves either the previous set of committed checkpoints or
that set plus the complete new one; discovery (format.verify) trusts nothing else.

Every way a checkpoint comes into being goes through this one protocol, and only this module
makes a PendingCheckpoint: begin() for the one writer, attach() for the other ranks of a group
writing into the writer's temp dir (they never commit or remove it). The job side's engine
(jobs/engine/engine.py) calls commit() for its saves and imports; a download from a remote calls
commit_manifest() with the remote's manifest bytes, verified before the rename.
"""
from __future__ import annotations

import os
from pathlib import Path

from ..contract.errors import TraindError
from ..fs.durable import fsync_dir, fsync_path, make_dirs_durable, remove_tree, swap_into_place, write_all
from ..fs.locks import ExclusiveFileLock
from . import format as fmt
from . import hashing, retention
from .faults import reach
from .format import CheckpointInfo
from .hashing import HashingWriter

# Free space required beyond the expected size: torch.save adds headers and 64-byte alignment.
SPACE_MARGIN_FRACTION = 0.05
SPACE_MARGIN_BYTES = 1 << 20


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def check_free_space(ckpt_dir, step: int, expected_bytes: int) -> None:
    """Raise a clear TraindError, before anything is written, if the state will not fit."""
    ckpt_dir = fmt.checkpoints_dir(ckpt_dir)
    make_dirs_durable(ckpt_dir)
    need = int(expected_bytes * (1 + SPACE_MARGIN_FRACTION)) + SPACE_MARGIN_BYTES
    have = free_bytes(ckpt_dir)
    if have < need:
        raise TraindError(
            f"{ckpt_dir}: not enough free space for checkpoint step {step}: need {_mib(need)} "
            f"(state {_mib(expected_bytes)} + margin), {_mib(have)} free; existing checkpoints untouched")


def begin(ckpt_dir, step: int, expected_bytes: int) -> "PendingCheckpoint":
    """Check free space, then make the temp dir a checkpoint is written into."""
    ckpt_dir = fmt.checkpoints_dir(ckpt_dir)
    check_free_space(ckpt_dir, step, expected_bytes)
    tmp = ckpt_dir / fmt.tmp_dir_name(step)
    tmp.mkdir()
    reach("begin:mkdir")
    return PendingCheckpoint(ckpt_dir, step, tmp)


def attach(ckpt_dir, step: int, tmp_path) -> "PendingCheckpoint":
    """The temp dir another process began (a group's rank 0): write files into it, never commit
    or remove it (abort() does nothing here; the owner cleans up)."""
    pending = PendingCheckpoint(fmt.checkpoints_dir(ckpt_dir), step, Path(tmp_path))
    pending.owner = False
    return pending


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


class PendingCheckpoint:
    """A checkpoint being written: files go into .tmp_path; commit() makes it visible atomically."""

    def __init__(self, ckpt_dir: Path, step: int, tmp_path: Path):
        self.ckpt_dir = ckpt_dir
        self.step = int(step)
        self.tmp_path = tmp_path
        self._files: dict[str, dict] = {}
        self.owner = True      # False for attach(): commit and abort belong to another process
        self.done = False

    def file_path(self, name: str) -> Path:
        if "/" in name or name in ("", ".", "..", fmt.MANIFEST_NAME):
            raise ValueError(f"bad checkpoint file name {name!r}")
        return self.tmp_path / name

    def open_file(self, name: str) -> HashingWriter:
        """A writer that checksums while writing; pass close()'s result to record()."""
        return HashingWriter(self.file_path(name), hashing.BLOCK_SIZE, reach=reach)

    def record(self, name: str, size: int, digests: list[str], block_size: int | None = None) -> None:
        """Register a file written (and fsynced) by the caller with its block checksums."""
        self._files[name] = fmt.file_entry(size, digests, block_size)

    def write_bytes(self, name: str, data) -> None:
        w = self.open_file(name)
        try:
            w.write(data)
        except BaseException:
            w.discard()
            raise
        self.record(name, *w.close())

    def commit(self, step: int | None = None, epoch: int | None = None, reason: str = "periodic",
               metrics: dict | None = None, extra: dict | None = None) -> CheckpointInfo:
        step = self.step if step is None else int(step)
        if step != self.step:
            raise ValueError(f"commit step {step} differs from begin step {self.step}")
        # Files the caller wrote itself through file_path(): hash (and fsync) them now.
        for entry in sorted(os.scandir(self.tmp_path), key=lambda e: e.name):
            if entry.name not in self._files and entry.name != fmt.MANIFEST_NAME:
                fsync_path(Path(entry.path))
                self.record(entry.name, *hashing.hash_blocks(Path(entry.path)))
        reach("commit:files-durable")
        manifest, data = fmt.build_manifest(step, epoch, reason, metrics, self._files, extra)
        final, _ = self._seal(data)
        return fmt.info_from_manifest(final, manifest)

    def commit_manifest(self, data: bytes) -> CheckpointInfo:
        """Commit the files already in the temp dir under a manifest built elsewhere (a remote
        copy's, kept byte for byte). Every file is verified against it before the rename: an
        invalid CheckpointInfo comes back and nothing is committed (the caller aborts)."""
        final, problem = self._seal(data, verify_first=True)
        return problem if final is None else fmt.verify(final, deep=False)

    def _seal(self, data: bytes, verify_first: bool = False) -> tuple[Path | None, CheckpointInfo | None]:
        """Manifest last: write and fsync it, fsync the temp dir, rename to step-N, fsync the
        parent. Returns (step-N, None), or (None, why) when verify_first finds a file that does
        not match the manifest."""
        if not self.owner:
            raise ValueError(f"{self.tmp_path}: attached to another process's checkpoint; its owner commits")
        fd = os.open(self.tmp_path / fmt.MANIFEST_NAME, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            write_all(fd, memoryview(data))
            reach("commit:manifest-written")
            os.fsync(fd)
        finally:
            os.close(fd)
        reach("commit:manifest-durable")
        fsync_dir(self.tmp_path)
        reach("commit:tmpdir-durable")
        if verify_first:
            checked = fmt.verify(self.tmp_path)         # the one validity rule: parse + every byte
            if not checked.valid:
                return None, checked
        final = self.ckpt_dir / fmt.step_dir_name(self.step)
        replaced = self.rename_into_place(final)
        reach("commit:renamed")
        fsync_dir(self.ckpt_dir)
        reach("commit:parent-durable")
        self.done = True
        if replaced is not None:
            remove_tree(replaced)
        retention.remember_verified(final)
        return final, None

    def rename_into_place(self, final: Path) -> Path | None:
        """Rename the temp dir to step-N. If step-N already exists (a second save at the same
        step), swap the two atomically so step-N is always a complete checkpoint; the old one ends
        under a .trash- name that the caller removes. Returns that trash path or None."""
        try:
            os.rename(self.tmp_path, final)
            return None
        except OSError:
            if not final.exists():
                raise
        trash = self.ckpt_dir / fmt.trash_dir_name(final.name)
        swap_into_place(self.tmp_path, final, trash)
        return trash

    def abort(self) -> None:
        """Remove the temp dir (after a failed write); nothing was committed."""
        if self.owner and not self.done and self.tmp_path.exists():
            remove_tree(self.tmp_path)
        self.done = True


class WriterLock(ExclusiveFileLock):
    """flock on CKPT_DIR/.lock. acquire() refuses a second writer, naming the holder's pid; a dead
    holder's lock is gone with its process. Once held, leftovers of dead writers are removed.
    Forked children (DataLoader workers) don't inherit it: a restart must not wait for them."""

    fork_private = True

    def __init__(self, ckpt_dir):
        self.ckpt_dir = fmt.checkpoints_dir(ckpt_dir)
        super().__init__(self.ckpt_dir / fmt.LOCK_NAME, what=f"checkpoint dir {self.ckpt_dir}")

    def acquire(self) -> "WriterLock":
        try:
            self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:   # a file named `checkpoints`, a read-only mount
            raise TraindError(f"{self.ckpt_dir}: cannot create the checkpoints dir: {err.strerror or err}") from None
        super().acquire()
        retention.clean_stale(self.ckpt_dir)
        return self
