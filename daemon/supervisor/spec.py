"""The job spec (YAML): loaded with yaml.safe_load and validated right here, where it is loaded.

Every mistake becomes one UsageError naming the file, the field and what was expected; unknown
keys are rejected with the list of valid ones. `--set key.sub=value` overrides are applied to the
raw mapping first (the value parsed as YAML), so they are validated by exactly the same code.
A scalar YAML cannot convert (`2001-02-30`, `!!int abc`) is kept as an Unreadable value, so that the
check of its field reports it; every input is a JobSpec or one such line, never a traceback.
"""
from __future__ import annotations

import os
import re
import signal
import string
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..contract.errors import UsageError
from . import distributed as dist_spec, memory as memory_spec
from ..contract.checker import PRINTABLE_INT_BITS, Checker, Unreadable, dotted, kind_of, label
from ..contract.exitcodes import PREEMPTED
from ..store.remote import url_problem
from ..store.policy import check_policy

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
STOPPABLE_SIGNALS = ("SIGTERM", "SIGINT", "SIGUSR1", "SIGUSR2", "SIGHUP")
SPOT_PROVIDERS = ("none", "auto", "aws", "gcp", "azure")
SLURM_MAX_SIGNAL_SECONDS = 65535     # sbatch --signal=...@TIME takes 0..65535
REQUEUE_PLACEHOLDERS = ("job_id", "raw_job_id", "array_job_id", "array_task_id")   # daemon/cluster/slurm.py: requeue_argv
# Sanity ceilings (Checker.number `limit`): past them a value overflows later, far from this file.
MAX_COUNT = 10**6               # max_restarts, keep_last, keep_best.k
MAX_SECONDS = 10 * 365 * 86400  # durations: ten years, far below threading.TIMEOUT_MAX and time_t
MAX_BACKOFF_FACTOR = 100


@dataclass(frozen=True)
class Backoff:
    initial_seconds: float = 1.0
    max_seconds: float = 60.0
    factor: float = 2.0
    jitter: float = 0.1      # +- this fraction of the delay, so a fleet does not restart in lockstep


@dataclass(frozen=True)
class RestartPolicy:
    max_restarts: int = 10
    window_seconds: float = 3600.0
    no_retry_exit_codes: tuple[int, ...] = (2,)
    max_startup_failures: int = 5     # the same failure before the first step this often in a row: fail
    warm_spare: bool = False          # keep one copy of the job started ahead of need (docs/supervisor.md)
    backoff: Backoff = field(default_factory=Backoff)


@dataclass(frozen=True)
class KeepBest:
    metric: str
    mode: str
    k: int


@dataclass(frozen=True)
class CheckpointSpec:
    every_steps: int | None = None
    every_seconds: float | None = None
    keep_last: int = 3
    keep_best: KeepBest | None = None
    remote: str | None = None         # fsspec URL the supervisor mirrors every checkpoint to (docs/remote.md)
    remote_options: dict = field(default_factory=dict, compare=False, repr=False)   # fsspec options; may hold keys
    memory: memory_spec.MemoryTierSpec | None = None    # the memory tier (daemon/supervisor/memory.py)


@dataclass(frozen=True)
class Spot:
    provider: str = "none"
    poll_seconds: float = 5.0
    base_url: str | None = None


@dataclass(frozen=True)
class Preemption:
    signals: tuple[str, ...] = ("SIGTERM", "SIGUSR1")
    grace_seconds: float = 90.0
    requeue: str | bool = "auto"
    spot: Spot = field(default_factory=Spot)


@dataclass(frozen=True)
class Health:
    hang_timeout_seconds: float | None = 300.0
    # A child that should speak the channel (an earlier attempt did, or expects_hello) and has not
    # said hello this long after its start is hung in start-up: stopped, reported, restarted.
    startup_timeout_seconds: float | None = 900.0
    expects_hello: bool = False
    # A child not expected to speak that is alive this long after its start without a word counts
    # as running (a job without traind's job side would otherwise be `starting` for its whole run).
    silent_running_seconds: float = 60.0


@dataclass(frozen=True)
class Slurm:
    requeue_command: tuple[str, ...] = ("scontrol", "requeue", "{job_id}")
    lead_seconds: float | None = None


@dataclass(frozen=True)
class JobSpec:
    name: str
    command: tuple[str, ...]
    workdir: Path
    run_dir: Path
    source: Path                      # the spec file (for messages)
    env: dict[str, str] = field(default_factory=dict)
    checkpoint: CheckpointSpec = field(default_factory=CheckpointSpec)
    restart: RestartPolicy = field(default_factory=RestartPolicy)
    preemption: Preemption = field(default_factory=Preemption)
    health: Health = field(default_factory=Health)
    slurm: Slurm = field(default_factory=Slurm)
    distributed: dist_spec.Distributed | None = None     # None: one process (supervisor/distributed.py)
    raw: dict = field(default_factory=dict, compare=False, repr=False)

    def checkpoint_json(self) -> dict:
        kb = self.checkpoint.keep_best
        return {"every_steps": self.checkpoint.every_steps, "every_seconds": self.checkpoint.every_seconds,
                "keep_last": self.checkpoint.keep_last,
                "keep_best": None if kb is None else {"metric": kb.metric, "mode": kb.mode, "k": kb.k}}


# --- loading -------------------------------------------------------------------------------------

MAX_SPEC_BYTES = 256 * 1024     # as the spool's limit: a spec is a short text file


def read_spec_text(path: Path) -> str:
    """The spec file's text; a checkpoint or a device passed by mistake is refused without reading it all."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_SPEC_BYTES + 1)
    except OSError as err:
        raise UsageError(f"{path}: cannot read the spec: {err.strerror}") from None
    if len(data) > MAX_SPEC_BYTES:
        raise UsageError(f"{path}: larger than {MAX_SPEC_BYTES // 1024} KiB; a spec is a short YAML text file")
    try:
        return data.decode()
    except UnicodeDecodeError as err:
        raise UsageError(f"{path}: not UTF-8 text (byte {err.start}); a spec is a YAML text file") from None


class _SpecLoader(yaml.SafeLoader):
    """yaml.SafeLoader whose scalar conversions never raise (see _tolerant)."""


def _tolerant(construct):
    def construct_or_keep(loader, node):
        try:
            value = construct(loader, node)
        except (ArithmeticError, LookupError, ValueError, TypeError, AttributeError) as err:
            # `2001-02-30`, `!!int abc` (ValueError), `!!bool maybe` (KeyError), `!!timestamp x`
            # (AttributeError), `!!int ''` (IndexError), 5000 digits (ValueError)
            why = "" if isinstance(err, LookupError) else str(err).split(";")[0]
            why = "too many digits" if "digits" in why else why    # int() refuses more than 4300
            return Unreadable(node.tag, node.value if isinstance(node.value, str) else "", why)
        if isinstance(value, int) and value.bit_length() > PRINTABLE_INT_BITS:   # 0x + 4000 f's: any repr of it fails
            return Unreadable(node.tag, node.value, "too many digits")
        return value
    return construct_or_keep


for _tag, _construct in yaml.SafeLoader.yaml_constructors.items():
    _SpecLoader.add_constructor(_tag, _tolerant(_construct))


def parse_spec_text(text: str) -> tuple[dict | None, str | None]:
    """(the spec's top-level mapping, None) or (None, why the text is not one). The one place a
    spec's YAML is parsed (`traind run`, `submit`, the daemon's spool)."""
    try:
        raw = yaml.load(text, Loader=_SpecLoader)
    except yaml.reader.ReaderError as err:   # a control character: its str() is two lines
        line = text.count("\n", 0, err.position) + 1
        column = err.position - (text.rfind("\n", 0, err.position) + 1) + 1
        return None, f"not valid YAML at line {line}, column {column}: character #x{err.character:04x} is not allowed"
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or "syntax error"
        return None, f"not valid YAML{where}: {problem}"
    except RecursionError:    # the parser recurses once per level of [ or {
        return None, "YAML nested too deeply"
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        return None, f"expected a mapping of fields at the top level, got {kind_of(raw)}"
    return raw, None


def load_spec(path: str | Path, overrides: list[str] = ()) -> JobSpec:
    """Read, override and validate a spec file. Raises UsageError (one line) on any mistake."""
    path = Path(path)
    raw, why = parse_spec_text(read_spec_text(path))
    if raw is None:
        raise UsageError(f"{path}: {why}")
    for item in overrides:
        apply_override(raw, item, path)
    return validate(raw, path)


def apply_override(raw: dict, item: str, path: Path) -> None:
    """`a.b=value`: value parsed as YAML (so numbers, lists and null work) and set in the raw mapping."""
    key, sep, text = item.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise UsageError(f"--set {item!r}: expected KEY.SUB=VALUE (e.g. restart.max_restarts=3)")
    try:
        value = yaml.load(text, Loader=_SpecLoader) if text.strip() else ""
    except (yaml.YAMLError, RecursionError):
        value = text
    node = raw
    parts = key.split(".")
    for depth, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            where = ".".join(label(p) for p in parts[: depth + 1])
            raise UsageError(f"{path}: {where} (from --set {label(key)}): is {kind_of(child)}, "
                             "cannot set a sub-field")
        node = child
    node[parts[-1]] = value


PYTHON_NAMES = ("python", "python3")


def own_interpreter(command: tuple[str, ...]) -> tuple[str, ...]:
    """A bare `python`/`python3` means the interpreter traind runs under: the one whose
    environment has traind and torch installed (a fresh Debian has no `python` on PATH at all,
    and under systemd PATH rarely points at the venv)."""
    if command[0] in PYTHON_NAMES:
        return (sys.executable, *command[1:])
    return command


TOP_FIELDS = ("name", "command", "workdir", "run_dir", "env", "checkpoint", "restart", "preemption",
              "health", "slurm", "distributed")


def validate(raw: dict, source: Path) -> JobSpec:
    c = Checker(source)
    c.section(raw, "", TOP_FIELDS)
    if "name" not in raw:
        raise c.fail("name", "a job name matching [A-Za-z0-9][A-Za-z0-9._-]{0,63} (the field is missing)")
    name = raw["name"]
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise c.fail("name", "a job name matching [A-Za-z0-9][A-Za-z0-9._-]{0,63}", name)
    if "command" not in raw:
        raise c.fail("command", "a non-empty list of strings, e.g. [python, train.py] (the field is missing)")
    command = own_interpreter(c.argv(raw["command"], "command"))
    spec_dir = source.resolve().parent
    workdir = _resolve(c, "workdir", spec_dir / c.string(raw.get("workdir", "."), "workdir"))
    run_dir = _resolve(c, "run_dir", workdir / c.string(raw.get("run_dir", f"runs/{name}"), "run_dir"))
    for where, path in (("workdir", workdir), ("run_dir", run_dir)):
        encoded = os.fsencode(path)      # the OS refuses these with ENAMETOOLONG, later and as a traceback
        if len(encoded) >= 4096 or any(len(part) > 255 for part in encoded.split(b"/")):
            raise c.fail(where, "a path of at most 4095 bytes, each name at most 255", str(path))
    restart, distributed = _restart(c, raw.get("restart")), dist_spec.parse(c, raw.get("distributed"))
    if restart.warm_spare and distributed is not None:
        raise c.fail("restart.warm_spare", "false with distributed: (a warm spare is one process, not a group)", True)
    return JobSpec(
        name=name, command=command, workdir=workdir, run_dir=run_dir, source=source,
        env=_env(c, raw.get("env")), checkpoint=_checkpoint(c, raw.get("checkpoint")),
        restart=restart, preemption=_preemption(c, raw.get("preemption")),
        health=_health(c, raw.get("health")), slurm=_slurm(c, raw.get("slurm")), distributed=distributed, raw=raw)


def _resolve(c: Checker, where: str, path: Path) -> Path:
    try:
        return path.resolve()
    except RuntimeError:       # Python 3.11 raises this for a symlink loop
        raise c.fail(where, "a path without a symlink loop", str(path)) from None
    except OSError as err:
        raise c.fail(where, f"a path the OS accepts ({err.strerror})", str(path)) from None


def _env(c: Checker, value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise c.fail("env", "a mapping of NAME: value", value)
    env = {}
    for key, val in value.items():
        if not isinstance(key, str) or not ENV_NAME_RE.fullmatch(key):
            raise c.fail(dotted("env", key), "an environment variable name ([A-Za-z_][A-Za-z0-9_]*)")
        env[key] = c.word(val, f"env.{key}", "a string (quote it: \"1\")")
    return env


def _checkpoint(c: Checker, value: Any) -> CheckpointSpec:
    d = c.section(value, "checkpoint", ("every_steps", "every_seconds", "keep_last", "keep_best", "remote",
                                        "remote_options", "memory"))
    remote = c.string(d.get("remote"), "checkpoint.remote", nullable=True)
    if remote is not None and url_problem(remote):
        raise c.fail("checkpoint.remote", url_problem(remote), remote)
    options = d.get("remote_options") or {}
    if not isinstance(options, dict) or not all(isinstance(k, str) for k in options):   # values unshown: keys
        raise c.fail("checkpoint.remote_options", "a mapping of fsspec storage options (name: value)")
    policy = check_policy(c, d, "checkpoint.")      # the rule the job applies too (store/policy.py)
    kb = policy["keep_best"]
    return CheckpointSpec(every_steps=policy["every_steps"], every_seconds=policy["every_seconds"],
                          keep_last=policy["keep_last"], keep_best=None if kb is None else KeepBest(**kb),
                          remote=remote, remote_options=options, memory=memory_spec.parse(c, d.get("memory")))


def _restart(c: Checker, value: Any) -> RestartPolicy:
    d = c.section(value, "restart", ("max_restarts", "window_seconds", "no_retry_exit_codes", "max_startup_failures",
                                     "warm_spare", "backoff"))
    b = c.section(d.get("backoff"), "restart.backoff", ("initial_seconds", "max_seconds", "factor", "jitter"))
    codes = d.get("no_retry_exit_codes", [2])
    if not isinstance(codes, list):
        raise c.fail("restart.no_retry_exit_codes", "a list of exit codes 1..255, e.g. [2]", codes)
    for i, code in enumerate(codes):
        if isinstance(code, bool) or not isinstance(code, int) or not 1 <= code <= 255 or code == PREEMPTED:
            raise c.fail(f"restart.no_retry_exit_codes[{i}]", f"an exit code 1..255 other than 0 and {PREEMPTED}", code)
    backoff = Backoff(
        initial_seconds=c.number(b.get("initial_seconds", 1.0), "restart.backoff.initial_seconds", limit=MAX_SECONDS),
        max_seconds=c.number(b.get("max_seconds", 60.0), "restart.backoff.max_seconds", limit=MAX_SECONDS),
        factor=c.number(b.get("factor", 2.0), "restart.backoff.factor", minimum=1.0, limit=MAX_BACKOFF_FACTOR),
        jitter=c.number(b.get("jitter", 0.1), "restart.backoff.jitter"))
    if backoff.jitter > 1:
        raise c.fail("restart.backoff.jitter", "a fraction between 0 and 1", backoff.jitter)
    if backoff.max_seconds < backoff.initial_seconds:
        raise c.fail("restart.backoff.max_seconds", f"at least initial_seconds ({backoff.initial_seconds:g})",
                     backoff.max_seconds)
    return RestartPolicy(
        max_restarts=c.number(d.get("max_restarts", 10), "restart.max_restarts", integer=True, limit=MAX_COUNT),
        window_seconds=c.number(d.get("window_seconds", 3600.0), "restart.window_seconds", strict=True,
                                limit=MAX_SECONDS),
        no_retry_exit_codes=tuple(codes), backoff=backoff,
        max_startup_failures=c.number(d.get("max_startup_failures", 5), "restart.max_startup_failures", minimum=1,
                                      integer=True, maximum=1000),
        warm_spare=c.choice(d.get("warm_spare", False), "restart.warm_spare", (True, False)))


def _preemption(c: Checker, value: Any) -> Preemption:
    d = c.section(value, "preemption", ("signals", "grace_seconds", "requeue", "spot"))
    sigs = d.get("signals", ["SIGTERM", "SIGUSR1"])
    if not isinstance(sigs, list):
        raise c.fail("preemption.signals", "a list of signal names from " + ", ".join(STOPPABLE_SIGNALS), sigs)
    for i, sig in enumerate(sigs):
        c.choice(sig, f"preemption.signals[{i}]", STOPPABLE_SIGNALS)
    s = c.section(d.get("spot"), "preemption.spot", ("provider", "poll_seconds", "base_url"))
    spot = Spot(provider=c.choice(s.get("provider", "none"), "preemption.spot.provider", SPOT_PROVIDERS),
                poll_seconds=c.number(s.get("poll_seconds", 5.0), "preemption.spot.poll_seconds", strict=True,
                                     maximum=86400),
                base_url=c.string(s.get("base_url"), "preemption.spot.base_url", nullable=True))
    return Preemption(signals=tuple(sigs),
                      grace_seconds=c.number(d.get("grace_seconds", 90.0), "preemption.grace_seconds", strict=True,
                                             limit=MAX_SECONDS),
                      requeue=c.choice(d.get("requeue", "auto"), "preemption.requeue", ("auto", True, False)),
                      spot=spot)


def _health(c: Checker, value: Any) -> Health:
    d = c.section(value, "health", ("hang_timeout_seconds", "startup_timeout_seconds", "expects_hello",
                                    "silent_running_seconds"))
    expects = d.get("expects_hello", False)
    if not isinstance(expects, bool):
        raise c.fail("health.expects_hello", "true or false", expects)
    return Health(hang_timeout_seconds=c.number(d.get("hang_timeout_seconds", 300.0),
                                                "health.hang_timeout_seconds", strict=True, nullable=True,
                                                limit=MAX_SECONDS),
                  startup_timeout_seconds=c.number(d.get("startup_timeout_seconds", 900.0),
                                                   "health.startup_timeout_seconds", strict=True, nullable=True,
                                                   limit=MAX_SECONDS),
                  expects_hello=expects,
                  silent_running_seconds=c.number(d.get("silent_running_seconds", 60.0), "health.silent_running_seconds",
                                                  limit=MAX_SECONDS))


def _slurm(c: Checker, value: Any) -> Slurm:
    d = c.section(value, "slurm", ("requeue_command", "lead_seconds"))
    cmd = c.argv(d.get("requeue_command", ["scontrol", "requeue", "{job_id}"]), "slurm.requeue_command")
    for i, part in enumerate(cmd):   # filled in only after the emergency checkpoint: check it now
        try:    # only bare {name}s: no {job_id.real}, {job_id[0]}, {job_id!r} or format specs
            fields = [f for _, f, spec, conv in string.Formatter().parse(part) if f is not None
                      and (f not in REQUEUE_PLACEHOLDERS or spec or conv)]
        except ValueError:
            fields = [part]
        if fields:
            raise c.fail(f"slurm.requeue_command[{i}]", "placeholders among {" + "}, {".join(REQUEUE_PLACEHOLDERS)
                         + "} (write {{ }} for a literal brace)", part) from None
    return Slurm(requeue_command=cmd,
                 lead_seconds=c.number(d.get("lead_seconds"), "slurm.lead_seconds", strict=True, nullable=True,
                                  maximum=SLURM_MAX_SIGNAL_SECONDS))


def signal_numbers(names: tuple[str, ...]) -> set[int]:
    return {int(getattr(signal, n)) for n in names}
