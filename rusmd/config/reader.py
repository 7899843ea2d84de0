"""Typed, located access to parsed TOML values, collecting every problem.

Runs in: main (``rusmd``, ``rusmd check``); pure.

The loader asks a ``TableReader`` for typed values, usually by handing it
a declared ``Setting``; a wrong type, an out-of-range number, a bad enum
value or an unknown key becomes a ``ConfigProblem`` with the file,
the key's line and the table's path, and validation goes on, so one run
reports every mistake in the file.
"""

from __future__ import annotations

import difflib
import enum
import re
from collections.abc import Iterable
from typing import Any, TypeVar

from rusmd.config.document import KeyLines, KeyPath
from rusmd.config.settings import Kind, Setting
from rusmd.errors import ConfigProblem

E = TypeVar("E", bound=enum.StrEnum)

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def format_path(path: KeyPath) -> str:
    """``("serve", 0, "routes", "GET /")`` → ``serve[0].routes."GET /"``."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            shown = part if _BARE_KEY.match(part) else f'"{part}"'
            text += f".{shown}" if text else shown
    return text


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest choice, or ""."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def describe(value: Any) -> str:
    """A value as an operator wrote it, with its TOML type."""
    kind = {
        bool: "boolean",
        int: "integer",
        float: "float",
        str: "string",
        list: "array",
        dict: "table",
    }.get(type(value), type(value).__name__)
    shown = repr(value) if isinstance(value, str) else str(value).lower()
    if isinstance(value, list | dict):
        return kind
    return f"{kind} {shown[:60]}"


class Problems:
    """Every problem and warning found while loading one manifest."""

    def __init__(self, file: str, lines: KeyLines) -> None:
        self.file = file
        self.lines = lines
        self.errors: list[ConfigProblem] = []
        self.warnings: list[ConfigProblem] = []

    def error(self, at: KeyPath, table: KeyPath, message: str) -> None:
        """Record an error located at key path ``at``, reported under ``table``."""
        self.errors.append(self._problem(at, table, message))

    def warn(self, at: KeyPath, table: KeyPath, message: str) -> None:
        """Record a non-fatal finding."""
        self.warnings.append(self._problem(at, table, message))

    def _problem(self, at: KeyPath, table: KeyPath, message: str) -> ConfigProblem:
        return ConfigProblem(self.file, self.lines.line_of(at), format_path(table), message)


class TableReader:
    """Reads one TOML table (``path``) with type checks, recording problems."""

    def __init__(self, problems: Problems, path: KeyPath, values: dict[str, Any]) -> None:
        self.problems = problems
        self.path = path
        self.values = values

    def check_keys(self, allowed: Iterable[str], what: str = "key") -> None:
        """Report every key not in ``allowed``, with the nearest valid one."""
        allowed = list(allowed)
        for key in self.values:
            if key not in allowed:
                hint = did_you_mean(key, allowed)
                if not hint:
                    hint = f" (valid: {', '.join(allowed)})"
                self.error(key, f"unknown {what} '{key}'{hint}")

    def error(self, key: str | None, message: str) -> None:
        """Record a problem at ``key`` of this table (or the table itself)."""
        at = (*self.path, key) if key is not None else self.path
        self.problems.error(at, self.path, message)

    def warn(self, key: str | None, message: str) -> None:
        """Record a warning at ``key`` of this table (or the table itself)."""
        at = (*self.path, key) if key is not None else self.path
        self.problems.warn(at, self.path, message)

    def read(self, setting: Setting) -> Any:
        """The value of ``setting`` as its declaration types it, or None when absent or wrong."""
        key = setting.name
        low, high = setting.range or (0, 0)
        match setting.kind:
            case Kind.STRING:
                return self.string(key, required=setting.required)
            case Kind.BOOLEAN:
                return self.boolean(key)
            case Kind.INTEGER:
                return self.integer(key, int(low), int(high), setting.range_note)
            case Kind.SECONDS:
                return self.seconds(key, low, high)
            case Kind.CHOICE:
                assert setting.choices is not None, key
                return self.choice(key, setting.choices, required=setting.required)
            case Kind.STRING_ARRAY:
                return self.string_list(key)
            case Kind.TABLE:
                return self.table(key)
            case Kind.TABLE_ARRAY:
                return self.table_list(key)

    def table(self, key: str) -> TableReader | None:
        """The sub-table ``key`` (absent → None, wrong type → problem + None)."""
        if key not in self.values:
            return None
        value = self.values[key]
        if not isinstance(value, dict):
            self.error(key, f"'{key}' must be a table, not {describe(value)}")
            return None
        return TableReader(self.problems, (*self.path, key), value)

    def string(self, key: str, *, required: bool = False) -> str | None:
        """A string value; a missing required one is a problem."""
        if key not in self.values:
            if required:
                self.error(None, f"missing required key '{key}'")
            return None
        value = self.values[key]
        if not isinstance(value, str):
            self.error(key, f"'{key}' must be a string, not {describe(value)}")
            return None
        return value

    def boolean(self, key: str) -> bool | None:
        """A boolean value, or None when absent or wrong."""
        if key not in self.values:
            return None
        value = self.values[key]
        if not isinstance(value, bool):
            self.error(key, f"'{key}' must be true or false, not {describe(value)}")
            return None
        return value

    def integer(self, key: str, low: int, high: int, why: str = "") -> int | None:
        """An integer in ``low..high`` (inclusive), or None when absent or wrong."""
        if key not in self.values:
            return None
        value = self.values[key]
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            self.error(
                key, f"'{key}' must be an integer from {low} to {high}{why}, not {describe(value)}"
            )
            return None
        return value

    def seconds(self, key: str, low: float, high: float) -> float | None:
        """A duration in ``low..high`` seconds (inclusive; an integer or a float), or None."""
        if key not in self.values:
            return None
        value = self.values[key]
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not number or not low <= value <= high:
            self.error(
                key,
                f"'{key}' must be a number of seconds from {low:g} to {high:g}, "
                f"not {describe(value)}",
            )
            return None
        return float(value)

    def choice(self, key: str, kind: type[E], *, required: bool = False) -> E | None:
        """An enum value; a bad one names every valid spelling."""
        text = self.string(key, required=required)
        if text is None:
            return None
        valid = [member.value for member in kind]
        if text not in valid:
            self.error(
                key,
                f"'{key}' is {text!r}, not one of {', '.join(valid)}{did_you_mean(text, valid)}",
            )
            return None
        return kind(text)

    def string_list(self, key: str) -> list[str] | None:
        """An array of strings, or None when absent or wrong."""
        if key not in self.values:
            return None
        value = self.values[key]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.error(key, f"'{key}' must be an array of strings, not {describe(value)}")
            return None
        return list(value)

    def table_list(self, key: str) -> list[TableReader] | None:
        """An array of inline tables, one reader per entry."""
        if key not in self.values:
            return None
        value = self.values[key]
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            self.error(key, f"'{key}' must be an array of tables, not {describe(value)}")
            return None
        return [
            TableReader(self.problems, (*self.path, key, index), entry)
            for index, entry in enumerate(value)
        ]
