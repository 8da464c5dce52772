"""`traind slurm submit`'s LEAD when the run mirrors its checkpoints to a remote: the measured upload
(RUN_DIR/remote.json, written by the supervisor's mirror) is part of the emergency stop."""
from __future__ import annotations

import json

from traind import store
from traind.cluster import sbatch


def run_with_checkpoint(tmp_path, size: int, save_seconds: float = 10.0):
    run = tmp_path / "run"
    pending = store.begin(store.checkpoints_dir(run), 5, size)
    pending.file_path("state.pt").write_bytes(b"x" * size)
    pending.commit(step=5, epoch=0, reason="emergency", metrics={}, extra={"save_seconds": save_seconds})
    return run


def test_the_measured_upload_is_part_of_the_stop(tmp_path):
    run = run_with_checkpoint(tmp_path, 1 << 20)                      # 1 MiB, written in 10 s
    assert sbatch.measure_stop(run).upload_seconds is None             # no remote: nothing added
    assert sbatch.lead_for(sbatch.measure_stop(run)) == 60
    (run / "remote.json").write_text(json.dumps({"seconds_per_gib": 40960.0, "uploads": []}))   # 40 s per MiB
    m = sbatch.measure_stop(run)
    assert round(m.upload_seconds, 3) == 40.0 and m.needed_seconds() == 50.0
    assert sbatch.lead_for(m) == 50 * 1.5 + 30
    warning = sbatch.lead_warning(40, m)
    assert "its upload 40.0 s (remote.json)" in warning and "--lead 105" in warning
    assert sbatch.lead_warning(105, m) is None


def test_a_remote_without_a_measured_upload_is_estimated(tmp_path):
    run = run_with_checkpoint(tmp_path, 4 << 20)
    (run / "remote.json").write_text(json.dumps({"seconds_per_gib": None, "last_error": {"step": 5}}))
    m = sbatch.measure_stop(run)
    assert m.upload_seconds == m.state_bytes / sbatch.ASSUMED_UPLOAD_BYTES_PER_SECOND
    (run / "remote.json").write_text("not json")                       # unreadable: estimated the same way
    assert sbatch.measure_stop(run).upload_seconds == m.upload_seconds
