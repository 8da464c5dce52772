"""`traind slurm submit --nodes M`: the multi-node script (srun, one supervisor per node), its signal
handling (run for real with a stand-in srun and scancel), and its one-line errors."""
import os
import signal
import subprocess
import sys
import time

import pytest

from traind.cluster import sbatch


def traind(*args):
    return subprocess.run([sys.executable, "-m", "traind", *args], capture_output=True, text=True)


@pytest.fixture
def spec(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("name: demo\ncommand: [sleep, '1']\nrun_dir: runs/demo\n")
    return path


def printed(*args) -> str:
    out = traind("slurm", "submit", *args, "--print")
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_two_nodes_start_one_traind_run_per_node_with_srun(spec, tmp_path):
    s = printed(str(spec), "--nodes", "2", "--time", "5", "--set", "restart.max_restarts=1")
    lines = s.splitlines()
    for line in ("#SBATCH --nodes=2", "#SBATCH --signal=USR1@120", "#SBATCH --requeue", "#SBATCH --time=5",
                 "#SBATCH --open-mode=append", f"#SBATCH --output={tmp_path}/runs/demo/slurm-%j.out"):
        assert line in lines, line
    assert "B:USR1" not in s                 # B: would reach the batch shell only, not the supervisors
    run = f"{sys.executable} -m traind run {spec} --set restart.max_restarts=1 --set distributed.nnodes=2"
    srun, = [l for l in lines if l.startswith("srun ")]
    assert srun == ("srun --nodes=2 --ntasks=2 --ntasks-per-node=1 --kill-on-bad-exit=0 --cpu-bind=none "
                    f"--export=ALL --label {run} &")
    assert not any(l.startswith("exec ") for l in lines)     # the shell stays: srun must not be the batch shell
    assert "requeue" not in s.replace("#SBATCH --requeue", "")   # only node 0's supervisor requeues
    assert "trap \"relay+=' $sig'\" \"$sig\"" in s and "CONT" not in s
    first_cmd = next(i for i, l in enumerate(lines) if l and not l.startswith("#"))
    assert all(not l.startswith("#SBATCH") for l in lines[first_cmd:])
    script = tmp_path / "s.sh"
    script.write_text(s)
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0


def test_one_node_is_the_single_node_script_unchanged(spec):
    plain = printed(str(spec), "--time", "5")
    assert printed(str(spec), "--time", "5", "--nodes", "1") == plain
    assert printed(str(spec), "-N1", "--time", "5") == plain
    assert "#SBATCH --signal=B:USR1@120" in plain and f"exec {sys.executable} -m traind run {spec}\n" in plain
    assert "srun" not in plain and "--nodes" not in plain


def test_nodes_come_from_the_spec_and_array_tasks_keep_their_run_dirs(spec, tmp_path):
    spec.write_text(spec.read_text() + "distributed: {nnodes: 3}\n")
    s = printed(str(spec), "--array", "0-1")
    assert "#SBATCH --nodes=3" in s.splitlines() and "srun --nodes=3 --ntasks=3 " in s
    assert 'task-"${SLURM_ARRAY_TASK_ID}" &' in s and "--set distributed.nnodes=3 --set run_dir=" in s
    s = printed(str(spec), "--nodes", "1")      # one node asked of a spec written for three
    assert "srun" not in s and s.rstrip().endswith("--set distributed.nnodes=1")


@pytest.mark.parametrize("args,words", [
    (["--nodes", "0"], "--nodes '0': expected a whole number of nodes >= 1"),
    (["--nodes", "-1"], "--nodes '-1': expected a whole number of nodes >= 1"),
    (["--nodes", "two"], "--nodes 'two': expected a whole number of nodes >= 1"),
    (["--nodes", "2-4"], "--nodes '2-4': expected a whole number of nodes >= 1"),
    (["--nodes", "1.5"], "--nodes '1.5': expected a whole number of nodes >= 1"),
    (["--nodes", ""], "--nodes '': expected a whole number of nodes >= 1"),
    (["-N", "\u0662"], "expected a whole number of nodes >= 1"),          # an Arabic-Indic 2: isdigit() but not SLURM's
    (["--nodes", "5000"], "distributed.nnodes: expected an integer >= 1 and <= 4096, got 5000"),
    (["--nodes", "9" * 30], "distributed.nnodes: expected an integer >= 1 and <= 4096"),
    (["--nodes"], "argument --nodes/-N: expected one argument"),
    (["--", "--ntasks", "2", "-N", "3"], "--nodes: give it as traind's own option"),
    (["--nodes", "2", "--signal", "USR2"], "traind sets --signal=USR1@LEAD itself; use --lead SECONDS"),
])
def test_bad_node_counts_are_one_line_exit_2(spec, args, words):
    out = traind("slurm", "submit", str(spec), "--print", *args)
    assert out.returncode == 2, out
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert words in out.stderr and out.stdout == ""


def test_a_bad_node_count_before_the_spec_is_one_line_too(spec):
    out = traind("slurm", "submit", "--nodes", "0", str(spec), "--print")
    assert out.returncode == 2 and out.stderr.strip().splitlines() == [
        "traind: slurm submit: --nodes '0': expected a whole number of nodes >= 1 (e.g. --nodes 2)"]


def test_a_spec_with_a_fixed_node_rank_cannot_run_on_several_nodes(spec):
    spec.write_text(spec.read_text() + "distributed: {nnodes: 2, node_rank: 0}\n")
    out = traind("slurm", "submit", str(spec), "--print")
    assert out.returncode == 2 and "sets distributed.node_rank (0), which every node would take" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_parse_nodes():
    assert [sbatch.parse_nodes(t) for t in ("1", "2", " 16", "0064")] == [1, 2, 16, 64]


# --- the batch shell for real, with a stand-in srun and scancel ---------------------------------------

FAKE_SRUN = """#!/bin/bash
# stands in for srun: records its arguments and the signals it gets; ends when `release` appears
echo "srun $*" >> "$LOG"
trap 'echo "srun got TERM" >> "$LOG"' TERM
while [ ! -e "$WORK/release" ]; do sleep 0.05; done
exit "${SRUN_EXIT:-0}"
"""
FAKE_SCANCEL = """#!/bin/bash
echo "scancel $*" >> "$LOG"
touch "$WORK/release"
"""


def run_script(tmp_path, spec, signo=None, srun_exit=75):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("srun", FAKE_SRUN), ("scancel", FAKE_SCANCEL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    script = tmp_path / "job.sh"
    script.write_text(printed(str(spec), "--nodes", "2"))
    log = tmp_path / "log"
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "LOG": str(log), "WORK": str(tmp_path),
           "SLURM_JOB_ID": "42", "SRUN_EXIT": str(srun_exit)}
    shell = subprocess.Popen(["bash", str(script)], env=env, stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 20
    while not (log.exists() and "srun " in log.read_text()):
        assert time.monotonic() < deadline and shell.poll() is None, "the stand-in srun never started"
        time.sleep(0.05)
    if signo is None:
        (tmp_path / "release").touch()
    else:
        shell.send_signal(signo)          # to the batch shell alone, as `scancel --batch --signal=...`
    out, _ = shell.communicate(timeout=20)
    return shell.returncode, log.read_text(), out


@pytest.mark.parametrize("signo,name", [(signal.SIGTERM, "TERM"), (signal.SIGUSR1, "USR1"), (signal.SIGINT, "INT")])
def test_a_signal_to_the_batch_shell_goes_on_to_every_node_not_to_srun(tmp_path, spec, signo, name):
    code, log, out = run_script(tmp_path, spec, signo)
    assert log.splitlines()[1:] == [f"scancel --signal={name} 42"]      # a step signal: each node's supervisor
    assert "srun got TERM" not in log                                  # srun would SIGKILL the tasks
    assert f"SIG{name} to the batch shell: passing it on to every node" in out
    assert code == 75                                                  # srun's status is the job's


def test_the_batch_shell_exits_with_srun_status(tmp_path, spec):
    code, log, _ = run_script(tmp_path, spec, None, srun_exit=3)
    assert code == 3 and "scancel" not in log
