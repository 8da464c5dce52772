"""Bad input at the CLI edge (review): one line `traind: ...`, exit 2 (1 for an unreadable run file),
never a traceback, and nothing of the user's touched."""
import subprocess
import sys

import pytest


def traind(*args, env=None):
    return subprocess.run([sys.executable, "-m", "traind", *map(str, args)], capture_output=True, text=True,
                          timeout=30, env=env)


def one_line(out, code: int) -> str:
    assert "Traceback" not in out.stderr, out.stderr
    assert out.returncode == code, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("traind: "), out.stderr
    return lines[0]


@pytest.mark.parametrize("cmd", [["ls"], ["submit", "SPEC"], ["cancel", "x"], ["logs", "x"], ["serve"]])
def test_state_dir_that_is_a_file(tmp_path, cmd):
    state = tmp_path / "state"
    state.write_text("keep me")
    spec = tmp_path / "job.yaml"
    spec.write_text("name: x\ncommand: [\"true\"]\n")
    args = [spec if a == "SPEC" else a for a in cmd]
    line = one_line(traind(*args, "--state-dir", state), 2)
    assert line == f"traind: {state}: --state-dir: not a directory"
    assert state.read_text() == "keep me"


def test_submit_spec_that_is_not_utf8(tmp_path):
    spec = tmp_path / "job.yaml"
    spec.write_bytes(b"name: x\xff\ncommand: [x]\n")
    line = one_line(traind("submit", spec, "--state-dir", tmp_path / "state"), 2)
    assert line == f"traind: {spec}: not UTF-8 text (byte 7); a spec is a YAML text file"


def test_submit_spec_with_a_nul_workdir_is_refused_before_resolving_it(tmp_path):
    spec = tmp_path / "job.yaml"
    spec.write_text('name: x\ncommand: ["true"]\nworkdir: "a\\0b"\n')
    line = one_line(traind("submit", spec, "--state-dir", tmp_path / "state"), 2)
    assert "workdir: expected a string without NUL bytes" in line


def test_status_json_that_is_not_an_object(tmp_path):
    (tmp_path / "status.json").write_text("[1, 2]\n")
    line = one_line(traind("status", tmp_path), 1)
    assert line == f"traind: {tmp_path / 'status.json'}: unreadable: not a JSON object"


@pytest.mark.parametrize("flags,message", [
    (["--runner", '"unclosed'], "--runner (or $TRAIND_RUNNER): cannot split into a command: No closing quotation"),
    (["--stop-timeout", "nan"], "--stop-timeout: expected a number of seconds > 0, got nan"),
    (["--stop-timeout", "-1"], "--stop-timeout: expected a number of seconds > 0, got -1.0"),
])
def test_serve_bad_flags(tmp_path, flags, message):
    line = one_line(traind("serve", "--state-dir", tmp_path / "state", *flags), 2)
    assert line == f"traind: {message}"


@pytest.mark.parametrize("which", ["--unit-dir", "--jobs-dir"])
def test_systemd_install_into_a_file(tmp_path, which):
    blocker = tmp_path / "blocker"
    blocker.write_text("keep me")
    dirs = {"--unit-dir": tmp_path / "units", "--jobs-dir": tmp_path / "jobs", which: blocker}
    out = traind("systemd", "install", "--no-reload", "--exec", sys.executable, *[x for kv in dirs.items() for x in kv])
    assert one_line(out, 2) == f"traind: {blocker}: {which}: not a directory"
    assert blocker.read_text() == "keep me"


def test_ctrl_c_while_the_command_modules_import_is_exit_130_without_traceback(monkeypatch, capsys):
    from traind import cli

    def interrupted(name):
        raise KeyboardInterrupt
    monkeypatch.setattr(cli.importlib, "import_module", interrupted)
    assert cli.main(["run", "job.yaml"]) == 130
    assert capsys.readouterr().err == ""


def test_status_json_with_fields_of_the_wrong_type_still_prints(tmp_path):
    (tmp_path / "status.json").write_text('{"state": "running", "last_heartbeat": 5, "last_failure": "x", '
                                          '"attempts": 1}\n')
    out = traind("status", tmp_path)
    assert out.returncode == 0 and out.stderr == "", out.stderr
    (tmp_path / "status.json").write_text('{"last_heartbeat": {"step": 3, "time": "x", "steps_per_second": "fast"}}')
    out = traind("status", tmp_path)
    assert out.returncode == 0 and "heartbeat:   step 3, ? ago\n" in out.stdout, out.stderr


def test_submit_refuses_a_workdir_that_does_not_exist(tmp_path):
    spool = tmp_path / "state" / "spool"
    spool.mkdir(parents=True, mode=0o700)
    spec = tmp_path / "job.yaml"
    spec.write_text('name: x\ncommand: ["true"]\nworkdir: nowhere\n')
    line = one_line(traind("submit", spec, "--state-dir", tmp_path / "state"), 2)
    assert line == f"traind: {spec}: workdir: directory {tmp_path / 'nowhere'} does not exist"
    assert list(spool.iterdir()) == []


def test_systemd_install_create_user_without_useradd_is_one_line(tmp_path):
    import os
    import pwd
    try:
        pwd.getpwnam("traind")
        pytest.skip("user traind exists: --create-user would not run useradd")
    except KeyError:
        pass
    env = {**os.environ, "PATH": str(tmp_path / "empty")}
    out = traind("systemd", "install", "--no-reload", "--create-user", "--exec", sys.executable,
                 "--unit-dir", tmp_path / "units", "--jobs-dir", tmp_path / "jobs", env=env)
    line = one_line(out, 1)
    assert line.startswith("traind: --create-user: useradd failed (") and "create the user 'traind' yourself" in line
    assert (tmp_path / "units" / "traind.service").is_file()


@pytest.mark.parametrize("cmd", [["status", "LONG"], ["ckpt", "ls", "LONG"], ["ckpt", "inspect", "LONG"],
                                 ["ls", "--state-dir", "LONG"], ["cancel", "x", "--state-dir", "LONG"],
                                 ["systemd", "install", "--no-reload", "--unit-dir", "LONG"]])
def test_a_path_the_os_refuses_is_one_line_exit_2(tmp_path, cmd):
    """A name over 255 bytes (ENAMETOOLONG) that no check names: the edge still prints one line."""
    long = tmp_path / ("x" * 300)
    line = one_line(traind(*[long if a == "LONG" else a for a in cmd]), 2)
    assert line.startswith(f"traind: {long}") and line.endswith(": File name too long")


# --- `traind systemd install` (issue 10): every option explained, one submit command, PrivateTmp ------

def test_systemd_install_explains_every_option(capsys):
    from traind.cli import main
    with pytest.raises(SystemExit):
        main(["systemd", "install", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for option, words in [("--unit-dir UNIT_DIR", "where the unit files are written (default: /etc/systemd/system)"),
                          ("--exec PATH", "absolute path of the traind executable"),
                          ("--jobs-dir JOBS_DIR", "where traind@NAME.service reads its spec"),
                          ("--create-user", "create the system user 'traind'"),
                          ("--no-reload", "skip `systemctl daemon-reload`")]:
        assert f"{option} {words}" in text, option


def test_installer_and_readme_give_the_same_submit_command(tmp_path):
    """As root `traind submit` hands the spool file to the daemon's user (spool.submit), which the
    daemon requires; `sudo -u traind` could not read a spec in a private home. README says the same."""
    from pathlib import Path
    out = traind("systemd", "install", "--no-reload", "--exec", sys.executable,
                 "--unit-dir", tmp_path / "units", "--jobs-dir", tmp_path / "jobs")
    assert out.returncode == 0, out.stderr
    hint = out.stdout.strip().splitlines()[-1].split("`")[1]
    assert hint == "sudo traind submit SPEC"
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert hint.replace("SPEC", "jobs/examples/tiny.yaml") + " && sudo traind ls" in readme
    assert "sudo -u traind traind submit" not in readme


def test_systemd_install_warns_when_exec_is_hidden_by_private_tmp():
    import os
    import tempfile
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        exe = f"{tmp}/venv/bin/traind"
        os.makedirs(os.path.dirname(exe))
        with open(exe, "w") as f:
            f.write("#!/bin/sh\n")
        os.chmod(exe, 0o755)
        out = traind("systemd", "install", "--no-reload", "--exec", exe, "--unit-dir", f"{tmp}/units",
                     "--jobs-dir", f"{tmp}/jobs")
        assert out.returncode == 0 and "Traceback" not in out.stderr
        assert out.stderr.strip().splitlines() == [
            f"traind: warning: --exec: ExecStart runs {exe}, under /tmp, but traind.service and traind@.service set "
            "PrivateTmp=yes: the service sees an empty private /tmp and cannot start; install traind outside "
            "/tmp and /var/tmp and pass --exec"]


def test_private_tmp_check_follows_the_interpreter_and_only_matters_with_private_tmp(tmp_path):
    from traind.service.systemd_install import _exec_paths, private_tmp_problem
    exe = tmp_path / "traind"
    exe.write_text("#!/var/tmp/venv/bin/python3 -s\nimport traind\n")
    assert "/var/tmp/venv/bin/python3" in _exec_paths(str(exe))
    units = {"traind.service": "[Service]\nPrivateTmp=yes\n"}
    assert "runs /var/tmp/venv/bin/traind, under /var/tmp" in private_tmp_problem("/var/tmp/venv/bin/traind", units)
    assert private_tmp_problem("/var/tmp/venv/bin/traind", {"traind.service": "[Service]\nPrivateTmp=no\n"}) is None
    assert private_tmp_problem("/usr/local/bin/traind", units) is None
    assert private_tmp_problem("/tmpfoo/traind", units) is None


def test_a_multi_node_spec_outside_slurm_names_its_file(tmp_path):
    """Issue 21: `distributed.nnodes` errors named no file."""
    spec = tmp_path / "nodes.yaml"
    spec.write_text(f"name: x\ncommand: ['true']\nrun_dir: {tmp_path / 'run'}\n"
                    "distributed: {nproc_per_node: 1, nnodes: 2}\n")
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("SLURM_")}
    line = one_line(traind("run", spec, env=env), 2)
    assert line.startswith(f"traind: {spec}: distributed.node_rank: not set"), line
