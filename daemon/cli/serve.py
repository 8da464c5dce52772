"""CLI group of the service: serve, submit, ls, cancel, logs [-f], systemd install.

Clients talk to the daemon only through its state dir (owner-only): submit drops a file in the
spool, cancel drops a request in control/, ls/logs read the records and logs. No socket, no TCP.
"""
from __future__ import annotations

import grp
import json
import logging
import os
import sys
import time
from pathlib import Path

from ..service import spool
from ..contract.errors import UsageError
from ..service.jobqueue import FINAL_STATES, JobState, JobTable
from ..service.client import daemon_status, default_state_dir, request_cancel
from ..service.config import ServeConfig, parse_runner
from ..service.daemon import Daemon


def register(sub):
    p = sub.add_parser("serve", help="run the job daemon (spool, slots, systemd notify)")
    _state_dir_arg(p)
    p.add_argument("--slots", type=int, default=None, help="concurrent jobs (default 1, or one per --gpus entry)")
    p.add_argument("--gpus", help="CUDA_VISIBLE_DEVICES per slot: 0,1,2,3 = one GPU per slot; "
                                  "'0,1;2,3' = two slots of two GPUs")
    p.add_argument("--group", help="group whose members may also submit (spool becomes group-writable, setgid)")
    p.add_argument("--runner", help="command that supervises one spec (default: traind run)")
    p.add_argument("--stop-timeout", type=float, default=300.0, help="seconds for emergency checkpoints on SIGTERM")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING"])
    p.add_argument("--metrics-port", type=int, default=None, metavar="PORT",
                   help="serve Prometheus metrics of every job on 127.0.0.1:PORT (needs prometheus_client)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("submit", help="queue a job spec with the daemon (atomic drop into its spool)")
    _state_dir_arg(p)
    p.add_argument("spec", type=Path)
    p.add_argument("--name", help="job name (default: the spec's name field)")
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("ls", help="list the daemon's jobs and their states")
    _state_dir_arg(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_ls)

    p = sub.add_parser("cancel", help="stop a job: emergency checkpoint, then stop (queued: just drop it)")
    _state_dir_arg(p)
    p.add_argument("name")
    p.set_defaults(func=cmd_cancel)

    p = sub.add_parser("logs", help="print a job's output")
    _state_dir_arg(p)
    p.add_argument("name")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing until the job ends")
    p.add_argument("--runner", action="store_true", help="the supervisor's own log instead of the job's")
    p.set_defaults(func=cmd_logs)

    p = sub.add_parser("systemd", help="systemd integration")
    p.set_defaults(func=lambda _args, parser=p: parser.print_usage(sys.stderr) or 2)  # no subcommand
    ssub = p.add_subparsers(dest="systemd_command", metavar="SUBCOMMAND")
    i = ssub.add_parser("install", help="install traind.service and traind@.service",
                        description="Write traind.service (the job daemon) and traind@.service (one spec per "
                                    "instance) with ExecStart pointing at this traind, then reload systemd.")
    i.add_argument("--unit-dir", type=Path, default=Path("/etc/systemd/system"),
                   help="where the unit files are written (default: %(default)s)")
    i.add_argument("--exec", dest="exe", metavar="PATH",
                   help="absolute path of the traind executable ExecStart runs (default: the one running); "
                        "not under /tmp or /var/tmp, which the units' PrivateTmp=yes hides from the service")
    i.add_argument("--jobs-dir", type=Path, default=Path("/etc/traind/jobs"),
                   help="where traind@NAME.service reads its spec, NAME.yaml (default: %(default)s)")
    i.add_argument("--create-user", action="store_true",
                   help="create the system user 'traind' the units run as, if missing (needs root and useradd)")
    i.add_argument("--no-reload", action="store_true",
                   help="skip `systemctl daemon-reload` (run it yourself before starting the units)")
    i.set_defaults(func=cmd_systemd_install)


def _state_dir_arg(p):
    p.add_argument("--state-dir", type=Path, default=None,
                   help="daemon state dir (default: $TRAIND_STATE_DIR, $STATE_DIRECTORY, /var/lib/traind)")


def _state(args) -> Path:
    state = args.state_dir or default_state_dir()
    if state.exists() and not state.is_dir():
        raise UsageError(f"{state}: --state-dir: not a directory")
    return state


# ------------------------------------------------------------------------------ serve
def cmd_serve(args) -> int:
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    gpus = None
    if args.gpus:
        sep = ";" if ";" in args.gpus else ","
        gpus = [g.strip() for g in args.gpus.split(sep) if g.strip()]
    slots = args.slots if args.slots is not None else (len(gpus) if gpus else 1)
    if slots < 1:
        raise UsageError(f"--slots: must be at least 1, got {slots}")
    if gpus and len(gpus) < slots:
        raise UsageError(f"--gpus: {len(gpus)} entries for {slots} slots")
    group = None
    if args.group:
        try:
            group = grp.getgrnam(args.group).gr_gid
        except KeyError:
            raise UsageError(f"--group: no group named {args.group!r}") from None
    if not args.stop_timeout > 0 or args.stop_timeout == float("inf"):
        raise UsageError(f"--stop-timeout: expected a number of seconds > 0, got {args.stop_timeout}")
    try:
        runner = parse_runner(args.runner or os.environ.get("TRAIND_RUNNER"))
    except ValueError as err:
        raise UsageError(f"--runner (or $TRAIND_RUNNER): cannot split into a command: {err}") from None
    cfg = ServeConfig(state_dir=_state(args), slots=slots, gpus=gpus, group=group, runner=runner,
                      stop_timeout=args.stop_timeout,
                      test_hooks=os.environ.get("TRAIND_TEST_HOOKS") == "1")
    daemon = Daemon(cfg)
    daemon.setup()
    if args.metrics_port is not None:
        from ..supervisor.metrics import serve_metrics
        port = serve_metrics(args.metrics_port, lambda: {r.name: (daemon.table.job_dir(r.name) / "run", r.state.value)
                                                         for r in daemon.table.load_all()})
        logging.getLogger("traind.serve").info("Prometheus metrics on http://127.0.0.1:%d/metrics", port)
    return daemon.serve_forever()


# ------------------------------------------------------------------------------ clients
def cmd_submit(args) -> int:
    state = _state(args)
    if args.name is not None and not spool.valid_name(args.name):
        raise UsageError(f"--name: {args.name!r} must match {spool.NAME_RE.pattern}")
    name, data = spool.prepare_spec(args.spec, args.name)
    if JobTable(state).load(name) is not None:
        raise UsageError(f"{args.spec}: field 'name': a job named {name!r} already exists (see `traind ls`)")
    path = spool.submit(state / "spool", name, data)
    print(f"submitted {name} ({path})")
    return 0


def cmd_ls(args) -> int:
    state = _state(args)
    recs = JobTable(state).load_all()
    pending = sorted(p.name for p in (state / "spool").glob("*.yaml")) if (state / "spool").is_dir() else []
    serving = daemon_status(state)
    if args.json:
        print(json.dumps({"daemon": serving, "jobs": [r.to_json() for r in recs], "spool": pending}, indent=1))
        return 0
    if serving is None:
        print(f"daemon: not running on {state}")
    else:
        print(f"daemon: pid {serving.get('pid')}, {serving.get('status', '?')}")
    print(f"{'NAME':<24} {'STATE':<11} {'SLOT':>4} {'LAUNCHES':>8} {'EXIT':>4}  SUBMITTED")
    for r in recs:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.submitted))
        held = f"  ({r.reason})" if r.state is JobState.QUEUED and r.reason.startswith("its old process") else ""
        print(f"{r.name:<24} {r.state.value:<11} {_dash(r.slot):>4} {r.launches:>8} {_dash(r.exit_code):>4}  {when}{held}")
    for name in pending:
        print(f"{name[:-5]:<24} {'submitted':<11} {'-':>4} {0:>8} {'-':>4}  (not yet taken by the daemon)")
    return 0


def _dash(v) -> str:
    return "-" if v is None else str(v)


def cmd_cancel(args) -> int:
    rec = request_cancel(_state(args), args.name)
    if rec is None:
        print(f"cancel requested for {args.name} (submitted, not accepted yet: it will not run)")
    elif rec.state in FINAL_STATES:
        print(f"{args.name} is already {rec.state.value}")
    else:
        print(f"cancel requested for {args.name} ({rec.state.value})")
    return 0


def cmd_logs(args) -> int:
    table = JobTable(_state(args))
    if not spool.valid_name(args.name) or table.load(args.name) is None:
        raise UsageError(f"{table.jobs_dir}: no job named {args.name!r}")
    job_dir = table.job_dir(args.name)
    offsets: dict[Path, int] = {}
    while True:
        files = [job_dir / "runner.log"] if args.runner else _attempt_logs(job_dir)
        for f in files:
            offsets[f] = _copy_from(f, offsets.get(f, 0))
        if not args.follow or table.load(args.name).state in FINAL_STATES:
            if args.follow:  # one last pass: output written just before the state changed
                for f in files:
                    offsets[f] = _copy_from(f, offsets.get(f, 0))
            return 0
        time.sleep(0.5)


def _attempt_logs(job_dir: Path) -> list[Path]:
    logs = sorted((job_dir / "run" / "logs").glob("attempt-*.log"),
                  key=lambda p: int(p.stem.split("-")[-1]) if p.stem.split("-")[-1].isdigit() else 0)
    return logs or [job_dir / "runner.log"]


def _copy_from(path: Path, offset: int) -> int:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return offset
    sys.stdout.buffer.write(data)
    sys.stdout.flush()
    return offset + len(data)


# ------------------------------------------------------------------------------ systemd install
def cmd_systemd_install(args) -> int:
    from ..service.systemd_install import WARNING, install
    for line in install(args.unit_dir, exe=args.exe, create_user=args.create_user,
                        reload=not args.no_reload, jobs_dir=args.jobs_dir):
        if line.startswith(WARNING):
            print(f"traind: {line}", file=sys.stderr)
        else:
            print(line)
    return 0
