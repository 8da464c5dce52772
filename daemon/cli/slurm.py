"""`traind slurm submit SPEC [--time T] [--partition P] [--lead S] [--print] [other sbatch options]`."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..cluster import sbatch
from ..contract.errors import TraindError, UsageError
from ..cluster.slurm import CommandRunner

EPILOG = """\
Any other option (e.g. --array 0-3, --mem 4G, --qos high, --exclusive) is passed to sbatch.
The script runs `traind run SPEC` with --signal=B:USR1@LEAD, --requeue and --open-mode=append;
on the warning the supervisor writes an emergency checkpoint, requeues the job and exits 75.
With --nodes M > 1, srun runs one `traind run SPEC --set distributed.nnodes=M` per node and the
warning is --signal=USR1@LEAD (to every node's supervisor); node 0's supervisor requeues the job.
"""


def _add_own_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--time", "-t", help="sbatch --time: " + sbatch.TIME_FORMATS + " (e.g. 2:00:00); "
                                        "must be longer than LEAD")
    p.add_argument("--partition", "-p", help="sbatch --partition")
    p.add_argument("--nodes", "-N", metavar="M", help="run on M nodes, one supervisor per node (default: the "
                                                      "spec's distributed.nnodes, else 1)")
    p.add_argument("--lead", type=float, metavar="SECONDS",
                   help="USR1 this long before the time limit (default: slurm.lead_seconds, else "
                        "measured emergency-checkpoint time x1.5 + 30 s, at least 60)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="spec override, passed on to `traind run` (repeatable)")
    p.add_argument("--print", action="store_true", dest="print_only", help="print the script, submit nothing")
    p.add_argument("--allow-shared-run-dir", action="store_true",
                   help="submit even if a queued traind job already uses this run dir")


def register(sub) -> None:
    slurm = sub.add_parser("slurm", help="run jobs under SLURM (sbatch with requeue on time limit/preemption)")
    group = slurm.add_subparsers(dest="slurm_command", metavar="SUBCOMMAND", parser_class=type(slurm))
    p = group.add_parser("submit", help="submit SPEC as a requeueable SLURM batch job",
                         epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_own_options(p)
    p.add_argument("spec", metavar="SPEC", help="job spec (YAML)")
    # Everything after SPEC: our own options are picked out again in submit(), the rest is sbatch's.
    p.add_argument("sbatch_args", nargs=argparse.REMAINDER, metavar="[SBATCH OPTIONS]", help=argparse.SUPPRESS)
    p.set_defaults(func=submit)
    slurm.set_defaults(func=lambda args: (slurm.print_help(sys.stderr), 2)[1])


def split_options(args: argparse.Namespace) -> list[str]:
    """Take our options out of what followed SPEC (into args); return the rest, for sbatch, in order."""
    own = _OwnOptions(add_help=False, allow_abbrev=False)
    _add_own_options(own)
    _, rest = own.parse_known_args(list(args.sbatch_args or []), namespace=args)
    return [token for token in rest if token != "--"]   # `--` only separates; sbatch must not see it


class _OwnOptions(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, no usage dump
        raise UsageError(f"slurm submit: {message}")


def submit(args: argparse.Namespace, runner: CommandRunner | None = None) -> int:
    from ..supervisor.spec import SLURM_MAX_SIGNAL_SECONDS, load_spec
    runner = runner or CommandRunner()
    extra = split_options(args)
    nodes = sbatch.parse_nodes(args.nodes) if args.nodes is not None else None
    spec = load_spec(args.spec, list(args.overrides))
    nodes, set_nnodes = _node_count(spec, nodes)
    if set_nnodes:   # what each node's `traind run` will load: checked here, where a bad value is one line
        spec = load_spec(args.spec, list(args.overrides) + [f"distributed.nnodes={nodes}"])
        _refuse_fixed_node_rank(spec, nodes)
    options = []
    if args.time is not None:
        options.append(("--time", args.time))
    if args.partition:
        options.append(("--partition", args.partition))
    options += sbatch.group_options(extra)

    measurement = sbatch.measure_stop(spec.run_dir)
    lead = args.lead if args.lead is not None else spec.slurm.lead_seconds
    if lead is not None and not 0 < lead <= SLURM_MAX_SIGNAL_SECONDS:   # also NaN, which no comparison lets through
        raise UsageError(f"--lead: expected a number of seconds > 0 and <= {SLURM_MAX_SIGNAL_SECONDS}, got {lead:g}")
    lead = int(round(lead)) if lead is not None else sbatch.lead_for(measurement)

    job = sbatch.BatchJob(spec_path=Path(args.spec).resolve(), name=spec.name, run_dir=spec.run_dir,
                          lead_seconds=lead, sbatch_options=tuple(options),
                          overrides=tuple(args.overrides), nodes=nodes, set_nnodes=set_nnodes)
    script = sbatch.render_script(job)       # first: it names a line break in --time as such
    lead_from = ("--lead" if args.lead is not None else "slurm.lead_seconds" if spec.slurm.lead_seconds is not None
                 else "measured or default; pass --lead")
    sbatch.refuse_lead_past_limit(lead, job.sbatch_options, lead_from)
    warning = sbatch.lead_warning(lead, measurement)   # after every refusal: one line on stderr
    if warning:
        print(f"traind: {warning}", file=sys.stderr)
    if args.print_only:
        sys.stdout.write(script)
        return 0

    if not args.allow_shared_run_dir:
        _refuse_shared_run_dir(spec.run_dir, runner)
    try:
        spec.run_dir.mkdir(parents=True, exist_ok=True)   # sbatch opens the log there, it won't mkdir
    except OSError as err:
        raise TraindError(f"{spec.source}: run_dir: cannot create {spec.run_dir}: {err.strerror}") from None
    res = runner.run(["sbatch", "--parsable"], stdin=script, timeout=60)
    if not res.ok:
        raise TraindError(f"sbatch failed: {res.why()}")
    job_id = res.stdout.strip().split(";")[0]
    print(f"traind: submitted SLURM job {job_id} ({spec.name}, {f'{nodes} nodes, ' if nodes > 1 else ''}LEAD {lead} s, "
          f"log {spec.run_dir}/slurm-{job_id}.out)", file=sys.stderr)
    print(job_id)
    return 0


def _node_count(spec, nodes: int | None) -> tuple[int, bool]:
    """(M, whether each `traind run` needs `--set distributed.nnodes=M`): --nodes, else the spec's
    distributed.nnodes, else 1. A one-node spec submitted on one node stays exactly as it was."""
    dist = spec.distributed
    spec_nodes = dist.nnodes if dist is not None else 1
    nodes = spec_nodes if nodes is None else nodes
    return nodes, nodes > 1 or (dist is not None and spec_nodes != nodes)


def _refuse_fixed_node_rank(spec, nodes: int) -> None:
    """Every node runs the same command: a node rank fixed in the spec would be every node's."""
    dist = spec.distributed
    if nodes > 1 and dist is not None and dist.node_rank is not None:
        raise UsageError(f"slurm submit: --nodes {nodes}: {spec.source} sets distributed.node_rank "
                         f"({dist.node_rank}), which every node would take; remove it (each node reads SLURM_NODEID)")


def _refuse_shared_run_dir(run_dir: Path, runner: CommandRunner) -> None:
    """Two jobs never share a run dir by accident: each submit tags its job with its run dir."""
    res = runner.run(["squeue", "-h", "-o", "%i|%k"], timeout=30)
    if not res.ok:
        return  # no squeue answer: the run's own lock still keeps two supervisors apart
    holder = sbatch.parse_run_dir_comments(res.stdout).get(str(run_dir))
    if holder:
        raise UsageError(f"run_dir {run_dir}: already used by queued SLURM job {holder}; cancel it, "
                         f"use --set run_dir=..., or pass --allow-shared-run-dir")
