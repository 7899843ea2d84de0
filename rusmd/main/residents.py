"""The main process's share of the actor runtime: names and residents.

Runs in: main (driven from the selectors loop; no threads).

The name registry: workers keep a replica for ``whereis`` (no round trip)
and ask here to claim a name, so two workers can never hand out one name
twice. Every change is broadcast to all workers; a worker that (re)starts
gets the whole table. A name is released when its process exits (its
worker says so) or when its worker dies.

Residents: every ``[components.X] resident = true`` is one child of a
one_for_one supervisor of its own (``rusmd.supervision``, root mode),
with the component's ``restart``, ``intensity`` and ``period-s``. It is
spawned on a ready worker (round robin) and registered under its
component name. When it exits (its worker reports it) or its worker dies,
it is restarted on a ready worker with fresh state (a new pid, the same
name); past its budget it is quarantined with exponential backoff and
``rusmctl status`` shows it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rusmd.abi import slot_of
from rusmd.channel import Answer, Message, NameClaim, NameDrop, NameReply, Names, ProcessExit
from rusmd.config.model import Manifest
from rusmd.log import Logger
from rusmd.supervision import (
    ChildSpec,
    ExitReason,
    QuarantinePolicy,
    RestartType,
    Strategy,
    Supervisor,
    SupervisorFlags,
)
from rusmd.supervision.action import Action, Quarantine, StartChild, StopChild

RESIDENT_QUARANTINE = QuarantinePolicy(base_s=1.0, factor=2.0, max_s=60.0)


class Registry:
    """The node's names: name → pid.

    Args:
        broadcast: Send a message to every worker.
        reply: Send a message to one worker slot.
    """

    def __init__(
        self,
        broadcast: Callable[[Message], None],
        reply: Callable[[int, Message], None],
    ) -> None:
        self.names: dict[str, int] = {}
        self.broadcast = broadcast
        self.reply = reply

    def claim(self, slot: int, claim: NameClaim) -> None:
        """A worker asks for a name for one of its processes."""
        holder = self.names.get(claim.name)
        if holder is None:
            self.names[claim.name] = claim.pid
            self.reply(slot, NameReply(req=claim.req, ok=True, holder=claim.pid))
            self.broadcast(Names(set={claim.name: claim.pid}, removed=[]))
        else:
            self.reply(slot, NameReply(req=claim.req, ok=holder == claim.pid, holder=holder))

    def assign(self, name: str, pid: int) -> bool:
        """Give ``name`` to ``pid`` (a resident); False if someone else holds it."""
        holder = self.names.get(name)
        if holder is not None and holder != pid:
            return False
        self.names[name] = pid
        self.broadcast(Names(set={name: pid}, removed=[]))
        return True

    def drop(self, drop: NameDrop) -> None:
        """A process gave up names (unregistered, or exited)."""
        removed = [n for n in drop.names if self.names.get(n) == drop.pid]
        for name in removed:
            del self.names[name]
        if removed:
            self.broadcast(Names(set={}, removed=removed))

    def worker_gone(self, slot: int) -> None:
        """Release every name held by a process of worker ``slot``."""
        removed = [n for n, pid in self.names.items() if slot_of(pid) == slot]
        for name in removed:
            del self.names[name]
        if removed:
            self.broadcast(Names(set={}, removed=removed))

    def snapshot(self) -> Names:
        """The whole table, for a worker that just started."""
        return Names(set=dict(self.names), removed=[], full=True)


@dataclass
class Resident:
    """The main process's view of one resident component."""

    name: str
    supervisor: Supervisor
    pid: int | None = None
    slot: int | None = None
    state: str = "starting"
    starts: int = 0
    restarts: int = 0
    last_exit: str = ""
    quarantine_until: float | None = None
    waiting_for_worker: bool = False
    stop_pending: bool = False
    moving: bool = False  # its worker is being replaced: its exit is a move


Ask = Callable[[list[int], str, dict[str, Any], Callable[[dict[int, Answer | None]], None]], None]


class Residents:
    """Boot-spawn, supervise and restart the resident components.

    Args:
        manifest: The resolved manifest.
        log: The main process's logger.
        ask: ``Queries.ask``: a control query to workers.
        pick_worker: The next ready worker slot, or None.
        registry: Where residents are registered under their names.
        clock: Monotonic clock.
    """

    def __init__(
        self,
        manifest: Manifest,
        log: Logger,
        *,
        ask: Ask,
        pick_worker: Callable[[], int | None],
        registry: Registry,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.log = log
        self.ask = ask
        self.pick_worker = pick_worker
        self.registry = registry
        self.clock = clock
        self.residents: dict[str, Resident] = {}
        self.by_pid: dict[int, Resident] = {}
        self.started = False
        self.stopping = False
        self.quarantines = 0  # times a resident was quarantined, for /metrics
        self.manifest = manifest

    def start(self, runnable: set[str]) -> None:
        """Start every resident component in ``runnable`` (compiled fine)."""
        self.started = True
        now = self.clock()
        for name, component in self.manifest.components.items():
            if not component.resident or name not in runnable:
                continue
            supervisor = Supervisor(
                SupervisorFlags(
                    strategy=Strategy.ONE_FOR_ONE,
                    intensity=component.intensity,
                    period_s=float(component.period_s),
                ),
                [ChildSpec(id=name, restart=RestartType(component.restart))],
                quarantine=RESIDENT_QUARANTINE,
            )
            resident = Resident(name, supervisor)
            self.residents[name] = resident
            self._apply(resident, supervisor.start(now))

    def stop(self) -> None:
        """The daemon drains: exits from now on are not restarts."""
        self.stopping = True

    def tick(self) -> None:
        """Starts that waited for a worker; quarantines that have ended."""
        if self.stopping:
            return
        now = self.clock()
        for resident in self.residents.values():
            if resident.waiting_for_worker:
                resident.waiting_for_worker = False
                self._spawn(resident)
            deadline = resident.supervisor.next_deadline()
            if deadline is not None and deadline <= now:
                resident.quarantine_until = None
                self._apply(resident, resident.supervisor.tick(now))

    def on_exit(self, message: ProcessExit) -> None:
        """A resident's worker says it exited."""
        resident = self.by_pid.pop(message.pid, None)
        if resident is None or resident.pid != message.pid:
            return
        detail = f" ({message.detail})" if message.detail else ""
        self._exited(resident, message.reason, f"{message.reason}{detail}")

    def worker_stopping(self, slot: int) -> None:
        """Worker ``slot`` is being replaced: its residents' coming exits are moves."""
        for resident in self.residents.values():
            if resident.slot == slot and resident.pid is not None:
                resident.moving = True

    def worker_gone(self, slot: int, reason: str) -> None:
        """Worker ``slot`` died: its residents died with it."""
        for resident in list(self.residents.values()):
            if resident.slot == slot and resident.pid is not None:
                self.by_pid.pop(resident.pid, None)
                self._exited(resident, reason, f"{reason} (its worker {slot} exited)")

    def rows(self) -> list[dict[str, Any]]:
        """One row per resident, for ``rusmctl status``."""
        now = self.clock()
        rows = []
        for resident in self.residents.values():
            row: dict[str, Any] = {
                "name": resident.name,
                "pid": resident.pid,
                "label": f"{resident.name}#{resident.pid}" if resident.pid else None,
                "worker": resident.slot,
                "state": resident.state,
                "restarts": resident.restarts,
                "last_exit": resident.last_exit,
            }
            if resident.quarantine_until is not None:
                row["quarantine_ends_in_s"] = round(max(0.0, resident.quarantine_until - now), 3)
            rows.append(row)
        return rows

    # ── internals ───────────────────────────────────────────────────────

    def _exited(self, resident: Resident, reason: str, text: str) -> None:
        if resident.pid is not None:
            self.registry.drop(NameDrop(pid=resident.pid, names=[resident.name]))
        resident.pid = None
        resident.slot = None
        resident.last_exit = text
        resident.state = "exited"
        if self.stopping:
            return
        if resident.moving and reason == ExitReason.SHUTDOWN:
            resident.moving = False
            self.log.info(f"resident {resident.name}: moving, its worker is being replaced")
            moved = resident.supervisor.child_moved(resident.name, self.clock())
            if any(isinstance(action, StartChild) for action in moved):
                resident.starts += 1
                self._spawn(resident)
            return
        resident.moving = False
        try:
            why = ExitReason(reason)
        except ValueError:
            why = ExitReason.CRASHED
        self._apply(resident, resident.supervisor.child_exited(resident.name, why, self.clock()))

    def _apply(self, resident: Resident, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, StartChild):
                if resident.starts:
                    resident.restarts += 1
                resident.starts += 1
                self._spawn(resident)
            elif isinstance(action, StopChild):
                resident.stop_pending = True
            elif isinstance(action, Quarantine):
                resident.state = "quarantined"
                resident.quarantine_until = action.until
                self.quarantines += 1
                delay_s = max(0.0, action.until - self.clock())
                self.log.error(
                    f"supervisor report: resident {resident.name} crashed too often; "
                    f"quarantined for {delay_s:.1f}s"
                )

    def _spawn(self, resident: Resident) -> None:
        if self.stopping:
            return
        slot = self.pick_worker()
        if slot is None:
            resident.state = "waiting for a worker"
            resident.waiting_for_worker = True
            return
        resident.state = "starting"

        def done(answers: dict[int, Answer | None]) -> None:
            self._spawned(resident, slot, answers.get(slot))

        self.ask([slot], "spawn", {"component": resident.name, "resident": True}, done)

    def _spawned(self, resident: Resident, slot: int, answer: Answer | None) -> None:
        now = self.clock()
        if answer is None or not answer.ok:
            why = answer.error if answer is not None else f"worker {slot} did not answer"
            self.log.error(f"resident {resident.name} did not start: {why}")
            resident.last_exit = f"crashed (did not start: {why})"
            resident.state = "exited"
            if not self.stopping:
                self._apply(resident, resident.supervisor.child_start_failed(resident.name, now))
            return
        pid = int(answer.result["pid"])
        resident.pid = pid
        resident.slot = slot
        resident.state = "running"
        self.by_pid[pid] = resident
        resident.supervisor.child_started(resident.name, now)
        if not self.registry.assign(resident.name, pid):
            holder = self.registry.names.get(resident.name)
            self.log.warn(
                f"resident {resident.name}#{pid}: the name {resident.name!r} is held by #{holder}"
            )
