import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import ddphelpers  # noqa: E402
from tests.cluster.twonode import slurm2, slurm2_cluster  # noqa: E402,F401 (fixtures: test_slurm_two_nodes.py)


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory):
    """One uninterrupted 4-rank run of the ddp example (STEPS steps): what interrupted runs must equal
    (the checkpoint schedule and the pacing sleep change nothing in the results)."""
    tmp = tmp_path_factory.mktemp("ddp-reference")
    spec = ddphelpers.write_spec(tmp, name="reference", step_seconds=0)
    assert ddphelpers.run(spec, tmp / "supervisor.log") == 0, (tmp / "supervisor.log").read_text()[-3000:]
    return tmp / "reference"
