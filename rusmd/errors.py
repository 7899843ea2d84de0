"""The one exception hierarchy of rusm.

Runs in: any.

Every error names the thing it is about (file and key, component#pid,
socket path) so an operator can act on the message alone.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

# Exit codes of rusmd, rusmctl and their children, one set for all of them:
# sysexits(3) where it has a code, so a systemd unit or a script can tell a
# bad manifest from a daemon that is down.
EX_OK = os.EX_OK
# The daemon refused the command (rusmctl), or a run failed.
EX_REFUSED = 1
# Bad arguments: argparse's own code, kept so every usage error ends alike.
EX_USAGE = 2
# No such process, worker, key or name (rusmctl).
EX_NOSUCH = 3
EX_UNAVAILABLE = os.EX_UNAVAILABLE
EX_SOFTWARE = os.EX_SOFTWARE
EX_NOPERM = os.EX_NOPERM
EX_CONFIG = os.EX_CONFIG
# A guest's source does not compile (rusmd build, rusmd dev).
EX_DATAERR = os.EX_DATAERR
# rusmd new: the app directory exists and is not empty, or cannot be named so.
EX_CANTCREAT = os.EX_CANTCREAT


class RusmError(Exception):
    """Base of every error rusm raises on purpose."""


@dataclass(frozen=True)
class ConfigProblem:
    """One mistake in a manifest.

    Attributes:
        file: The manifest path as the operator gave it.
        line: 1-based line number; 0 when the problem has no single line
            (a missing required key of a table is reported at the table).
        path: Dotted key path of the table or key, e.g. ``components.api``.
        message: What is wrong, naming the offending key or value.
    """

    file: str
    line: int
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class ConfigError(RusmError):
    """A manifest (or the flags layered on it) is invalid.

    Carries every problem found in the file, so one run reports them all.
    """

    def __init__(self, problems: list[ConfigProblem]) -> None:
        # File order reads best: an operator fixes them top to bottom.
        self.problems = sorted(problems, key=lambda p: (p.file, p.line))
        super().__init__("\n".join(str(p) for p in self.problems))


class RouteError(RusmError, ValueError):
    """A route key or target does not follow ``METHOD /path`` → ``component#action``."""


class SpawnError(RusmError):
    """A spawn that cannot happen: no such component, it cannot run, the worker is full.

    Attributes:
        code: The ABI error code (``ErrorCode``) a guest that asked sees.
    """

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code
