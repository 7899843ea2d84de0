"""Child: one supervised child's state machine and its restart window.

Runs in: any (pure bookkeeping owned by ``Supervisor``).

States (the spelling ``rusmctl status`` shows):

- ``starting``: a ``StartChild`` was issued; not yet reported started.
- ``running``: reported started and not exited since.
- ``restarting``: a ``StartChild`` was issued again, after an exit, a
  sibling's restart or the end of a quarantine; not yet reported started.
- ``stopping``: a ``StopChild`` was issued and the child will not be started
  again; waiting for its exit.
- ``stopped``: not running and not to be started (a transient child that
  exited normally, or after the supervisor stopped). Temporary children are
  never ``stopped``: they are forgotten once they have ended.
- ``quarantined``: root supervisor only; down until ``quarantine_until``.

A child the supervisor asked to stop still ends with exactly one report
(``child_exited``, or ``child_start_failed`` if it never came up). The
``stops_pending`` count says how many such reports are owed, so that they are
acknowledged instead of being taken for crashes, even when the child is
already being started again.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from enum import StrEnum

from rusmd.abi import ExitReason
from rusmd.supervision.action import StartChild, StopChild
from rusmd.supervision.spec import ChildSpec, RestartType


class ChildState(StrEnum):
    """Where a child is in its life, as the supervisor knows it."""

    STARTING = "starting"
    RUNNING = "running"
    RESTARTING = "restarting"
    STOPPING = "stopping"
    STOPPED = "stopped"
    QUARANTINED = "quarantined"


# The states in which a child exists or is about to: stopping it takes a StopChild.
ALIVE_STATES = frozenset({ChildState.STARTING, ChildState.RUNNING, ChildState.RESTARTING})


@dataclass(frozen=True)
class ChildInfo:
    """A read-only view of one child, for ``which_children`` and status.

    Attributes:
        id: The child's id.
        state: Its ``ChildState``.
        restarts_in_window: Its restarts within the last ``period_s``.
        last_exit_reason: How it last ended; None if it never has.
        quarantine_until: When its quarantine ends (absolute monotonic
            seconds); None unless ``quarantined``.
    """

    id: str
    state: ChildState
    restarts_in_window: int
    last_exit_reason: ExitReason | None
    quarantine_until: float | None


class RestartWindow:
    """The restarts within the last ``period_s`` seconds (a sliding window).

    A restart at time ``t`` counts while ``t > now - period_s``.
    """

    def __init__(self, period_s: float) -> None:
        self._period_s = period_s
        self._times: deque[float] = deque()

    def count(self, now: float) -> int:
        """How many restarts are still within the window at ``now``."""
        while self._times and self._times[0] <= now - self._period_s:
            self._times.popleft()
        return len(self._times)

    def add(self, now: float) -> None:
        """Record a restart at ``now``."""
        self._times.append(now)


@dataclass(eq=False)
class Child:
    """The supervisor's mutable record of one child; never handed out.

    Attributes:
        spec: The child's spec.
        restarts: Its own restart window (the root's intensity is per child).
        state: Its ``ChildState``.
        stops_pending: Reports owed for ``StopChild`` actions issued.
        remove_when_stopped: Forget the child once it has stopped.
        last_exit_reason: How it last ended; None if it never has.
        running_since: When it was reported started; None unless running.
        quarantine_until: When its quarantine ends; None unless quarantined.
        quarantine_level: Consecutive quarantines so far: the next lasts
            ``QuarantinePolicy.backoff_s(quarantine_level)``.
    """

    spec: ChildSpec
    restarts: RestartWindow
    state: ChildState = ChildState.STOPPED
    stops_pending: int = 0
    remove_when_stopped: bool = False
    last_exit_reason: ExitReason | None = None
    running_since: float | None = None
    quarantine_until: float | None = None
    quarantine_level: int = 0

    @property
    def id(self) -> str:
        """The child's id."""
        return self.spec.id

    @property
    def is_alive(self) -> bool:
        """True if the child exists or is about to, so stopping it takes a StopChild."""
        return self.state in ALIVE_STATES

    @property
    def is_forgotten_when_stopped(self) -> bool:
        """True for temporary children and those being removed."""
        return self.remove_when_stopped or self.spec.restart is RestartType.TEMPORARY

    def start(self, state: ChildState) -> StartChild:
        """Enter ``state`` (starting or restarting) and return the action."""
        self.state = state
        self.running_since = None
        self.quarantine_until = None
        return StartChild(self.id, self.spec.start)

    def stop(self) -> StopChild:
        """Enter ``stopping`` and return the action; its exit will be acknowledged."""
        self.state = ChildState.STOPPING
        self.stops_pending += 1
        self.running_since = None
        return StopChild(self.id, self.spec.shutdown, ExitReason.SHUTDOWN)

    def quarantine(self, until: float) -> None:
        """Enter ``quarantined`` until ``until``."""
        self.state = ChildState.QUARANTINED
        self.quarantine_until = until
        self.quarantine_level += 1

    def info(self, now: float) -> ChildInfo:
        """The read-only view of this child at ``now``."""
        return ChildInfo(
            id=self.id,
            state=self.state,
            restarts_in_window=self.restarts.count(now),
            last_exit_reason=self.last_exit_reason,
            quarantine_until=self.quarantine_until,
        )
