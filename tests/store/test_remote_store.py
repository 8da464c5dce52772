"""traind.store.remote against a real S3 server (moto) on 127.0.0.1: upload, listing, verification,
download through the commit protocol, retention, and the object-store faults. Torch-free."""
from __future__ import annotations

import os

import pytest

from traind import store as ck
from traind.contract.errors import TraindError
from traind.store.remote import Remote, RemoteError, UploadCancelled, url_problem
from tests.store.conftest import commit_bytes, payload
from tests.store.s3fixture import BUCKET, moto_server, s3  # noqa: F401  (fixtures)

MIB = 1 << 20


@pytest.fixture
def local(tmp_path):
    d = tmp_path / "run" / ck.CHECKPOINTS_SUBDIR
    d.mkdir(parents=True)
    return d


def remote_for(s3, prefix="run1", **kw) -> Remote:
    return Remote(s3.url(prefix), s3.options(), **kw)


def committed(local, step, size=64 * 1024, **kw):
    return commit_bytes(local, step, payload(step, size), **kw).path


def key(step, name=ck.MANIFEST_NAME, prefix="run1") -> str:
    return f"{BUCKET}/{prefix}/{ck.step_dir_name(step)}/{name}"


def test_upload_then_list_verify_and_download_byte_identical(s3, local, tmp_path):
    remote = remote_for(s3)
    src = committed(local, 100, metrics={"val_loss": 0.5})
    up = remote.upload(src, 100)
    assert (up.how, up.sent_bytes) == ("uploaded", 64 * 1024)
    fs = s3.fs()
    assert fs.cat_file(key(100)) == (src / ck.MANIFEST_NAME).read_bytes()     # the local manifest, byte for byte
    (info,) = remote.list_checkpoints(deep=True)
    assert info.valid and info.step == 100 and info.metrics == {"val_loss": 0.5}
    assert info.path == f"s3://{BUCKET}/run1/step-000000100"
    fresh = tmp_path / "fresh" / ck.CHECKPOINTS_SUBDIR          # a new machine: nothing local
    got = remote.download(100, fresh)
    assert got.valid and got.path == fresh / "step-000000100"
    for name in (ck.STATE_NAME, ck.MANIFEST_NAME):
        assert (got.path / name).read_bytes() == (src / name).read_bytes()
    assert [p.name for p in fresh.iterdir() if p.name != ".lock"] == ["step-000000100"]   # no temp dir left
    assert ck.latest_valid(fresh)[0].step == 100


def test_data_files_go_up_before_the_manifest(s3, local):
    remote = remote_for(s3)
    src = commit_bytes(local, 7, payload(7), extra_files={"extra.bin": b"x" * 5000}).path
    order = []
    put, pipe = remote.fs.put_file, remote.fs.pipe_file
    remote.fs.put_file = lambda lpath, rpath, **kw: (order.append(os.path.basename(rpath)), put(lpath, rpath, **kw))
    remote.fs.pipe_file = lambda path, data, **kw: (order.append(os.path.basename(path)), pipe(path, data, **kw))
    try:
        remote.upload(src, 7)
    finally:
        remote.fs.put_file, remote.fs.pipe_file = put, pipe
    assert order[-1] == ck.MANIFEST_NAME and sorted(order[:-1]) == ["extra.bin", ck.STATE_NAME]


def test_a_half_upload_is_never_valid_and_the_previous_one_stays_the_resume_point(s3, local):
    remote = remote_for(s3)
    remote.upload(committed(local, 1), 1)
    fs = s3.fs()
    fs.pipe_file(key(2, ck.STATE_NAME), payload(2))          # data of step 2 up, its manifest never
    infos = remote.list_checkpoints(deep=False)
    assert [(i.step, i.valid) for i in infos] == [(2, False), (1, True)]
    assert "missing manifest (never committed)" in infos[0].error
    chosen, skipped = remote.latest_valid()
    assert chosen.step == 1 and [s.step for s in skipped] == [2]


def test_a_flipped_byte_is_found_and_never_downloaded(s3, local, tmp_path):
    remote = remote_for(s3)
    remote.upload(committed(local, 1), 1)
    remote.upload(committed(local, 2, size=3 * MIB), 2)
    fs = s3.fs()
    data = bytearray(fs.cat_file(key(2, ck.STATE_NAME)))
    data[2 * MIB + 5] ^= 0x10
    fs.pipe_file(key(2, ck.STATE_NAME), bytes(data))
    quick = remote.list_checkpoints(deep=False)
    assert [i.valid for i in quick] == [True, True]             # same size: only the bytes tell
    deep = remote.list_checkpoints(deep=True)
    assert not deep[0].valid and "checksum mismatch" in deep[0].error
    assert f"s3://{BUCKET}/run1/step-000000002/state.pt" in deep[0].error
    fresh = tmp_path / "fresh"
    got = remote.download(2, fresh)
    assert not got.valid and "checksum mismatch" in got.error and str(fresh) not in got.error
    assert not [p for p in (fresh / ck.CHECKPOINTS_SUBDIR).iterdir() if p.name != ".lock"]   # nothing trusted, no temp left
    chosen, skipped = remote.latest_valid()
    assert chosen.step == 1 and skipped[0].step == 2


def test_a_missing_manifest_and_a_manifest_from_another_checkpoint(s3, local, tmp_path):
    remote = remote_for(s3)
    for step in (1, 2, 3):
        remote.upload(committed(local, step), step)
    fs = s3.fs()
    fs.rm_file(key(3))                                           # step 3: manifest gone
    fs.pipe_file(key(2), fs.cat_file(key(1)))                    # step 2: step 1's manifest
    infos = {i.step: i for i in remote.list_checkpoints(deep=True)}
    assert "missing manifest" in infos[3].error
    assert "does not match the directory name" in infos[2].error
    assert infos[1].valid
    # A manifest of the same step from another run: the data does not match its checksums.
    other = tmp_path / "other" / ck.CHECKPOINTS_SUBDIR
    other.mkdir(parents=True)
    foreign = commit_bytes(other, 1, payload(99)).path
    fs.pipe_file(key(1), (foreign / ck.MANIFEST_NAME).read_bytes())
    bad = remote.check(1, remote.objects()[1], deep=True)
    assert not bad.valid and "checksum mismatch" in bad.error
    assert remote.latest_valid()[0] is None
    assert not remote.download(1, tmp_path / "fresh").valid


def test_a_partial_multipart_upload_is_invisible_and_aborted(s3, local):
    remote = remote_for(s3)
    remote.upload(committed(local, 1), 1)
    client = s3.boto()
    mpu = client.create_multipart_upload(Bucket=BUCKET, Key=f"run1/{ck.step_dir_name(2)}/state.pt")
    client.upload_part(Bucket=BUCKET, Key=f"run1/{ck.step_dir_name(2)}/state.pt", PartNumber=1,
                       UploadId=mpu["UploadId"], Body=b"p" * (5 * MIB))
    assert [i.step for i in remote.list_checkpoints(deep=True)] == [1]     # parts are no object
    assert remote.latest_valid()[0].step == 1
    other = client.create_multipart_upload(Bucket=BUCKET, Key="elsewhere/state.pt")   # not under our prefix
    assert remote.abort_stale_uploads() == 1
    left = client.list_multipart_uploads(Bucket=BUCKET).get("Uploads", [])
    assert [u["UploadId"] for u in left] == [other["UploadId"]]


def test_the_server_killed_mid_multipart_upload_leaves_the_resume_point(s3, local):
    remote = remote_for(s3, put_options={"chunksize": 5 * MIB})
    remote.upload(committed(local, 1), 1)
    big = committed(local, 2, size=16 * MIB)
    s3.proxy.cut_after(7 * MIB)                   # dies during the second part
    with pytest.raises(RemoteError) as err:
        remote.upload(big, 2)
    assert "upload state.pt failed" in str(err.value) and "testing" not in str(err.value)
    assert "\n" not in str(err.value)
    s3.proxy.revive()
    chosen, skipped = remote_for(s3).latest_valid()
    assert chosen.step == 1 and all(not s.valid for s in skipped)
    up = remote.upload(big, 2)                    # the retry completes it
    assert up.how == "uploaded" and remote.latest_valid()[0].step == 2


def test_the_server_down_is_one_remote_error(s3, local):
    remote = remote_for(s3)
    s3.proxy.kill()
    with pytest.raises(RemoteError) as err:
        remote.list_checkpoints()
    assert str(err.value).startswith(f"s3://{BUCKET}/run1: list failed: ") and "\n" not in str(err.value)
    with pytest.raises(RemoteError):
        remote.upload(committed(local, 1), 1)


def test_same_step_recommit_sends_only_what_changed(s3, local):
    remote = remote_for(s3)
    first = committed(local, 5)
    remote.upload(first, 5)
    again = commit_bytes(local, 5, payload(5), reason="emergency").path   # same data, new manifest
    up = remote.upload(again, 5)
    assert up.how == "manifest only" and up.sent_bytes == 0
    assert remote.upload(again, 5).how == "already there"
    changed = commit_bytes(local, 5, payload(6), reason="emergency").path
    assert remote.upload(changed, 5).how == "uploaded"
    assert remote.list_checkpoints(deep=True)[0].valid


def test_a_rotten_local_checkpoint_is_never_uploaded(s3, local):
    remote = remote_for(s3)
    src = committed(local, 3)
    with open(src / ck.STATE_NAME, "r+b") as f:
        f.seek(100)
        f.write(b"\xff")
    with pytest.raises(TraindError) as err:
        remote.upload(src, 3)
    assert "not uploaded" in str(err.value) and not isinstance(err.value, RemoteError)
    assert remote.objects() == {}


def test_remote_retention_keeps_the_resume_point_and_uncommitted_successors(s3, local):
    remote = remote_for(s3)
    for step in (1, 2, 3, 4):
        remote.upload(committed(local, step, metrics={"loss": {1: 0.1, 2: 0.9, 3: 0.8, 4: 0.7}[step]}), step)
    s3.fs().pipe_file(key(5, ck.STATE_NAME), b"half")            # an upload in progress
    assert remote.prune(2, {"metric": "loss", "mode": "min", "k": 1}) == [2]
    assert [i.step for i in remote.list_checkpoints(deep=False)] == [5, 4, 3, 1]
    assert remote.prune(1, None, protect_steps=[3]) == [1]
    assert sorted(remote.objects()) == [3, 4, 5]
    assert remote_for(s3, "empty").prune(1) == []


def test_cancel_gives_up_between_parts(s3, local):
    remote = remote_for(s3, put_options={"chunksize": 5 * MIB})
    big = committed(local, 9, size=12 * MIB)
    calls = []

    def cancelled():
        calls.append(1)
        return len(calls) > 2
    with pytest.raises(UploadCancelled):
        remote.upload(big, 9, cancelled=cancelled)
    assert remote.latest_valid()[0] is None
    remote.abort_stale_uploads()          # s3fs aborts it itself, unless a part was still in flight
    assert not s3.boto().list_multipart_uploads(Bucket=BUCKET).get("Uploads")


def test_url_problems():
    assert "a URL such as" in url_problem("bucket/prefix")
    assert "not one" in url_problem("nosuchproto://x")
    assert url_problem("s3://bucket/prefix") is None and url_problem("file:///tmp/x") is None


def test_file_urls_work_the_same(local, tmp_path):
    remote = Remote(f"file://{tmp_path}/shared/run")
    remote.upload(committed(local, 4), 4)
    assert remote.list_checkpoints(deep=True)[0].valid
    assert remote.download(4, tmp_path / "fresh").valid
