"""Supervisor: OTP's restart decisions, as a pure state machine.

Runs in: any (no I/O, no clock, no processes; the main process drives the
root, the worker pool and residents with it, a worker its guest supervisors).

The supervisor decides and the process layer acts. Every call takes ``now``
(monotonic seconds) and returns the actions to carry out, in order (see
``rusmd.supervision.action``). The process layer promises three things back:

1. It carries out each list in order: a ``StopChild`` is done once the
   child has exited, a ``StartChild`` once the start has been reported.
2. It ends every start with exactly one report: ``child_started`` then,
   later, one ``child_exited``; or one ``child_start_failed``. This holds for
   children the supervisor stopped too; those reports are acknowledged and
   never count as crashes.
3. It reports the events of one child in the order they happened.

What happens when a child exits on its own (``child_exited``; a failed start
is an exit with reason ``crashed``):

- permanent children are restarted; transient ones only after an abnormal
  exit (``killed``, ``crashed``, ``noproc``); temporary ones never, and they
  are forgotten. A child that is not restarted does not disturb its
  siblings, whatever the strategy.
- A restart is allowed if fewer than ``intensity`` restarts happened within
  the last ``period_s`` (a restart at ``t`` counts while ``t > now -
  period_s``). The window is the supervisor's, shared by all its children.
- Restart by strategy: ``one_for_one`` restarts the child alone;
  ``one_for_all`` stops every other running child in reverse start order,
  then starts them and the child in start order; ``rest_for_one`` does the
  same with the children started after it. Temporary siblings are stopped and
  not started again. Stopped and quarantined siblings are left alone.
- Giving up (the restart would be the ``intensity + 1``-th within the
  period): stop every running child in reverse start order, then
  ``Escalate(shutdown)``. The supervisor is then terminated.

Root mode (``quarantine=QuarantinePolicy(...)``), for the daemon's root,
where escalating would kill the daemon: the window is counted per child, and
instead of giving up, the child that just exited is quarantined for
``base_s * factor**n`` (capped at ``max_s``), n counting its consecutive
quarantines; its siblings are left alone whatever the strategy. ``tick``
starts it again once the quarantine has ended (``next_deadline`` says when),
``lift_quarantine`` at once. A child seen up for a full ``period_s`` (on its
next exit, or on a ``tick``) starts over at ``base_s``. The start that ends
a quarantine is not counted as a restart.

Start order is the order of the specs given, then the order of ``add_child``.
"""

from __future__ import annotations

from collections.abc import Iterable

from rusmd.abi import ExitReason
from rusmd.supervision.action import Action, Escalate, Quarantine
from rusmd.supervision.child import Child, ChildInfo, ChildState, RestartWindow
from rusmd.supervision.spec import (
    ChildSpec,
    QuarantinePolicy,
    RestartType,
    Strategy,
    SupervisionSpecError,
    SupervisorFlags,
    SupervisorStateError,
    UnknownChildError,
    should_restart,
)


class Supervisor:
    """One supervisor: its flags, its children and their restarts.

    Args:
        flags: Strategy, intensity and period.
        specs: The static children, in start order. Ids must be unique.
        quarantine: Root mode: quarantine a child instead of giving up.
            Optional; defaults to None (give up and escalate, as OTP does).
    """

    def __init__(
        self,
        flags: SupervisorFlags,
        specs: Iterable[ChildSpec],
        *,
        quarantine: QuarantinePolicy | None = None,
    ) -> None:
        self._flags = flags
        self._quarantine = quarantine
        self._restarts = RestartWindow(flags.period_s)
        # Insertion order is start order; an added child goes last.
        self._children: dict[str, Child] = {}
        self._started = False
        self._terminated = False
        for spec in specs:
            self._insert(spec)

    @property
    def flags(self) -> SupervisorFlags:
        """The supervisor's flags."""
        return self._flags

    @property
    def terminated(self) -> bool:
        """True once the supervisor has stopped or given up."""
        return self._terminated

    def which_children(self, now: float) -> list[ChildInfo]:
        """A view of every child at ``now``, in start order."""
        return [child.info(now) for child in self._children.values()]

    def next_deadline(self) -> float | None:
        """The earliest end of a quarantine, when ``tick`` has work; None if none."""
        ends = [
            c.quarantine_until
            for c in self._children.values()
            if c.state is ChildState.QUARANTINED and c.quarantine_until is not None
        ]
        return min(ends, default=None)

    def start(self, now: float) -> list[Action]:
        """Start every child, in start order."""
        if self._terminated:
            raise SupervisorStateError("supervisor: start: the supervisor has terminated")
        if self._started:
            raise SupervisorStateError("supervisor: start: already started")
        self._started = True
        return [child.start(ChildState.STARTING) for child in self._children.values()]

    def stop(self, now: float) -> list[Action]:
        """Stop every running child in reverse start order; the supervisor terminates."""
        if self._terminated:
            return []
        self._terminated = True
        for child in list(self._children.values()):
            if child.state is ChildState.QUARANTINED:
                self._finish_stop(child)
        return self._stop_all()

    def add_child(self, spec: ChildSpec, now: float) -> list[Action]:
        """Supervise one more child, last in start order; start it if running."""
        if self._terminated:
            raise SupervisorStateError(
                f"supervisor: add_child '{spec.id}': the supervisor has terminated"
            )
        child = self._insert(spec)
        return [child.start(ChildState.STARTING)] if self._started else []

    def remove_child(self, id: str, now: float) -> list[Action]:
        """Stop the child if it is running, then forget it."""
        child = self._child(id)
        if child.is_alive:
            child.remove_when_stopped = True
            return [child.stop()]
        if child.state is ChildState.STOPPING:
            child.remove_when_stopped = True
            return []
        del self._children[id]
        return []

    def lift_quarantine(self, id: str, now: float) -> list[Action]:
        """End a child's quarantine now (an operator's restart)."""
        child = self._child(id)
        if child.state is not ChildState.QUARANTINED:
            raise SupervisorStateError(
                f"child '{id}': lift_quarantine: not quarantined (state {child.state})"
            )
        return [child.start(ChildState.RESTARTING)]

    def tick(self, now: float) -> list[Action]:
        """Start the children whose quarantine has ended, in start order."""
        if self._terminated:
            return []
        actions: list[Action] = []
        for child in self._children.values():
            self._observe_stability(child, now)
            ended = child.quarantine_until is not None and child.quarantine_until <= now
            if child.state is ChildState.QUARANTINED and ended:
                actions.append(child.start(ChildState.RESTARTING))
        return actions

    def child_started(self, id: str, now: float) -> None:
        """Report that a child has started."""
        child = self._child(id)
        # A start the supervisor has since asked to stop: that child is on its way out.
        if child.stops_pending or child.state not in (ChildState.STARTING, ChildState.RESTARTING):
            return
        child.state = ChildState.RUNNING
        child.running_since = now

    def child_moved(self, id: str, now: float) -> list[Action]:
        """Report that a child was stopped by its host, not by a fault; start it again.

        rusm's own case, beyond OTP: a resident whose worker was replaced
        (a reload, ``rusmctl restart``, a profile change) ended with reason
        shutdown through no doing of its own. Starting it elsewhere is a
        move, not a restart: it does not count toward the intensity (a few
        reloads in a row would otherwise quarantine a healthy child), and a
        transient child comes back too. A temporary child is not started.
        """
        child = self._child(id)
        if child.stops_pending:
            return self._acknowledge_stop(child, ExitReason.SHUTDOWN)
        if not child.is_alive:
            return []
        self._observe_stability(child, now)
        child.last_exit_reason = ExitReason.SHUTDOWN
        child.running_since = None
        if child.spec.restart is RestartType.TEMPORARY:
            self._finish_stop(child)
            return []
        return [child.start(ChildState.RESTARTING)]

    def child_start_failed(self, id: str, now: float) -> list[Action]:
        """Report that a child failed to start; it counts as a crash."""
        child = self._child(id)
        if child.stops_pending:
            return self._acknowledge_stop(child, ExitReason.CRASHED)
        if child.state not in (ChildState.STARTING, ChildState.RESTARTING):
            return []
        return self._exited(child, ExitReason.CRASHED, now)

    def child_exited(self, id: str, reason: ExitReason, now: float) -> list[Action]:
        """Report that a child has exited, and get what to do about it."""
        child = self._child(id)
        if child.stops_pending:
            return self._acknowledge_stop(child, reason)
        if not child.is_alive:
            return []  # A repeated report: nothing is alive to act on.
        return self._exited(child, reason, now)

    def _insert(self, spec: ChildSpec) -> Child:
        if spec.id in self._children:
            raise SupervisionSpecError("child specs", "id", spec.id, "must be unique")
        child = Child(spec, RestartWindow(self._flags.period_s))
        self._children[spec.id] = child
        return child

    def _child(self, id: str) -> Child:
        try:
            return self._children[id]
        except KeyError:
            raise UnknownChildError(f"child '{id}': no such child") from None

    def _acknowledge_stop(self, child: Child, reason: ExitReason) -> list[Action]:
        child.stops_pending -= 1
        child.last_exit_reason = reason
        if not child.stops_pending and child.state is ChildState.STOPPING:
            self._finish_stop(child)
        return []

    def _finish_stop(self, child: Child) -> None:
        child.quarantine_until = None
        if child.is_forgotten_when_stopped:
            del self._children[child.id]
        else:
            child.state = ChildState.STOPPED

    def _exited(self, child: Child, reason: ExitReason, now: float) -> list[Action]:
        self._observe_stability(child, now)
        child.last_exit_reason = reason
        child.running_since = None
        if not should_restart(child.spec.restart, reason):
            self._finish_stop(child)
            return []
        if self._quarantine is not None:
            if child.restarts.count(now) >= self._flags.intensity:
                return [self._enter_quarantine(child, self._quarantine, now)]
        elif self._restarts.count(now) >= self._flags.intensity:
            return self._give_up(child)
        self._restarts.add(now)
        child.restarts.add(now)
        return self._restart(child)

    def _restart(self, child: Child) -> list[Action]:
        children = list(self._children.values())
        match self._flags.strategy:
            case Strategy.ONE_FOR_ONE:
                group = [child]
            case Strategy.ONE_FOR_ALL:
                group = children
            case Strategy.REST_FOR_ONE:
                group = children[children.index(child) :]
        stopping = [c for c in reversed(group) if c is not child and c.is_alive]
        actions: list[Action] = [sibling.stop() for sibling in stopping]
        for member in group:
            restarted = member is child or member in stopping
            if restarted and member.spec.restart is not RestartType.TEMPORARY:
                actions.append(member.start(ChildState.RESTARTING))
        return actions

    def _give_up(self, child: Child) -> list[Action]:
        self._finish_stop(child)
        self._terminated = True
        return [*self._stop_all(), Escalate(ExitReason.SHUTDOWN)]

    def _enter_quarantine(self, child: Child, policy: QuarantinePolicy, now: float) -> Quarantine:
        until = now + policy.backoff_s(child.quarantine_level)
        child.quarantine(until)
        return Quarantine(child.id, until)

    def _stop_all(self) -> list[Action]:
        return [c.stop() for c in reversed(self._children.values()) if c.is_alive]

    def _observe_stability(self, child: Child, now: float) -> None:
        # A child up for a whole period has recovered: its next quarantine starts small.
        since = child.running_since
        stable = since is not None and now - since >= self._flags.period_s
        if child.state is ChildState.RUNNING and stable:
            child.quarantine_level = 0
