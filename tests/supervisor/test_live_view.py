"""Issue 10.8: under `traind run`, a terminal gets one live status line; elsewhere plain lines,
one per checkpoint, supervisor lines and job lines told apart."""
import os
import pty
import re
import select
import subprocess
import sys
import time

import pytest

from traind.supervisor.terminal import Terminal, live_text

from .conftest import REPO, traind, write_spec

TINY = [sys.executable, "-m", "traind.jobs.examples.tiny", "--max-steps", "300", "--every-steps", "100"]


def test_live_text_shows_progress_rate_loss_eta_checkpoint_and_attempt():
    text = live_text("tiny", 2, "running", {"step": 1200, "total": 8000, "steps_per_second": 34.0,
                                            "metrics": {"loss": 0.41234}}, {"step": 1000})
    assert text == "tiny #2  running  step 1200/8000  34.0 steps/s  loss 0.4123  ETA 3.3min  ckpt 1000"


class FakeTTY:
    def __init__(self, tty):
        self.out, self._tty = [], tty

    def isatty(self):
        return self._tty

    def write(self, text):
        self.out.append(text)

    def flush(self):
        pass


def test_a_terminal_redraws_the_live_line_and_hides_job_progress_lines():
    stream = FakeTTY(True)
    term = Terminal(stream, "tiny")
    term.live("tiny #1  running  step 5/10")
    term.job_output(b"step 5/10 epoch 0 loss=1.0 3.0 steps/s\nresumed from x\npart", "attempt-1")
    term.job_output(b"ial line\n", "attempt-1")
    text = "".join(stream.out)
    assert "step 5/10 epoch 0" not in text                      # the live line shows progress
    assert "\r\033[Ktiny attempt-1| resumed from x\ntiny #1  running  step 5/10" in text
    assert "tiny attempt-1| partial line" in text               # a line split across reads stays whole
    plain = FakeTTY(False)
    Terminal(plain, "tiny").job_output(b"step 5/10 epoch 0 loss=1.0\n", "attempt-1")
    assert plain.out == ["tiny attempt-1| step 5/10 epoch 0 loss=1.0\n"]   # journald: plain lines


@pytest.mark.slow
def test_plain_output_logs_each_checkpoint_once_and_tells_supervisor_and_job_apart(tmp_path):
    out = traind("run", write_spec(tmp_path, command=TINY), timeout=180)
    assert out.returncode == 0, out.stderr
    lines = out.stderr.splitlines()
    commits = [line for line in lines if "committed" in line and "checkpoint" in line]
    assert len(commits) == 3, commits                            # steps 100, 200, 300: once each
    assert all(line.startswith("traind[fx") for line in commits)
    job = [line for line in lines if line.startswith("fx attempt-1| ")]
    assert any("finished at step 300" in line for line in job)
    assert all(line.startswith(("traind[fx", "fx attempt-")) for line in lines), lines


@pytest.mark.slow
def test_a_terminal_gets_one_live_status_line(tmp_path):
    spec = write_spec(tmp_path, command=[*TINY, "--step-seconds", "0.01"])
    master, slave = pty.openpty()
    p = subprocess.Popen([sys.executable, "-m", "traind", "run", str(spec)], stdin=slave, stdout=slave, stderr=slave,
                         env={**os.environ, "PYTHONPATH": str(REPO)}, close_fds=True)
    os.close(slave)
    chunks, deadline = [], time.monotonic() + 180
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 1.0)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:
                break
            if not data:
                break
            chunks.append(data)
        elif p.poll() is not None:
            break
    p.wait(timeout=30)
    os.close(master)
    text = b"".join(chunks).decode(errors="replace")
    assert p.returncode == 0, text[-2000:]
    redraws = re.findall(r"\r\x1b\[Kfx #1  running  step (\d+)/300", text)
    assert len(redraws) >= 3 and int(redraws[-1]) >= 200, text[-2000:]
    assert "ETA" in text and "steps/s" in text and "ckpt 100" in text
    assert "| step 100/300 epoch" not in text                    # the job's own progress lines: hidden
