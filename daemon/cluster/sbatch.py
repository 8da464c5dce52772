"""The sbatch script `traind slurm submit` writes, and how long a warning (LEAD) it asks for.

One node: the script `exec`s `traind run SPEC` so the supervisor is the batch shell:
`--signal=B:USR1@LEAD` reaches it (SLURM sends B: signals to the batch shell only). `--requeue`
lets the job requeue itself after its emergency checkpoint, `--open-mode=append` keeps every run's
output in one log.

M > 1 nodes: srun starts one `traind run SPEC --set distributed.nnodes=M` per node (one task per
node; each supervisor reads its node rank and the master from SLURM itself, and only node 0's
requeues the job). `--signal=USR1@LEAD` (no B:) goes to the tasks, so every node's supervisor gets
the warning. The batch shell does not exec srun but waits for it: srun answers a TERM by SIGKILLing
every task, so a signal sent to the batch shell alone (`scancel --batch`) must not reach srun;
the shell passes it on to the tasks as `scancel --signal=SIG JOB` (a step signal: every node's
supervisor gets it, as from `scancel --signal=TERM JOB`).

LEAD must cover the emergency stop: finish the step, write the state durably, upload it when a
remote is set (checkpoint.remote), requeue. We take it from what this run dir measured before (the
supervisor's events, the checkpoint manifests, the mirror's upload figures in remote.json) plus a
margin, and warn at submit when the user's LEAD is shorter than that.
"""
from __future__ import annotations

import json
import math
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from .. import store
from ..contract.errors import UsageError
from .slurm import ENV_SUBMITTED_LEAD
from ..supervisor import mirror

DEFAULT_LEAD_SECONDS = 120        # nothing measured yet: enough for a few GiB on a local disk
MIN_LEAD_SECONDS = 60             # SLURM's signal tick is 30 s; less than this is a gamble
LEAD_FACTOR = 1.5                 # measured stop time x this ...
LEAD_MARGIN_SECONDS = 30.0        # ... + this (the step in flight, the requeue, process exit)
ASSUMED_WRITE_BYTES_PER_SECOND = 100e6   # state size known but no timing: a slow shared filesystem
ASSUMED_UPLOAD_BYTES_PER_SECOND = 40e6   # a remote set but no upload measured yet (s3fs put: ~44 MB/s here)

SHORT_OPTIONS = {"-J": "--job-name", "-o": "--output", "-e": "--error", "-a": "--array",
                 "-t": "--time", "-p": "--partition", "-D": "--chdir", "-N": "--nodes"}
RUN_DIR_COMMENT = "traind-run-dir:"
UNLIMITED_TIMES = ("-1", "infinite", "unlimited")       # sbatch compares these case-blind
TIME_FORMATS = "MINUTES, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS or UNLIMITED"
# Each part at most 9 digits: SLURM adds them up in a C int.
_TIME_RE = re.compile(r"(?:(?P<days>[0-9]{1,9})-(?P<hours>[0-9]{1,9})(?::(?P<dm>[0-9]{1,9}))?(?::(?P<ds>[0-9]{1,9}))?"
                      r"|(?P<a>[0-9]{1,9})(?::(?P<b>[0-9]{1,9}))?(?::(?P<c>[0-9]{1,9}))?)")


# --- --time -------------------------------------------------------------------------------------

def time_limit_seconds(text: str) -> int | None:
    """sbatch --time in seconds, None for no limit. As SLURM reads it: MINUTES, MM:SS, HH:MM:SS, D-HH,
    D-HH:MM, D-HH:MM:SS; seconds round up to a whole minute; 0, -1, UNLIMITED, INFINITE: no limit."""
    if text.lower() in UNLIMITED_TIMES:
        return None
    m = _TIME_RE.fullmatch(text)
    if not m:
        raise UsageError(f"slurm submit: --time {text!r}: expected an sbatch time limit: {TIME_FORMATS}")
    n = {k: int(v) if v else 0 for k, v in m.groupdict().items()}
    if m["days"] is not None:
        seconds = n["days"] * 86400 + n["hours"] * 3600 + n["dm"] * 60 + n["ds"]
    elif m["c"] is not None:      # HH:MM:SS
        seconds = n["a"] * 3600 + n["b"] * 60 + n["c"]
    else:                         # MINUTES[:SS]
        seconds = n["a"] * 60 + n["b"]
    return math.ceil(seconds / 60) * 60 or None


def refuse_lead_past_limit(lead: int, groups: Sequence[tuple[str, ...]], lead_from: str) -> None:
    """Check the (last, as sbatch reads them) --time of the sbatch options. USR1 goes out LEAD seconds
    before the limit: with LEAD >= the limit that is at or before the start, so the job would stop
    for an emergency checkpoint before doing any work."""
    given = [option_value(g) for g in groups if option_name(g) == "--time"]
    if not given:
        return
    time_text = given[-1] or ""
    limit = time_limit_seconds(time_text)
    if limit is not None and lead >= limit:
        raise UsageError(f"slurm submit: LEAD {lead} s ({lead_from}) is not shorter than --time {time_text} "
                         f"({limit} s): the USR1 warning would arrive at or before the job starts; use a longer "
                         "--time or a smaller --lead")


# --- LEAD -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class StopMeasurement:
    seconds: float | None        # longest emergency/checkpoint time recorded for this run dir
    source: str | None           # where it was found (for messages)
    state_bytes: int | None      # size of the newest committed checkpoint
    upload_seconds: float | None = None   # its upload to the remote (measured s/GiB x its size)

    def needed_seconds(self) -> float | None:
        """The stop time to plan for: measured, else estimated from the state size, else unknown;
        plus the upload of the emergency checkpoint when the run mirrors to a remote."""
        if self.seconds is not None:
            return self.seconds + (self.upload_seconds or 0.0)
        if self.state_bytes:
            return self.state_bytes / ASSUMED_WRITE_BYTES_PER_SECOND + (self.upload_seconds or 0.0)
        return self.upload_seconds

    def describe(self) -> str:
        parts = []
        if self.seconds is not None:
            parts.append(f"measured {self.seconds:.1f} s ({self.source})")
        if self.state_bytes:
            parts.append(f"state {self.state_bytes / 2**20:.0f} MiB")
        if self.upload_seconds is not None:
            parts.append(f"its upload {self.upload_seconds:.1f} s (remote.json)")
        return ", ".join(parts) or "nothing measured yet"


def _stop_durations(events_path: Path) -> list[float]:
    """Seconds from each `-> stopping` transition to the next transition out of stopping (events.jsonl)."""
    durations, stopping_since = [], None
    try:
        lines = events_path.read_text(errors="replace").splitlines()
    except OSError:
        return []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if not isinstance(record, dict) or record.get("event") != "transition":
            continue
        when = record.get("time")
        if not isinstance(when, (int, float)):
            continue
        if record.get("target") == "stopping":
            stopping_since = when
        elif record.get("source") == "stopping" and stopping_since is not None:
            durations.append(max(0.0, when - stopping_since))
            stopping_since = None
    return durations


def _recorded_checkpoint_seconds(run_dir: Path, infos) -> list[tuple[float, str]]:
    """Write times the supervisor (status.json) and the store (manifest `extra`) recorded."""
    found = []
    try:
        status = json.loads((run_dir / "status.json").read_text())
        seconds = (status.get("last_checkpoint") or {}).get("seconds")
        if isinstance(seconds, (int, float)) and seconds >= 0:
            found.append((float(seconds), f"checkpoint write in {run_dir / 'status.json'}"))
    except (OSError, ValueError, AttributeError):
        pass
    for info in infos[:5]:
        manifest, _ = store.read_manifest(info.path)
        extra = (manifest or {}).get("extra")
        for key in ("save_seconds", "write_seconds", "seconds"):
            value = extra.get(key) if isinstance(extra, dict) else None
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
                found.append((float(value), f"checkpoint write in {info.path / store.MANIFEST_NAME}"))
                break
    return found


def measure_stop(run_dir: Path) -> StopMeasurement:
    """The longest emergency stop (or, failing that, checkpoint write) this run dir has recorded."""
    infos = store.list_checkpoints(run_dir, deep=False)
    candidates = [(d, f"stop request -> child exit in {run_dir / 'events.jsonl'}")
                  for d in _stop_durations(run_dir / "events.jsonl")]
    candidates += _recorded_checkpoint_seconds(run_dir, infos)
    size = next((i.size for i in infos if i.valid), None)
    upload = upload_estimate(run_dir, size)
    if not candidates:
        return StopMeasurement(None, None, size, upload)
    seconds, source = max(candidates)
    return StopMeasurement(seconds, source, size, upload)


def upload_estimate(run_dir: Path, state_bytes: int | None) -> float | None:
    """Seconds to upload the state, when this run dir mirrors to a remote: the mirror's measured
    seconds per GiB (its slowest recent upload) x the state size; None without a remote."""
    if not (Path(run_dir) / mirror.FIGURES_NAME).exists():
        return None
    per_gib = mirror.upload_seconds_per_gib(run_dir)
    if per_gib is None:
        return (state_bytes or 0) / ASSUMED_UPLOAD_BYTES_PER_SECOND
    return per_gib * (state_bytes or 0) / float(1 << 30)


def lead_for(measurement: StopMeasurement) -> int:
    needed = measurement.needed_seconds()
    if needed is None:
        return DEFAULT_LEAD_SECONDS
    return max(MIN_LEAD_SECONDS, math.ceil(needed * LEAD_FACTOR + LEAD_MARGIN_SECONDS))


def lead_warning(lead: float, measurement: StopMeasurement) -> str | None:
    """A one-line warning when LEAD is too short for the measured (or estimated) stop, else None."""
    needed = measurement.needed_seconds()
    if needed is None:
        return None
    want = lead_for(measurement)
    if lead >= needed * 1.1 + 10:
        return None
    return (f"warning: LEAD {lead:g} s is too short for the emergency checkpoint ({measurement.describe()}); "
            f"the job may be killed before it commits. Use --lead {want} (or slurm.lead_seconds: {want})")


# --- sbatch options ---------------------------------------------------------------------------------

def group_options(tokens: Sequence[str]) -> list[tuple[str, ...]]:
    """['--time', '2', '-p', 'high', '--exclusive'] -> [('--time', '2'), ('-p', 'high'), ('--exclusive',)]."""
    groups: list[list[str]] = []
    for token in tokens:
        if token.startswith("-") or not groups:
            if not token.startswith("-"):
                raise UsageError(f"slurm submit: {token!r}: expected an sbatch option (starting with -)")
            groups.append([token])
        else:
            groups[-1].append(token)
    return [tuple(g) for g in groups]


def option_name(group: tuple[str, ...]) -> str:
    """('--time=2',) -> '--time'; ('-t', '2') -> '--time'; ('-t2',) -> '--time'."""
    head = group[0].split("=", 1)[0]
    if not head.startswith("--") and len(head) > 2:
        head = head[:2]
    return SHORT_OPTIONS.get(head, head)


def option_value(group: tuple[str, ...]) -> str | None:
    """('--time=2',) -> '2'; ('-t', '2') -> '2'; ('-t2',) -> '2'; ('--exclusive',) -> None."""
    head = group[0]
    if len(group) > 1:
        return " ".join(group[1:])
    if head.startswith("--"):
        return head.split("=", 1)[1] if "=" in head else None
    return head[2:] or None


def _directive(group: tuple[str, ...]) -> str:
    if len(group) == 1:
        return group[0]
    return group[0] + ("=" if group[0].startswith("--") else " ") + " ".join(group[1:])


# --- the script ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class BatchJob:
    spec_path: Path                   # absolute
    name: str
    run_dir: Path                     # absolute
    lead_seconds: int
    sbatch_options: tuple[tuple[str, ...], ...] = ()
    overrides: tuple[str, ...] = ()   # `--set` values for traind run
    python: str = sys.executable
    nodes: int = 1                    # > 1: one `traind run` per node, started by srun
    set_nnodes: bool = False          # add `--set distributed.nnodes=NODES` (always when nodes > 1)

    def names(self) -> set[str]:
        return {option_name(g) for g in self.sbatch_options}

    @property
    def is_array(self) -> bool:
        return "--array" in self.names()


# Signals the multi-node batch shell passes on to every node's tasks (SLURM sends it these only when
# asked for the batch step: `scancel --batch` / `--full`). Never CONT: a CONT trap swallows the next one.
RELAYED_SIGNALS = ("TERM", "INT", "HUP", "USR1", "USR2")


def parse_nodes(text: str) -> int:
    """`--nodes M`: a whole number >= 1 (no SLURM min-max range: one supervisor per node, all needed)."""
    value = text.strip()
    if not (value.isascii() and value.isdigit()) or int(value) < 1:
        raise UsageError(f"slurm submit: --nodes {text!r}: expected a whole number of nodes >= 1 (e.g. --nodes 2)")
    return int(value)


def render_script(job: BatchJob) -> str:
    given = job.names()
    multi = job.nodes > 1
    signal = f"USR1@{job.lead_seconds}" if multi else f"B:USR1@{job.lead_seconds}"
    if "--signal" in given:
        raise UsageError(f"slurm submit: --signal: traind sets --signal={signal.split('@')[0]}@LEAD itself; "
                         "use --lead SECONDS")
    if "--nodes" in given:     # e.g. after `--`: sbatch would allocate them, but only one supervisor would run
        raise UsageError("slurm submit: --nodes: give it as traind's own option (not after --): it sets how many "
                         "supervisors srun starts")
    log_name = "slurm-%A_%a.out" if job.is_array else "slurm-%j.out"
    ours = [("--job-name", job.name), ("--requeue", None), ("--signal", signal),
            ("--open-mode", "append"), ("--output", str(job.run_dir / log_name)),
            ("--comment", RUN_DIR_COMMENT + str(job.run_dir))]
    if multi:
        ours.append(("--nodes", str(job.nodes)))
    lines = ["#!/bin/bash",
             f"# Generated by `traind slurm submit` for {job.spec_path}."]
    if multi:
        lines += [f"# srun starts one supervisor per node ({job.nodes}); --signal=USR1 (no B:) reaches each of them.",
                  "# This shell waits for srun instead of exec'ing it (srun answers TERM by SIGKILLing the",
                  "# tasks) and passes a signal sent to it alone on to every node's supervisor."]
    else:
        lines.append("# The supervisor replaces this shell (exec) so that --signal=B:USR1 reaches it.")
    for group in [(opt, value or "") for opt, value in ours] + list(job.sbatch_options):
        if any("\n" in part or "\r" in part for part in group):   # the rest would run as a shell line
            raise UsageError(f"slurm submit: {option_name(group)}: {' '.join(group)!r} holds a line break; "
                             "it cannot go into an #SBATCH line")
    for opt, value in ours:
        if opt not in given:
            lines.append(f"#SBATCH {opt}" + (f"={_quote(value)}" if value is not None else ""))
    lines += [f"#SBATCH {_directive(g)}" for g in job.sbatch_options]
    argv = [job.python, "-m", "traind", "run", str(job.spec_path)]
    for item in job.overrides:
        argv += ["--set", item]
    if multi or job.set_nnodes:
        argv += ["--set", f"distributed.nnodes={job.nodes}"]
    command = " ".join(shlex.quote(a) for a in argv)
    if job.is_array:  # each task its own run dir: array tasks must never share one
        command += " --set " + shlex.quote(f"run_dir={job.run_dir}/task-") + '"${SLURM_ARRAY_TASK_ID}"'
    lines += ["", f"export {ENV_SUBMITTED_LEAD}={job.lead_seconds}   # tells the time-limit warning apart",
              'echo "[traind slurm] $(date -u +%Y-%m-%dT%H:%M:%SZ) job ${SLURM_JOB_ID} on $(hostname):'
              ' SLURM_RESTART_COUNT=${SLURM_RESTART_COUNT:-0}' + (' nodes ${SLURM_JOB_NODELIST}"' if multi else '"')]
    lines += _srun_lines(job.nodes, command) if multi else [f"exec {command}"]
    return "\n".join(lines + [""])


def _srun_lines(nodes: int, command: str) -> list[str]:
    """Start `command` once per node and wait for it; signals to this shell go on to the tasks.

    A trap only records the signal (a trapped signal ends `wait` early); the loop relays it and
    waits again. --kill-on-bad-exit=0: a node that stops first (exit 75) must not get the others
    SIGKILLed in the middle of their own emergency checkpoint; --cpu-bind=none: the supervisor's
    ranks share the node's CPUs; --export=ALL: the tasks see what this shell exported.
    """
    srun = (f"srun --nodes={nodes} --ntasks={nodes} --ntasks-per-node=1 --kill-on-bad-exit=0 --cpu-bind=none "
            f"--export=ALL --label {command}")
    return ["relay=\"\" rc=127",
            f"for sig in {' '.join(RELAYED_SIGNALS)}; do trap \"relay+=' $sig'\" \"$sig\"; done",
            f"{srun} &",
            "srun_pid=$!",
            'while kill -0 "$srun_pid" 2>/dev/null; do',
            '  wait "$srun_pid"; rc=$?',
            '  for sig in $relay; do',
            '    echo "[traind slurm] SIG$sig to the batch shell: passing it on to every node (scancel --signal=$sig)"',
            '    scancel --signal="$sig" "$SLURM_JOB_ID"     # in the foreground: a retry that outlived',
            '    # this shell (slurmctld refuses it while the job is put back) would stop the rerun',
            '  done',
            '  relay=""',
            'done',
            'wait "$srun_pid"; last=$?     # srun\'s status again (bash keeps it); 127: already taken above',
            '[ "$last" = 127 ] || rc=$last',
            'exit "$rc"']


def _quote(value: str) -> str:
    return f'"{value}"' if any(c.isspace() for c in value) else value


def parse_run_dir_comments(squeue_output: str) -> dict[str, str]:
    """`squeue -h -o '%i|%k'` -> {run dir: job id} for traind jobs still queued or running."""
    found = {}
    for line in squeue_output.splitlines():
        job_id, _, comment = line.partition("|")
        if comment.startswith(RUN_DIR_COMMENT):
            found[comment[len(RUN_DIR_COMMENT):].strip()] = job_id.strip()
    return found
