"""`traind slurm submit`: the script it writes, LEAD from measurements, and its errors."""
import json
import subprocess
import sys

import pytest

from traind import store as checkpoints
from traind.cli import slurm as cli_slurm
from traind.cluster import sbatch as slurm_batch
from traind.contract.errors import UsageError
from traind.cluster.slurm import CommandResult


def traind(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "traind", *args], capture_output=True, text=True, cwd=cwd)


@pytest.fixture
def spec(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("name: demo\ncommand: [sleep, '1']\nrun_dir: runs/demo\n")
    return path


def test_print_shows_a_requeueable_script(spec, tmp_path):
    out = traind("slurm", "submit", str(spec), "--time", "5", "--mem", "1G", "--print", "--", "--exclusive")
    assert out.returncode == 0, out.stderr
    s = out.stdout
    for line in ("#SBATCH --job-name=demo", "#SBATCH --requeue", "#SBATCH --open-mode=append",
                 f"#SBATCH --signal=B:USR1@{slurm_batch.DEFAULT_LEAD_SECONDS}", "#SBATCH --time=5",
                 "#SBATCH --mem=1G", "#SBATCH --exclusive",
                 f"#SBATCH --output={tmp_path}/runs/demo/slurm-%j.out"):
        assert line in s.splitlines(), line
    assert s.startswith("#!/bin/bash\n") and "#SBATCH --\n" not in s
    assert f"exec {sys.executable} -m traind run {spec}" in s
    assert f"export TRAIND_SLURM_LEAD_SECONDS={slurm_batch.DEFAULT_LEAD_SECONDS}" in s
    # every #SBATCH line comes before the first command (sbatch stops reading them there)
    lines = s.splitlines()
    first_cmd = next(i for i, l in enumerate(lines) if l and not l.startswith("#"))
    assert all(not l.startswith("#SBATCH") for l in lines[first_cmd:])
    assert not (tmp_path / "runs").exists()      # --print touches nothing


def test_user_options_win_and_array_tasks_get_their_own_run_dir(spec, tmp_path):
    out = traind("slurm", "submit", str(spec), "-J", "mine", "--array", "0-3", "--lead", "200",
                 "--set", "restart.max_restarts=1", "--print")
    assert out.returncode == 0, out.stderr
    s = out.stdout
    assert "#SBATCH --job-name" not in s and "#SBATCH -J mine" in s
    assert "#SBATCH --signal=B:USR1@200" in s and "slurm-%A_%a.out" in s
    assert "--set restart.max_restarts=1 --set run_dir=" in s
    assert s.rstrip().endswith('task-"${SLURM_ARRAY_TASK_ID}"')


def test_generated_script_is_valid_bash(spec, tmp_path):
    out = traind("slurm", "submit", str(spec), "--array", "1-2", "--print")
    script = tmp_path / "s.sh"
    script.write_text(out.stdout)
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0


@pytest.mark.parametrize("args,words", [
    (["--signal", "USR2"], "--lead"),
    (["--lead", "abc"], "--lead"),
    (["--lead", "0"], "--lead"),
    (["--set", "restart.max_restarts=-1"], "restart.max_restarts"),
    (["stray-word"], "stray-word"),
    (["--lead", "nan"], "--lead: expected a number of seconds > 0 and <= 65535, got nan"),
    (["--lead", "inf"], "--lead: expected a number of seconds > 0 and <= 65535, got inf"),
    (["--lead", "70000"], "--lead: expected a number of seconds > 0 and <= 65535, got 70000"),
    (["--time", "1:00\necho injected"], "--time: '--time 1:00\\necho injected' holds a line break"),
    (["--comment", "a\rb"], "--comment: '--comment a\\rb' holds a line break"),
    (["--set", 'run_dir="x\\ntouch y"'], "--output: '--output "),
])
def test_mistakes_are_one_line_exit_2(spec, args, words):
    out = traind("slurm", "submit", str(spec), *args, "--print")
    assert out.returncode == 2, out
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert words in out.stderr


def test_missing_spec_names_the_file(tmp_path):
    out = traind("slurm", "submit", str(tmp_path / "nope.yaml"), "--print")
    assert out.returncode == 2 and "nope.yaml" in out.stderr and "Traceback" not in out.stderr


def test_lead_comes_from_the_measured_emergency_checkpoint(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    assert slurm_batch.measure_stop(run).needed_seconds() is None
    assert slurm_batch.lead_for(slurm_batch.measure_stop(run)) == slurm_batch.DEFAULT_LEAD_SECONDS
    def transition(t, source, target):
        return {"time": t, "event": "transition", "source": source, "target": target}
    events = [transition(100.0, "starting", "running"),
              transition(200.0, "running", "stopping"), transition(212.5, "stopping", "preempted"),
              {"time": 300.0, "event": "spawned"}, transition(301.0, "starting", "running"),
              transition(400.0, "running", "stopping"), transition(440.0, "stopping", "preempted")]
    (run / "events.jsonl").write_text("\n".join(json.dumps(e) for e in events) + "\nnot json\n")
    m = slurm_batch.measure_stop(run)
    assert m.seconds == 40.0 and "events.jsonl" in m.source
    assert slurm_batch.lead_for(m) == 40 * 1.5 + 30
    assert slurm_batch.lead_warning(90, m) is None
    warning = slurm_batch.lead_warning(30, m)
    assert "too short" in warning and "--lead 90" in warning and "40.0 s" in warning


def test_lead_from_a_manifest_and_from_the_state_size(tmp_path):
    run = tmp_path / "run"
    pending = checkpoints.begin(checkpoints.checkpoints_dir(run), 5, 1000)
    pending.file_path("state.pt").write_bytes(b"x" * 1000)
    pending.commit(step=5, epoch=0, reason="emergency", metrics={}, extra={"save_seconds": 70.0})
    m = slurm_batch.measure_stop(run)
    assert m.seconds == 70.0 and m.state_bytes >= 1000
    assert slurm_batch.lead_for(m) == 135
    big = slurm_batch.StopMeasurement(None, None, 20 * 10**9)    # 20 GB, never timed: 200 s estimated
    assert slurm_batch.lead_for(big) == 330
    assert "19073 MiB" in slurm_batch.lead_warning(60, big)


def test_submit_refuses_a_run_dir_a_queued_job_uses(spec, tmp_path):
    run_dir = tmp_path / "runs" / "demo"

    class Runner:
        def __init__(self):
            self.calls = []

        def run(self, argv, *, timeout=30.0, stdin=None):
            self.calls.append((tuple(argv), stdin))
            if argv[0] == "squeue":
                return CommandResult(tuple(argv), 0, f"17|traind-run-dir:{run_dir}\n18|\n")
            return CommandResult(tuple(argv), 0, "19\n")

    from traind.cli import build_parser
    ns = build_parser().parse_args(["slurm", "submit", str(spec)])
    with pytest.raises(UsageError, match="already used by queued SLURM job 17"):
        cli_slurm.submit(ns, Runner())
    runner = Runner()
    ns = build_parser().parse_args(["slurm", "submit", str(spec), "--allow-shared-run-dir", "--time", "3"])
    assert cli_slurm.submit(ns, runner) == 0
    (argv, script), = [c for c in runner.calls if c[0][0] == "sbatch"]
    assert argv == ("sbatch", "--parsable") and "#SBATCH --time=3" in script
    assert run_dir.is_dir()          # made so that sbatch can open the log there


def test_option_grouping():
    groups = slurm_batch.group_options(["--time", "2", "-p", "high", "--exclusive", "--mem=1G", "-t5"])
    assert groups == [("--time", "2"), ("-p", "high"), ("--exclusive",), ("--mem=1G",), ("-t5",)]
    assert [slurm_batch.option_name(g) for g in groups] == ["--time", "--partition", "--exclusive", "--mem",
                                                            "--time"]


# --- --time (issue 10): every sbatch format parsed, anything else one line, LEAD must fit inside ----

@pytest.mark.parametrize("text,seconds", [
    ("5", 300), ("90", 5400), ("0:30", 60), ("1:30", 120), ("10:00", 600), ("2:00:00", 7200), ("00:01:00", 60),
    ("1-0", 86400), ("1-12", 129600), ("1-2:30", 95400), ("1-00:00:00", 86400), ("2-3:04:05", 183900),
    ("0", None), ("-1", None), ("UNLIMITED", None), ("infinite", None), ("Unlimited", None),
])
def test_time_limit_in_every_sbatch_format(text, seconds):
    assert slurm_batch.time_limit_seconds(text) == seconds     # seconds round up to a minute, as SLURM's


@pytest.mark.parametrize("text", ["10min", "abc", "", " 5", "1:2:3:4", "1-", "-5", "1.5", "2h", "1-2-3",
                                  "9" * 10, "1:" + "9" * 5000])
def test_time_that_sbatch_would_not_read_is_one_line_exit_2(spec, text, capsys):
    code, out, err = in_process(capsys, "slurm", "submit", str(spec), "--time", text, "--lead", "30", "--print")
    assert code == 2 and out == ""
    assert err.strip().splitlines() == [
        f"traind: slurm submit: --time {text!r}: expected an sbatch time limit: {slurm_batch.TIME_FORMATS}"]


def in_process(capsys, *args):
    """traind's own main (no interpreter start: these cases are many); the CLI edge is the same."""
    from traind.cli import main
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_a_bad_time_through_the_real_cli(spec):
    out = traind("slurm", "submit", str(spec), "--time", "10min", "--print")
    assert out.returncode == 2 and "Traceback" not in out.stderr and out.stdout == ""
    assert out.stderr.strip().splitlines() == [
        f"traind: slurm submit: --time '10min': expected an sbatch time limit: {slurm_batch.TIME_FORMATS}"]


@pytest.mark.parametrize("args", [["--time", "00:01:00", "--lead", "60"], ["--time", "1", "--lead", "90"],
                                  ["-t0:30", "--lead", "60"], ["--time", "1"], ["--", "--time=1"],
                                  ["--time", "5", "--", "-t", "1", "--lead", "60"]])
def test_lead_at_or_past_the_time_limit_is_refused(spec, args, capsys):
    code, out, err = in_process(capsys, "slurm", "submit", str(spec), *args, "--print")
    assert code == 2 and out == ""
    line, = err.strip().splitlines()
    assert line.startswith("traind: slurm submit: LEAD ") and "is not shorter than --time" in line
    assert "the USR1 warning would arrive at or before the job starts" in line


def test_lead_of_60_s_with_a_one_minute_limit_says_why(spec):
    out = traind("slurm", "submit", str(spec), "--time", "00:01:00", "--lead", "60", "--print")
    assert out.returncode == 2 and "Traceback" not in out.stderr and out.stdout == ""
    assert out.stderr.strip().splitlines() == [
        "traind: slurm submit: LEAD 60 s (--lead) is not shorter than --time 00:01:00 (60 s): the USR1 warning "
        "would arrive at or before the job starts; use a longer --time or a smaller --lead"]


def test_lead_inside_the_time_limit_is_accepted(spec, capsys):
    for args in (["--time", "00:02:00", "--lead", "60"], ["--time", "1-0"], ["--time", "UNLIMITED"], ["--time", "0"]):
        code, out, err = in_process(capsys, "slurm", "submit", str(spec), *args, "--print")
        assert code == 0 and err == "", err
        assert f"#SBATCH --time={args[1]}" in out.splitlines()


def test_option_values():
    assert [slurm_batch.option_value(g) for g in [("--time=2",), ("-t", "2"), ("-t2",), ("--exclusive",), ("-t",)]] \
        == ["2", "2", "2", None, None]
