"""The two-node SLURM cluster of tests/cluster/slurm2/start.sh, for tests.

The session fixture `slurm2_cluster` (and `slurm2`: the same for one test, cancelling what it
submitted) is imported by tests/cluster/conftest.py; another folder's conftest.py imports it the
same way. It starts the cluster (start.sh installs the Debian packages when they are missing, as
.ci/run does), skips only when they cannot be had (not root, or start.sh's exit 3), fails with
start.sh's output on anything else, and stops the cluster after the session unless it was up
before. The cluster object runs client commands against this cluster (SLURM_CONF), submits through
`traind slurm submit` and reads job records.
"""
from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest

SCRIPTS = Path(__file__).resolve().parent / "slurm2"
NODE_JOB = SCRIPTS / "node_job.py"
DIR = Path(os.environ.get("TRAIND_SLURM2_DIR", "/run/traind-slurm2"))
PACKAGES_MISSING = 3           # start.sh's exit status when slurm/munge cannot be installed


@dataclass
class TwoNodeCluster:
    conf: Path = DIR / "etc" / "slurm.conf"
    nodes: tuple[str, ...] = ("n1", "n2")
    submitted: list[str] = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        """For client commands: this cluster's config, none of an enclosing job's SLURM_* variables."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
        env["SLURM_CONF"] = str(self.conf)
        return env

    def run(self, *argv: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        out = subprocess.run(argv, capture_output=True, text=True, env=self.env, timeout=timeout)
        if check:
            assert out.returncode == 0, f"{' '.join(argv)}: exit {out.returncode}\n{out.stdout}{out.stderr}"
        return out

    def is_up(self) -> bool:
        if not self.conf.is_file():     # scontrol would retry a missing config for 60 s
            return False
        try:
            return "is UP" in self.run("scontrol", "ping", check=False, timeout=20).stdout
        except (OSError, subprocess.TimeoutExpired):
            return False

    def submit(self, spec: Path, *options: str) -> str:
        """`traind slurm submit SPEC OPTIONS...` -> the job id (remembered for `cancel_all`)."""
        out = self.run(sys.executable, "-m", "traind", "slurm", "submit", str(spec), *options)
        job_id = out.stdout.strip()
        self.submitted.append(job_id)
        return job_id

    def show(self, job_id: str) -> dict[str, str]:
        out = self.run("scontrol", "show", "job", "-o", job_id, check=False)
        return dict(w.split("=", 1) for w in out.stdout.split() if "=" in w)

    def cancel_all(self) -> None:
        """Cancel what this session's tests submitted, so that a failed test leaves the nodes free."""
        while self.submitted:
            self.run("scancel", self.submitted.pop(), check=False)


def _script(name: str, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPTS / name)], capture_output=True, text=True, env=env, timeout=timeout)


def cluster_session() -> Iterator[TwoNodeCluster]:
    if os.geteuid() != 0:
        pytest.skip("the two-node SLURM tests start slurmctld, two slurmd and munged: they need root")
    cluster = TwoNodeCluster()
    was_up = cluster.is_up()
    out = _script("start.sh", cluster.env, timeout=600)      # apt-get may run: minutes on a fresh machine
    if out.returncode == PACKAGES_MISSING:
        pytest.skip(f"SLURM is not installed and cannot be: {out.stdout.strip().splitlines()[-1]}")
    assert out.returncode == 0, f"tests/cluster/slurm2/start.sh failed (exit {out.returncode}):\n{out.stdout}{out.stderr}"
    try:
        yield cluster
    finally:
        cluster.cancel_all()
        if not was_up:  # a cluster someone started by hand stays up
            _script("stop.sh", cluster.env, timeout=180)


@pytest.fixture(scope="session")
def slurm2_cluster():
    """The two-node SLURM cluster (tests/cluster/slurm2/start.sh), up for the whole session."""
    yield from cluster_session()


@pytest.fixture
def slurm2(slurm2_cluster):
    """The two-node cluster for one test: whatever the test submitted is cancelled after it."""
    yield slurm2_cluster
    slurm2_cluster.cancel_all()
