"""How `traind serve` is configured (its command-line options) and what it keeps per running job."""
from __future__ import annotations

import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_RUNNER = (sys.executable, "-m", "traind", "run")   # `traind run`, same interpreter


@dataclass
class ServeConfig:
    state_dir: Path
    slots: int = 1
    gpus: list[str] | None = None          # CUDA_VISIBLE_DEVICES per slot; default: the slot index
    group: int | None = None               # gid whose members may also submit
    runner: list[str] = field(default_factory=lambda: list(DEFAULT_RUNNER))
    stop_timeout: float = 300.0            # emergency checkpoints get this long on SIGTERM
    cancel_timeout: float = 120.0
    keep_refused_days: float = 7.0
    test_hooks: bool = False               # STATE/test-hang makes the loop hang (watchdog tests)

    def __post_init__(self):
        # Absolute: job specs get run dirs under it, and the supervisor reads relative ones
        # against the job's workdir.
        self.state_dir = Path(self.state_dir).absolute()

    @property
    def spool_dir(self) -> Path:
        return self.state_dir / "spool"

    @property
    def control_dir(self) -> Path:
        return self.state_dir / "control"


@dataclass
class Running:
    proc: subprocess.Popen
    slot: int
    stop_deadline: float | None = None   # monotonic; SIGKILL of the group after it
    killed: bool = False                 # we SIGKILLed it: its exit code says nothing about the job


def parse_runner(text: str | None) -> list[str]:
    return shlex.split(text) if text else list(DEFAULT_RUNNER)
