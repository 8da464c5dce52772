"""`traind run SPEC [--set key.sub=value]...` and `traind status RUN_DIR [--json]`."""
from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

from .show import ago, size
from ..contract.errors import UsageError
from ..supervisor.runfiles import lock_is_held, read_status
from ..supervisor.spec import JobSpec, load_spec


def register(sub) -> None:
    run = sub.add_parser("run", help="supervise one job in the foreground",
                         description="Supervise the job of SPEC until it succeeds (exit 0), fails for good "
                                     "(exit 1) or is stopped after an emergency checkpoint (exit 75).")
    run.add_argument("spec", metavar="SPEC.yaml")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.SUB=VALUE",
                     help="override a spec field (value parsed as YAML), e.g. --set restart.max_restarts=3")
    run.add_argument("--metrics-port", type=int, default=None, metavar="PORT",
                     help="serve Prometheus metrics on 127.0.0.1:PORT (needs prometheus_client)")
    run.set_defaults(func=cmd_run)
    st = sub.add_parser("status", help="state of a supervised run (a run dir, or a job name of `traind serve`)",
                        description="State, attempt, restarts, pid, last heartbeat, last valid checkpoint, "
                                    "last failure of the run in RUN_DIR, or of the job NAME submitted to "
                                    "`traind serve`.")
    st.add_argument("run_dir", metavar="RUN_DIR|NAME")
    st.add_argument("--state-dir", type=Path, default=None,
                    help="with a job NAME: the daemon's state dir (default as for `traind serve`)")
    st.add_argument("--json", action="store_true", help="print the status as JSON")
    st.set_defaults(func=cmd_status)


def check_runnable(spec: JobSpec) -> None:
    """Mistakes that would make every attempt fail the same way: say so once, exit 2."""
    if not _probe(spec, "workdir", spec.workdir)[0]:
        raise UsageError(f"{spec.source}: workdir: directory {spec.workdir} does not exist")
    is_dir, exists = _probe(spec, "run_dir", spec.run_dir)
    if exists and not is_dir:
        raise UsageError(f"{spec.source}: run_dir: {spec.run_dir} is not a directory")
    exe = spec.command[0]
    if "/" in exe:
        path = spec.workdir / exe
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise UsageError(f"{spec.source}: command[0]: {exe!r} is not an executable file (looked in {spec.workdir})")
    else:
        search = spec.env.get("PATH", os.environ.get("PATH", os.defpath))
        if shutil.which(exe, path=search) is None:
            raise UsageError(f"{spec.source}: command[0]: {exe!r} not found on PATH")


def _probe(spec: JobSpec, field: str, path: Path) -> tuple[bool, bool]:
    """(is a directory, exists); a path the OS refuses (a name too long) is that field's mistake."""
    try:
        return path.is_dir(), path.exists()
    except OSError as err:
        raise UsageError(f"{spec.source}: {field}: {err.strerror}: {str(path)[:80]}...") from None


def cmd_run(args) -> int:
    from ..supervisor.loop import Supervisor   # after the spec is known to be good
    from ..supervisor.osproc import RealOS
    from ..supervisor.terminal import Terminal
    spec = load_spec(args.spec, args.overrides)
    check_runnable(spec)
    # --- cluster hooks (traind.cluster.hooks): SLURM requeue after an emergency stop, spot notices ---
    from ..cluster import hooks
    attached = hooks.attach(spec)
    terminal = Terminal(sys.stderr, spec.name)
    if args.metrics_port is not None:
        from ..supervisor.metrics import serve_metrics
        port = serve_metrics(args.metrics_port, lambda: {spec.name: (spec.run_dir, None)})
        terminal.line(f"traind[{spec.name}]: Prometheus metrics on http://127.0.0.1:{port}/metrics")
    supervisor = Supervisor(spec, os_=RealOS(echo_to=terminal), followup=attached.followup, log=terminal.line,
                            live=terminal.live)
    attached.start(supervisor.request_stop, supervisor.say)
    try:
        result = supervisor.run()
    finally:
        attached.stop()
        terminal.close()
    return result.exit_code


def resolve_run_dir(arg: str, state_dir: Path | None) -> Path:
    """A run dir as given, else the run dir of the `traind serve` job of that name."""
    run_dir = Path(arg)
    if run_dir.is_dir():
        return run_dir
    from ..service.client import lookup_run_dir
    found = lookup_run_dir(arg, state_dir)
    if found is None:
        raise UsageError(f"{arg}: no such run dir, nor a job of that name in the traind state dir")
    return found


def cmd_status(args) -> int:
    run_dir = resolve_run_dir(args.run_dir, args.state_dir)
    status = read_status(run_dir)
    if status is None:
        raise UsageError(f"{run_dir}: not a traind run dir (no status.json)")
    status["supervisor_alive"] = lock_is_held(run_dir)
    status["valid_checkpoint"] = _latest_checkpoint(run_dir)
    status["memory_checkpoints"] = _in_memory(run_dir)
    if args.json:
        print(json.dumps(status, indent=1, default=str))
        return 0
    print(format_status(status, now=time.time()))
    return 0


def _latest_checkpoint(run_dir: Path) -> dict | None:
    from .. import store
    info, skipped = store.latest_valid(store.checkpoints_dir(run_dir))
    out = None if info is None else {"step": info.step, "path": str(info.path), "created": info.created}
    if out is not None and skipped:
        out["skipped_newer"] = [f"{Path(s.path).name}: {s.error}" for s in skipped]
    return out


def _in_memory(run_dir: Path) -> dict | None:
    """The run's memory tier as it is now (names and sizes: quick), if it has one."""
    from ..store import format as fmt, memory_tier
    tier = memory_tier.tier_dir(run_dir)
    steps = sorted(fmt.step_numbers(tier))
    return {"path": str(tier), "steps": steps, "bytes": memory_tier.used_bytes(tier)} if tier.exists() else None


def format_status(s: dict, *, now: float) -> str:
    state = s.get("state")
    live = s.get("supervisor_alive")
    if state in ("starting", "running", "stopping", "backing_off") and not live:
        state = f"{state} (stale: no supervisor holds the run)"
    lines = [f"name:        {s.get('name')}", f"state:       {state}",
             f"attempt:     {s.get('attempt')}  (restarts {s.get('restarts')}, "
             f"failures in window {s.get('failures_in_window')})"]
    if s.get("pid"):
        lines.append(f"pid:         {s['pid']}  (supervisor {s.get('supervisor_pid')})")
    hb = s.get("last_heartbeat")
    if isinstance(hb, dict):      # status.json is ours, but may have been edited: never a traceback here
        rate = hb.get("steps_per_second")
        lines.append(f"heartbeat:   step {hb.get('step')}, {ago(now=now, then=hb.get('time'))} ago"
                     + (f", {rate:.1f} steps/s" if isinstance(rate, (int, float)) and rate else ""))
    ranks = s.get("ranks")
    if isinstance(ranks, list) and ranks:
        lines.append(f"ranks:       {len(ranks)} on node {s.get('node_rank')}: " + "; ".join(
            f"{r.get('rank')} pid {r.get('pid')} step {r.get('step')}" + (f" ({r['exit']})" if r.get("exit") else "")
            for r in ranks if isinstance(r, dict)))
    ck = s.get("valid_checkpoint")
    ck = ck if isinstance(ck, dict) else None
    lines.append("checkpoint:  " + ("none" if not ck else f"step {ck['step']}, {ago(now=now, then=ck.get('created'))} ago"))
    for skipped in (ck or {}).get("skipped_newer", []):
        lines.append(f"  skipped:   {skipped}")
    tier, config = s.get("memory_checkpoints"), s.get("memory_tier")
    if isinstance(tier, dict) and isinstance(tier.get("steps"), list):
        every = f"every {config.get('every_steps')} steps, " if isinstance(config, dict) else ""
        lines.append(f"memory tier: {every}steps {', '.join(map(str, tier['steps'])) or 'none yet'} "
                     f"({size(tier.get('bytes') or 0)} in {tier.get('path')})")
    cost = save_cost(s.get("last_checkpoint"))
    if cost:
        lines.append(f"last save:   {cost}")
    fail = s.get("last_failure")
    if isinstance(fail, dict):
        lines.append(f"last failure: attempt {fail.get('attempt')} {fail.get('exit')}"
                     + (f" ({fail['reason']})" if fail.get("reason") else "") + f", {ago(now=now, then=fail.get('time'))} ago")
    if s.get("message"):
        lines.append(f"result:      {s['message']} (exit {s.get('exit_code')})")
    return "\n".join(lines)


PER_GIB_FROM = 64 << 20


def save_cost(ck) -> str | None:
    """What the last commit cost, from what the job reported (status.json may have been edited:
    a field that is not a number is left out, never a traceback)."""
    if not isinstance(ck, dict) or not isinstance(ck.get("step"), int):
        return None

    def num(key):
        value = ck.get(key)
        return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None
    nbytes = num("bytes")
    gib = nbytes / 2**30 if nbytes and nbytes >= PER_GIB_FROM else None     # per GiB: large states only
    cpu, blocked, seconds, slowdown = (num(k) for k in ("writer_cpu_seconds", "blocked_seconds", "seconds", "slowdown"))
    parts = [f"step {ck['step']} ({ck.get('reason')})"] + ([size(nbytes)] if nbytes else [])
    if blocked is not None:
        parts.append(f"caller blocked {blocked:.3f} s")
    if cpu is not None:
        parts.append(f"writer CPU {cpu:.3f} s" + (f" ({cpu / gib:.3f} s/GiB)" if gib else ""))
    if seconds is not None:
        parts.append(f"durable after {seconds:.2f} s")
    if slowdown is not None:
        parts.append(f"steps beside a save take {slowdown:.2f}x as long")
    return ", ".join(parts)


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use: traind run|status")
