"""What a supervisor and its children are told: flags, child specs, exit reasons.

Runs in: any (plain frozen data, built from the manifest in main and from the
supervise ABI in workers).

This module is the reference for the supervision vocabulary, in OTP's words.
Every field, its default and what it accepts:

``SupervisorFlags``
    - ``strategy``: ``one_for_one`` | ``one_for_all`` | ``rest_for_one``.
      Optional; defaults to ``one_for_one``.
    - ``intensity``: an integer >= 0, the most restarts allowed within
      ``period_s``; the (intensity+1)-th gives up. Optional; defaults to 3.
    - ``period_s``: a finite number of seconds > 0. Optional; defaults to 5.0.

    OTP's defaults are 1 restart in 5 s. rusm's documented defaults for
    residents are 3 restarts in 5 s, and those are the defaults here.

``ChildSpec``
    - ``id``: a non-empty string, unique among the supervisor's children.
      Required.
    - ``restart``: ``permanent`` (always restarted) | ``transient`` (restarted
      only after an abnormal exit) | ``temporary`` (never restarted, and
      forgotten once it has ended). Optional; defaults to ``permanent``.
    - ``shutdown``: ``Shutdown.brutal_kill()`` or ``Shutdown.timeout(s)``.
      Optional; defaults to a 5.0 s timeout.
    - ``start``: an opaque payload for the process layer (what to run).
      Optional; defaults to None.

``QuarantinePolicy`` (root supervisor only)
    - ``base_s``: the first quarantine of a child, a finite number > 0.
      Optional; defaults to 1.0.
    - ``factor``: each consecutive quarantine of that child lasts this many
      times longer, a finite number >= 1. Optional; defaults to 2.0.
    - ``max_s``: the cap on a quarantine, a finite number >= ``base_s``.
      Optional; defaults to 300.0.

Exit reasons: ``normal`` and ``shutdown`` are normal exits; ``killed``,
``crashed`` and ``noproc`` are abnormal.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from typing import Final, TypeVar

from rusmd.abi import ExitReason
from rusmd.errors import RusmError


class SupervisionError(RusmError):
    """Base of the errors of the supervision package."""


class SupervisionSpecError(SupervisionError, ValueError):
    """A supervisor flag, child spec, shutdown or quarantine policy is invalid.

    Attributes:
        where: What was being built, e.g. ``supervisor flags``.
        field: The offending field, e.g. ``intensity``.
        value: The offending value.
    """

    def __init__(self, where: str, field: str, value: object, expected: str) -> None:
        self.where = where
        self.field = field
        self.value = value
        super().__init__(f"{where}: {field}: {expected}, got {value!r}")


class UnknownChildError(SupervisionError, LookupError):
    """No child with that id is supervised (never was, or was removed)."""


class SupervisorStateError(SupervisionError):
    """The operation does not apply to the supervisor or child as it is now."""


class Strategy(StrEnum):
    """Which children a supervisor restarts when one of them is restarted."""

    ONE_FOR_ONE = "one_for_one"
    ONE_FOR_ALL = "one_for_all"
    REST_FOR_ONE = "rest_for_one"


class RestartType(StrEnum):
    """When a child that has exited is restarted."""

    PERMANENT = "permanent"
    TRANSIENT = "transient"
    TEMPORARY = "temporary"


def should_restart(restart: RestartType, reason: ExitReason) -> bool:
    """OTP's restart decision for a child that exited on its own."""
    match restart:
        case RestartType.PERMANENT:
            return True
        case RestartType.TRANSIENT:
            return reason.is_abnormal
        case RestartType.TEMPORARY:
            return False


_E = TypeVar("_E", bound=StrEnum)


def _is_positive_finite(value: float) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return math.isfinite(value) and value > 0


def _coerce(enum: type[_E], value: object, where: str, field: str) -> _E:
    """The member spelled ``value``, so flags built from a manifest's strings work too."""
    members = {member.value: member for member in enum}
    if isinstance(value, str) and value in members:
        return members[value]
    expected = " | ".join(members)
    raise SupervisionSpecError(where, field, value, f"must be one of {expected}")


class ShutdownKind(StrEnum):
    """How the process layer stops a child."""

    BRUTAL_KILL = "brutal_kill"
    TIMEOUT = "timeout"


DEFAULT_SHUTDOWN_TIMEOUT_S: Final = 5.0


@dataclass(frozen=True)
class Shutdown:
    """How to stop a child, OTP's ``shutdown`` (``infinity`` is not offered).

    Attributes:
        kind: ``brutal_kill``: SIGKILL at once; the child gets no chance to
            clean up. ``timeout``: ask the child to exit (reason
            ``shutdown``), then SIGKILL it if it is still there after
            ``timeout_s``. Optional; defaults to ``timeout``.
        timeout_s: How long a ``timeout`` shutdown waits before killing, a
            finite number > 0. Optional; defaults to 5.0. Always 0.0 for
            ``brutal_kill``.
    """

    kind: ShutdownKind = ShutdownKind.TIMEOUT
    timeout_s: float = DEFAULT_SHUTDOWN_TIMEOUT_S

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", _coerce(ShutdownKind, self.kind, "shutdown", "kind"))
        if self.kind is ShutdownKind.BRUTAL_KILL:
            # One spelling per meaning, so two brutal_kill values compare equal.
            object.__setattr__(self, "timeout_s", 0.0)
        elif not _is_positive_finite(self.timeout_s):
            raise SupervisionSpecError(
                "shutdown", "timeout_s", self.timeout_s, "must be a finite number > 0"
            )

    @classmethod
    def brutal_kill(cls) -> Shutdown:
        """SIGKILL the child at once."""
        return cls(ShutdownKind.BRUTAL_KILL)

    @classmethod
    def timeout(cls, timeout_s: float) -> Shutdown:
        """Ask the child to exit, and SIGKILL it after ``timeout_s``."""
        return cls(ShutdownKind.TIMEOUT, timeout_s)


DEFAULT_SHUTDOWN: Final = Shutdown()


@dataclass(frozen=True)
class ChildSpec:
    """One supervised child; the module docstring lists every field."""

    id: str
    restart: RestartType = RestartType.PERMANENT
    shutdown: Shutdown = DEFAULT_SHUTDOWN
    start: object | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id:
            raise SupervisionSpecError("child spec", "id", self.id, "must be a non-empty string")
        where = f"child '{self.id}'"
        object.__setattr__(self, "restart", _coerce(RestartType, self.restart, where, "restart"))


@dataclass(frozen=True)
class SupervisorFlags:
    """How a supervisor restarts; the module docstring lists every field."""

    strategy: Strategy = Strategy.ONE_FOR_ONE
    intensity: int = 3
    period_s: float = 5.0

    def __post_init__(self) -> None:
        where = "supervisor flags"
        object.__setattr__(self, "strategy", _coerce(Strategy, self.strategy, where, "strategy"))
        if (
            isinstance(self.intensity, bool)
            or not isinstance(self.intensity, int)
            or self.intensity < 0
        ):
            raise SupervisionSpecError(
                where, "intensity", self.intensity, "must be an integer >= 0"
            )
        # An infinite period would never forget a crash: one a day still adds up to giving up.
        if not _is_positive_finite(self.period_s):
            raise SupervisionSpecError(
                where, "period_s", self.period_s, "must be a finite number > 0"
            )


@dataclass(frozen=True)
class QuarantinePolicy:
    """The root supervisor's backoff; the module docstring lists every field."""

    base_s: float = 1.0
    factor: float = 2.0
    max_s: float = 300.0

    def __post_init__(self) -> None:
        where = "quarantine policy"
        if not _is_positive_finite(self.base_s):
            raise SupervisionSpecError(where, "base_s", self.base_s, "must be a finite number > 0")
        if not (math.isfinite(self.factor) and self.factor >= 1):
            raise SupervisionSpecError(where, "factor", self.factor, "must be a finite number >= 1")
        if not (math.isfinite(self.max_s) and self.max_s >= self.base_s):
            raise SupervisionSpecError(
                where, "max_s", self.max_s, f"must be a finite number >= base_s ({self.base_s})"
            )

    def backoff_s(self, level: int) -> float:
        """The length of a child's quarantine number ``level`` (0 for the first)."""
        try:
            backoff_s = self.base_s * self.factor**level
        except OverflowError:
            # A child crash-looping for days reaches huge levels; the cap applies long before.
            return self.max_s
        return min(backoff_s, self.max_s)
