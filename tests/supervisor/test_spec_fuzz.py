"""The spec loader is total (issue 10): any text, any `--set`, gives a JobSpec the supervisor can
spawn, or one UsageError line that starts with the spec path (or `--set`), exit 2; never a traceback.

Hypothesis writes whole YAML files and overrides out of the values that used to crash the loader:
dates, explicit tags, huge and hex integers, JSON-escaped lone surrogates, keys with line breaks.
The regression cases below are each one failure seen before the fix.
"""
import json
import os
import subprocess
import sys
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from traind.contract.errors import UsageError
from traind.contract.checker import Checker
from traind.supervisor.spec import TOP_FIELDS, JobSpec, load_spec

GOOD = "name: job\ncommand: [python3, train.py]\n"
F2000, F4000 = "0x" + "f" * 2000, "0x" + "f" * 4000
SURROGATE = '"\\ud800"'      # JSON/YAML double-quoted escape: YAML hands back a lone surrogate

SECTIONS = {
    "checkpoint": ("every_steps", "every_seconds", "keep_last", "keep_best"),
    "restart": ("max_restarts", "window_seconds", "no_retry_exit_codes", "backoff"),
    "preemption": ("signals", "grace_seconds", "requeue", "spot"),
    "health": ("hang_timeout_seconds",),
    "slurm": ("requeue_command", "lead_seconds"),
    "keep_best": ("metric", "mode", "k"),
    "backoff": ("initial_seconds", "max_seconds", "factor", "jitter"),
    "spot": ("provider", "poll_seconds", "base_url"),
}
SET_KEYS = [*TOP_FIELDS, "env.A", "checkpoint.keep_best.k", "restart.backoff.factor", "preemption.spot.base_url",
            *(f"{s}.{f}" for s in ("checkpoint", "restart", "preemption", "health", "slurm") for f in SECTIONS[s])]
TAGS = ["!!int", "!!float", "!!bool", "!!timestamp", "!!binary", "!!str", "!!null", "!!set", "!!seq", "!!map",
        "!!omap", "!!merge", "!!python/name:os.system", "!custom", "!"]

# --- strategies: the YAML source text of one value ------------------------------------------------
words = st.text(st.sampled_from("abcxyzAZ019._-/"), min_size=1, max_size=8)
any_text = st.text(st.one_of(st.characters(codec="utf-8"), st.integers(0xD800, 0xDFFF).map(chr)), max_size=8)
dates = st.tuples(st.integers(0, 9999), st.integers(0, 99), st.integers(0, 99)).map("{0[0]:04d}-{0[1]:02d}-{0[2]:02d}".format)
stamps = st.tuples(dates, st.integers(0, 99), st.integers(-99, 99)).map(lambda t: f"{t[0]} 10:{t[1]:02d}:00 {t[2]:+03d}:00")
huge = st.integers(-2**16000, 2**16000)
scalars = st.one_of(
    st.integers(-2**64, 2**64).map(str), huge.map(hex), st.integers(-2**14000, 2**14000).map(str),
    st.integers(4000, 5000).map(lambda n: "1" + "0" * n), dates, stamps, words,
    any_text.map(json.dumps),                     # ensure_ascii: surrogates and controls as \u escapes
    st.tuples(st.sampled_from(TAGS), st.one_of(words, dates, st.just(""))).map(" ".join),
    st.sampled_from(["9" * 5000, F2000, F4000, "-" + F4000, "1_000", "0b101", "017", "1:30", ".inf", "-.inf",
                     ".nan", "1.0e+999", "1.0e+300", "~", "null", "yes", "off", "''", "[]", "{}", "*x", "&a 1",
                     '"{job_id}"', '"{job_id.real}"', '"{0}"', "SIGTERM", "min", "aws", "true"]))
keys = st.one_of(st.sampled_from([*TOP_FIELDS, *(f for fs in SECTIONS.values() for f in fs)]), scalars)
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3).map(lambda xs: "[" + ", ".join(xs) + "]"),
    st.lists(st.tuples(keys, inner), max_size=3).map(lambda kv: "{" + ", ".join(map(entry, kv)) + "}")),
    max_leaves=5)


def entry(kv) -> str:
    key, value = kv
    return f"? {key} : {value}" if len(key) > 1000 else f"{key}: {value}"   # an implicit key stops at 1024


@st.composite
def spec_texts(draw):
    usually = st.integers(0, 3).flatmap(lambda n: st.just(None) if n else values)   # mostly right, to get further
    lines = [f"name: {draw(usually) or 'job'}", f"command: {draw(usually) or '[python3, train.py]'}"]
    for field in ("workdir", "run_dir", "env"):
        if draw(st.booleans()):
            lines.append(f"{field}: {draw(values)}")
    for section in ("checkpoint", "restart", "preemption", "health", "slurm"):
        fields = draw(st.lists(st.sampled_from(SECTIONS[section]), max_size=3, unique=True))
        if fields:
            body = []
            for field in fields:
                sub = SECTIONS.get(field)
                value = draw(values) if not sub or draw(st.booleans()) else \
                    "{" + ", ".join(f"{f}: {draw(values)}" for f in draw(st.lists(st.sampled_from(sub), max_size=2))) + "}"
                body.append(f"{field}: {value}")
            lines.append(f"{section}: {{{', '.join(body)}}}")
    if draw(st.booleans()):
        lines.insert(draw(st.integers(0, len(lines))), entry((draw(keys), draw(values))))
    return "\n".join(lines) + "\n"


overrides = st.lists(st.one_of(
    st.tuples(st.sampled_from(SET_KEYS), st.one_of(values, any_text)).map("=".join),   # raw surrogates: argv bytes
    st.tuples(keys, values).map("=".join), any_text), max_size=3)


# --- the property ----------------------------------------------------------------------------------
def outcome(path, sets) -> JobSpec | str:
    try:
        spec = load_spec(path, sets)
    except UsageError as err:
        message = str(err)
        assert len(message.splitlines()) == 1 and message.strip() == message, message
        assert message.startswith(f"{path}: ") or message.startswith("--set "), message
        message.encode()                     # printable as UTF-8: a daemon log can take it
        assert err.exit_code == 2
        return message
    assert isinstance(spec, JobSpec)
    spawnable(spec)
    return spec


def spawnable(spec: JobSpec) -> None:
    """What the supervisor does with a spec at spawn and after must work for anything accepted."""
    json.dumps(spec.checkpoint_json())                   # into the child's environment
    for text in (*spec.command, *spec.env, *spec.env.values(), *spec.slurm.requeue_command, spec.name):
        text.encode()                                    # exec, environ
    os.fsencode(spec.workdir), os.fsencode(spec.run_dir)
    for seconds in (spec.restart.window_seconds, spec.restart.backoff.max_seconds, spec.preemption.grace_seconds,
                    spec.health.hang_timeout_seconds or 1, spec.checkpoint.every_seconds or 1):
        assert 0 < seconds < threading.TIMEOUT_MAX       # a timer, a sleep, a deadline
    assert (spec.checkpoint.every_steps or 1) < 2**63 and spec.restart.max_restarts < 2**63


@pytest.fixture(scope="module")
def spec_path(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz") / "job.yaml"


FUZZ = settings(deadline=None, max_examples=150, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(text=spec_texts())
def test_any_spec_file_is_a_spec_or_one_line(spec_path, text):
    spec_path.write_text(text, encoding="utf-8")
    outcome(spec_path, [])


@settings(FUZZ, max_examples=100)
@given(sets=overrides)
def test_any_set_override_is_a_spec_or_one_line(spec_path, sets):
    spec_path.write_text(GOOD)
    outcome(spec_path, sets)


# --- each failure seen before (traceback, exit 1; or accepted, then a crash at spawn) ---------------
REGRESSIONS = [
    # (spec text after GOOD, --set overrides, what the one line says)
    ("restart: {max_restarts: 2001-02-30}\n", [],
     "restart.max_restarts: expected an integer >= 0, got '2001-02-30', not a valid date (day is out of range for month)"),
    ("restart: {max_restarts: !!int abc}\n", [], "restart.max_restarts: expected an integer >= 0, got 'abc', not a valid integer"),
    ("restart: {max_restarts: !!bool maybe}\n", [], "restart.max_restarts: expected an integer >= 0, got 'maybe', not a valid boolean"),
    ("restart: {max_restarts: !!timestamp x}\n", [], "restart.max_restarts: expected an integer >= 0, got 'x', not a valid date"),
    ("restart: {max_restarts: !!float x}\n", [], "restart.max_restarts: expected an integer >= 0, got 'x', not a valid number"),
    ("restart: {max_restarts: !!int ''}\n", [], "restart.max_restarts: expected an integer >= 0, got '', not a valid integer"),
    ("health: {hang_timeout_seconds: 2001-02-03 10:00:00 +99:00}\n", [], "health.hang_timeout_seconds: expected a number > 0"),
    (f"restart: {{max_restarts: {'9' * 5000}}}\n", [], "restart.max_restarts: expected an integer >= 0, got '9999"),
    (f"restart: {{max_restarts: -{F4000}}}\n", [], "restart.max_restarts: expected an integer >= 0, got '-0xfff"),
    (f"? {F4000}\n: 1\n", [], "'0xfffff"),
    (f"checkpoint: {{every_steps: {F2000}}}\n", [], "checkpoint.every_steps: expected an integer >= 1, at most 1000000000000"),
    ("checkpoint: {keep_last: 10000000}\n", [], "checkpoint.keep_last: expected an integer >= 1, at most 1000000, got 10000000"),
    ("checkpoint: {keep_best: {metric: loss, k: 10000000}}\n", [], "checkpoint.keep_best.k: expected an integer >= 1, at most 1000000"),
    ("restart: {max_restarts: 10000000}\n", [], "restart.max_restarts: expected an integer >= 0, at most 1000000"),
    ("restart: {window_seconds: 1.0e+300}\n", [], "restart.window_seconds: expected a number > 0, at most 315360000, got 1e+300"),
    ("restart: {backoff: {factor: 1.0e+300}}\n", [], "restart.backoff.factor: expected a number >= 1, at most 100"),
    ("preemption: {grace_seconds: 1.0e+300}\n", [], "preemption.grace_seconds: expected a number > 0, at most 315360000"),
    (f"run_dir: {SURROGATE}\n", [], "run_dir: expected a string without lone surrogates"),
    (f"workdir: {SURROGATE}\n", [], "workdir: expected a string without lone surrogates"),
    (f"env: {{A: {SURROGATE}}}\n", [], "env.A: expected a string without lone surrogates"),
    (f"env: {{{SURROGATE}: x}}\n", [], "env.'\\ud800': expected an environment variable name"),
    (f"command: [python3, {SURROGATE}]\n", [], "command[1]: expected a string without lone surrogates"),
    (f"checkpoint: {{keep_best: {{metric: {SURROGATE}}}}}\n", [], "checkpoint.keep_best.metric: expected a string without lone"),
    (f"slurm: {{requeue_command: [scontrol, {SURROGATE}]}}\n", [], "slurm.requeue_command[1]: expected a string without lone"),
    ('"a\\nb": 1\n', [], "'a\\nb': unknown field; valid fields here: name"),
    ('env: {"A\\nB": 1}\n', [], "env.'A\\nB': expected an environment variable name"),
    ("x: \x01\n", [], "not valid YAML at line 3, column 4: character #x0001 is not allowed"),
    ("", ["restart.max_restarts=2001-02-30"], "restart.max_restarts: expected an integer >= 0, got '2001-02-30', not a valid date"),
    ("", ["restart.max_restarts=!!int abc"], "restart.max_restarts: expected an integer >= 0, got 'abc', not a valid integer"),
    ("", ["restart.max_restarts=" + "9" * 5000], "restart.max_restarts: expected an integer >= 0, got '9999"),
    ("", ["checkpoint.every_steps=" + F2000], "checkpoint.every_steps: expected an integer >= 1, at most 1000000000000"),
    ("", [f"run_dir={SURROGATE}"], "run_dir: expected a string without lone surrogates"),
    ("", ["env.A=\udcff"], "env.A: expected a string without lone surrogates"),   # a non-UTF-8 argv byte
    ("", ["name.a\nb=1"], "name (from --set 'name.a\\nb'): is a string, cannot set a sub-field"),
]


@pytest.mark.parametrize("text,sets,fragment", REGRESSIONS, ids=[f"{i}-{r[2][:30]}" for i, r in enumerate(REGRESSIONS)])
def test_regression(tmp_path, text, sets, fragment):
    spec = tmp_path / "job.yaml"
    spec.write_text(GOOD + text, encoding="utf-8")
    message = outcome(spec, sets)
    assert isinstance(message, str), f"accepted: {message}"
    assert fragment in message, message


def test_a_workdir_in_a_symlink_loop_is_named(tmp_path):
    (tmp_path / "loop").symlink_to("loop")
    spec = tmp_path / "job.yaml"
    spec.write_text(GOOD + "workdir: loop\n")
    assert outcome(spec, []).startswith(f"{spec}: workdir: expected a path without a symlink loop, got '/")


def test_a_huge_int_in_a_message_is_described_not_written_out(tmp_path):
    err = Checker(tmp_path / "job.yaml").fail("restart.max_restarts", "an integer >= 0", -10**5000)
    assert str(err).endswith("restart.max_restarts: expected an integer >= 0, got an integer of about 5001 digits")


@pytest.mark.parametrize("text,sets", [
    ("restart: {max_restarts: 2001-02-30}\n", []),
    (f"checkpoint: {{every_steps: {F2000}}}\n", []),
    (f"run_dir: {SURROGATE}\n", []),
    ("", ["restart.max_restarts=!!bool maybe"]),
], ids=["date", "hex-every-steps", "surrogate-run-dir", "set-bool-tag"])
def test_cli_says_one_line_exit_2(tmp_path, text, sets):
    spec = tmp_path / "job.yaml"
    spec.write_text(GOOD + text)
    args = [a for s in sets for a in ("--set", s)]
    out = subprocess.run([sys.executable, "-m", "traind", "run", str(spec), *args], capture_output=True, text=True,
                         timeout=60, cwd=tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert len(out.stderr.strip().splitlines()) == 1 and out.stderr.startswith(f"traind: {spec}: "), out.stderr
