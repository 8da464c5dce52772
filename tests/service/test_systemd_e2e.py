"""The shipped units under a real systemd (PID 1 of fresh namespaces, see systemd_box.py).

One boot, one story, in order: start waits for READY=1 -> a submitted job trains -> SIGKILL of the
daemon: systemd restarts it and the job resumes from its checkpoint -> a hung main loop: the
watchdog kills and restarts it -> `systemctl stop`: emergency checkpoint, Result=success -> a
template instance runs a job to completion.

The units are the shipped ones; a drop-in only points ExecStart at this checkout's traind
(`python -m traind`), runs as root with the state in the test's folder, and shortens the timers.
"""
import json
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import REPO, PeakProcesses, read_ledger, traind, wait_for, write_spec
from systemd_box import SystemdBox, available

pytestmark = [pytest.mark.systemd, pytest.mark.slow,
              pytest.mark.skipif(available() is not None, reason=f"systemd box: {available()}")]

S = "traind.service"


def _common(w) -> str:
    # The shipped hardening stays on (PrivateTmp included: torch needs a writable temp dir); only
    # the paths change: the test's folder is bound into the private /tmp, and StateDirectory= is
    # reset so nothing is created under the host's /var/lib.
    # A checkout or interpreter under /tmp (a CI clone, a venv) would be hidden by PrivateTmp too:
    # bind those in read-only, as an installed traind would live outside /tmp anyway.
    hidden = sorted({str(p) for p in (REPO, Path(sys.prefix), Path(sys.executable).resolve().parent)
                     if str(p).startswith(("/tmp/", "/var/tmp/")) and not str(p).startswith(str(w))})
    ro = f"BindReadOnlyPaths={' '.join(hidden)}\n" if hidden else ""
    return (f"User=root\nGroup=root\nStateDirectory=\nWorkingDirectory={REPO}\nReadWritePaths=\n"
            f"BindPaths={w}\n{ro}Environment=OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1\n")


@pytest.fixture
def box(tmp_path):
    b = SystemdBox(tmp_path / "box")
    for unit in ("traind.service", "traind@.service"):
        b.add_unit(REPO / "systemd" / unit)
    w = tmp_path
    b.add_dropin(S, f"[Service]\nExecStart=\nExecStart={sys.executable} -m traind serve --state-dir {w}/state "
                    f"--slots 1\n{_common(w)}Environment=TRAIND_TEST_HOOKS=1\n"
                    "WatchdogSec=3s\nRestartSec=1s\nTimeoutStopSec=1s\n")
    b.add_dropin("traind@.service", f"[Unit]\nAssertPathExists=\nAssertPathExists={w}/jobs/%i.yaml\n"
                 f"[Service]\nExecStart=\nExecStart={sys.executable} -m traind run {w}/jobs/%i.yaml "
                 f"--set run_dir={w}/unit-runs/%i\n{_common(w)}")
    try:
        b.boot()
        yield b
    finally:
        b.shutdown()


def test_units_under_real_systemd(tmp_path, box):
    state, ledger = tmp_path / "state", tmp_path / "ledger"
    t0 = time.monotonic()
    marks = {}

    def mark(what):
        marks[what] = round(time.monotonic() - t0, 2)

    # 1. start blocks until READY=1; STATUS= reached the manager.
    out = box.sd("systemctl", "start", S)
    assert out.returncode == 0, out.stderr + box.journal(S)
    mark("start (READY=1)")
    assert box.prop(S, "SubState") == "running" and "slot" in box.prop(S, "StatusText"), box.journal(S)

    # 2. a submitted job trains (checkpoint every 5 steps).
    # Its emergency checkpoint takes 3 s, longer than the drop-in's TimeoutStopSec=1s: only the
    # daemon's EXTEND_TIMEOUT_USEC keeps systemd from killing it at `systemctl stop`.
    spec = write_spec(tmp_path, "sdjob", ledger, steps=100000, step_seconds=0.05, every=5, stop_seconds=3)
    traind("submit", str(spec), state_dir=state, check=True)
    steps = state / "jobs/sdjob/run/steps.log"
    wait_for(lambda: len(steps.read_text().split()) >= 12, 90, "job trained 12 steps")
    mark("job training")
    assert "1 running" in box.prop(S, "StatusText")

    # 3. SIGKILL of the daemon: restarted by systemd, the job resumes from its checkpoint.
    pid = box.prop(S, "MainPID")
    box.sd("systemctl", "kill", "-s", "SIGKILL", "--kill-whom=main", S)
    wait_for(lambda: box.prop(S, "NRestarts") == "1" and box.prop(S, "SubState") == "running", 60, "restart 1")
    assert box.prop(S, "MainPID") != pid
    wait_for(lambda: resumed_starts(ledger), 90, "job resumed after SIGKILL")
    assert min(resumed_starts(ledger)) >= 5
    mark("SIGKILL -> restart -> resumed")

    # 4. a hung main loop stops WATCHDOG=1: systemd aborts and restarts the daemon.
    (state / "test-hang").touch()
    wait_for(lambda: box.prop(S, "NRestarts") == "2" and box.prop(S, "SubState") == "running", 60, "watchdog restart")
    assert "Watchdog timeout" in box.sd("journalctl", "--no-pager", "-u", S).stdout
    wait_for(lambda: len(resumed_starts(ledger)) >= 2, 90, "job resumed after the watchdog restart")
    mark("hang -> watchdog -> restart -> resumed")

    # 5. systemctl stop: the job writes its emergency checkpoint; the unit stops cleanly.
    n = len(steps.read_text().split())
    wait_for(lambda: len(steps.read_text().split()) >= n + 3, 30, "training again")
    before = len(read_ledger(ledger))
    t_stop = time.monotonic()
    out = box.sd("systemctl", "stop", S)
    mark("stop")
    assert out.returncode == 0 and time.monotonic() - t_stop >= 3.0
    stops = [e for e in read_ledger(ledger)[before:] if e["what"].startswith("stop")]
    assert stops and int(stops[-1]["what"].split()[1]) > 0, read_ledger(ledger)
    assert box.prop(S, "Result") == "success" and box.prop(S, "ActiveState") == "inactive"
    assert (state / "jobs/sdjob/job.json").read_text().count('"queued"') == 1   # resumes on next start

    # 6. a template instance supervises one spec to completion: a real PyTorch job, so the shipped
    #    sandbox (SystemCallFilter, ProtectSystem=strict, ...) is shown to let torch train.
    (tmp_path / "jobs").mkdir()
    (tmp_path / "jobs/tmpl.yaml").write_text(yaml.safe_dump({
        "name": "tmpl", "workdir": str(REPO), "env": {"OMP_NUM_THREADS": "1"},
        "command": [sys.executable, "-m", "traind.jobs.examples.tiny", "--max-steps", "60", "--every-steps", "20"]}))
    out = box.sd("systemctl", "start", "traind@tmpl.service")
    assert out.returncode == 0, out.stderr
    try:
        wait_for(lambda: box.prop("traind@tmpl.service", "ActiveState") == "inactive", 90, "template finished")
    except AssertionError:
        raise AssertionError(box.journal("traind@tmpl.service")[-3000:] + box.sd("journalctl", "--no-pager").stdout[-3000:]) from None
    assert box.prop("traind@tmpl.service", "Result") == "success", box.journal("traind@tmpl.service")
    run = tmp_path / "unit-runs/tmpl"
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 60
    assert (run / "checkpoints/step-000000060/MANIFEST.json").is_file()
    mark("template instance done")
    print("systemd e2e timeline (s):", marks)
    assert not [e for e in read_ledger(ledger) if e["what"] == "OVERLAP"]


def resumed_starts(ledger) -> list[int]:
    return [int(e["what"].split()[1]) for e in read_ledger(ledger)
            if e["job"] == "sdjob" and e["what"].startswith("start ") and e["what"] != "start 0"]


@pytest.fixture
def box2(tmp_path):
    """The daemon with two slots and a stop timeout long enough for two emergency checkpoints."""
    b = SystemdBox(tmp_path / "box")
    b.add_unit(REPO / "systemd" / "traind.service")
    b.add_dropin(S, f"[Service]\nExecStart=\nExecStart={sys.executable} -m traind serve --state-dir {tmp_path}/state "
                    f"--slots 2\n{_common(tmp_path)}RestartSec=1s\nTimeoutStopSec=5s\n")
    try:
        b.boot()
        yield b
    finally:
        b.shutdown()


def test_systemctl_stop_and_start_keep_two_slots_and_the_order(tmp_path, box2):
    """Issue 24 under a real systemd: `--slots 2`, four paced jobs, `systemctl stop` while two run
    (each writes its emergency checkpoint), `systemctl start`: the process table never shows more
    than two training processes, the two stopped jobs go first, every job finishes once."""
    from test_serve import assert_exactly_once
    state, ledger = tmp_path / "state", tmp_path / "ledger"
    assert box2.sd("systemctl", "start", S).returncode == 0, box2.journal(S)
    names = [f"job{i:02d}" for i in range(4)]
    for name in names:
        traind("submit", str(write_spec(tmp_path, name, ledger, steps=400, step_seconds=0.02, every=5,
                                        stop_seconds=1.0)), state_dir=state, check=True)
    wait_for(lambda: sum(e["what"].startswith("start") for e in read_ledger(ledger)) == 2, 90, "two jobs training")
    time.sleep(0.5)
    with PeakProcesses() as peak:
        assert box2.sd("systemctl", "stop", S).returncode == 0, box2.journal(S)
        restarted = time.time()
        assert box2.sd("systemctl", "start", S).returncode == 0, box2.journal(S)
        wait_for(lambda: [json.loads((state / f"jobs/{n}/job.json").read_text())["state"] for n in names]
                 == ["done"] * 4, 180, "4 jobs done")
    entries = read_ledger(ledger)
    assert_exactly_once(names, entries)
    assert peak.most <= 2, f"{peak.most} training processes at once on 2 slots"
    relaunched = [e["job"] for e in entries if e["t"] > restarted and e["what"].startswith("start")]
    assert sorted(relaunched[:2]) == ["job00", "job01"] and relaunched[2:] == ["job02", "job03"], relaunched
