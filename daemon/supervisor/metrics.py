"""Prometheus metrics for operators, on 127.0.0.1 (`traind run --metrics-port`, `traind serve
--metrics-port`), with prometheus_client (an optional extra, imported only when asked for).

Each scrape reads the runs' own records (status.json, events.jsonl and the checkpoint manifests,
sizes only: a scrape never hashes GiBs), so the collector shares no state with the loops that
write them and a scrape can never slow or break a supervisor.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from .. import store
from ..contract.errors import TraindError
from ..contract.exitcodes import PREEMPTED
from .runfiles import read_events, read_status

STATES = ("starting", "running", "stopping", "backing_off", "succeeded", "preempted", "failed")


def job_figures(run_dir: Path, now: float) -> dict:
    """One run's figures, from its files (missing ones are simply absent)."""
    try:
        status = read_status(run_dir) or {}
    except TraindError:
        status = {}
    events = read_events(run_dir)
    hb = status.get("last_heartbeat") if isinstance(status.get("last_heartbeat"), dict) else {}
    ck = status.get("last_checkpoint") if isinstance(status.get("last_checkpoint"), dict) else {}
    out = {"state": status.get("state"),
           "attempts": sum(e.get("event") == "spawned" for e in events),
           "restarts": max(0, sum(e.get("event") == "spawned" for e in events) - 1),
           "preemptions": sum(e.get("event") == "transition" and (e.get("target") == "preempted"
                                                                  or e.get("exit_code") == PREEMPTED) for e in events),
           "last_step": hb.get("step"), "steps_per_second": hb.get("steps_per_second"),
           "heartbeat_age_seconds": now - hb["time"] if isinstance(hb.get("time"), (int, float)) else None,
           "checkpoint_seconds": ck.get("seconds"), "checkpoint_bytes": ck.get("bytes")}
    try:
        newest = next((i for i in store.list_checkpoints(run_dir, deep=False) if i.valid), None)
    except TraindError:
        newest = None
    if newest is not None:
        out["newest_valid_checkpoint_step"] = newest.step
        if newest.created is not None:
            out["newest_valid_checkpoint_age_seconds"] = now - newest.created
    return {k: v for k, v in out.items() if v is not None and not isinstance(v, bool)}


class RunDirCollector:
    """A prometheus_client collector over `runs()`: {job name: (run dir, state or None)}; a state
    given there (the daemon's queue state: queued, cancelled, ...) wins over the run's own."""

    def __init__(self, runs: Callable[[], dict]):
        self.runs = runs

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
        now = time.time()
        state = GaugeMetricFamily("traind_job_state", "1 for the state the job is in", labels=["job", "state"])
        counters = {k: CounterMetricFamily(f"traind_job_{k}", h, labels=["job"]) for k, h in (
            ("attempts", "attempts started"), ("restarts", "restarts (attempts after the first)"),
            ("preemptions", "stops after an emergency checkpoint (exit 75)"))}
        gauges = {k: GaugeMetricFamily(f"traind_job_{k}", h, labels=["job"]) for k, h in (
            ("last_step", "the last step the job reported"), ("steps_per_second", "step rate"),
            ("heartbeat_age_seconds", "seconds since the last heartbeat"),
            ("checkpoint_seconds", "duration of the last checkpoint write"),
            ("checkpoint_bytes", "size of the last checkpoint"),
            ("newest_valid_checkpoint_step", "step of the newest checkpoint that verifies (sizes)"),
            ("newest_valid_checkpoint_age_seconds", "age of the newest checkpoint that verifies (sizes)"))}
        for name, (run_dir, queue_state) in sorted(self.runs().items()):
            figures = job_figures(Path(run_dir), now)
            current = queue_state or figures.get("state")
            for s in sorted(set(STATES) | ({current} if current else set())):
                state.add_metric([name, s], 1.0 if s == current else 0.0)
            for key, family in {**counters, **gauges}.items():
                if isinstance(figures.get(key), (int, float)):
                    family.add_metric([name], float(figures[key]))
        yield state
        yield from counters.values()
        yield from gauges.values()


def serve_metrics(port: int, runs: Callable[[], dict]) -> int:
    """Start the HTTP endpoint on 127.0.0.1:port (0: any free port) in a thread; the bound port."""
    try:
        from prometheus_client import CollectorRegistry, start_http_server
    except ImportError:
        raise TraindError("--metrics-port needs prometheus_client: pip install 'traind[metrics]'") from None
    registry = CollectorRegistry()
    registry.register(RunDirCollector(runs))
    try:
        server, _ = start_http_server(port, addr="127.0.0.1", registry=registry)
    except OSError as err:
        raise TraindError(f"--metrics-port {port}: cannot listen on 127.0.0.1: {err.strerror or err}") from None
    return server.server_port
