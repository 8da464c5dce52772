"""Field checks for the job spec: every error is one UsageError naming the file and the dotted field."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from traind.contract.errors import UsageError


class Checker:
    """Validates one mapping; every error names the file and the dotted field."""

    def __init__(self, source: Path):
        self.source = source

    def fail(self, where: str, expected: str, value: Any = ...) -> UsageError:
        got = "" if value is ... else f", got {_show(value)}"
        return UsageError(f"{self.source}: {where}: expected {expected}{got}")

    def section(self, value: Any, where: str, valid: tuple[str, ...]) -> dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.fail(where, "a mapping", value)
        for key in value:
            if key not in valid:
                label = f"{where}.{key}" if where else str(key)
                raise UsageError(f"{self.source}: {label}: unknown field; valid fields here: {', '.join(valid)}")
        return value

    def number(self, value: Any, where: str, *, minimum: float = 0.0, strict: bool = False,
               nullable: bool = False, integer: bool = False, maximum: float | None = None) -> Any:
        if value is None and nullable:
            return None
        kind = "an integer" if integer else "a number"
        bound = f" > {minimum:g}" if strict else f" >= {minimum:g}"
        bound += "" if maximum is None else f" and <= {maximum:g}"
        expected = kind + bound + (" or null" if nullable else "")
        ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
        if isinstance(value, bool) or not ok_type:
            raise self.fail(where, expected, value)
        if value < minimum or (strict and value == minimum) or value != value or (maximum is not None and value > maximum):
            raise self.fail(where, expected, value)
        if integer:
            return value
        try:
            number = float(value)
        except OverflowError:      # an integer too large for a float
            number = math.inf
        if not math.isfinite(number):   # .inf or 1e999 would overflow the sleeps and deadlines
            raise self.fail(where, "a finite " + expected[2:], value)
        return number

    def choice(self, value: Any, where: str, choices: tuple) -> Any:
        if not any(type(value) is type(c) and value == c for c in choices):  # 1 is not True here
            raise self.fail(where, "one of " + ", ".join(str(c).lower() if isinstance(c, bool) else str(c)
                                                         for c in choices), value)
        return value

    def string(self, value: Any, where: str, *, nullable: bool = False) -> str | None:
        if value is None and nullable:
            return None
        if not isinstance(value, str) or not value:
            raise self.fail(where, "a non-empty string" + (" or null" if nullable else ""), value)
        if "\0" in value:     # would fail much later, in a path or exec call, as a traceback
            raise self.fail(where, "a string without NUL bytes", value)
        return value

    def argv(self, value: Any, where: str) -> tuple[str, ...]:
        if not isinstance(value, list) or not value:
            raise self.fail(where, "a non-empty list of strings, e.g. [python, train.py]", value)
        out = []
        for i, item in enumerate(value):
            if isinstance(item, bool) or not isinstance(item, (str, int, float)) or item == "":
                raise self.fail(f"{where}[{i}]", "a non-empty string", item)
            if "\0" in str(item):
                raise self.fail(f"{where}[{i}]", "a string without NUL bytes", item)
            out.append(str(item))
        return tuple(out)


def kind_of(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string"}.get(type(value), type(value).__name__)


def _show(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return kind_of(value)
    text = "null" if value is None else repr(value) if not isinstance(value, bool) else str(value).lower()
    return text if len(text) <= 60 else text[:57] + "..."

