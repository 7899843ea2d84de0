"""The actor table's records: actors, envelopes, name claims, timers; waits on a thread.

Runs in: worker (any thread: the records are read and changed with the
table's lock held).

An ``Actor`` is the actor side of one process: its links, monitors,
names, timers and mailbox of ``Envelope``s. ``_wait_for`` is how a guest
thread parks on its actor's condition (a fiber parks in the scheduler
instead). The limits and timeouts the table's parts share are here too.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import msgspec

from rusmd.abi import ErrorCode, ExitReason, Kind
from rusmd.actors.signals import Op
from rusmd.channel import NameReply
from rusmd.errors import RusmError

# How long rusm.register waits for the main process to settle a claim.
NAME_CLAIM_TIMEOUT_S = 5.0
# How long a question to another worker (is_alive, info) may take.
PROBE_TIMEOUT_S = 2.0
# Probe answers go to PROBE_PID_BASE + ref: a multiple of 1000 keeps the slot.
PROBE_PID_BASE = (1 << 50) * 1000
# Labels of exited processes remembered for log lines.
GONE_LABELS_KEPT = 1024

_USER_OPS: dict[int, Kind] = {Op.SEND: Kind.MESSAGE, Op.CALL: Kind.CALL, Op.TIMER: Kind.TIMER}
_USER_KINDS = frozenset({Kind.MESSAGE, Kind.CALL, Kind.TIMER, Kind.FRAME})
# Bound once: an enum member read through its class costs ~0.1 µs, and
# these are read for every message a WebSocket delivers.
_OK, _LIMIT, _NOPROC = ErrorCode.OK, ErrorCode.LIMIT, ErrorCode.NOPROC
_TOOBIG, _TIMEOUT = ErrorCode.TOOBIG, ErrorCode.TIMEOUT
_MESSAGE = Kind.MESSAGE


class Stopped(RusmError):
    """The waiting process was told to stop (its reason is ``Actor.stop``)."""

    def __init__(self, reason: ExitReason) -> None:
        super().__init__(reason)
        self.reason = reason


class Envelope(msgspec.Struct, gc=False):
    """One message in a mailbox, as ``rusm.recv`` hands it over.

    A struct made in C (one a WebSocket message: a dataclass's ``__init__``
    is Python, and costs as much again); it holds only ints and bytes, so
    the cycle collector need not track it.
    """

    kind: int
    sender: int
    ref: int = 0
    reason: int = 0
    payload: bytes = b""


@dataclass(eq=False)
class Actor:
    """The actor side of one process (wasm or host-native).

    Attributes:
        pid: Its pid.
        label: ``component#pid``.
        kill: Ends the process with (reason, detail); called under the lock.
        lock: The table's lock; ``cond`` (where it waits for its mailbox,
            replies and claims) is made on it at the first wait, so a
            process that never waits never pays for one.
        native: Host-native actors (supervisors) get their signals here
            instead of a mailbox, called on the loop thread.
    """

    pid: int
    label: str
    kill: Callable[[ExitReason, str], None]
    lock: threading.RLock
    native: Callable[[Envelope], None] | None = None
    links: set[int] = field(default_factory=set)
    monitors: dict[int, int] = field(default_factory=dict)  # ref -> watched pid
    watchers: dict[int, int] = field(default_factory=dict)  # ref -> watching pid
    names: set[str] = field(default_factory=set)
    timers: set[int] = field(default_factory=set)
    mailbox: deque[Envelope] = field(default_factory=deque)
    trap_exit: bool = False
    user_label: str = ""
    user_messages: int = 0
    received: int = 0
    dropped: int = 0
    # The call this process waits for, and how it ended.
    awaiting: int = 0
    reply: Envelope | None = None
    callee_down: bool = False
    # Set once it has been told to stop; a parked wait returns at once.
    stop: ExitReason | None = None
    alive: bool = True
    # Called by ``wake`` for a process that waits as a fiber, not on the
    # condition (it schedules the fiber's next poll; any thread).
    waker: Callable[[], None] | None = None
    # Takes a message straight into a fiber waiting in ``recv`` with an
    # empty mailbox, if it can (True); its scheduler sets it.
    hand: Callable[[Envelope], bool] | None = None
    _cond: threading.Condition | None = None
    _waiting: int = 0

    @property
    def waiting(self) -> int:
        """Threads parked on its condition right now (receive, call, sleep, register)."""
        return self._waiting

    @property
    def cond(self) -> threading.Condition:
        """Its condition (made on first use; use it with the lock held)."""
        if self._cond is None:
            self._cond = threading.Condition(self.lock)
        return self._cond

    def wake(self) -> None:
        """Wake its waits, if it has ever waited (the lock is held)."""
        if self._cond is not None:
            self._cond.notify_all()
        if self.waker is not None:
            self.waker()


@dataclass
class Claim:
    """A name ``rusm.register`` asked the main process for, and its answer."""

    actor: Actor
    name: str
    req: int
    answer: NameReply | None = None
    abandoned: bool = False


@dataclass
class _Timer:
    owner: int
    to: int
    payload: bytes


def _wait_for(
    actor: Actor, ready: Callable[[], bool], timeout_s: float | None, *, stoppable: bool = True
) -> bool:
    """Park on ``actor``'s condition (the table lock held) until ``ready()``.

    Returns:
        True once ready, False when ``timeout_s`` (None: no limit) ran out.

    Raises:
        Stopped: ``stoppable`` and the process was told to stop first.
    """
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while not ready():
        if stoppable and actor.stop:
            raise Stopped(actor.stop)
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            return False
        actor._waiting += 1
        try:
            actor.cond.wait(remaining)
        finally:
            actor._waiting -= 1
    return True


def _take(actor: Actor, cap: int) -> tuple[int, Envelope | None]:
    """Take ``actor``'s next message if it fits ``cap`` (the lock is held, the mailbox not empty).

    Raises:
        Stopped: The process was told to stop.
    """
    if actor.stop:
        raise Stopped(actor.stop)
    envelope = actor.mailbox[0]
    if len(envelope.payload) > cap:
        return _TOOBIG, envelope
    actor.mailbox.popleft()
    if envelope.kind in _USER_KINDS:
        actor.user_messages -= 1
    actor.received += 1
    return _OK, envelope


def _removed(_reason: str, _detail: str) -> None:
    """``Actor.kill`` once the actor left the table: there is nothing left to stop."""
