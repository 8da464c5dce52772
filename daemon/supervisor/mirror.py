"""The supervisor's remote mirror: local commit first, then the object store (checkpoint.remote).

The supervisor owns it, so it works for any job. `attach(spec, ...)` returns a NoMirror (every hook
a no-op) when no remote is set, else a Mirror, whose hooks the loop calls:
- `enqueue(path, step, reason)` on each "checkpoint committed" message: the step dir's files are
  hard-linked into RUN_DIR/.upload/ (the job may prune the dir before its turn; the links keep the
  bytes) and queued for the uploader thread;
- `resume_finder(find)` wraps the loop's finder: the newest checkpoint valid locally or remotely, a
  newer remote one downloaded (verified) first; `refuse_spawn()`: no local one and the remote
  cannot be read (starting fresh would ignore the remote's progress);
- `drain(step, deadline)`, the last hook before the supervisor exits: waits until `step` is
  remotely committed or the deadline passes; returns the words for the final message;
- `status()` for status.json.
The uploader takes the newest queued checkpoint (it supersedes older queued ones), uploads it
(traind.store.remote), prunes the remote by the local rules and records the figures in
RUN_DIR/remote.json. Failures are retried with backoff and reported each time (events.jsonl,
status.json, remote.json). A newer emergency/final checkpoint cancels an older upload in flight.
"""
from __future__ import annotations

import atexit
import itertools
import json
import os
import threading
import time
from pathlib import Path
from typing import Callable, NamedTuple

from .. import store
from ..contract import protocol
from ..contract.errors import TraindError
from ..fs.durable import atomic_write, remove_tree
from .osproc import SpawnFailure

UPLOAD_DIR = ".upload"
FIGURES_NAME = "remote.json"
BACKOFF_INITIAL_S, BACKOFF_MAX_S, URGENT_RETRY_MAX_S = 1.0, 30.0, 2.0
KEEP_UPLOADS = 10          # upload records kept in remote.json
UPLOAD_NICE = 10           # the uploading threads' nice value (see Mirror._lower_priority)
GIB, MIB = float(1 << 30), float(1 << 20)
URGENT = (protocol.REASON_EMERGENCY, protocol.REASON_FINAL)


def read_figures(run_dir: Path) -> dict:
    """RUN_DIR/remote.json as written by the mirror ({} when absent or unreadable)."""
    try:
        figures = json.loads((Path(run_dir) / FIGURES_NAME).read_text())
    except (OSError, ValueError):
        return {}
    return figures if isinstance(figures, dict) else {}


def upload_seconds_per_gib(run_dir: Path) -> float | None:
    """The slowest of the recent uploads, in seconds per GiB (for sizing a warning's lead)."""
    value = read_figures(run_dir).get("seconds_per_gib")
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 else None


class NoMirror:
    """No remote set: every hook does nothing."""
    remote = None

    def resume_finder(self, find):
        return find

    def enqueue(self, path, step, reason) -> None:
        pass

    def refuse_spawn(self) -> None:
        return None

    def drain(self, step, deadline) -> str:
        return ""

    def status(self) -> None:
        return None

    def close(self) -> None:
        pass


def attach(spec, say: Callable[[str], None], event: Callable[..., None], clock=time.monotonic):
    if not spec.checkpoint.remote:
        return NoMirror()
    from ..store.remote import Remote
    ck = spec.checkpoint
    remote = Remote(ck.remote, ck.remote_options)
    remote.check_bucket(unreachable_ok=True)    # a missing bucket: one line at start, not failed uploads
    keep_best = None if ck.keep_best is None else {"metric": ck.keep_best.metric, "mode": ck.keep_best.mode,
                                                   "k": ck.keep_best.k}
    return Mirror(remote, spec.run_dir, say=say, event=event, keep_last=ck.keep_last, keep_best=keep_best,
                  grace_seconds=spec.preemption.grace_seconds, clock=clock)


class _Item(NamedTuple): step: int; reason: str | None; path: Path; staged: bool   # noqa: E702


class Mirror:
    def __init__(self, remote, run_dir: Path, *, say, event, keep_last: int = 3, keep_best: dict | None = None,
                 grace_seconds: float = 90.0, clock=time.monotonic):
        self.remote, self.run_dir = remote, Path(run_dir)
        self.say = lambda text: None if self.closed else say(f"remote: {text}")   # silent once closed
        self.event, self.clock = event, clock
        self.keep_last, self.keep_best, self.grace_seconds = keep_last, keep_best, grace_seconds
        self.cond = threading.Condition()
        self.pending: dict[int, _Item] = {}
        self.uploading: _Item | None = None
        self.committed_step: int | None = None      # newest step known to be remotely committed
        self.failures = 0                           # in a row; a success resets it
        self.last_error: dict | None = None
        self.refusal: SpawnFailure | None = None
        self.closed = False
        self.enqueued = 0                           # enqueue() calls: wakes a backoff wait
        self.uploaded_once = False                  # the first upload is said; later routine ones are not
        self.listed_step: int | None = None         # newest remote step the last listing showed committed
        self.figures = read_figures(self.run_dir)
        self.uploads: list[dict] = [u for u in self.figures.get("uploads", []) if isinstance(u, dict)]
        self._names = itertools.count(1)
        self._thread = threading.Thread(target=self._run, name="traind-remote-upload", daemon=True)

    def start(self) -> "Mirror":
        """Start the uploader once, from the first hook that needs it (never while the Supervisor is built)."""
        with self.cond:
            if self._thread.ident is not None or self.closed:
                return self
            if (self.run_dir / UPLOAD_DIR).exists():      # a dead supervisor's staging links
                remove_tree(self.run_dir / UPLOAD_DIR)
            self._thread.start()
            atexit.register(self.close)      # stop uploading before the interpreter tears fsspec down
        return self

    # --- main-loop hooks -------------------------------------------------------------------------
    def enqueue(self, path, step, reason) -> bool:
        if not isinstance(step, int) or isinstance(step, bool) or not path:
            return False
        self.start()
        if Path(path).resolve().parent != store.checkpoints_dir(self.run_dir).resolve():   # the job names it
            self.say(f"not uploading {path}: not a checkpoint of this run's checkpoints dir")
            return False
        item = self._stage(Path(path), step, reason)
        if item is None:
            return False
        with self.cond:
            old = self.pending.pop(step, None)
            self.pending[step] = item
            self.enqueued += 1
            self.cond.notify_all()
        if old is not None and old.staged:
            remove_tree(old.path)
        return True

    def _stage(self, path: Path, step: int, reason) -> _Item | None:
        """Hard links to the checkpoint's files, outside the checkpoints dir: the bytes stay
        while the upload waits, whatever the job prunes. Without hard links: upload in place."""
        stage = self.run_dir / UPLOAD_DIR / f"{store.step_dir_name(step)}-{next(self._names)}"
        try:
            stage.mkdir(parents=True)
            for entry in os.scandir(path):
                if entry.is_file(follow_symlinks=False):
                    os.link(entry.path, stage / entry.name)
            return _Item(step, reason, stage, True)
        except FileNotFoundError:
            remove_tree(stage)
            self.say(f"step {step} was gone before it could be staged for upload (a newer one supersedes it)")
            return None
        except OSError:
            remove_tree(stage)
            return _Item(step, reason, path, False)

    def refuse_spawn(self) -> SpawnFailure | None:
        refusal, self.refusal = self.refusal, None
        return refusal

    def drain(self, step, deadline) -> str:
        """Wait until `step` is remotely committed (queueing it if it never was) or the deadline,
        then stop the uploader: the supervisor's last hook before it exits."""
        if step is None:
            self.close()
            return ""
        deadline = deadline if deadline is not None else self.clock() + self.grace_seconds
        with self.cond:
            known = step in self.pending or (self.uploading is not None and self.uploading.step == step)
        if not known and (self.committed_step is None or self.committed_step < step):
            local = store.checkpoints_dir(self.run_dir) / store.step_dir_name(step)
            if not self.enqueue(local, step, protocol.REASON_FINAL):
                return f"; step {step} could not be uploaded (its local copy is gone)"
        waited = self.clock()
        with self.cond:     # committed, and the thread idle again (its retention pass done), or the deadline
            while ((self.committed_step is None or self.committed_step < step or self.uploading is not None)
                   and self.clock() < deadline):
                self.cond.wait(min(0.5, max(0.01, deadline - self.clock())))
            done, error = self.committed_step is not None and self.committed_step >= step, self.last_error
        self.close()           # the supervisor exits next: nothing more goes up, nothing is said after it
        if done:
            return f"; remotely committed at {self.remote.url} (waited {self.clock() - waited:.2f}s)"
        why = f"last error: {error['error']}" if error else "still uploading"
        stays = (f"step {self.committed_step}" if self.committed_step is not None else
                 "none" if self.listed_step is None else f"step {self.listed_step} (as listed)")
        self.event("remote_not_committed", checkpoint_step=step, reason=why, remote_step=self.committed_step)
        return (f"; remote upload of step {step} NOT committed within the grace period ({why}); "
                f"the remote resume point stays {stays}")

    def status(self) -> dict:
        with self.cond:
            return {"url": self.remote.url, "committed_step": self.committed_step,
                    "pending": sorted(self.pending),
                    "uploading": None if self.uploading is None else self.uploading.step,
                    "failures_in_a_row": self.failures, "last_error": self.last_error,
                    "seconds_per_gib": self.figures.get("seconds_per_gib"),
                    "last_upload": self.uploads[-1] if self.uploads else None}

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()
        if self._thread.ident is not None:
            self._thread.join(timeout=1.0)

    # --- resume ------------------------------------------------------------------------------------
    def resume_finder(self, find):
        def find_with_remote(run_dir):
            self.start()
            local, skipped = find(run_dir)
            return self._newest(run_dir, local, list(skipped))
        return find_with_remote

    def _newest(self, run_dir: Path, local, skipped: list):
        """The local choice, or a newer valid remote checkpoint downloaded into the checkpoints dir."""
        local_step = None if local is None else local.step
        try:
            infos = self.remote.list_checkpoints(deep=False)
            self.listed_step = next((i.step for i in infos if i.valid), None)
            with self.cond:
                busy = set(self.pending) | ({self.uploading.step} if self.uploading else set())
            for info in (i for i in infos if (local_step is None or i.step > local_step) and i.step not in busy):
                got = self.remote.download(info.step, store.checkpoints_dir(run_dir)) if info.valid else info
                if got.valid:
                    with self.cond:
                        self.committed_step = max(got.step, self.committed_step or got.step)
                    newer = "" if local is None else f" (newer than local step {local_step})"
                    self.say(f"downloaded step {got.step} ({got.size / MIB:.1f} MiB) from {self.remote.url}; "
                             f"every checksum verified{newer}")
                    self.event("remote_downloaded", checkpoint_step=got.step, reason=self.remote.url)
                    return got, skipped
                skipped.append(got)     # a bad remote copy: skipped with its reason, like a local one
        except (TraindError, OSError) as err:     # RemoteError: unreachable; else a local failure
            why = str(err) if isinstance(err, TraindError) else f"{err.filename}: {err.strerror or err}"
            self.event("remote_unreachable", reason=why, checkpoint_step=local_step)
            if local is None:
                self.refusal = SpawnFailure(f"no local checkpoint and the remote cannot be used ({why}); not starting "
                                            "fresh, which would ignore the remote's checkpoints")
            else:
                self.say(f"cannot use the remote ({why}); resuming from local step {local_step}")
        return local, skipped

    # --- the uploader thread -------------------------------------------------------------------------
    def _run(self) -> None:
        from ..store.remote import RemoteError
        self._lower_priority()
        try:
            aborted = 0 if getattr(self.remote, "unreachable_at_start", None) else self.remote.abort_stale_uploads()
            if aborted:
                self.say(f"aborted {aborted} multipart upload(s) a dead writer left under {self.remote.url}")
        except RemoteError as err:
            self.say(f"cannot list stale multipart uploads ({err})")
        while not self.closed:
            try:
                self._next_upload()
            except Exception as err:      # never die silently: say it, wait, go on
                self.say(f"uploader error: {err!r}")
                self.event("remote_upload_failed", reason=f"uploader error: {err!r}")
                with self.cond:
                    self.cond.wait(BACKOFF_MAX_S)

    def _lower_priority(self) -> None:
        """Uploads run at nice UPLOAD_NICE: this thread and fsspec's IO thread (Linux nice values are
        per thread), so the periodic ones take the CPU training leaves over; after an emergency stop
        the job has exited and they have the machine. Best effort."""
        try:
            os.setpriority(os.PRIO_PROCESS, 0, UPLOAD_NICE)
            loop = getattr(self.remote.fs, "loop", None)       # async filesystems (s3fs, gcsfs, adlfs)
            if loop is not None:
                loop.call_soon_threadsafe(os.setpriority, os.PRIO_PROCESS, 0, UPLOAD_NICE)
        except (OSError, AttributeError, RuntimeError):
            pass

    def _next_upload(self) -> None:
        with self.cond:
            while not self.pending and not self.closed:
                self.cond.wait()
            if self.closed:
                return
            item = self.uploading = self.pending.pop(max(self.pending))
            dropped = [self.pending.pop(s) for s in list(self.pending)]   # older: superseded by the newest
        for old in dropped:
            self._forget(old, f"superseded by step {item.step}")
        retry = self._upload(item)
        with self.cond:
            self.uploading = None
            if retry and not self.pending:
                self.pending[item.step] = item        # again after the backoff, unless a newer one came
            elif item.staged:
                remove_tree(item.path)
            self.cond.notify_all()
            if retry:
                until, seen = time.monotonic() + self._backoff(item), self.enqueued
                while not self.closed and self.enqueued == seen and time.monotonic() < until:
                    self.cond.wait(until - time.monotonic())

    def _backoff(self, item: _Item | None = None) -> float:
        """Seconds before the next try; an emergency/final checkpoint is retried within 2 s (its
        grace is short)."""
        delay = min(BACKOFF_MAX_S, BACKOFF_INITIAL_S * 2 ** max(0, self.failures - 1))
        return min(URGENT_RETRY_MAX_S, delay) if item is not None and item.reason in URGENT else delay

    def _cancelled(self, item: _Item) -> bool:
        """Give up this upload? When closing, or when a newer emergency/final checkpoint waits."""
        with self.cond:
            return self.closed or any(s > item.step and i.reason in URGENT for s, i in self.pending.items())

    def _upload(self, item: _Item) -> bool:
        """One upload attempt; True if it should be retried."""
        from ..store.remote import RemoteError, UploadCancelled
        try:
            up = self.remote.upload(item.path, item.step, cancelled=lambda: self._cancelled(item))
        except UploadCancelled:
            self._forget(item, "abandoned: the supervisor is exiting" if self.closed else
                         "cancelled: a newer emergency/final checkpoint goes first")
            return False
        except RemoteError as err:
            if self.closed:        # torn down under us at exit: that is not the store's failure
                self._forget(item, "abandoned: the supervisor is exiting")
                return False
            with self.cond:
                self.failures += 1
                self.last_error = {"step": item.step, "error": str(err), "time": time.time(), "attempt": self.failures}
            retry_in = self._backoff(item)
            self.say(f"upload of step {item.step} failed ({err}); retry {self.failures} in {retry_in:.0f}s")
            self.event("remote_upload_failed", checkpoint_step=item.step, reason=str(err), retry_in=retry_in)
            self._write_figures()
            return True
        except (TraindError, OSError) as err:     # the local copy is bad or gone: nothing to retry
            self._forget(item, str(getattr(err, "strerror", None) or err))
            return False
        with self.cond:       # recorded before a waiting drain() sees it: its event comes first
            recovered, self.failures, self.last_error = self.failures, 0, None
            self.committed_step = max(item.step, self.committed_step or item.step)
            self._record(item, up, recovered)
            self.cond.notify_all()
        self._prune()
        return False

    def _record(self, item: _Item, up, recovered: int) -> None:
        per_gib = up.seconds / (up.sent_bytes / GIB) if up.sent_bytes else None
        record = {"step": up.step, "reason": item.reason, "how": up.how, "bytes": up.sent_bytes,
                  "checkpoint_bytes": up.total_bytes, "seconds": round(up.seconds, 3), "time": round(time.time(), 3),
                  "seconds_per_gib": None if per_gib is None else round(per_gib, 3)}
        first, self.uploaded_once = not self.uploaded_once, True
        self.uploads = (self.uploads + [record])[-KEEP_UPLOADS:]
        if first or recovered or item.reason in URGENT:    # routine ones: events.jsonl and remote.json only
            again = f" after {recovered} failed tr{'y' if recovered == 1 else 'ies'}" if recovered else ""
            self.say(f"step {up.step} committed at {self.remote.url}{again} ({up.how}, {up.sent_bytes / MIB:.1f} MiB "
                     f"in {up.seconds:.2f}s)")
        self.event("remote_committed", checkpoint_step=up.step, seconds=round(up.seconds, 3), bytes=up.sent_bytes,
                   how=up.how, reason=item.reason)
        self._write_figures()

    def _prune(self) -> None:
        from ..store.remote import RemoteError
        try:
            gone = self.remote.prune(self.keep_last, self.keep_best,
                                     protect_steps=[s for s in (self.committed_step,) if s is not None])
        except RemoteError as err:
            if self.closed:
                return
            self.say(f"remote retention failed ({err}); it runs again after the next upload")
            self.event("remote_prune_failed", reason=str(err))
            return
        if gone:
            self.event("remote_pruned", reason=", ".join(store.step_dir_name(s) for s in gone))

    def _forget(self, item: _Item, why: str) -> None:
        self.say(f"step {item.step} not uploaded: {why}")
        self.event("remote_upload_skipped", checkpoint_step=item.step, reason=why)
        if item.staged:
            remove_tree(item.path)

    def _write_figures(self) -> None:
        """RUN_DIR/remote.json: the upload figures (seconds per GiB: the slowest of the last 5
        that sent data, which `traind slurm submit` and the spot sizing read) and the mirror's state."""
        rates = [u["seconds_per_gib"] for u in self.uploads[-5:] if u.get("seconds_per_gib")]
        self.figures = {**self.status(), "uploads": self.uploads,
                        "seconds_per_gib": max(rates) if rates else self.figures.get("seconds_per_gib")}
        try:
            atomic_write(self.run_dir / FIGURES_NAME, (json.dumps(self.figures, indent=1, default=str) + "\n").encode(),
                         mode=0o644, durable=False)
        except OSError as err:
            self.say(f"cannot write {FIGURES_NAME} ({err.strerror or err})")
