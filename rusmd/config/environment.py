"""Environment layering: the process environment first, then ``./.env``.

Runs in: main (resolved once; workers inherit the result across fork).

The real environment always wins; ``.env`` only fills keys it lacks.
``.env`` is parsed by python-dotenv (no interpolation, so a value is
exactly what the file says). Lines it cannot parse are reported with
their line number, never silently skipped.
"""

from __future__ import annotations

import enum
import io
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from dotenv.parser import parse_stream

from rusmd.errors import ConfigProblem

# A .env file holds a few secrets and settings; a huge one is a mistake.
MAX_DOTENV_BYTES = 1 << 20

_LEADING_KEY = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_.-]*)\s*=")


class EnvOrigin(enum.StrEnum):
    """Where a granted env key's value comes from."""

    PROCESS = "process"
    DOTENV = ".env"
    MISSING = "missing"


@dataclass(frozen=True)
class Environment:
    """The env a guest may be granted keys from.

    Attributes:
        process: The daemon's own environment (wins).
        dotenv: Values from the app dir's ``.env`` (fills the gaps).
        dotenv_path: The ``.env`` path looked at ("" when none).
        problems: Unparsable ``.env`` lines, as warnings.
    """

    process: Mapping[str, str] = field(default_factory=dict)
    dotenv: Mapping[str, str] = field(default_factory=dict)
    dotenv_path: str = ""
    problems: tuple[ConfigProblem, ...] = ()

    def get(self, key: str) -> str | None:
        """The value of ``key``: the process env, else ``.env``, else None."""
        if key in self.process:
            return self.process[key]
        return self.dotenv.get(key)

    def origin(self, key: str) -> EnvOrigin:
        """Which layer provides ``key``."""
        if key in self.process:
            return EnvOrigin.PROCESS
        if key in self.dotenv:
            return EnvOrigin.DOTENV
        return EnvOrigin.MISSING

    def resolve(self, keys: tuple[str, ...]) -> list[tuple[str, str]]:
        """The (key, value) pairs a process granted ``keys`` sees; unset keys are absent."""
        pairs = []
        for key in keys:
            value = self.get(key)
            if value is not None:
                pairs.append((key, value))
        return pairs


def load_environment(app_dir: Path, process: Mapping[str, str] | None = None) -> Environment:
    """Read ``<app_dir>/.env`` (if present) under the process environment.

    Args:
        app_dir: The app dir (the manifest's directory).
        process: The process environment; defaults to ``os.environ``.
    """
    process_env = dict(os.environ if process is None else process)
    path = app_dir / ".env"
    if not path.is_file():
        return Environment(process=process_env)
    display = str(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        problem = ConfigProblem(display, 0, "", f"cannot read: {exc.strerror}")
        return Environment(process=process_env, dotenv_path=display, problems=(problem,))
    if len(raw) > MAX_DOTENV_BYTES:
        # A cut-off file could hand a guest half a value; load none of it.
        problem = ConfigProblem(display, 0, "", f"larger than {MAX_DOTENV_BYTES} bytes; not loaded")
        return Environment(process=process_env, dotenv_path=display, problems=(problem,))
    values: dict[str, str] = {}
    problems: list[ConfigProblem] = []
    text = raw.decode("utf-8", errors="replace")
    for binding in parse_stream(io.StringIO(text)):
        if binding.error:
            # Name the key, never the value: a bad line is usually KEY=secret.
            key = _LEADING_KEY.match(binding.original.string)
            named = f" (key {key.group(1)})" if key else ""
            problems.append(
                ConfigProblem(display, binding.original.line, "", f"cannot parse line{named}")
            )
        elif binding.key is not None and binding.value is not None:
            values[binding.key] = binding.value
    return Environment(
        process=process_env, dotenv=values, dotenv_path=display, problems=tuple(problems)
    )
