"""The spool is the trust boundary: each refusal case for real (chown, symlink, chmod, names),
checked on the function and through a running daemon, plus `traind submit`'s own checks."""
import grp
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO, traind, wait_for, write_spec
from traind.service import spool

GOOD = b"name: ok\ncommand: ['true']\n"


def _file(path: Path, data=GOOD, mode=0o600) -> Path:
    path.write_bytes(data)
    os.chmod(path, mode)
    return path


def test_accepts_own_private_file(tmp_path):
    v = spool.check_and_read(_file(tmp_path / "ok.yaml"))
    assert isinstance(v, spool.Accepted) and v.name == "ok" and v.spec["command"] == ["true"]


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another uid needs root")
def test_refuses_file_of_another_user_unless_group_allowed(tmp_path):
    p = _file(tmp_path / "x.yaml")
    os.chown(p, 65534, 65534)
    v = spool.check_and_read(p)
    assert isinstance(v, spool.Refused) and "owned by uid 65534" in v.reason
    assert isinstance(spool.check_and_read(p, group=65534), spool.Accepted)


@pytest.mark.parametrize("mode", [0o620, 0o602, 0o666])
def test_refuses_group_or_world_writable(tmp_path, mode):
    v = spool.check_and_read(_file(tmp_path / "x.yaml", mode=mode))
    assert isinstance(v, spool.Refused) and "writable" in v.reason


def test_refuses_symlink_even_to_a_good_file(tmp_path):
    target = _file(tmp_path / "target.yaml")
    (tmp_path / "link.yaml").symlink_to(target)
    v = spool.check_and_read(tmp_path / "link.yaml")
    assert isinstance(v, spool.Refused) and v.reason == "is a symlink"


@pytest.mark.parametrize("filename,data,why", [
    ("..yaml", GOOD, "job name"),
    ("-x.yaml", GOOD, "job name"),
    ("x.yml", GOOD, "NAME.yaml"),
    ("x.yaml", b"name: ../../etc/cron.d/x\ncommand: ['true']\n", "field 'name'"),
    ("y.yaml", b"name: a/b\n", "field 'name'"),
    ("z.yaml", b"- just\n- a list\n", "mapping"),
    ("w.yaml", b"name: [unclosed\n", "YAML"),
])
def test_refuses_bad_names_and_content(tmp_path, filename, data, why):
    v = spool.check_and_read(_file(tmp_path / filename, data))
    assert isinstance(v, spool.Refused) and why in v.reason, v


def test_submit_makes_workdir_absolute_and_refuses_duplicates(tmp_path):
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir(mode=0o700)
    spec = tmp_path / "proj" / "job.yaml"
    (spec.parent / "sub").mkdir(parents=True)
    spec.write_text("name: j\ncommand: ['true']\nworkdir: sub\n")
    name, data = spool.prepare_spec(spec, None)
    assert name == "j" and yaml.safe_load(data)["workdir"] == str(tmp_path / "proj" / "sub")
    final = spool.submit(spool_dir, name, data)
    assert stat.S_IMODE(final.stat().st_mode) == 0o600 and sorted(os.listdir(spool_dir)) == ["j.yaml"]
    with pytest.raises(spool.UsageError, match="already waiting"):
        spool.submit(spool_dir, name, data)
    assert sorted(os.listdir(spool_dir)) == ["j.yaml"]   # no temp file left behind


def test_submit_cli_bad_input_is_one_line_exit_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("command: ['true']\n")            # no name
    out = traind("submit", str(bad), state_dir=tmp_path / "state")
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "field 'name'" in out.stderr
    out = traind("submit", str(bad), "--name", "../up", state_dir=tmp_path / "state")
    assert out.returncode == 2 and "--name" in out.stderr and "Traceback" not in out.stderr
    out = traind("submit", str(tmp_path / "missing.yaml"), state_dir=tmp_path / "state")
    assert out.returncode == 2 and "missing.yaml" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another uid needs root")
def test_daemon_refuses_and_logs_each_bad_submission(tmp_path, serve):
    s = serve(slots=1).start()
    sp = s.state_dir / "spool"
    assert stat.S_IMODE(sp.stat().st_mode) == 0o700 and stat.S_IMODE(s.state_dir.stat().st_mode) == 0o700
    ledger = tmp_path / "ledger"
    outside = write_spec(tmp_path, "outside", ledger, steps=1)
    # Drop each bad file the way an attacker would: written elsewhere, then moved in whole.
    stranger = write_spec(tmp_path, "stranger", ledger, steps=1)
    os.chown(stranger, 65534, 65534)
    loose = write_spec(tmp_path, "loose", ledger, steps=1)
    os.chmod(loose, 0o666)
    evil = tmp_path / "evil.yaml"
    evil.write_text(yaml.safe_dump({"name": "../../escape", "command": ["true"]}))
    typo = tmp_path / "typo.yaml"
    typo.write_text(yaml.safe_dump({"name": "typo", "command": ["true"], "restart": {"max_restartz": 1}}))
    for f in (stranger, loose, evil, typo):
        os.rename(f, sp / f.name)
    (sp / "linked.yaml").symlink_to(outside)
    good = write_spec(tmp_path, "good", ledger, steps=1)
    traind("submit", str(good), state_dir=s.state_dir, check=True)
    wait_for(lambda: s.states().get("good") == "done", what="good job done")
    wait_for(lambda: len(os.listdir(sp / ".refused")) == 5, what="5 refusals")
    assert set(s.records()) == {"good"}
    log = s.log_text()
    for name, why in [("stranger", "owned by uid 65534"), ("loose", "world-writable"), ("typo", "max_restartz"),
                      ("evil", "field 'name'"), ("linked", "is a symlink")]:
        assert any(f"{name}.yaml" in line and why in line for line in log.splitlines()), (name, log)
    kept = {p.name.rsplit(".", 1)[0]: p for p in (sp / ".refused").iterdir()}
    assert kept["linked.yaml"].is_symlink() and outside.exists()   # never followed, nothing deleted
    assert not (s.state_dir.parent / "escape").exists()
    assert [e["job"] for e in __import__("conftest").read_ledger(ledger)] == ["good", "good"]


def test_submit_runs_the_supervisors_spec_checks(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: j\ncommand: ['true']\nrestart: {max_restartz: 3}\n")
    out = traind("submit", str(bad), state_dir=tmp_path / "state")
    assert out.returncode == 2 and "max_restartz" in out.stderr and out.stderr.count("\n") == 1


@pytest.mark.parametrize("args,field", [(["--slots", "0"], "--slots"), (["--slots", "3", "--gpus", "0,1"], "--gpus"),
                                        (["--group", "no-such-group-xyz"], "--group")])
def test_serve_bad_options_are_one_line_exit_2(tmp_path, args, field):
    out = traind("serve", *args, state_dir=tmp_path / "state", timeout=30)
    assert out.returncode == 2 and out.stderr.startswith(f"traind: {field}") and out.stderr.count("\n") == 1


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another uid needs root")
def test_group_members_may_submit_when_the_group_is_configured(tmp_path, serve):
    group = grp.getgrgid(65534).gr_name             # nogroup on Debian
    s = serve(slots=1).start("--group", group)
    sp = s.state_dir / "spool"
    assert stat.S_IMODE(sp.stat().st_mode) == 0o2730 and sp.stat().st_gid == 65534
    ledger = tmp_path / "ledger"
    member = write_spec(tmp_path, "member", ledger, steps=1)
    os.chown(member, 65534, 65534)            # another user, but the configured group
    os.chmod(member, 0o640)
    os.rename(member, sp / member.name)
    wait_for(lambda: s.states().get("member") == "done", 60, "member's job done")
    assert s.records()["member"]["owner_uid"] == 65534


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root and setpriv")
def test_root_submits_on_behalf_of_the_daemons_user_and_others_get_one_line(tmp_path):
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir(mode=0o700)
    os.chown(spool_dir, 65534, 65534)              # the daemon's user owns its spool
    final = spool.submit(spool_dir, "j", b"name: j\n")
    assert (final.stat().st_uid, final.stat().st_gid) == (65534, 65534)
    assert isinstance(spool.check_and_read(final, uid=65534), spool.Accepted)
    # Without the right to write the spool (root minus CAP_DAC_OVERRIDE here): one line, exit 1.
    spec = tmp_path / "s.yaml"
    spec.write_text("name: k\ncommand: ['true']\n")
    out = subprocess.run(["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--inh-caps=-all",
                          sys.executable, "-m", "traind", "submit", str(spec), "--state-dir", str(tmp_path)],
                         capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 1 and "no permission to submit" in out.stderr and out.stderr.count("\n") == 1
