"""The glue between `traind run` and the cluster: SLURM follow-up + spot watcher, from the spec.

`traind run` (daemon/cli/run.py) does, around its Supervisor:
    attached = hooks.attach(spec)
    supervisor = Supervisor(spec, os_=RealOS(...), followup=attached.followup, ...)   # requeue?
    attached.start(supervisor.request_stop, supervisor.say)   # logs the SLURM job; spot notice -> stop
    try: ... supervisor.run() ...
    finally: attached.stop()
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from typing import Callable, Mapping

from . import slurm
from . import spot


def stderr_log(line: str) -> None:
    ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
    print(f"{ts} traind: {line}", file=sys.stderr, flush=True)


@dataclass
class ClusterHooks:
    followup: slurm.SlurmFollowup
    slurm_job: slurm.SlurmJob | None
    spot_provider: str | None
    spot_base_url: str | None
    spot_poll_seconds: float
    log: Callable[[str], None]
    watcher: spot.SpotWatcher | None = None
    notes: tuple[str, ...] = ()        # said at start (e.g. how the spot provider was chosen)

    def start(self, request_stop: Callable[[str], None], log: Callable[[str], None] | None = None) -> None:
        """Say where we run; poll for termination notices (if the spec asks): a notice -> request_stop."""
        if log is not None:
            self.log = self.followup.log = log
        if self.slurm_job is not None:
            self.log(self.slurm_job.describe())
        for line in self.notes:
            self.log(line)
        if self.spot_provider is None:
            return

        def on_notice(notice: spot.Notice) -> None:
            self.log(f"spot {notice.provider}: termination notice ({notice.detail}); "
                     f"emergency checkpoint now, window {notice.window_seconds:.0f} s")
            request_stop(f"spot termination notice ({notice.provider})")

        self.watcher = spot.SpotWatcher(self.spot_provider, on_notice, base_url=self.spot_base_url,
                                        poll_seconds=self.spot_poll_seconds, say=self.log)
        self.followup.notes.append(self.watcher.timing_line)
        self.watcher.start()

    def stop(self) -> None:
        if self.watcher is not None:
            self.watcher.stop()


def attach(spec, *, environ: Mapping[str, str] | None = None, log: Callable[[str], None] = stderr_log,
           runner: slurm.CommandRunner | None = None) -> ClusterHooks:
    """Build the hooks for one `traind run` of `spec` (a traind.supervisor.spec.JobSpec)."""
    env = os.environ if environ is None else environ
    job = slurm.detect(env)
    spot_cfg = spec.preemption.spot
    provider, notes = spot_cfg.provider, ()
    if provider == "auto":
        provider = spot.detect_provider()
        notes = (f"spot: provider auto-detected as {provider}" if provider else
                 "spot: provider auto: not on AWS, GCP or Azure (by DMI); no termination-notice polling",)
    elif provider == "none":
        provider = None
    followup = slurm.SlurmFollowup(job, requeue_policy=spec.preemption.requeue,
                                   requeue_command=spec.slurm.requeue_command,
                                   lead_seconds=spec.slurm.lead_seconds or slurm.submitted_lead(env), log=log,
                                   runner=runner or slurm.CommandRunner())
    return ClusterHooks(followup=followup, slurm_job=job, spot_provider=provider,
                        spot_base_url=spot_cfg.base_url, spot_poll_seconds=spot_cfg.poll_seconds, log=log, notes=notes)
