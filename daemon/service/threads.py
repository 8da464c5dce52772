"""The daemon's helper threads. They never act: they post an action tuple to the main loop.

- watchdog's inotify observer on the spool dir: ("spool", path) when a file is closed after
  writing, renamed in (`traind submit` renames), or created as a symlink (which has no close).
- APScheduler 3.x BackgroundScheduler for periodic work: ("rescan",) catches events the observer
  missed, ("heartbeat",) refreshes serve.json, ("sweep",) runs the retention sweep.
"""
from __future__ import annotations

import logging
import os
from datetime import datetime
from pathlib import Path
from typing import Callable

from apscheduler.schedulers.background import BackgroundScheduler
from watchdog.events import FileSystemEventHandler
from watchdog.observers import Observer

RESCAN_SECONDS = 5
HEARTBEAT_SECONDS = 10
SWEEP_SECONDS = 3600

Post = Callable[[tuple], None]


class _SpoolEvents(FileSystemEventHandler):
    def __init__(self, post: Post):
        self.post = post

    def on_closed(self, event):       # a writer closed the file: it is whole
        if not event.is_directory:
            self.post(("spool", event.src_path))

    def on_moved(self, event):        # renamed into the spool: whole by construction
        if not event.is_directory:
            self.post(("spool", event.dest_path))

    def on_created(self, event):
        # Plain files are taken on close (a writer may still be writing); a symlink has no close.
        if os.path.islink(event.src_path):
            self.post(("spool", event.src_path))


def start_observer(spool_dir: Path, post: Post):
    observer = Observer()
    observer.daemon = True
    observer.schedule(_SpoolEvents(post), str(spool_dir), recursive=False)
    observer.start()
    return observer


def start_scheduler(post: Post) -> BackgroundScheduler:
    logging.getLogger("apscheduler").setLevel(logging.WARNING)  # one line per run is noise
    sched = BackgroundScheduler(daemon=True)
    common = {"coalesce": True, "max_instances": 1}
    sched.add_job(post, "interval", seconds=RESCAN_SECONDS, args=[("rescan",)], id="rescan", **common)
    sched.add_job(post, "interval", seconds=HEARTBEAT_SECONDS, args=[("heartbeat",)], id="heartbeat", **common)
    sched.add_job(post, "interval", seconds=SWEEP_SECONDS, args=[("sweep",)], id="sweep",
                  next_run_time=datetime.now(), **common)  # one sweep at start, then hourly
    sched.start()
    return sched
