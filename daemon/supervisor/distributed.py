"""The spec's `distributed:` section and where this node's ranks sit in the group (torch-free).

`traind run` starts `nproc_per_node` local ranks with torchrun's environment contract, so an
unmodified torchrun-style script runs under it; with `nnodes > 1` one `traind run` runs on each
node (srun starts them under SLURM) and each reads its node rank and the master address from
SLURM, unless the spec names them. Rendezvous is torch's own: rank 0 hosts the c10d TCPStore on
MASTER_ADDR:MASTER_PORT (init_method env://); nothing here speaks a network protocol.
"""
from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..contract.errors import UsageError
from ..contract.checker import Checker

FIELDS = ("nproc_per_node", "nnodes", "node_rank", "master_addr", "master_port", "exit_timeout_seconds",
          "rendezvous_timeout_seconds")
MAX_RANKS = 4096
SLURM_PORT_BASE, SLURM_PORT_SPAN = 20000, 20000    # MASTER_PORT from the SLURM job id, when not given
NODES_SUBDIR = "nodes"      # run files of node k > 0 go to RUN_DIR/nodes/node-k (checkpoints are shared)


@dataclass(frozen=True)
class Distributed:
    nproc_per_node: int = 1
    nnodes: int = 1
    node_rank: int | None = None       # None: SLURM_NODEID, else 0
    master_addr: str | None = None     # None: the first host of SLURM_JOB_NODELIST, else 127.0.0.1
    master_port: int | None = None     # None: a free port per attempt (one node), or from SLURM_JOB_ID
    exit_timeout_seconds: float = 30.0  # after one rank exits 0 or 75, the others get this long to follow
    rendezvous_timeout_seconds: float = 300.0   # a restarted group's ranks must all speak within this

    @property
    def world_size(self) -> int:
        return self.nproc_per_node * self.nnodes


def parse(c: Checker, value: Any) -> Distributed | None:
    """None: not distributed (one process, no rank variables)."""
    if value is None:
        return None
    d = c.section(value, "distributed", FIELDS)
    dist = Distributed(
        nproc_per_node=c.number(d.get("nproc_per_node", 1), "distributed.nproc_per_node", minimum=1, integer=True,
                                maximum=MAX_RANKS),
        nnodes=c.number(d.get("nnodes", 1), "distributed.nnodes", minimum=1, integer=True, maximum=MAX_RANKS),
        node_rank=c.number(d.get("node_rank"), "distributed.node_rank", integer=True, nullable=True,
                           maximum=MAX_RANKS - 1),
        master_addr=c.string(d.get("master_addr"), "distributed.master_addr", nullable=True),
        master_port=c.number(d.get("master_port"), "distributed.master_port", minimum=1, integer=True,
                             nullable=True, maximum=65535),
        exit_timeout_seconds=c.number(d.get("exit_timeout_seconds", 30.0), "distributed.exit_timeout_seconds",
                                      strict=True, maximum=86400),
        rendezvous_timeout_seconds=c.number(d.get("rendezvous_timeout_seconds", 300.0),
                                            "distributed.rendezvous_timeout_seconds", strict=True, maximum=86400))
    if dist.node_rank is not None and dist.node_rank >= dist.nnodes:
        raise c.fail("distributed.node_rank", f"a node rank below nnodes ({dist.nnodes})", dist.node_rank)
    if dist.world_size > MAX_RANKS:
        raise c.fail("distributed", f"at most {MAX_RANKS} ranks in all (nproc_per_node x nnodes)", dist.world_size)
    return dist


@dataclass(frozen=True)
class Placement:
    """This node's part of the group, resolved once when `traind run` starts."""
    dist: Distributed
    node_rank: int
    master_addr: str
    fixed_port: int | None        # None: pick a free local port for each attempt
    run_id: str

    def node_dir(self, run_dir: Path) -> Path:
        """Where this node's supervisor keeps its run files (status, events, logs, lock)."""
        return run_dir if self.node_rank == 0 else run_dir / NODES_SUBDIR / f"node-{self.node_rank}"

    def rank_envs(self, attempt: int, max_restarts: int) -> list[dict[str, str]]:
        """One environment per local rank, as torchrun's agent would set it, for this attempt."""
        d, port = self.dist, self.fixed_port or free_port(self.master_addr)
        common = {"WORLD_SIZE": d.world_size, "LOCAL_WORLD_SIZE": d.nproc_per_node, "GROUP_RANK": self.node_rank,
                  "GROUP_WORLD_SIZE": d.nnodes, "ROLE_WORLD_SIZE": d.world_size, "ROLE_NAME": "default",
                  "MASTER_ADDR": self.master_addr, "MASTER_PORT": port,
                  "TORCHELASTIC_RESTART_COUNT": attempt - 1, "TORCHELASTIC_MAX_RESTARTS": max_restarts,
                  "TORCHELASTIC_RUN_ID": self.run_id}
        envs = []
        for local in range(d.nproc_per_node):
            rank = self.node_rank * d.nproc_per_node + local
            envs.append({k: str(v) for k, v in {**common, "RANK": rank, "LOCAL_RANK": local,
                                                  "ROLE_RANK": rank}.items()})
        return envs


def place(dist: Distributed, job_name: str, environ=os.environ, source=None) -> Placement:
    """Node rank, master address and port from the spec, else from SLURM; a UsageError naming the
    spec file (`source`) when neither says."""
    try:
        return _place(dist, job_name, environ)
    except UsageError as err:
        raise UsageError(f"{source}: {err}" if source is not None else str(err)) from None


def _place(dist: Distributed, job_name: str, environ) -> Placement:
    node_rank = dist.node_rank
    if node_rank is None:
        raw = environ.get("SLURM_NODEID", "0" if dist.nnodes == 1 else "")
        if not raw.strip().isdigit():
            raise UsageError("distributed.node_rank: not set, and SLURM_NODEID is not in the environment "
                             f"(needed with nnodes={dist.nnodes} outside SLURM)")
        node_rank = int(raw)
    if node_rank >= dist.nnodes:
        raise UsageError(f"distributed.node_rank: {node_rank} (from SLURM_NODEID) is not below nnodes={dist.nnodes}")
    addr = dist.master_addr or first_host(environ.get("SLURM_JOB_NODELIST", "")) or "127.0.0.1"
    port = dist.master_port
    job_id = environ.get("SLURM_JOB_ID", "").strip()
    if port is None and dist.nnodes > 1:
        if not job_id.isdigit():
            raise UsageError("distributed.master_port: needed with nnodes > 1 outside SLURM (every node must use the same)")
        port = SLURM_PORT_BASE + int(job_id) % SLURM_PORT_SPAN
    return Placement(dist, node_rank, addr, port, job_id or job_name)


_RANGE_RE = re.compile(r"^([^\[,]*)\[([^\]]+)\](.*)$")


def first_host(nodelist: str) -> str | None:
    """The first host of a SLURM node list: 'n1,n2' -> n1, 'gpu[07-12,20]' -> gpu07 (zero padding
    kept), 'a[1-2]-ib' -> a1-ib. The master is the first node, as `scontrol show hostnames` lists it."""
    text = nodelist.strip()
    if not text:
        return None
    m = _RANGE_RE.match(text)
    if m is None or "," in m.group(1):
        return text.split(",")[0] or None
    first = m.group(2).split(",")[0].split("-")[0]
    return f"{m.group(1)}{first}{m.group(3).split(',')[0]}"


def free_port(addr: str) -> int:
    """A port free on `addr` now; rank 0 binds it a moment later (torchrun's standalone mode does the same)."""
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.bind((addr, 0))
            return s.getsockname()[1]
    except OSError:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]


def rendezvous_deadline(attempts: list, group, dist: Distributed) -> float | None:
    """A restarted group whose ranks do not all speak in time waits for a node that will not come
    (its supervisor died): fail the attempt rather than hold every node for torch's 30 min rendezvous
    timeout. Not for a first attempt, nor a job that never spoke (slow to start, or no channel)."""
    a = attempts[-1] if attempts else None
    if (a is None or a.exit is not None or a.started_at is None or group.all_heard()
            or not any(x.spoke for x in attempts[:-1])):
        return None
    return a.started_at + dist.rendezvous_timeout_seconds
