"""Spec mistakes: each one line naming the file and the field, exit 2, never a traceback."""

import pytest

from traind.contract.errors import UsageError
from traind.supervisor.spec import load_spec

from .conftest import traind

GOOD = "name: tiny\ncommand: [python, -m, traind.jobs.examples.tiny]\n"

MISTAKES = [
    # (spec text, --set overrides, fragment the message must contain)
    ("command: [python]\n", [], "name: expected a job name"),
    ("name: tiny\n", [], "command: expected a non-empty list of strings"),
    ("name: ../etc\ncommand: [x]\n", [], "name: expected a job name matching"),
    ("name: tiny\ncommand: python train.py\n", [], "command: expected a non-empty list of strings, e.g. [python, train.py], got 'python train.py'"),
    (GOOD + "comand: [x]\n", [], "comand: unknown field; valid fields here: name, command, workdir, run_dir, env"),
    (GOOD + "restart: {max_restart: 3}\n", [], "restart.max_restart: unknown field; valid fields here: max_restarts, window_seconds"),
    (GOOD + "restart: {max_restarts: ten}\n", [], "restart.max_restarts: expected an integer >= 0, got 'ten'"),
    (GOOD + "restart: {max_restarts: -1}\n", [], "restart.max_restarts: expected an integer >= 0, got -1"),
    (GOOD + "restart: {backoff: {factor: 0.5}}\n", [], "restart.backoff.factor: expected a number >= 1, got 0.5"),
    (GOOD + "restart: {backoff: {initial_seconds: 10, max_seconds: 5}}\n", [], "restart.backoff.max_seconds: expected at least initial_seconds (10), got 5"),
    (GOOD + "restart: {no_retry_exit_codes: [2, 75]}\n", [], "restart.no_retry_exit_codes[1]: expected an exit code 1..255 other than 0 and 75, got 75"),
    (GOOD + "preemption: {grace_seconds: 0}\n", [], "preemption.grace_seconds: expected a number > 0, got 0"),
    (GOOD + "preemption: {signals: [SIGTERM, SIGKILL]}\n", [], "preemption.signals[1]: expected one of SIGTERM, SIGINT, SIGUSR1, SIGUSR2, SIGHUP, got 'SIGKILL'"),
    (GOOD + "preemption: {requeue: maybe}\n", [], "preemption.requeue: expected one of auto, true, false, got 'maybe'"),
    (GOOD + "preemption: {spot: {provider: ibm}}\n", [], "preemption.spot.provider: expected one of none, auto, aws, gcp, azure"),
    (GOOD + "env: {OMP_NUM_THREADS: [1]}\n", [], "env.OMP_NUM_THREADS: expected a string"),
    (GOOD + "env: [A=1]\n", [], "env: expected a mapping of NAME: value, got a list"),
    (GOOD + "checkpoint: {keep_best: {metric: val_loss, mode: lowest}}\n", [], "checkpoint.keep_best.mode: expected one of min, max, got 'lowest'"),
    (GOOD + "checkpoint: {every_steps: 0}\n", [], "checkpoint.every_steps: expected an integer >= 1 or null, got 0"),
    (GOOD + "health: {hang_timeout_seconds: true}\n", [], "health.hang_timeout_seconds: expected a number > 0 or null, got true"),
    (GOOD + "checkpoint: 5\n", [], "checkpoint: expected a mapping, got 5"),
    (GOOD + "name: [unclosed\n", [], "not valid YAML at line 4"),
    ("- a list\n", [], "expected a mapping of fields at the top level, got a list"),
    (GOOD, ["restart.max_restarts=many"], "restart.max_restarts: expected an integer >= 0, got 'many'"),
    (GOOD, ["restart.bakoff.factor=2"], "restart.bakoff: unknown field; valid fields here: max_restarts"),
    (GOOD, ["name.first=x"], "name (from --set name.first): is a string, cannot set a sub-field"),
    (GOOD, ["restart"], "--set 'restart': expected KEY.SUB=VALUE"),
    # review: values that passed validation and then crashed (traceback) or overflowed later
    (GOOD, ["restart.backoff.initial_seconds=" + "9" * 400], "restart.backoff.initial_seconds: expected a finite number >= 0, got 999"),
    (GOOD, ["preemption.grace_seconds=.inf"], "preemption.grace_seconds: expected a finite number > 0, got inf"),
    (GOOD, ["preemption.spot.poll_seconds=1.0e+999"], "preemption.spot.poll_seconds: expected a number > 0 and <= 86400, got inf"),
    (GOOD, ["preemption.spot.poll_seconds=1.0e+300"], "preemption.spot.poll_seconds: expected a number > 0 and <= 86400, got 1e+300"),
    (GOOD, ["slurm.lead_seconds=70000"], "slurm.lead_seconds: expected a number > 0 and <= 65535 or null, got 70000"),
    (GOOD + 'workdir: "a\\0b"\n', [], "workdir: expected a string without NUL bytes, got 'a\\x00b'"),
    (GOOD + 'run_dir: "a\\0b"\n', [], "run_dir: expected a string without NUL bytes"),
    (GOOD + 'env: {A: "a\\0b"}\n', [], "env.A: expected a string without NUL bytes"),
    (GOOD + 'env: {A: null}\n', [], "env.A: expected a string (quote it: \"1\"), got null"),
    ('name: x\ncommand: [python, "-c\\0"]\n', [], "command[1]: expected a string without NUL bytes"),
    (GOOD + 'slurm: {requeue_command: [scontrol, requeue, "{job}"]}\n', [], "slurm.requeue_command[2]: expected placeholders among {job_id}"),
    (GOOD + 'slurm: {requeue_command: [echo, "{job_id"]}\n', [], "slurm.requeue_command[1]: expected placeholders among"),
    (GOOD + "env: " + "[" * 5000 + "]" * 5000 + "\n", [], "YAML nested too deeply"),
    (GOOD + "run_dir: " + "a" * 256 + "\n", [], "run_dir: expected a path of at most 4095 bytes, each name at most 255, got '/"),
    (GOOD + "workdir: " + "a/" * 2100 + "\n", [], "workdir: expected a path of at most 4095 bytes, each name at most 255"),
]


@pytest.mark.parametrize("text,overrides,fragment", MISTAKES, ids=[m[2][:40] for m in MISTAKES])
def test_each_mistake_has_its_own_message(tmp_path, text, overrides, fragment):
    spec = tmp_path / "job.yaml"
    spec.write_text(text)
    with pytest.raises(UsageError) as err:
        load_spec(spec, overrides)
    message = str(err.value)
    assert fragment in message
    assert "\n" not in message
    assert str(spec) in message or message.startswith("--set")
    assert err.value.exit_code == 2


def test_good_spec_defaults_and_relative_paths(tmp_path):
    (tmp_path / "sub").mkdir()
    spec = tmp_path / "sub" / "job.yaml"
    spec.write_text(GOOD + "workdir: ..\nenv: {OMP_NUM_THREADS: 2}\n")
    s = load_spec(spec, ["restart.backoff.initial_seconds=0.5", "checkpoint.every_steps=100", "preemption.requeue=false"])
    assert s.workdir == tmp_path and s.run_dir == tmp_path / "runs" / "tiny"
    assert s.env == {"OMP_NUM_THREADS": "2"} and s.restart.max_restarts == 10
    assert s.restart.backoff.initial_seconds == 0.5 and s.checkpoint.every_steps == 100
    assert s.preemption.requeue is False and s.restart.no_retry_exit_codes == (2,)


def test_cli_prints_one_line_exit_2_no_traceback(tmp_path):
    spec = tmp_path / "job.yaml"
    spec.write_text(GOOD + "restart: {max_restarts: ten}\n")
    out = traind("run", spec)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines() == [f"traind: {spec}: restart.max_restarts: expected an integer >= 0, got 'ten'"]


def test_missing_spec_file(tmp_path):
    out = traind("run", tmp_path / "nope.yaml")
    assert out.returncode == 2 and "nope.yaml: cannot read the spec: No such file or directory" in out.stderr


def test_nonexistent_command_is_a_clear_usage_error(tmp_path):
    spec = tmp_path / "job.yaml"
    spec.write_text("name: x\ncommand: [no-such-trainer-xyz, --fast]\n")
    out = traind("run", spec)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert f"{spec}: command[0]: 'no-such-trainer-xyz' not found on PATH" in out.stderr
    spec.write_text("name: x\ncommand: [./missing.sh]\n")
    out = traind("run", spec)
    assert out.returncode == 2 and "command[0]: './missing.sh' is not an executable file" in out.stderr


def test_bare_python_means_traind_s_own_interpreter(tmp_path):
    import sys
    from traind.supervisor.spec import load_spec
    spec_file = tmp_path / "job.yaml"
    spec_file.write_text("name: j\ncommand: [python3, -m, traind.jobs.examples.tiny]\n")
    assert load_spec(spec_file, []).command == (sys.executable, "-m", "traind.jobs.examples.tiny")
    spec_file.write_text("name: j\ncommand: [/usr/bin/env, python]\n")
    assert load_spec(spec_file, []).command == ("/usr/bin/env", "python")


def test_spec_that_is_not_utf8_is_one_line(tmp_path):
    spec = tmp_path / "job.yaml"
    spec.write_bytes(b"name: x\xff\xfe\ncommand: [x]\n")
    out = traind("run", spec)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines() == [f"traind: {spec}: not UTF-8 text (byte 7); a spec is a YAML text file"]


def test_requeue_command_with_known_placeholders_and_literal_braces_is_accepted(tmp_path):
    spec = tmp_path / "job.yaml"
    spec.write_text(GOOD + 'slurm: {requeue_command: [sh, -c, "echo {{x}} {array_job_id}_{array_task_id} {raw_job_id}"]}\n')
    assert load_spec(spec).slurm.requeue_command[2] == "echo {{x}} {array_job_id}_{array_task_id} {raw_job_id}"


def test_run_dir_that_is_a_file_is_a_usage_error(tmp_path):
    (tmp_path / "run").write_text("not a dir")
    spec = tmp_path / "job.yaml"
    spec.write_text("name: x\ncommand: [\"true\"]\nrun_dir: run\n")
    out = traind("run", spec)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines() == [f"traind: {spec}: run_dir: {tmp_path / 'run'} is not a directory"]
    assert (tmp_path / "run").read_text() == "not a dir"


def test_a_big_file_passed_as_the_spec_is_refused_without_reading_it_all(tmp_path):
    big = tmp_path / "state.pt"
    big.write_bytes(b"PK\x03\x04" + b"\0" * (300 * 1024))      # e.g. a checkpoint given by mistake
    for cmd in (["run", big], ["submit", big, "--state-dir", tmp_path / "state"], ["slurm", "submit", big, "--print"]):
        out = traind(*cmd)
        assert out.returncode == 2 and "Traceback" not in out.stderr
        assert out.stderr.strip().splitlines() == [f"traind: {big}: larger than 256 KiB; a spec is a short YAML text file"]
    out = traind("run", "/dev/zero")        # endless: was a MemoryError traceback
    assert out.returncode == 2 and "larger than 256 KiB" in out.stderr
