"""Where `traind run` writes for people: its own lines, the job's output and, on a terminal, one
live status line.

The job's output is echoed from its attempt log with a prefix naming the job and attempt
(`tiny attempt-2| ...`), so supervisor lines (`traind[tiny #2]: ...`) and job lines are told apart
in a journal. On a terminal the live line (step/total, rate, loss, ETA, last checkpoint, attempt)
is redrawn under them and the job's own progress lines are left out: the live line shows them.
"""
from __future__ import annotations

import re
import sys
import threading

PROGRESS_RE = re.compile(r"^step \d+(/\d+)? epoch ")   # the job's periodic progress line (traind.jobs.runtime.reporting)


class Terminal:
    def __init__(self, stream=None, name: str = "job"):
        self.stream = stream or sys.stderr
        try:
            self.tty = self.stream.isatty()
        except (AttributeError, ValueError):
            self.tty = False
        self.name = name
        self._live = ""
        self._partial: dict[str, bytes] = {}
        self._lock = threading.Lock()      # the cluster hooks' threads say things too

    def line(self, text: str) -> None:
        with self._lock:
            self._write(f"\r\033[K{text}\n{self._live}" if self.tty else f"{text}\n")

    def job_output(self, data: bytes, source: str) -> None:
        """Bytes the job appended to its log; whole lines are shown, a partial one waits."""
        lines = (self._partial.pop(source, b"") + data).split(b"\n")
        self._partial[source] = lines.pop()
        for raw in lines:
            text = raw.decode(errors="replace").rstrip("\r")
            if self.tty and PROGRESS_RE.match(text):
                continue
            self.line(f"{self.name} {source}| {text}")

    def live(self, text: str) -> None:
        if not self.tty:
            return
        with self._lock:
            self._live = text
            self._write(f"\r\033[K{text}")

    def close(self) -> None:
        with self._lock:
            if self.tty and self._live:
                self._write("\n")
                self._live = ""

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):
            pass      # a closed terminal must not take the supervisor down


def live_text(name: str, attempt, state: str, heartbeat: dict | None, checkpoint: dict | None) -> str:
    """`tiny #2 running  step 1200/8000  35.2 steps/s  loss 0.412  ETA 3.2min  ckpt 1000`."""
    parts = [f"{name} #{attempt}" if attempt else name, state]
    hb = heartbeat or {}
    step, total, rate = hb.get("step"), hb.get("total"), hb.get("steps_per_second")
    if isinstance(step, int):
        parts.append(f"step {step}" + (f"/{total}" if isinstance(total, int) and total else ""))
    if isinstance(rate, (int, float)) and rate > 0:
        parts.append(f"{rate:.1f} steps/s")
    loss = (hb.get("metrics") or {}).get("loss") if isinstance(hb.get("metrics"), dict) else None
    if isinstance(loss, (int, float)):
        parts.append(f"loss {loss:.4g}")
    if isinstance(step, int) and isinstance(total, int) and isinstance(rate, (int, float)) and rate > 0 and total > step:
        left = (total - step) / rate
        parts.append("ETA " + (f"{left:.0f}s" if left < 120 else f"{left / 60:.1f}min" if left < 7200
                               else f"{left / 3600:.1f}h"))
    if isinstance(checkpoint, dict) and checkpoint.get("step") is not None:
        parts.append(f"ckpt {checkpoint['step']}")
    return "  ".join(parts)
