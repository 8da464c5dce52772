"""Cluster tests: never talk to a real metadata address (only 127.0.0.1); the two-node SLURM cluster."""
import pytest

from tests.cluster.twonode import slurm2, slurm2_cluster  # noqa: F401 (fixtures)
from traind.cluster import spot


@pytest.fixture(autouse=True)
def no_real_metadata(monkeypatch):
    # A test that forgot base_url would hit 127.0.0.1:9 (discard; refused), never 169.254.169.254.
    monkeypatch.setattr(spot, "DEFAULT_BASE_URLS", {p: "http://127.0.0.1:9" for p in spot.PROVIDERS})

