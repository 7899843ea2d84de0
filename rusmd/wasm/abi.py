"""The guest ABI: the ``rusm`` import module's functions, error codes and log levels.

Runs in: any (pure data: the worker links from it, ``rusmd check`` and the
docs read it, the main process may import it).

This table is the contract with guest authors; ``docs/abi.md`` and
``sdk/c/rusm.h`` follow it, and a test checks that they agree. Each
function names the capability grant it needs: a function whose grant the
component's profile lacks is not linked, and a module that imports it is
refused at spawn with ``capability denied`` before any guest code runs.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

# The wasm import module every host function lives in.
ABI_MODULE = "rusm"
# Bumped on any incompatible change; part of the AOT cache key.
ABI_VERSION = 1
# The WASI preview 1 module a C or Rust guest imports for libc.
WASI_MODULE = "wasi_snapshot_preview1"


# A pid is ``serial * PID_STRIDE + slot``: its last three decimal digits
# name the worker that hosts it, so any worker routes by the pid alone.
# Serials are leased to workers by the main process and never reused.
PID_STRIDE = 1000


def make_pid(serial: int, slot: int) -> int:
    """The pid for ``serial`` on worker ``slot``."""
    return serial * PID_STRIDE + slot


def slot_of(pid: int) -> int:
    """The worker slot that hosts ``pid``."""
    return pid % PID_STRIDE


class Grant(enum.StrEnum):
    """The capability key a host function needs (``always`` needs none)."""

    ALWAYS = "always"
    NETWORK = "allow-network"
    SPAWN = "allow-spawn"
    PROCESS_CONTROL = "allow-process-control"
    STORAGE = "allow-storage"


class ErrorCode(enum.IntEnum):
    """Negative results of host functions; 0 and positive values mean success."""

    OK = 0
    NOPROC = -1  # no such process (or it has exited)
    DENIED = -2  # the caller's profile does not allow this
    INVALID = -3  # a malformed argument (bad UTF-8, negative size, unknown level)
    NOTFOUND = -4  # no such component
    LIMIT = -5  # a limit was reached (processes per worker, sizes)
    TIMEOUT = -6  # a blocking call ran out of time
    UNAVAILABLE = -7  # the thing exists but cannot be used now (failed to load)
    TOOBIG = -8  # the caller's buffer is too small


class LogLevel(enum.IntEnum):
    """``rusm.log`` levels; they map to the platform logger's levels."""

    ERROR = 0
    WARN = 1
    INFO = 2
    DEBUG = 3


@dataclass(frozen=True)
class HostFunction:
    """One import of the ``rusm`` module.

    Attributes:
        name: The import name.
        params: Wasm parameter types with names, as ("name", "i32") pairs.
        results: Wasm result types.
        grant: The capability it needs.
        summary: One line for the docs.
        blocking: True when the call may wait (it has its own timeout and
            is woken by a kill).
    """

    name: str
    params: tuple[tuple[str, str], ...]
    results: tuple[str, ...]
    grant: Grant
    summary: str
    blocking: bool = False


FUNCTIONS: dict[str, HostFunction] = {
    f.name: f
    for f in (
        HostFunction("self", (), ("i64",), Grant.ALWAYS, "The caller's own pid."),
        HostFunction(
            "log",
            (("level", "i32"), ("ptr", "i32"), ("len", "i32")),
            ("i32",),
            Grant.ALWAYS,
            "Write one UTF-8 line to the platform log at a level (0 error … 3 debug); "
            "0, or INVALID for an unknown level or bad UTF-8.",
        ),
        HostFunction(
            "exit",
            (("code", "i32"),),
            (),
            Grant.ALWAYS,
            "End the caller now: code 0 exits normal, any other code exits crashed.",
        ),
        HostFunction(
            "sleep",
            (("ms", "i32"),),
            ("i32",),
            Grant.ALWAYS,
            "Block the caller for ms milliseconds (not counted against its CPU budget); "
            "0, or INVALID for a negative time.",
            blocking=True,
        ),
        HostFunction(
            "spawn",
            (("name_ptr", "i32"), ("name_len", "i32")),
            ("i64",),
            Grant.SPAWN,
            "Start a registered component by name under its own profile; its pid, "
            "or NOTFOUND, UNAVAILABLE, LIMIT, INVALID.",
        ),
        HostFunction(
            "kill",
            (("pid", "i64"),),
            ("i32",),
            Grant.PROCESS_CONTROL,
            "Kill another process (exit reason killed); 0, or NOPROC.",
        ),
        HostFunction(
            "is_alive",
            (("pid", "i64"),),
            ("i32",),
            Grant.PROCESS_CONTROL,
            "1 if the process is alive, 0 if not.",
        ),
    )
}


def grant_of(name: str) -> Grant | None:
    """The grant an import ``rusm.<name>`` needs; None for an unknown name."""
    function = FUNCTIONS.get(name)
    return function.grant if function else None
