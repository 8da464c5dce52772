"""`traind serve`: watch a spool directory, run each accepted job spec as a `traind run SPEC`
child process in one of N slots, keep the queue durable on disk, and speak sd_notify.

Why one `traind run` process per job (and not supervisors inside the daemon): the supervisor
(part 3) is reused whole, with its restart budget, hang detection and emergency path; a job that
crashes or leaks cannot take the daemon down; and the run dir's `supervisor.lock` (held by that
process and inherited by its child) tells a restarted daemon whether an old copy is still alive,
so a job never runs twice at once.

One loop, fixed order per tick (`_tick`): signals -> posted actions (spool events, scheduled work)
-> cancel requests -> reap exited children -> stop deadlines -> fill free slots -> status/watchdog.
Other threads (watchdog's observer, APScheduler) only post actions and wake the loop.
"""
from __future__ import annotations

import json
import logging
import os
import queue
import select
import signal
import time
from pathlib import Path

import yaml

from ..contract import exitcodes
from . import spool
from ..contract.errors import UsageError
from ..fs.durable import atomic_write
from .client import SERVE_STATE_NAME, ServeLock
from .config import Running, ServeConfig
from .jobqueue import ACTIVE_STATES, Event, JobRecord, JobState, JobTable, transition
from .sdnotify import Notifier
from .serve_os import ServeOS
from .slots import SlotBook, grace_of
from ..supervisor.spec import validate

log = logging.getLogger("traind.serve")

TICK_SECONDS = 0.5
SPOOL_SETTLE_SECONDS = 2.0     # a rescan leaves a freshly written (maybe half-copied) file alone


class Daemon:
    def __init__(self, cfg: ServeConfig, osx: ServeOS | None = None, notifier: Notifier | None = None):
        self.cfg, self.os, self.notify = cfg, osx or ServeOS(), notifier or Notifier()
        self.table = JobTable(cfg.state_dir)
        self.records: dict[str, JobRecord] = {}
        self.running: dict[str, Running] = {}
        self.actions: queue.SimpleQueue = queue.SimpleQueue()
        self.stopping = False
        self.stop_deadline: float | None = None
        self._signals: list[int] = []
        self._last_status = ""
        self._last_ping = 0.0
        self._lock: ServeLock | None = None
        self._waiting_logged: set[str] = set()
        self.book = SlotBook(cfg.slots, cfg.gpus)    # which slots are free (slots.py)

    # ---------------------------------------------------------------- start-up
    def setup(self) -> None:
        cfg = self.cfg
        grouped = cfg.group is not None
        spool.make_private_dir(cfg.state_dir, 0o710 if grouped else 0o700)
        spool.make_private_dir(cfg.spool_dir, 0o2730 if grouped else 0o700)
        spool.make_private_dir(self.table.jobs_dir)
        spool.make_private_dir(cfg.control_dir)
        if grouped:
            os.chown(cfg.spool_dir, -1, cfg.group)
        self._lock = ServeLock(cfg.state_dir).acquire()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        self._recover()

    def _on_signal(self, signum, frame):  # only records; the loop acts
        self._signals.append(signum)

    def _recover(self) -> None:
        """Reload the table after a restart (or a kill -9): running jobs go back to the head of
        the line and are relaunched once their old process is gone; the rest stay as they were."""
        for rec in self.table.load_all():
            if rec.state in ACTIVE_STATES:
                new = transition(rec.state, Event.INTERRUPTED)
                log.info("job %s was %s when the daemon stopped: now %s", rec.name, rec.state.value, new.value)
                holder = self.os.run_dir_holder(self.table.job_dir(rec.name) / "run")
                if holder is not None:   # orphaned, still stopping: it holds its slot until it is gone
                    self.book.drain(rec.name, rec.slot, self.os.monotonic(),
                                    grace_of(self.table.job_dir(rec.name) / "spec.yaml"))
                    log.info("job %s: its old process (%s) still holds slot %s", rec.name, holder, rec.slot)
                    rec.reason = f"its old process still stops (holds slot {rec.slot})"
                rec.state, rec.resume_first, rec.slot = new, new is JobState.QUEUED, None
                self.table.save(rec)
            self.records[rec.name] = rec
        self._finish_interrupted_accepts()

    def _finish_interrupted_accepts(self) -> None:
        for d in self.table.jobs_dir.iterdir():
            if (d / "submitted.yaml").is_file() and not (d / "job.json").exists():
                verdict = spool.check_and_read(d / "submitted.yaml", group=self.cfg.group)
                if isinstance(verdict, spool.Accepted):
                    self._commit_accept(d.name, verdict)

    # ---------------------------------------------------------------- the loop
    def serve_forever(self, observer_factory=None, scheduler_factory=None) -> int:
        from .threads import start_observer, start_scheduler
        observer = (observer_factory or start_observer)(self.cfg.spool_dir, self.post)
        scheduler = (scheduler_factory or start_scheduler)(self.post)
        try:
            self._rescan(settle=0)
            self._handle_cancel_requests()  # made while the daemon was down: before relaunching
            self._fill_slots()          # running jobs resumed (or waiting on their old process)
            self._write_serve_state()
            self.notify.ready(self._summary())
            log.info("serving %s with %d slot(s)", self.cfg.state_dir, self.cfg.slots)
            while True:
                if self._tick():
                    return exitcodes.OK
                self._wait(TICK_SECONDS)
        finally:
            scheduler.shutdown(wait=False)
            observer.stop()

    def post(self, action: tuple) -> None:
        """Thread-safe: queue an action for the loop and wake it."""
        self.actions.put(action)
        try:
            os.write(self._wake_w, b"!")
        except BlockingIOError:
            pass

    def _wait(self, timeout: float) -> None:
        if select.select([self._wake_r], [], [], timeout)[0]:
            try:
                os.read(self._wake_r, 4096)
            except BlockingIOError:
                pass

    def _tick(self) -> bool:
        """One pass in fixed order. True when the daemon should exit."""
        self._handle_signals()
        self._handle_actions()
        self._handle_cancel_requests()
        self._reap()
        self._enforce_deadlines()
        if not self.stopping:
            self._fill_slots()
        self._report()
        self._test_hang_hook()
        return self.stopping and not self.running

    def _handle_signals(self) -> None:
        while self._signals:
            sig = self._signals.pop(0)
            if not self.stopping:
                log.info("%s: asking %d running job(s) for an emergency checkpoint", signal.Signals(sig).name, len(self.running))
                self.stopping = True
                self.stop_deadline = self.os.monotonic() + self.cfg.stop_timeout
                for name, run in self.running.items():
                    self.os.signal(run.proc, signal.SIGTERM)
                    run.stop_deadline = self.stop_deadline

    def _handle_actions(self) -> None:
        while True:
            try:
                kind, *args = self.actions.get_nowait()
            except queue.Empty:
                return
            if kind == "spool":
                self._consider(Path(args[0]), settle=0)
            elif kind == "rescan":
                self._rescan(settle=SPOOL_SETTLE_SECONDS)
            elif kind == "heartbeat":
                self._write_serve_state()
            elif kind == "sweep":
                spool.sweep(self.cfg.spool_dir, self.cfg.keep_refused_days)

    # ---------------------------------------------------------------- spool intake
    def _rescan(self, settle: float) -> None:
        for path in sorted(self.cfg.spool_dir.iterdir()):
            self._consider(path, settle)

    def _consider(self, path: Path, settle: float) -> None:
        if path.parent != self.cfg.spool_dir or not spool.is_candidate(path):
            return
        try:
            st = path.lstat()
        except FileNotFoundError:
            return
        if settle and time.time() - st.st_mtime < settle:
            return  # maybe still being copied in; the next rescan (or its close event) takes it
        verdict = self._judge(path)
        if isinstance(verdict, spool.Refused):
            kept = spool.move_aside(path, self.cfg.spool_dir)
            log.warning("refused spool file %s: %s (kept as %s)", path, verdict.reason, kept)
            return
        job_dir = self.table.job_dir(verdict.name)
        job_dir.mkdir(mode=0o700, exist_ok=True)
        try:
            os.rename(path, job_dir / "submitted.yaml")   # from here on the file is the daemon's
        except FileNotFoundError:
            return                                       # withdrawn by its owner meanwhile
        self._commit_accept(verdict.name, verdict)

    def _judge(self, path: Path) -> spool.Accepted | spool.Refused:
        verdict = spool.check_and_read(path, group=self.cfg.group)
        if isinstance(verdict, spool.Refused):
            return verdict
        if verdict.name in self.records:
            return spool.Refused(path, f"a job named {verdict.name!r} already exists (see `traind ls`)")
        try:  # a spec the supervisor would reject: say so now, not in a job log later
            validate(self._rewrite(verdict.name, verdict.spec), path)
        except UsageError as err:
            return spool.Refused(path, f"invalid spec: {err}")
        return verdict

    def _rewrite(self, name: str, raw: dict) -> dict:
        """The spec as the daemon runs it: its name, absolute paths, its run dir in the state dir."""
        spec = dict(raw)
        spec["name"] = name
        workdir = Path(str(spec.get("workdir", ".")))  # a hand-dropped relative workdir meant the spool
        spec["workdir"] = str(workdir if workdir.is_absolute() else (self.cfg.spool_dir / workdir).resolve())
        spec["run_dir"] = str(self.table.job_dir(name) / "run")   # the daemon owns where a job writes
        return spec

    def _commit_accept(self, name: str, verdict: spool.Accepted) -> None:
        job_dir = self.table.job_dir(name)
        spec = self._rewrite(name, verdict.spec)
        atomic_write(job_dir / "spec.yaml", yaml.safe_dump(spec, sort_keys=False).encode())
        seq = max((r.seq for r in self.records.values()), default=0) + 1
        rec = JobRecord(name=name, seq=seq, owner_uid=verdict.owner_uid)
        self.table.save(rec)                           # commit point of the acceptance
        self.records[name] = rec
        log.info("accepted job %s (queue position %d)", name, rec.seq)

    # ---------------------------------------------------------------- cancel, reap, deadlines
    def _handle_cancel_requests(self) -> None:
        for req in sorted(self.cfg.control_dir.glob("cancel-*")):
            name = req.name[len("cancel-"):]
            rec = self.records.get(name)
            if rec is None and (self.cfg.spool_dir / f"{name}{spool.SPEC_SUFFIX}").exists():
                continue    # submitted, not accepted yet: applied once it is (never launched)
            req.unlink(missing_ok=True)
            if rec is None:
                log.warning("cancel request for unknown job %r ignored", name)
                continue
            new = transition(rec.state, Event.CANCEL)
            if new is JobState.CANCELLING and name in self.running:
                run = self.running[name]
                self.os.signal(run.proc, signal.SIGTERM)     # emergency checkpoint, then stop
                run.stop_deadline = self.os.monotonic() + self.cfg.cancel_timeout
            if new is not rec.state:
                log.info("job %s: %s -> %s (cancel)", name, rec.state.value, new.value)
                self._set(rec, new, reason="cancelled by request")

    def _reap(self) -> None:
        for name, run in list(self.running.items()):
            rc = self.os.poll(run.proc)
            if rc is None:
                continue
            del self.running[name]
            rec = self.records[name]
            # SIGKILLed at our own deadline: not the job's failure; it resumes from its last checkpoint.
            new = transition(rec.state, Event.INTERRUPTED if run.killed else Event.EXITED, rc)
            log.info("job %s: traind run exited %d: %s -> %s", name, rc, rec.state.value, new.value)
            self.book.left(run.slot, self.os.monotonic())
            rec.exit_code, rec.pid, rec.slot = rc, None, None
            rec.resume_first = new is JobState.QUEUED
            self._set(rec, new, reason=f"exit {rc}", finished=new is not JobState.QUEUED)

    def _enforce_deadlines(self) -> None:
        now = self.os.monotonic()
        for name, run in self.running.items():
            if run.stop_deadline is not None and now > run.stop_deadline:
                log.warning("job %s: no exit within its stop deadline: SIGKILL to its process group", name)
                self.os.kill_job_tree(run.proc, self.table.job_dir(name) / "run")
                run.stop_deadline, run.killed = None, True

    # ---------------------------------------------------------------- scheduling
    def _fill_slots(self) -> None:
        now = self.os.monotonic()
        self._settle_draining(now)
        free = self.book.free(r.slot for r in self.running.values())
        waiting = sorted((r for r in self.records.values() if r.state is JobState.QUEUED),
                         key=lambda r: (not r.resume_first, r.seq))
        for rec in waiting:
            if not free:
                return
            if rec.name in self.book.draining:
                continue            # keeps its place in line; its old process still holds a slot
            if not rec.resume_first and any(self.records[n].resume_first for n in self.book.draining):
                return              # the jobs the restart interrupted go first, every one of them
            holder = self.os.run_dir_holder(self.table.job_dir(rec.name) / "run")
            if holder is not None:  # an old `traind run` of this job still finishes its checkpoint
                if rec.name not in self._waiting_logged:
                    log.info("job %s: waiting for its previous process (%s) to exit", rec.name, holder)
                    self._waiting_logged.add(rec.name)
                continue
            self._waiting_logged.discard(rec.name)
            slot = self._settled_slot(free, now)
            if slot is None:
                return
            free.remove(slot)
            self._launch(rec, slot)

    def _settle_draining(self, now: float) -> None:
        """Old processes found at start-up: gone -> their slot is free; past their grace -> SIGKILL."""
        for name in list(self.book.draining):
            run_dir = self.table.job_dir(name) / "run"
            if self.os.run_dir_holder(run_dir) is None:
                log.info("job %s: its old process is gone: slot %s is free", name, self.book.drained(name, now))
                self._set(self.records[name], self.records[name].state, reason="old process gone")
        for name in self.book.overdue(now):
            log.warning("job %s: its old process still runs %.0f s after the restart (past its grace): "
                        "SIGKILL to it", name, now - self.book.draining[name].since)
            self.os.kill_holder(self.table.job_dir(name) / "run")
            self.book.draining[name].killed = True

    def _settled_slot(self, free: list[int], now: float) -> int | None:
        """A free slot whose GPU no longer holds its last job's memory (NVML), or None."""
        for slot in free:
            if not self.book.device_settling(slot, now):
                return slot
            busy = self.os.gpu_busy(self.book.device(slot))
            if busy is None and "nvml" not in self._waiting_logged:
                self._waiting_logged.add("nvml")
                log.info("NVML is not available: a slot's GPU memory is not checked before it is handed on")
            if not busy:
                return slot
            if f"gpu-{slot}" not in self._waiting_logged:
                self._waiting_logged.add(f"gpu-{slot}")
                log.info("slot %d: GPU %s still holds a process of its last job: waiting", slot, self.book.device(slot))
        return None

    def _launch(self, rec: JobRecord, slot: int) -> None:
        job_dir = self.table.job_dir(rec.name)
        env = dict(os.environ)
        env["CUDA_VISIBLE_DEVICES"] = self.cfg.gpus[slot] if self.cfg.gpus else str(slot)
        env["TRAIND_SERVE_SLOT"] = str(slot)
        env.pop("NOTIFY_SOCKET", None)  # jobs must not talk to systemd in the daemon's name
        env.pop("WATCHDOG_USEC", None)
        try:
            proc = self.os.spawn([*self.cfg.runner, str(job_dir / "spec.yaml")], env, job_dir / "runner.log")
        except OSError as err:  # a value, not a crash: the daemon keeps serving the other jobs
            log.error("job %s: cannot start %s: %s", rec.name, self.cfg.runner[0], err)
            self._set(rec, transition(rec.state, Event.LAUNCH_FAILED), reason=f"cannot start: {err}", finished=True)
            return
        self.running[rec.name] = Running(proc, slot)
        rec.slot, rec.pid, rec.launches, rec.started = slot, proc.pid, rec.launches + 1, time.time()
        log.info("job %s: launched in slot %d (pid %d, launch %d)", rec.name, slot, proc.pid, rec.launches)
        self._set(rec, transition(rec.state, Event.LAUNCHED))

    def _set(self, rec: JobRecord, state: JobState, reason: str = "", finished: bool = False) -> None:
        rec.state = state
        rec.reason = reason or rec.reason
        if finished:
            rec.finished = time.time()
        self.table.save(rec)

    # ---------------------------------------------------------------- reporting and periodic work
    def _summary(self) -> str:
        counts: dict[str, int] = {}
        for rec in self.records.values():
            counts[rec.state.value] = counts.get(rec.state.value, 0) + 1
        parts = [f"{counts.get(s.value, 0)} {s.value}" for s in JobState if counts.get(s.value)]
        head = "stopping: emergency checkpoints" if self.stopping else f"{self.cfg.slots} slot(s)"
        return f"{head}; " + (", ".join(parts) or "no jobs")

    def _report(self) -> None:
        status = self._summary()
        if self.stopping:
            left = max(0.0, (self.stop_deadline or 0) - self.os.monotonic())
            self.notify.stopping(f"{status}; {len(self.running)} still checkpointing", left + 10)
        elif status != self._last_status:
            self.notify.status(status)
        if status != self._last_status:
            self._last_status = status
            self._write_serve_state()
        interval = self.notify.watchdog_interval()
        if interval and self.os.monotonic() - self._last_ping >= min(interval, TICK_SECONDS):
            self.notify.watchdog()
            self._last_ping = self.os.monotonic()

    def _write_serve_state(self) -> None:
        atomic_write(self.cfg.state_dir / SERVE_STATE_NAME, json.dumps({
            "pid": os.getpid(), "heartbeat": time.time(), "slots": self.cfg.slots,
            "stopping": self.stopping, "status": self._summary()}).encode())

    def _test_hang_hook(self) -> None:
        # Test-only: a hung main loop, to prove systemd's watchdog restarts the daemon.
        hang = self.cfg.state_dir / "test-hang"
        if self.cfg.test_hooks and hang.exists():
            hang.unlink()
            log.warning("test hook: main loop hangs now (no more WATCHDOG=1)")
            while True:
                time.sleep(3600)
