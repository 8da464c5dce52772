"""`traind ckpt ls|verify|inspect` as a user runs them (real subprocesses)."""
import json
import os
import subprocess
import sys

import pytest

from traind import store as ck

from .conftest import commit_bytes, payload


def traind(*args):
    return subprocess.run([sys.executable, "-m", "traind", "ckpt", *map(str, args)],
                          capture_output=True, text=True, timeout=60)


@pytest.fixture
def run_with_checkpoints(ckpt_dir):
    commit_bytes(ckpt_dir, 100, payload(1), epoch=1, metrics={"loss": 0.5})
    commit_bytes(ckpt_dir, 200, payload(2), epoch=2, reason="emergency")
    commit_bytes(ckpt_dir, 300, payload(3), epoch=3)
    os.truncate(ckpt_dir / "step-000000300" / "state.pt", 10)
    return ckpt_dir.parent


def test_ls_table_and_json(run_with_checkpoints):
    out = traind("ls", run_with_checkpoints)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split()[:7] == ["STEP", "EPOCH", "REASON", "SIZE", "RANKS", "AGE", "STATUS"]
    assert [ln.split()[0] for ln in lines[1:]] == ["300", "200", "100"]
    assert "INVALID" in lines[1] and "truncated" in lines[1] and "emergency" in lines[2]
    out = traind("ls", run_with_checkpoints / "checkpoints", "--json")
    rows = json.loads(out.stdout)
    assert [(r["step"], r["epoch"], r["reason"], r["valid"]) for r in rows] == [
        (300, 3, "periodic", False), (200, 2, "emergency", True), (100, 1, "periodic", True)]
    assert all({"path", "error", "ranks"} <= r.keys() for r in rows) and "truncated" in rows[0]["error"]
    assert [r["ranks"] for r in rows] == [None, None, None]      # single-process checkpoints


def test_verify_exit_codes_and_names_the_bad_file(run_with_checkpoints):
    out = traind("verify", run_with_checkpoints)
    assert out.returncode == 1
    assert "step-000000300/state.pt" in out.stdout and "truncated" in out.stdout
    assert traind("verify", run_with_checkpoints / "checkpoints" / "step-000000200").returncode == 0
    bad = traind("verify", run_with_checkpoints / "checkpoints" / "step-000000300")
    assert bad.returncode == 1 and "state.pt" in bad.stdout


def test_bad_paths_are_one_line_usage_errors(tmp_path):
    for args in (("ls", tmp_path / "missing"), ("verify", tmp_path / "missing"),
                 ("inspect", tmp_path / "missing")):
        out = traind(*args)
        assert out.returncode == 2 and out.stderr.count("\n") == 1 and "missing" in out.stderr, out
        assert "Traceback" not in out.stderr
    out = traind("inspect", tmp_path)
    assert out.returncode == 2 and "no valid checkpoint" in out.stderr
    assert traind("verify", tmp_path).returncode == 1            # nothing to vouch for


def test_inspect_reads_state_without_torch_or_running_code(tmp_path):
    import torch
    marker = tmp_path / "pwned"
    model = torch.nn.Linear(4, 3)
    state = {"epoch": 2, "global_step": 40, "state_dict": model.state_dict(),
             "hyper_parameters": {"lr": 0.01, "layers": [4, 3]}, "half": torch.zeros(5, dtype=torch.float16),
             "evil": _Evil(marker)}
    pending = ck.begin(tmp_path / "checkpoints", 40, 0)
    with open(pending.file_path("state.pt"), "wb") as f:
        torch.save(state, f)
    pending.commit(40, 2, "final", {"val_loss": 0.25})
    out = traind("inspect", tmp_path, "--json")
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert (got["step"], got["epoch"], got["global_step"], got["reason"]) == (40, 2, 40, "final")
    assert got["hyper_parameters"] == {"lr": 0.01, "layers": [4, 3]}
    assert got["metrics"] == {"val_loss": 0.25}
    assert got["top_level_keys"] == ["epoch", "global_step", "state_dict", "hyper_parameters", "half", "evil"]
    assert got["tensor_count"] == 3 and got["tensor_bytes"] == (12 + 3) * 4 + 5 * 2
    assert not marker.exists()
    text = traind("inspect", tmp_path / "checkpoints" / "step-000000040")
    assert "tensor_count:" in text.stdout and text.returncode == 0
    probe = ("import sys, traind.cli, traind.cli.ckpt; traind.cli.main(['ckpt', 'inspect', sys.argv[1]]);"
             "assert 'torch' not in sys.modules, 'torch imported'")
    assert subprocess.run([sys.executable, "-c", probe, str(tmp_path)], capture_output=True).returncode == 0


def test_inspect_reads_what_the_store_writes(tmp_path):
    """The store writes state.pt with torch's zip crc32 off; inspect must still read it."""
    import torch
    from traind.jobs.engine import CheckpointEngine
    store = CheckpointEngine(tmp_path)
    store.save({"epoch": 1, "global_step": 7, "state_dict": torch.nn.Linear(3, 2).state_dict(),
                "hyper_parameters": {"width": 3}}, step=7, epoch=1, reason="final")
    store.close()
    out = traind("inspect", tmp_path, "--json")
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got.get("state_error") is None, got.get("state_error")
    assert (got["global_step"], got["hyper_parameters"], got["tensor_count"]) == (7, {"width": 3}, 2)
    # A damaged newer one: inspect shows the valid one and says what it skipped, in its own output
    # (one report, no stray log line on stderr).
    store = CheckpointEngine(tmp_path)
    store.save({"global_step": 9}, step=9, epoch=1, reason="periodic")
    store.close()
    with open(tmp_path / "checkpoints" / "step-000000009" / "state.pt", "r+b") as f:
        f.seek(40)
        f.write(b"\xff")
    out = traind("inspect", tmp_path, "--json")
    got = json.loads(out.stdout)
    assert got["step"] == 7 and "step-000000009: " in got["skipped_newer"][0] and "checksum" in got["skipped_newer"][0]
    assert out.stderr == ""


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.slow
def test_benchmark_script_runs_and_prints_every_row(tmp_path):
    """Not a timing test: only that the hand-run benchmark still works (tiny state, one round)."""
    from pathlib import Path
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_checkpoint.py"
    out = subprocess.run([sys.executable, str(script), "--size-gib", "0.01", "--repeat", "1",
                          "--dir", str(tmp_path)], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode in (0, 1), out.stderr          # 1 = a target missed on a tiny state
    for label in ("(1) raw write", "(2) torch.save", "(3) our blocking", "(4) non-blocking",
                  "(5) verify", "throughput vs floor"):
        assert label in out.stdout, out.stdout
    assert list(tmp_path.iterdir()) == []                # cleaned up after itself


def test_inspect_survives_mangled_pickles(tmp_path):
    """Random byte damage to data.pkl: a summary or a ValueError (a reason), never anything else."""
    import pickle
    import random
    import zipfile
    from collections import OrderedDict
    from traind.store.inspect import summarize_state
    good = pickle.dumps({"epoch": 1, "hyper_parameters": {"lr": 0.1, "layers": [1, 2]},
                         "state_dict": OrderedDict(w=[1.0, 2.0])}, protocol=2)
    rng = random.Random(3)
    path = tmp_path / "state.pt"
    outcomes = {"summary": 0, "reason": 0}
    for _ in range(600):
        data = bytearray(good)
        for _ in range(rng.randint(1, 3)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("archive/data.pkl", bytes(data))
        try:
            summarize_state(path)
            outcomes["summary"] += 1
        except ValueError:
            outcomes["reason"] += 1
    assert outcomes["summary"] and outcomes["reason"], outcomes


def test_verify_names_each_bad_file_of_a_checkpoint(ckpt_dir):
    commit_bytes(ckpt_dir, 1, payload(1), extra_files={"extra.bin": b"abcdef"})
    bad = ckpt_dir / "step-000000001"
    os.truncate(bad / "extra.bin", 2)
    data = bytearray((bad / "state.pt").read_bytes())
    data[100] ^= 0x01
    (bad / "state.pt").write_bytes(bytes(data))
    out = traind("verify", bad)
    assert out.returncode == 1
    assert "extra.bin: size 2, manifest says 6" in out.stdout, out.stdout
    assert "state.pt: checksum mismatch" in out.stdout, out.stdout
    info = ck.verify(bad)                      # discovery stops at the first bad file
    assert not info.valid and "state.pt" not in info.error
