"""`traind ckpt ls|verify|inspect URL` against a real S3 server (moto) on 127.0.0.1, as subprocesses."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from traind import store as ck
from traind.store.remote import Remote
from tests.store.conftest import commit_bytes, payload
from tests.store.s3fixture import BUCKET, moto_server, s3  # noqa: F401  (fixtures)


def ckpt(*args, endpoint=None, timeout=120):
    env = {**os.environ}
    if endpoint:
        env["AWS_ENDPOINT_URL"] = endpoint          # the standard variable: no option needed
    return subprocess.run([sys.executable, "-m", "traind", "ckpt", *args], capture_output=True, text=True,
                          env=env, timeout=timeout)


@pytest.fixture
def seeded(s3, tmp_path):
    torch = pytest.importorskip("torch")
    local = tmp_path / "run" / ck.CHECKPOINTS_SUBDIR
    local.mkdir(parents=True)
    remote = Remote(s3.url("cli"), s3.options())
    for step in (1, 2):
        pending = ck.begin(local, step, 4096)
        torch.save({"global_step": step, "epoch": 0, "state_dict": {"w": torch.arange(4.0) * step}},
                   pending.file_path(ck.STATE_NAME))
        remote.upload(pending.commit(step, 0, "periodic", {"loss": 1.0 / step}).path, step)
    commit_bytes(local, 3, payload(3))
    return remote


def test_ls_verify_inspect_a_remote(s3, seeded):
    url = s3.url("cli")
    out = ckpt("ls", url, endpoint=s3.endpoint)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split()[:2] == ["STEP", "EPOCH"] and lines[1].split()[0] == "2" and "valid" in lines[1]
    out = ckpt("ls", url, "--json", "-o", f"endpoint_url={s3.endpoint}")
    rows = json.loads(out.stdout)
    assert [r["step"] for r in rows] == [2, 1] and rows[0]["path"] == f"{url}/step-000000002"
    out = ckpt("verify", url, endpoint=s3.endpoint)
    assert out.returncode == 0 and out.stdout.count("ok ") == 2, out
    out = ckpt("inspect", url, "--json", endpoint=s3.endpoint)
    shown = json.loads(out.stdout)
    assert out.returncode == 0, out.stderr
    assert shown["path"] == f"{url}/step-000000002" and shown["global_step"] == 2 and shown["valid"]
    out = ckpt("inspect", f"{url}/step-000000001", endpoint=s3.endpoint)
    assert out.returncode == 0 and "global_step:" in out.stdout and "step-000000001" in out.stdout


def test_verify_names_a_bad_remote_object_and_inspect_skips_it(s3, seeded):
    url = s3.url("cli")
    fs = s3.fs()
    key = f"{BUCKET}/cli/step-000000002/state.pt"
    data = bytearray(fs.cat_file(key))
    data[40] ^= 0xFF
    fs.pipe_file(key, bytes(data))
    out = ckpt("verify", url, endpoint=s3.endpoint)
    assert out.returncode == 1
    assert f"INVALID  {url}/step-000000002/state.pt: checksum mismatch" in out.stdout
    assert ckpt("verify", f"{url}/step-000000001", endpoint=s3.endpoint).returncode == 0
    out = ckpt("inspect", url, "--json", endpoint=s3.endpoint)
    shown = json.loads(out.stdout)
    assert shown["step"] == 1 and "checksum mismatch" in shown["skipped_newer"][0]


def _flat(options: dict, prefix: str = ""):
    for key, value in options.items():
        if isinstance(value, dict):
            yield from _flat(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def test_ls_of_a_bucket_that_does_not_exist_is_one_line(s3):
    """Issue 21: it printed `no checkpoints`, exit 0."""
    out = ckpt("ls", "s3://no-such-bucket/x", *sum((["-o", f"{k}={v}"] for k, v in _flat(s3.options())), []))
    assert out.returncode == 1 and out.stderr.count("\n") == 1, out.stderr
    assert "bucket 'no-such-bucket' does not exist" in out.stderr


def test_a_remote_that_cannot_be_reached_is_one_line(s3, seeded):
    s3.proxy.kill()
    out = ckpt("ls", s3.url("cli"), "-o", "config_kwargs.retries.total_max_attempts=1",
               "-o", "config_kwargs.connect_timeout=1", endpoint=s3.endpoint)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert out.stderr.startswith(f"traind: {s3.url('cli')}: look up bucket 'traind-test' failed: ")
    assert "Could not connect" in out.stderr and out.stderr.count("\n") == 1
    out = ckpt("ls", "nosuchproto://x/y")
    assert out.returncode == 1 and "cannot open" in out.stderr and "Traceback" not in out.stderr
    out = ckpt("ls", s3.url("cli"), "-o", "novalue")
    assert out.returncode == 2 and "expected KEY=VALUE" in out.stderr
