"""Actions: what a supervisor asks the process layer to do.

Runs in: any (plain frozen data, returned by ``Supervisor`` to whoever owns
the processes: the main process for the root, the worker pool and residents;
a worker for guest supervisors).

The supervisor never forks, signals or sleeps. Each of its methods returns a
list of actions that the process layer carries out in list order:

- ``StartChild``: start the child. Done when the layer has reported
  ``child_started`` or ``child_start_failed``.
- ``StopChild``: stop the child as its ``shutdown`` says. Done when the child
  has exited. A child that has already ended is left alone.
- ``Escalate``: the supervisor has given up. Its own parent must treat it as
  exited with ``reason``. Always the last action of its list.
- ``Quarantine``: root supervisor only. The child stays down until
  ``until``; nothing needs doing, but it is worth a log line and a status
  entry. The supervisor starts the child again from ``tick``.

Order matters: children are stopped in reverse start order and started in
start order, and a ``StopChild`` for a child comes before its ``StartChild``.
"""

from __future__ import annotations

from dataclasses import dataclass

from rusmd.abi import ExitReason
from rusmd.supervision.spec import Shutdown


@dataclass(frozen=True)
class StartChild:
    """Start (or start again) one child.

    Attributes:
        id: The child's id.
        start: The opaque ``ChildSpec.start`` payload: what to run.
            Optional; defaults to None.
    """

    id: str
    start: object | None = None


@dataclass(frozen=True)
class StopChild:
    """Stop one child.

    Attributes:
        id: The child's id.
        shutdown: How to stop it: at once (brutal_kill) or by asking, then
            killing after ``shutdown.timeout_s``.
        reason: The exit reason the child is asked to exit with.
    """

    id: str
    shutdown: Shutdown
    reason: ExitReason = ExitReason.SHUTDOWN


@dataclass(frozen=True)
class Escalate:
    """The supervisor has given up: its parent sees it exit with ``reason``.

    Attributes:
        reason: Always ``shutdown`` after the restart intensity is reached, as
            in OTP. (A parent that supervises it as ``transient`` therefore
            does not restart it.)
    """

    reason: ExitReason


@dataclass(frozen=True)
class Quarantine:
    """A root child stays down until ``until`` instead of the daemon giving up.

    Attributes:
        id: The child's id.
        until: When the quarantine ends, in monotonic seconds (absolute).
    """

    id: str
    until: float


Action = StartChild | StopChild | Escalate | Quarantine
