"""traind.OwnCheckpoints: a plain torchrun script that keeps its own save code
(jobs/examples/torchrun_plain.py), changed in five lines (torchrun_traind.py), under `traind run`
as a 2-rank group: a stop loses no step, the run ends bit-identical, a damaged newest checkpoint
is never loaded; and the API's edges in one process."""
import difflib
import json
import signal
import sys
from pathlib import Path

import pytest
import torch

from jobhelpers import (REPO, assert_identical, checkpoints, last_step, metrics, run_spec, traind_run,
                        wait_for_step)
from traind.contract.errors import TraindError
from traind.store import format as fmt

EXAMPLES = REPO / "jobs" / "examples"


def _code_lines(path: Path) -> list[str]:
    """The script without its module docstring."""
    text = path.read_text()
    return text.split('"""', 2)[2].splitlines()


def test_the_script_changes_in_five_lines():
    diff = [line for line in difflib.unified_diff(_code_lines(EXAMPLES / "torchrun_plain.py"),
                                                  _code_lines(EXAMPLES / "torchrun_traind.py"), lineterm="", n=0)
            if line[:1] == "+" and not line.startswith("+++")]
    assert 0 < len(diff) <= 5, "\n".join(diff)


def _spec(tmp_path, name, run_dir) -> str:
    return run_spec(tmp_path, name, run_dir, [sys.executable, "-m", "traind.jobs.examples.torchrun_traind", run_dir],
                    ranks=2, preemption={"grace_seconds": 30})


def _stop_after(proc, run_dir, steps: int, sig) -> tuple[int, str]:
    wait_for_step(proc, run_dir, steps, timeout=120)
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=60)
    return proc.returncode, out


def _snapshot(step_dir: Path) -> dict:
    return torch.load(step_dir / "snapshot.pt", weights_only=True)


@pytest.mark.slow
def test_a_stopped_group_loses_no_step_and_ends_bit_identical_and_skips_a_damaged_checkpoint(tmp_path):
    reference = tmp_path / "reference"
    proc = traind_run(_spec(tmp_path, "reference", reference))
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]

    run_dir = tmp_path / "run"
    spec = _spec(tmp_path, "stopped", run_dir)
    for stop_at, sig in ((37, signal.SIGTERM), (101, signal.SIGUSR1)):
        code, out = _stop_after(traind_run(spec), run_dir, stop_at, sig)
        assert code == 75, out[-3000:]
        acted = last_step(run_dir)
        newest = fmt.latest_valid(run_dir / "checkpoints")[0]
        assert newest.step == acted and newest.reason == "emergency", out[-3000:]   # no step lost
        assert f"emergency checkpoint committed at step {acted}" in out, out[-3000:]
        proc = traind_run(spec)
        if stop_at == 101:
            break
        code, out = _stop_after(proc, run_dir, acted + 1, signal.SIGTERM)   # the rerun resumed here
        assert code == 75 and f"resuming from {newest.path} (step {acted})" in out, out[-3000:]
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]

    # A flipped byte in the newest checkpoint: the resume falls back to the one before.
    newest, older = checkpoints(run_dir)[-1], checkpoints(run_dir)[-2]
    with open(newest / "snapshot.pt", "r+b") as f:
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 0xFF]))
    proc = traind_run(spec)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]
    assert f"resuming from {older}" in out, out[-3000:]

    rows, ref_rows = metrics(run_dir), metrics(reference)
    assert [r["step"] for r in rows] == list(range(1, 241)), "steps lost or repeated"
    assert rows == ref_rows
    assert_identical(_snapshot(checkpoints(reference)[-1]), _snapshot(checkpoints(run_dir)[-1]))


# --- the API's edges, in one process ------------------------------------------------------------

def _own(tmp_path, **kw):
    import traind
    return traind.OwnCheckpoints(tmp_path / "run", environ={}, **kw)


def test_save_commits_the_scripts_files_checksummed_and_resume_dir_hands_back_the_newest(tmp_path):
    ckpt = _own(tmp_path, every_steps=2)
    assert ckpt.resume_dir() is None
    due = [ckpt.step_done(loss=1.0) for _ in range(4)]
    assert due == [False, True, False, True]
    ckpt.save(lambda d: (d / "weights.bin").write_bytes(b"x" * 5000) and (d / "meta.json").write_text("{}"))
    ckpt.close()
    info = fmt.verify(tmp_path / "run" / "checkpoints" / "step-000000004")
    assert info.valid and info.step == 4
    assert set(json.loads((info.path / fmt.MANIFEST_NAME).read_text())["files"]) == {"weights.bin", "meta.json"}

    again = _own(tmp_path)
    assert again.resume_dir() == info.path and again.step == 4
    assert again.resume_file("weights.bin") == info.path / "weights.bin"
    again.close()


def test_a_failing_writer_or_a_subfolder_commits_nothing_and_says_why(tmp_path):
    ckpt = _own(tmp_path)
    ckpt.step_done()

    def boom(d):
        raise RuntimeError("disk on fire")
    with pytest.raises(SystemExit):
        ckpt.save(boom)
    with pytest.raises(SystemExit):
        ckpt.save(lambda d: (d / "sub").mkdir())
    ckpt.close()
    ckpt_dir = tmp_path / "run" / "checkpoints"
    assert not [p for p in ckpt_dir.iterdir() if p.name.startswith(("step-", ".tmp-"))]


def test_the_one_line_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        _own(tmp_path, every_steps=-1)
    assert exc.value.code != 0 and "every_steps" in capsys.readouterr().err
    import traind
    with pytest.raises(TraindError, match="no run directory"):
        traind.OwnCheckpoints(environ={})
