"""Checkpoints in an object store (any fsspec URL), with the local format and the local trust rules.

Layout under the URL given as `checkpoint.remote`:
    URL/step-000001200/state.pt         the data files, uploaded first
    URL/step-000001200/MANIFEST.json    uploaded last: the commit marker, byte for byte the local one

A remote checkpoint is trusted only when its manifest passes the store's one rule
(format.read_manifest), names the step of its directory, and every file's bytes hash to the
manifest's block checksums (deep; sizes only for a quick listing). A half-uploaded checkpoint has
no manifest and is never valid. Deleting one removes its manifest first (one atomic request), so a
kill mid-delete leaves an uncommitted directory, never a trusted partial one. Downloading goes
through the local commit protocol: a .tmp- dir, every checksum checked, the manifest last, a rename.

fsspec (and s3fs, gcsfs, adlfs) is imported only when a Remote is made: without a remote nothing
here loads it. Every failure of the store surfaces as a one-line RemoteError (no credentials in it).
"""
from __future__ import annotations

import copy
import dataclasses
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import xxhash

from ..contract.errors import TraindError
from ..fs.durable import fsync_path
from . import format as fmt
from . import retention
from .commit import WriterLock, begin

URL_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
INSTALL_HINT = "pip install 'traind[remote]'"
_STAND_IN_ROOT = Path("/nonexistent-traind-remote")   # retention's choose_keep works on paths
_RAISE = object()


class RemoteError(TraindError):
    """The object store could not be reached, or refused a request."""


class UploadCancelled(Exception):
    """An upload given up on purpose (a newer checkpoint must go first, or the supervisor stops)."""


def is_remote_url(text) -> bool:
    return isinstance(text, str) and bool(URL_RE.match(text))


def url_problem(url) -> str | None:
    """Why `url` cannot be a remote (for the spec's check), or None."""
    if not is_remote_url(url):
        return "a URL such as s3://bucket/prefix, gs://..., az://..., file:///shared/dir"
    protocol = url.split("://", 1)[0].lower()
    try:
        import fsspec
    except ImportError:
        return f"a URL fsspec can open, and fsspec installed ({INSTALL_HINT})"
    try:
        fsspec.get_filesystem_class(protocol)
    except ValueError:
        return f"a URL with a protocol fsspec knows ({protocol}:// is not one)"
    except ImportError as err:
        return f"a URL whose fsspec implementation is installed ({protocol}://: {_one_line(err)})"
    return None


def redacted(url: str) -> str:
    """The URL without user:password@ (some fsspec protocols take them in the URL)."""
    return re.sub(r"(://)[^/@]*@", r"\1", url)


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return f"{type(err).__name__}: {text}"[:300]


def parse_manifest(raw: bytes, where: str) -> tuple[dict | None, str | None]:
    """A remote manifest's bytes through the store's one rule; errors name `where`."""
    return fmt.parse_manifest(raw, where)


@dataclass
class Upload:
    step: int
    sent_bytes: int          # data bytes sent (files already there with the same checksums are not)
    total_bytes: int
    seconds: float
    how: str                 # "uploaded" | "manifest only" | "already there"


class Remote:
    """One remote checkpoints location. Methods raise RemoteError when the store fails."""

    def __init__(self, url: str, options: dict | None = None, *, put_options: dict | None = None):
        self.url = redacted(url.rstrip("/"))
        self.put_options = dict(put_options or {})     # e.g. {"chunksize": ...} for s3fs's part size
        # step -> manifest bytes of the remote copies this object uploaded or downloaded and
        # verified: only their remote bytes are trusted without reading them again
        self.known_good: dict[int, bytes] = {}
        self.unreachable_at_start: str | None = None     # check_bucket(unreachable_ok=True) could not reach it
        self._said_unreachable = False                   # ... which the first listing reports instead of retrying
        try:
            import fsspec
        except ImportError:
            raise TraindError(f"{self.url}: a remote needs fsspec ({INSTALL_HINT})") from None
        try:    # botocore edits the config dicts it is given: each Remote gets its own copy
            self.fs, root = fsspec.core.url_to_fs(url.rstrip("/"), **copy.deepcopy(options or {}))
        except Exception as err:     # an unknown protocol, a missing s3fs, a bad option
            raise RemoteError(f"{self.url}: cannot open: {_one_line(err)}") from None
        self.root = root.rstrip("/")

    def check_bucket(self, *, unreachable_ok: bool = False) -> None:
        """An object store's bucket must exist: traind makes none (a typo would otherwise show up
        as every upload failing with "not found"). A RemoteError naming it; file paths pass.
        unreachable_ok: a store that cannot be reached now passes (the mirror retries it)."""
        protocol = self.fs.protocol if isinstance(self.fs.protocol, str) else self.fs.protocol[0]
        if protocol in ("file", "local", "memory"):
            return
        bucket = self.root.split("/", 1)[0]
        # info(), not exists(): exists() says False for an endpoint it cannot reach as well
        try:
            found = self._call(f"look up bucket {bucket!r}", self.fs.info, bucket, missing=None)
        except RemoteError as err:
            if unreachable_ok:
                self.unreachable_at_start = str(err)     # the start-up's other calls need not find out again
                return
            raise
        if found is None:
            raise RemoteError(f"{self.url}: bucket {bucket!r} does not exist (traind creates no bucket: "
                              "make it first, or fix the URL)")

    # --- names -------------------------------------------------------------------------------
    def where(self, step: int, name: str | None = None) -> str:
        return "/".join([self.url, fmt.step_dir_name(step)] + ([name] if name else []))

    def _path(self, step: int, name: str | None = None) -> str:
        return "/".join([self.root, fmt.step_dir_name(step)] + ([name] if name else []))

    def _call(self, what: str, fn, *args, missing=_RAISE, **kw):
        """fn(*args) with the store's failures as one RemoteError; FileNotFoundError -> `missing`."""
        try:
            return fn(*args, **kw)
        except FileNotFoundError:
            if missing is _RAISE:
                raise RemoteError(f"{self.url}: {what}: not found") from None
            return missing
        except UploadCancelled:
            raise
        except Exception as err:     # botocore, aiohttp, asyncio: none of them an OSError
            raise RemoteError(f"{self.url}: {what} failed: {_one_line(err)}") from None

    # --- reading -----------------------------------------------------------------------------
    def objects(self, step: int | None = None) -> dict[int, dict[str, int]]:
        """{step: {file name: size}} of the step dirs under the URL (one listing), newest first."""
        base = self.root if step is None else self._path(step)
        self.fs.invalidate_cache(base)
        found = self._call("list", self.fs.find, base, detail=True, missing={}) or {}
        out: dict[int, dict[str, int]] = {}
        for path, info in found.items():
            rel = path.rstrip("/")[len(self.root) + 1:] if path.startswith(self.root + "/") else ""
            parts = rel.split("/")
            m = fmt.STEP_DIR_RE.match(parts[0]) if len(parts) == 2 else None
            if m and info.get("type", "file") == "file":
                out.setdefault(int(m.group(1)), {})[parts[1]] = int(info.get("size") or 0)
        return dict(sorted(out.items(), reverse=True))

    def read_manifest(self, step: int) -> tuple[dict | None, bytes | None, str | None]:
        """(manifest, its bytes, None) or (None, bytes or None, why it is not a commit marker)."""
        where = self.where(step, fmt.MANIFEST_NAME)
        raw = self._call("read manifest", self.fs.cat_file, self._path(step, fmt.MANIFEST_NAME), missing=None)
        if raw is None:
            return None, None, f"{where}: missing manifest (never committed)"
        man, err = parse_manifest(raw, where)
        if man is not None and man["step"] != step:
            return None, raw, (f"{where}: field 'step': {man['step']} does not match the directory name "
                               "(a manifest from another checkpoint)")
        return man, raw, err

    def check(self, step: int, files: dict[str, int], *, deep: bool, every_file: bool = False) -> fmt.CheckpointInfo:
        """Verify one remote checkpoint: manifest, then each file's size (and its bytes, deep)."""
        man, _, err = self.read_manifest(step)
        if man is None:
            return fmt.CheckpointInfo(path=self.where(step), step=step, error=err)
        info = fmt.info_from_manifest(self.where(step), man)
        problems = []
        for name, entry in sorted(man["files"].items()):
            problem = self._file_problem(step, name, entry, files.get(name), deep)
            if problem:
                problems.append(problem)
                if not every_file:
                    break
        if problems:
            info.valid, info.error = False, "; ".join(problems)
        return info

    def _file_problem(self, step: int, name: str, entry: dict, size: int | None, deep: bool) -> str | None:
        where = self.where(step, name)
        if size is None:
            return f"{where}: missing file (upload incomplete)"
        if size != entry["size"]:
            return f"{where}: size {size}, manifest says {entry['size']}"
        if not deep:
            return None
        want = entry[fmt.BLOCKS_FIELD]
        got = self._call(f"read {name}", self._digests, self._path(step, name), entry["block_size"])
        bad = [i for i, (g, w) in enumerate(zip(got, want)) if g != w]
        if bad or len(got) != len(want):
            i, bs = (bad[0] if bad else 0), entry["block_size"]
            return (f"{where}: checksum mismatch (corrupted) in {len(bad) or 1} block(s), "
                    f"first at bytes {i * bs}-{min(size, (i + 1) * bs)}")
        return None

    def _digests(self, path: str, block_size: int) -> list[str]:
        digests = []
        with self.fs.open(path, "rb", block_size=block_size) as f:
            while block := f.read(block_size):
                digests.append(xxhash.xxh3_128_hexdigest(block))
        return digests

    def list_checkpoints(self, *, deep: bool = True, every_file: bool = False) -> list[fmt.CheckpointInfo]:
        """Every remote step dir, newest first, each checked (`path` holds its URL, a str)."""
        if self.unreachable_at_start and not self._said_unreachable:   # found a moment ago: no second wait
            self._said_unreachable = True
            raise RemoteError(self.unreachable_at_start)
        return [self.check(step, files, deep=deep, every_file=every_file) for step, files in self.objects().items()]

    def latest_valid(self) -> tuple[fmt.CheckpointInfo | None, list[fmt.CheckpointInfo]]:
        skipped = []
        for step, files in self.objects().items():
            info = self.check(step, files, deep=True)
            if info.valid:
                return info, skipped
            skipped.append(info)
        return None, skipped

    # --- writing -----------------------------------------------------------------------------
    def upload(self, local_dir: Path, step: int, *, cancelled: Callable[[], bool] = lambda: False) -> Upload:
        """Upload one committed local checkpoint: data files first, the manifest last.

        The local copy is verified first (every byte): a rotten one is never uploaded. Files this
        object itself put (or fetched and verified) under a still-committed manifest with the same
        checksums are not sent again: an emergency checkpoint at the step of the last periodic one
        re-sends only its manifest. Remote bytes nobody here checked are always replaced."""
        started = time.monotonic()
        local = fmt.verify(local_dir)
        if not local.valid or local.step != step:
            raise TraindError(f"local checkpoint step {step} not uploaded: "
                              f"{local.error or f'its manifest says step {local.step}'}")
        raw = (Path(local_dir) / fmt.MANIFEST_NAME).read_bytes()
        man, _ = fmt.read_manifest(Path(local_dir))
        total = sum(e["size"] for e in man["files"].values())
        files = self.objects(step).get(step, {})
        old, old_raw = (self.read_manifest(step)[:2] if fmt.MANIFEST_NAME in files else (None, None))
        trusted = old is not None and self.known_good.get(step) == old_raw
        same = {n for n, e in man["files"].items()
                if trusted and old["files"].get(n) == e and files.get(n) == e["size"]}
        if old_raw == raw and len(same) == len(man["files"]):
            return Upload(step, 0, total, time.monotonic() - started, "already there")
        if old_raw is not None:     # un-commit before any data changes under the old manifest
            self._call("un-commit", self.fs.rm_file, self._path(step, fmt.MANIFEST_NAME), missing=None)
        if getattr(self.fs, "local_file", False):
            self._call("mkdir", self.fs.makedirs, self._path(step), exist_ok=True)
        sent = 0
        for name, entry in sorted(man["files"].items(), key=lambda ne: -ne[1]["size"]):
            if name in same:
                continue
            if cancelled():
                raise UploadCancelled(step)
            try:
                self._call(f"upload {name}", self.fs.put_file, str(Path(local_dir) / name), self._path(step, name),
                           callback=_watch(cancelled), **self.put_options)
            except RemoteError:
                if cancelled():      # parts still in flight when s3fs aborted: their failure is ours
                    raise UploadCancelled(step) from None
                raise
            sent += entry["size"]
        there = self.objects(step).get(step, {})
        for name, entry in man["files"].items():
            if there.get(name) != entry["size"]:
                raise RemoteError(f"{self.where(step, name)}: {there.get(name)} bytes after the upload, "
                                  f"expected {entry['size']}; not committed")
        self._call("commit", self.fs.pipe_file, self._path(step, fmt.MANIFEST_NAME), raw)
        if self._call("read back manifest", self.fs.cat_file, self._path(step, fmt.MANIFEST_NAME)) != raw:
            raise RemoteError(f"{self.where(step, fmt.MANIFEST_NAME)}: reads back different bytes; not committed")
        self.known_good[step] = raw
        return Upload(step, sent, total, time.monotonic() - started, "uploaded" if sent else "manifest only")

    def download(self, step: int, ckpt_dir) -> fmt.CheckpointInfo:
        """Fetch a remote checkpoint into ckpt_dir through the commit protocol, under the writer
        lock. A copy that fails verification is removed and returned invalid (its .error names the
        remote object); nothing half-fetched is ever visible. RemoteError when the store fails."""
        ckpt_dir = fmt.checkpoints_dir(ckpt_dir)
        man, raw, err = self.read_manifest(step)
        if man is None:
            return fmt.CheckpointInfo(path=self.where(step), step=step, error=err)
        with WriterLock(ckpt_dir):
            pending = begin(ckpt_dir, step, sum(e["size"] for e in man["files"].values()))
            tmp = pending.tmp_path
            try:
                for name in sorted(man["files"]):
                    self._call(f"download {name}", self.fs.get_file, self._path(step, name),
                               str(pending.file_path(name)))
                    fsync_path(pending.file_path(name))
                info = pending.commit_manifest(raw)   # verified before it is renamed
            finally:
                pending.abort()
        if not info.valid:
            info.error = (info.error or "").replace(str(tmp), self.where(step))
            info.path = self.where(step)
        else:
            self.known_good[step] = raw
        return info

    def delete(self, step: int) -> None:
        """Manifest first (the checkpoint is no longer committed), then the rest."""
        self._call("un-commit", self.fs.rm_file, self._path(step, fmt.MANIFEST_NAME), missing=None)
        for name in self.objects(step).get(step, {}):
            self._call("delete", self.fs.rm_file, self._path(step, name), missing=None)

    def prune(self, keep_last: int, keep_best: dict | None = None, protect_steps=()) -> list[int]:
        """Remote retention, by the local rule (retention.choose_keep): never the newest valid one
        (the remote resume point), never one whose successor is not committed remotely. Keepers are
        judged by manifest and sizes; their bytes were checked when they were uploaded."""
        infos = self.list_checkpoints(deep=False)
        stand_ins = [dataclasses.replace(i, path=_STAND_IN_ROOT / fmt.step_dir_name(i.step)) for i in infos]
        keep = retention.choose_keep(stand_ins, keep_last, keep_best,
                                     [_STAND_IN_ROOT / fmt.step_dir_name(s) for s in protect_steps])
        doomed = [i.step for i in stand_ins if i.path.resolve() not in keep]
        for step in doomed:
            self.delete(step)
        return doomed

    def abort_stale_uploads(self) -> int:
        """Abort multipart uploads left under this prefix by a writer that died (S3 only)."""
        lister = getattr(self.fs, "list_multipart_uploads", None)
        if lister is None:
            return 0
        bucket, key, _ = self.fs.split_path(self.root)
        uploads = self._call("list multipart uploads", lister, bucket, missing=[]) or []
        stale = [u for u in uploads if str(u.get("Key", "")).startswith(key.rstrip("/") + "/")]
        for u in stale:
            self._call("abort multipart upload", self.fs.abort_mpu, bucket, u["Key"], u["UploadId"], missing=None)
        return len(stale)


_watch_class = None


def _watch(cancelled: Callable[[], bool]):
    """An fsspec progress callback that gives up the transfer when `cancelled()` turns true
    (s3fs then aborts the multipart upload)."""
    global _watch_class
    if _watch_class is None:
        from fsspec.callbacks import Callback

        class Watch(Callback):
            def __init__(self, cancelled):
                super().__init__()
                self.cancelled = cancelled

            def call(self, *args, **kwargs):
                if self.cancelled():
                    raise UploadCancelled("cancelled")
        _watch_class = Watch
    return _watch_class(cancelled)
