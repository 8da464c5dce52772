"""Field checks for the job spec: every error is one UsageError naming the file and the dotted field."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from .errors import UsageError

SHOWN_CHARS = 60        # a value or field name echoed in a message is cut to this
PRINTABLE_INT_BITS = 14000  # ~4200 digits: str() of a longer int raises (past 4300) or takes long
YAML_TAG = "tag:yaml.org,2002:"
TAG_NOUNS = {"int": "integer", "float": "number", "bool": "boolean", "timestamp": "date", "binary": "base64 data"}


class Unreadable:
    """A scalar that YAML read as (or was tagged as) an int, a date, ... but cannot convert:
    `2001-02-30`, `!!int abc`, `!!bool maybe`. Kept as a value, so that the check of the field it sits
    in names that field, instead of a traceback from inside the YAML library."""

    def __init__(self, tag: str, text: str, why: str):
        self.tag, self.text, self.why = tag, text, why

    def __repr__(self) -> str:
        tag = self.tag[len(YAML_TAG):] if self.tag.startswith(YAML_TAG) else self.tag
        noun = TAG_NOUNS.get(tag, f"!!{tag} value")
        return f"{_cut(repr(self.text))}, not a valid {noun}" + (f" ({_cut(self.why)})" if self.why else "")


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
                raise UsageError(f"{self.source}: {dotted(where, key)}: unknown field; valid fields here: "
                                 f"{', '.join(valid)}")
        return value

    def number(self, value: Any, where: str, *, minimum: float = 0.0, strict: bool = False,
               nullable: bool = False, integer: bool = False, maximum: float | None = None,
               limit: int | None = None) -> Any:
        """`maximum` is part of what the field means and is named in every message about it; `limit` is
        a sanity ceiling, named only once passed: a value past it would overflow a timer, a JSON
        encoder or an int64 later, long after this check."""
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
        number = value
        if not integer:
            try:
                number = float(value)
            except OverflowError:      # an integer too large for a float
                number = math.inf
            if not math.isfinite(number):   # .inf or 1e999 would overflow the sleeps and deadlines
                raise self.fail(where, "a finite " + expected[2:], value)
        if limit is not None and number > limit:
            raise self.fail(where, f"{kind}{bound}, at most {limit}", value)
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
        return self.text(value, where)

    def text(self, value: str, where: str) -> str:
        """Strings the OS gets (paths, argv, env) would fail much later, in a path or exec call, as a
        traceback: a NUL byte ends a C string, a lone surrogate ("\\ud800") has no UTF-8 encoding."""
        if "\0" in value:
            raise self.fail(where, "a string without NUL bytes", value)
        try:
            value.encode()
        except UnicodeEncodeError:
            raise self.fail(where, "a string without lone surrogates (\\ud800-\\udfff cannot be encoded "
                                   "as UTF-8)", value) from None
        return value

    def word(self, value: Any, where: str, expected: str) -> str:
        """A string, or a number written as one: an argv item, an env value."""
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise self.fail(where, expected, value)
        try:
            text = str(value)
        except ValueError:   # an int of more than 4300 digits
            raise self.fail(where, expected, value) from None
        return self.text(text, where)

    def argv(self, value: Any, where: str) -> tuple[str, ...]:
        if not isinstance(value, list) or not value:
            raise self.fail(where, "a non-empty list of strings, e.g. [python, train.py]", value)
        out = []
        for i, item in enumerate(value):
            word = self.word(item, f"{where}[{i}]", "a non-empty string")
            if not word:
                raise self.fail(f"{where}[{i}]", "a non-empty string", item)
            out.append(word)
        return tuple(out)


def kind_of(value: Any) -> str:
    kinds = {dict: "a mapping", list: "a list", str: "a string", set: "a set",
             Unreadable: "a value YAML cannot convert"}
    return kinds.get(type(value), type(value).__name__)


def dotted(where: str, key: Any) -> str:
    """The dotted name of field `key` under `where`, for a message."""
    return f"{where}.{label(key)}" if where else label(key)


def label(key: Any) -> str:
    """A mapping key as a field name: as written when it is short, printable text, else quoted, so
    that a key holding a line break or a lone surrogate still makes one printable line."""
    if isinstance(key, str) and key and key.isprintable() and len(key) <= SHOWN_CHARS:
        return key
    return _show(key)


def _show(value: Any) -> str:
    if isinstance(value, Unreadable):
        return repr(value)     # cut part by part, so that the reason stays
    if isinstance(value, (dict, list, set, frozenset, tuple)):
        return kind_of(value)
    if isinstance(value, bool) or value is None:
        return "null" if value is None else str(value).lower()
    if isinstance(value, int) and value.bit_length() > PRINTABLE_INT_BITS:   # never str() a huge int
        return f"an integer of about {int(value.bit_length() * math.log10(2)) + 1} digits"
    try:
        return _cut(repr(value))
    except ValueError:   # a repr that writes out a huge int (a date's or a float's never does)
        return type(value).__name__


def _cut(text: str) -> str:
    return text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS - 3] + "..."
