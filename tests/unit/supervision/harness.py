"""A fake process layer for supervisor tests: no processes, no clock.

Runs in: any (tests only).
"""

from __future__ import annotations

from collections.abc import Sequence

from rusmd.supervision import (
    Action,
    ChildSpec,
    ChildState,
    ExitReason,
    QuarantinePolicy,
    Shutdown,
    StartChild,
    StopChild,
    Strategy,
    Supervisor,
    SupervisorFlags,
)


def spec(id: str, restart: str = "permanent", shutdown: Shutdown | None = None) -> ChildSpec:
    """A child spec with the default shutdown unless told otherwise."""
    return ChildSpec(id, restart=restart, shutdown=shutdown or Shutdown())  # type: ignore[arg-type]


def stop(id: str, shutdown: Shutdown | None = None) -> StopChild:
    """The StopChild the supervisor issues for a child with that shutdown."""
    return StopChild(id, shutdown or Shutdown(), ExitReason.SHUTDOWN)


def start(*ids: str) -> list[Action]:
    """StartChild actions, in the order given."""
    return [StartChild(id) for id in ids]


def running(
    specs: Sequence[ChildSpec | str],
    *,
    strategy: Strategy = Strategy.ONE_FOR_ONE,
    intensity: int = 3,
    period_s: float = 5.0,
    quarantine: QuarantinePolicy | None = None,
    now: float = 0.0,
) -> Supervisor:
    """A started supervisor whose children have all reported started."""
    flags = SupervisorFlags(strategy=strategy, intensity=intensity, period_s=period_s)
    children = [spec(s) if isinstance(s, str) else s for s in specs]
    supervisor = Supervisor(flags, children, quarantine=quarantine)
    carry_out(supervisor, supervisor.start(now), now)
    return supervisor


def carry_out(
    supervisor: Supervisor,
    actions: Sequence[Action],
    now: float,
    stopped_with: ExitReason = ExitReason.SHUTDOWN,
) -> None:
    """Do what a well-behaved process layer does: every action, in order.

    Stopped children exit with ``stopped_with``; started children come up.
    Each of these reports must need nothing more from the supervisor.
    """
    for action in actions:
        if isinstance(action, StopChild):
            assert supervisor.child_exited(action.id, stopped_with, now) == []
        elif isinstance(action, StartChild):
            supervisor.child_started(action.id, now)


def crash(supervisor: Supervisor, id: str, now: float) -> list[Action]:
    """Crash ``id``, carry out what the supervisor says, and return it."""
    actions = supervisor.child_exited(id, ExitReason.CRASHED, now)
    if not supervisor.terminated:
        carry_out(supervisor, actions, now)
    return actions


def states(supervisor: Supervisor, now: float = 0.0) -> dict[str, ChildState]:
    """Each child's state, in start order."""
    return {info.id: info.state for info in supervisor.which_children(now)}


def all_running(*ids: str) -> dict[str, ChildState]:
    """The ``states`` of a supervisor whose children are all running."""
    return dict.fromkeys(ids, ChildState.RUNNING)
