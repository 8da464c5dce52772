"""Issue 10 items 3 and 4 with real processes: a job that can never start, and a checkpoint that
verifies but holds a pickle weights_only refuses (the supervisor sets it aside and falls back)."""
import os
import sys

import pytest
import torch

from traind import store
from traind.supervisor.runfiles import read_events

from .conftest import traind, write_spec

pytestmark = pytest.mark.slow


def test_a_job_that_can_never_start_fails_after_a_few_tries_with_its_error(tmp_path):
    spec = write_spec(tmp_path, command=[sys.executable, "-c", "import nonexistent_mod"])
    out = traind("run", spec, timeout=120)
    assert out.returncode == 1, out.stderr
    assert "fails the same way before its first step" in out.stderr
    assert "No module named 'nonexistent_mod'" in out.stderr.splitlines()[-1]     # in the final message
    assert sum(e["event"] == "spawned" for e in read_events(tmp_path / "run")) == 5


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_refused_pickle_is_set_aside_and_the_run_resumes_from_the_previous_checkpoint(tmp_path):
    tiny = [sys.executable, "-m", "traind.jobs.examples.tiny", "--max-steps", "100", "--every-steps", "50"]
    spec = write_spec(tmp_path, command=tiny, restart={"max_restarts": 0})
    assert traind("run", spec, timeout=120).returncode == 0
    marker = tmp_path / "pwned"
    _Evil.marker = marker
    pending = store.begin(tmp_path / "run" / "checkpoints", 150, 0)    # valid checksums: it is the content
    with open(pending.file_path(store.STATE_NAME), "wb") as f:
        torch.save({"global_step": 150, "payload": _Evil()}, f)
    pending.commit(150, 0, "periodic", {})
    spec = write_spec(tmp_path, command=[*tiny[:4], "200", *tiny[5:]], restart={"max_restarts": 0})
    out = traind("run", spec, timeout=180)
    assert out.returncode == 0, out.stderr        # max_restarts 0: the fallback did not count
    assert not marker.exists()
    assert "step-000000150/state.pt: refused" in out.stderr and "weights_only=False" not in out.stderr
    assert "Traceback" not in out.stderr
    names = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert any(n.startswith(".unusable-step-000000150") for n in names)     # set aside, not deleted
    resumed = [e.get("checkpoint_step") for e in read_events(tmp_path / "run") if e["event"] == "spawned"]
    assert resumed[-2:] == [150, 100]
    assert store.latest_valid(tmp_path / "run")[0].step == 200
