"""What a run tells people: RUN_DIR/metrics.jsonl (one line per finished step) and the console.

On a terminal: one progress line redrawn in place. Otherwise (log files, the supervisor's
attempt logs): a plain line every `every_steps` steps or `every_seconds` seconds.
"""
from __future__ import annotations

import json
import math
import os
import sys
import threading
from pathlib import Path

from traind.contract import protocol
from traind.contract.errors import TraindError
from traind.fs.durable import atomic_write

METRICS_NAME = "metrics.jsonl"


def checkpoint_message(info, seconds: float, slowdown: float | None) -> dict:
    """The CHECKPOINT message's fields (protocol.CHECKPOINT), the same from every way in: what
    was committed, and what it cost (protocol.CHECKPOINT_COSTS)."""
    stats = getattr(info, "stats", None) or {}
    return {"step": info.step, "epoch": info.epoch, "path": str(info.path), "reason": info.reason,
            "bytes": info.size, "seconds": seconds, "writer_cpu_seconds": stats.get("writer_cpu_seconds"),
            "blocked_seconds": stats.get("snapshot_seconds"), "slowdown": slowdown}


class MetricsLog:
    """Append-only per-step metrics. On resume, lines past the resumed step are dropped (those steps
    are about to run again), so the file always reads as one clean sequence of steps."""

    def __init__(self, run_dir: Path, enabled: bool = True) -> None:
        self.path = Path(run_dir) / METRICS_NAME
        self.enabled = enabled      # False on the ranks of a group other than 0: one writer per file
        self._file = None

    def truncate_after(self, step: int) -> None:
        if not self.enabled or not self.path.exists():
            return
        keep = []
        try:
            with open(self.path, "rb") as f:
                for line in f:
                    try:
                        if int(json.loads(line)["step"]) <= step:
                            keep.append(line if line.endswith(b"\n") else line + b"\n")
                    except (ValueError, KeyError, TypeError):
                        continue  # a line torn by a kill mid-write
            atomic_write(self.path, b"".join(keep), mode=0o644, durable=False)
        except OSError as err:   # a full disk, a directory in the way: the old file stays as it was
            raise TraindError(f"{self.path}: cannot rewrite the metrics log: {err.strerror or err}") from None

    def append(self, record: dict) -> None:
        if not self.enabled:
            return
        try:
            if self._file is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._file = open(self.path, "a", encoding="utf-8")
            self._file.write(json.dumps(record, separators=(",", ":"), allow_nan=True) + "\n")
            self._file.flush()
        except OSError as err:   # a full disk: one line from the job, not a traceback
            self._discard()
            raise TraindError(f"{self.path}: cannot append a metrics line: {err.strerror or err}") from None

    def _discard(self) -> None:
        if self._file is not None:
            try:
                self._file.close()      # flushes what is buffered, which may fail the same way
            except OSError:
                pass
            self._file = None

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def read_metrics(run_dir) -> list[dict]:
    path = Path(run_dir) / METRICS_NAME
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class Console:
    """Progress for people. Thread-safe: checkpoint commits are reported from the store's thread."""

    def __init__(self, max_steps: int | None, stream=None, every_steps: int = 50,
                 every_seconds: float = 10.0) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        # Under a supervisor our output is its attempt log, echoed with the job's name in front:
        # no "traind: " of our own there, so its lines and ours are told apart.
        self.prefix = "" if os.environ.get(protocol.ENV_CONTROL_FD) else "traind: "
        self.max_steps = max_steps
        self.every_steps, self.every_seconds = every_steps, every_seconds
        self._last_print = -math.inf
        self._bar = ""                  # the progress line currently drawn (terminal only)
        self._lock = threading.Lock()
        self.progress = True            # False: message lines only (the ranks of a group other than 0)

    def step(self, step: int, epoch: int, metrics: dict, rate: float, now: float) -> None:
        if not self.progress:
            return
        shown = " ".join(f"{k}={_fmt(v)}" for k, v in metrics.items())
        total = f"/{self.max_steps}" if self.max_steps else ""
        if self.tty:
            bar = ""
            if self.max_steps:
                width = 24
                filled = int(width * min(step, self.max_steps) / self.max_steps)
                bar = "[" + "#" * filled + "." * (width - filled) + "] "
            with self._lock:
                self._bar = f"{bar}step {step}{total} epoch {epoch} {shown} {rate:.1f} it/s"
                self.stream.write(f"\r{self._bar}\033[K")
                self.stream.flush()
        elif (self.every_steps and step % self.every_steps == 0) or now - self._last_print >= self.every_seconds:
            self._last_print = now
            self.line(f"step {step}{total} epoch {epoch} {shown} {rate:.1f} steps/s")

    def line(self, text: str) -> None:
        """A message line; on a terminal it goes above the progress line, which is redrawn."""
        with self._lock:
            if self.tty:
                self.stream.write(f"\r\033[K{self.prefix}{text}\n{self._bar}")
            else:
                self.stream.write(f"{self.prefix}{text}\n")
            self.stream.flush()

    def close(self) -> None:
        with self._lock:
            if self.tty and self._bar:
                self.stream.write("\n")       # keep the last progress line on screen
                self._bar = ""
                self.stream.flush()


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
