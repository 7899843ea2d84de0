"""Guest supervisors: ``rusm.supervise`` as a host-native process.

Runs in: worker (started on the calling guest's thread; its signals are
then handled on the loop thread, under the supervisor's own lock).

A supervisor is a process without wasm: it has a pid, shows in
``rusmctl list`` as ``supervisor#pid``, traps exits, and is linked to
the guest that started it and to each of its children. The decisions
are ``rusmd.supervision.Supervisor``'s (OTP's strategies, restart types
and intensity); this module carries them out on the worker:

- ``StartChild`` spawns the child's component on this worker, linked to
  the supervisor, under the component's own capability profile;
- ``StopChild`` sends exit signal ``shutdown`` (or kills at once for
  ``brutal_kill``), kills after ``shutdown_ms``, and holds the remaining
  actions until the child's exit has arrived;
- ``Escalate`` (intensity reached): the children are already stopped in
  reverse start order; the supervisor exits with reason ``shutdown``, so
  its linked caller dies too unless it traps exits.

An exit signal from the parent stops every child, then the supervisor
exits with the parent's reason (OTP's behaviour). Being killed ends it
at once; its links then take its children down.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Literal, Protocol

import msgspec

from rusmd.abi import ErrorCode, ExitReason, Kind
from rusmd.actors.records import Envelope
from rusmd.actors.table import ActorTable
from rusmd.errors import RusmError, SpawnError
from rusmd.log import Logger
from rusmd.supervision import (
    ChildSpec,
    RestartType,
    Shutdown,
    Strategy,
    Supervisor,
    SupervisorFlags,
)
from rusmd.supervision.action import Action, Escalate, StartChild, StopChild
from rusmd.supervision.spec import SupervisionSpecError

# Children one supervisor may have.
MAX_CHILDREN = 1000


class SupervisorHost(Protocol):
    """What a supervisor uses of the worker's host: starting, stopping, asking after processes."""

    log: Logger
    actors: ActorTable

    def start_native(
        self, kind: str, parent: int, make: Callable[[int], GuestSupervisor]
    ) -> tuple[int, GuestSupervisor]:
        """Start a host-native process (``make(pid)`` builds it) linked to ``parent``."""
        ...

    def spawn(self, name: str, parent: int | None = None, *, link: bool = False) -> int:
        """Start a process of component ``name``; its pid.

        Raises:
            SpawnError: It cannot start (``code`` says why, as a guest sees it).
        """
        ...

    def is_alive(self, pid: int) -> bool: ...

    def kill(self, pid: int, reason: ExitReason = ExitReason.KILLED, detail: str = "") -> bool: ...

    def exit_native(self, pid: int, reason: ExitReason, detail: str = "") -> None: ...


class SpecError(RusmError):
    """A supervise spec that cannot be used; ``code`` is what the guest gets."""

    def __init__(self, message: str, code: ErrorCode = ErrorCode.INVALID) -> None:
        super().__init__(message)
        self.code = code


class _ChildInput(msgspec.Struct, forbid_unknown_fields=True):
    component: str
    id: str | None = None
    restart: Literal["permanent", "transient", "temporary"] = "permanent"
    shutdown_ms: int | Literal["brutal_kill"] = 5000


class _SpecInput(msgspec.Struct, forbid_unknown_fields=True):
    children: list[_ChildInput]
    strategy: Literal["one_for_one", "one_for_all", "rest_for_one"] = "one_for_one"
    intensity: int = 3
    period_s: float = 5.0


_decoder = msgspec.json.Decoder(_SpecInput)


def parse_spec(data: bytes, components: set[str]) -> tuple[SupervisorFlags, list[ChildSpec]]:
    """The flags and child specs a guest asked for.

    Raises:
        SpecError: Malformed JSON, an unknown key or value (INVALID), or a
            component that does not exist (NOTFOUND).
    """
    try:
        spec = _decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise SpecError(f"supervise spec: {exc}") from None
    if not spec.children:
        raise SpecError("supervise spec: `children` is empty")
    if len(spec.children) > MAX_CHILDREN:
        raise SpecError(f"supervise spec: more than {MAX_CHILDREN} children")
    try:
        flags = SupervisorFlags(
            strategy=Strategy(spec.strategy), intensity=spec.intensity, period_s=spec.period_s
        )
        specs: list[ChildSpec] = []
        seen: set[str] = set()
        for index, child in enumerate(spec.children):
            if child.component not in components:
                raise SpecError(
                    f"supervise spec: children[{index}]: no component named {child.component!r}",
                    ErrorCode.NOTFOUND,
                )
            base = child.id or child.component
            ident, n = base, 1
            while ident in seen:
                n += 1
                ident = f"{base}.{n}"
            seen.add(ident)
            if child.shutdown_ms == "brutal_kill":
                shutdown = Shutdown.brutal_kill()
            elif child.shutdown_ms <= 0:
                raise SpecError(
                    f"supervise spec: children[{index}].shutdown_ms: must be > 0 or 'brutal_kill'"
                )
            else:
                shutdown = Shutdown.timeout(child.shutdown_ms / 1000)
            specs.append(
                ChildSpec(
                    id=ident,
                    restart=RestartType(child.restart),
                    shutdown=shutdown,
                    start=child.component,
                )
            )
    except SupervisionSpecError as exc:
        raise SpecError(f"supervise spec: {exc}") from None
    return flags, specs


class GuestSupervisor:
    """One supervisor started by a guest.

    Args:
        host: The worker's wasm host.
        pid: The supervisor's pid.
        parent: The guest that started it.
        flags: Strategy, intensity and period.
        specs: Its children, in start order.
    """

    def __init__(
        self,
        host: SupervisorHost,
        pid: int,
        parent: int,
        flags: SupervisorFlags,
        specs: list[ChildSpec],
    ) -> None:
        self.host = host
        self.pid = pid
        self.parent = parent
        self.machine = Supervisor(flags, specs)
        self.lock = threading.RLock()
        self.queue: deque[Action] = deque()
        self.pid_of: dict[str, int] = {}
        self.id_of: dict[int, str] = {}
        self.waiting_for: str | None = None
        self.exit_after: tuple[ExitReason, str] | None = None
        self.done = False
        self.restarts = 0

    @classmethod
    def start(
        cls, host: SupervisorHost, parent: int, flags: SupervisorFlags, specs: list[ChildSpec]
    ) -> int:
        """Start a supervisor for ``parent`` and its children; its pid."""
        pid, supervisor = host.start_native(
            "supervisor", parent, lambda pid: cls(host, pid, parent, flags, specs)
        )
        with supervisor.lock:
            supervisor._run(supervisor.machine.start(time.monotonic()))
        return pid

    # ── events ──────────────────────────────────────────────────────────

    def on_signal(self, envelope: Envelope) -> None:
        """A signal for the supervisor (it traps exits, so exits arrive here)."""
        if envelope.kind != Kind.EXIT:
            return  # Messages to a supervisor are ignored.
        with self.lock:
            if self.done:
                return
            reason = ExitReason.of_code(envelope.reason)
            if envelope.sender == self.parent:
                self._shut_down(reason, f"its parent exited ({reason})")
                return
            child = self.id_of.pop(envelope.sender, None)
            if child is None:
                return
            self.pid_of.pop(child, None)
            actions = self.machine.child_exited(child, reason, time.monotonic())
            if self.waiting_for == child:
                self.waiting_for = None
            self._run(actions)

    def stopped(self, reason: str, detail: str) -> None:
        """The supervisor was told to stop (killed, or shut down with its worker)."""
        self.host.actors.call_soon(self._stopped, reason, detail)

    def _stopped(self, reason: ExitReason, detail: str) -> None:
        with self.lock:
            if self.done:
                return
            if reason is ExitReason.KILLED:
                self._exit(reason, detail)
            else:
                self._shut_down(reason, detail)

    def describe(self) -> dict[str, Any]:
        """Its children and strategy, for ``rusmctl info``.

        Lock-free on purpose: it is asked under the actor table's lock,
        and a supervisor holds its own lock while it takes that one.
        """
        flags = self.machine.flags
        children = [
            {
                "id": info.id,
                "state": str(info.state),
                "pid": self.pid_of.get(info.id),
                "restarts_in_window": info.restarts_in_window,
            }
            for info in self.machine.which_children(time.monotonic())
        ]
        return {
            "strategy": str(flags.strategy),
            "intensity": flags.intensity,
            "period_s": flags.period_s,
            "children": children,
        }

    # ── carrying out decisions ──────────────────────────────────────────

    def _run(self, actions: list[Action]) -> None:
        self.queue.extend(actions)
        self._pump()

    def _pump(self) -> None:
        while self.queue and self.waiting_for is None and not self.done:
            action = self.queue.popleft()
            now = time.monotonic()
            if isinstance(action, StartChild):
                component = str(action.start)
                try:
                    pid = self.host.spawn(component, parent=self.pid, link=True)
                except SpawnError as exc:
                    self.host.log.error(
                        f"supervisor#{self.pid}: child {action.id} did not start: {exc}"
                    )
                    self.queue.extendleft(reversed(self.machine.child_start_failed(action.id, now)))
                    continue
                self.pid_of[action.id] = pid
                self.id_of[pid] = action.id
                self.machine.child_started(action.id, now)
            elif isinstance(action, StopChild):
                self._stop_child(action)
            elif isinstance(action, Escalate):
                self.host.log.error(
                    f"supervisor#{self.pid}: restart intensity "
                    f"{self.machine.flags.intensity} in {self.machine.flags.period_s:g}s "
                    "reached; giving up"
                )
                self._exit(action.reason, "restart intensity reached")
        if not self.queue and self.waiting_for is None and self.exit_after is not None:
            self._exit(*self.exit_after)

    def _stop_child(self, action: StopChild) -> None:
        pid = self.pid_of.get(action.id)
        if pid is None or not self.host.is_alive(pid):
            # Its exit is on its way (or came already); the report settles it.
            if pid is not None:
                self.waiting_for = action.id
            return
        self.waiting_for = action.id
        actor = self.host.actors.get(self.pid)
        if actor is None:
            return
        brutal = action.shutdown.timeout_s == 0
        reason = (ExitReason.KILLED if brutal else ExitReason.SHUTDOWN).code
        self.host.actors.exit_signal(actor, pid, reason)
        if not brutal:
            self.host.actors.call_later(
                action.shutdown.timeout_s, lambda: self._shutdown_timeout(action.id, pid)
            )

    def _shutdown_timeout(self, child: str, pid: int) -> None:
        with self.lock:
            if self.pid_of.get(child) == pid and not self.done:
                why = f"did not stop within its shutdown time ({child})"
                self.host.kill(pid, ExitReason.KILLED, why)

    def _shut_down(self, reason: ExitReason, detail: str) -> None:
        """Stop every child in reverse start order, then exit with ``reason``."""
        self.exit_after = (reason, detail)
        self._run(self.machine.stop(time.monotonic()))

    def _exit(self, reason: ExitReason, detail: str) -> None:
        if self.done:
            return
        self.done = True
        self.queue.clear()
        self.host.exit_native(self.pid, reason, detail)
