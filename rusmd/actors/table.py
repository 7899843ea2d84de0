"""The actor table of one worker: mailboxes, links, monitors, names, timers.

Runs in: worker. Every method is safe from any thread: the loop thread
calls it from the host functions of fibers (every process but those
that keep a guest thread) and with signals from other workers and from
the main process; guest threads from their host functions.

One lock guards the whole table (every actor's links, monitors, mailbox
and the name replica): signals are short, and one lock makes an exit and
the signals it sends one atomic step; on the loop thread nobody else
takes it but the few guest threads. A fiber waiting for a message, a
reply or a name parks: a delivery appends to its mailbox and calls its
actor's ``waker``, which schedules it on the loop (the ``*_begin`` /
``*_answer`` / ``*_end`` halves of ``call``, ``register`` and ``probe``
are for it). A guest thread parked in ``receive`` or ``call`` waits on a
condition of the lock instead: no CPU, no polling; a message, a reply, a
down or a kill wakes it.

Routing is by pid alone: ``slot_of(pid)`` names the worker. A signal to a
local pid is handled at once; one to another worker goes to ``remote``
(the loop batches it onto the mesh channel to that worker). A signal that
cannot leave (no live worker in that slot) is answered as if the target
were dead: a link gets an exit with reason noproc, a monitor a down with
noproc.

Exit semantics (OTP's): a process that ends sends ``EXIT`` with its
reason to every linked process and ``DOWN`` to every monitor. A linked
process that traps exits gets an exit message; one that does not dies
with the same reason unless the reason is normal. ``kill`` cannot be
trapped (the target's links then see ``killed``, which can). Names are
released on exit. When a whole worker dies, ``worker_down`` fires the
links and monitors that point at its pids with the worker's reason.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from rusmd.abi import (
    MAILBOX_LIMIT,
    MAX_TIMERS_PER_PROCESS,
    PID_STRIDE,
    ErrorCode,
    ExitReason,
    Kind,
    slot_of,
)
from rusmd.actors.signals import Op
from rusmd.channel import Message, NameClaim, NameDrop, NameReply, Names, Sig
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


class ActorTable:
    """Processes of one worker as actors.

    Args:
        slot: This worker's slot.
        remote: Queue a signal for another worker (any thread); False when
            no live worker holds that slot.
        remote_backlogged: True when so much waits for another worker
            (it stopped reading) that user signals to it are refused with
            LIMIT (any thread). Optional; defaults to never.
        to_main: Send a message to the main process (any thread).
        call_soon: Run a callable on the loop thread (any thread).
        call_later: Run a callable on the loop thread after a delay (any thread).
        mailbox_limit: User messages a mailbox holds.
    """

    def __init__(
        self,
        slot: int,
        *,
        remote: Callable[[int, Sig], bool],
        to_main: Callable[[Message], None],
        call_soon: Callable[..., None],
        call_later: Callable[[float, Callable[[], None]], None],
        mailbox_limit: int = MAILBOX_LIMIT,
        remote_backlogged: Callable[[int], bool] = lambda _slot: False,
    ) -> None:
        self.slot = slot
        self.remote = remote
        self.remote_backlogged = remote_backlogged
        self.to_main = to_main
        self.call_soon = call_soon
        self.call_later = call_later
        self.mailbox_limit = mailbox_limit
        self.lock = threading.RLock()
        self.actors: dict[int, Actor] = {}
        self.names: dict[str, int] = {}
        self.timers: dict[int, _Timer] = {}
        self._claims: dict[int, Claim] = {}
        # Labels of processes that just exited, for the exit lines of their links.
        self._gone_labels: dict[int, str] = {}
        self._refs = itertools.count(1)
        self._claim_ids = itertools.count(1)
        # Messages processes sent (``USER_OPS``: a send, a call's request, a
        # fired timer) that this table handled: to a process of this worker,
        # or refused because the worker they go to is backlogged. Those
        # queued for another worker are the mesh's ``Outbox.sent``. Both are
        # counted under a lock their path takes anyway.
        self.sent_local = 0
        self.sent_refused = 0
        self.delivered = 0
        self.dropped = 0
        # While ``deliver_batch`` runs: receivers to wake once it is done.
        self._woken: dict[Actor, None] | None = None
        # The host's view of one local process, for PROBE with info.
        self.info_of: Callable[[int], dict[str, Any] | None] = lambda _pid: None

    # ── membership ──────────────────────────────────────────────────────

    def add(
        self,
        pid: int,
        label: str,
        kill: Callable[[ExitReason, str], None],
        native: Callable[[Envelope], None] | None = None,
    ) -> Actor:
        """Enter a new process; it can be linked to and sent to from now on."""
        actor = Actor(pid, label, kill, self.lock, native)
        # One dict store is atomic; nothing can point at a new pid yet, so
        # the spawning thread need not wait for the lock (spawn rate).
        self.actors[pid] = actor
        return actor

    def get(self, pid: int) -> Actor | None:
        """The local actor ``pid``, or None."""
        return self.actors.get(pid)

    def new_ref(self) -> int:
        """A node-unique ref (monitors, calls, timers): serial·1000 + slot."""
        return next(self._refs) * 1000 + self.slot

    def remove(self, pid: int, reason: ExitReason, detail: str = "") -> None:
        """Process ``pid`` ended: fire its links and monitors, release its names."""
        with self.lock:
            actor = self.actors.pop(pid, None)
            if actor is None:
                return
            actor.alive = False
            # Nothing stops or wakes a removed actor; its process holds it, so
            # these would tie the two in a cycle the cycle collector frees late.
            actor.kill = _removed
            actor.waker = None
            actor.hand = None
            if not (actor.links or actor.watchers or actor.monitors or actor.names):
                for ref in actor.timers:
                    self.timers.pop(ref, None)
                return  # the common case: nothing points at it
            self._gone_labels[pid] = actor.label
            if len(self._gone_labels) > GONE_LABELS_KEPT:
                del self._gone_labels[next(iter(self._gone_labels))]
            for ref in actor.timers:
                self.timers.pop(ref, None)
            names = sorted(actor.names)
            for name in names:
                if self.names.get(name) == pid:
                    del self.names[name]
            code = ExitReason.of_name(reason).code
            for linked in sorted(actor.links):
                self.signal(Sig(Op.EXIT, linked, pid, reason=code))
            for ref, watcher in actor.watchers.items():
                self.signal(Sig(Op.DOWN, watcher, pid, ref, code))
            for ref, watched in actor.monitors.items():
                self.signal(Sig(Op.DEMONITOR, watched, pid, ref))
        if names:
            self.to_main(NameDrop(pid=pid, names=names))

    def worker_down(self, slot: int, reason: str) -> None:
        """Every process of worker ``slot`` is gone: fire what points at them."""
        if slot == self.slot:
            return
        code = ExitReason.of_name(reason).code
        with self.lock:
            for actor in list(self.actors.values()):
                for linked in [p for p in actor.links if slot_of(p) == slot]:
                    self._handle(Sig(Op.EXIT, actor.pid, linked, reason=code))
                for ref, watched in list(actor.monitors.items()):
                    if slot_of(watched) == slot:
                        self._handle(Sig(Op.DOWN, actor.pid, watched, ref, code))
                for ref in [r for r, w in actor.watchers.items() if slot_of(w) == slot]:
                    del actor.watchers[ref]
            for name in [n for n, p in self.names.items() if slot_of(p) == slot]:
                del self.names[name]

    def kill(self, pid: int, reason: ExitReason, detail: str = "") -> bool:
        """End local process ``pid`` with ``reason``; False if there is none."""
        with self.lock:
            actor = self.actors.get(pid)
            if actor is None:
                return False
            self._stop(actor, reason, detail)
            return True

    # ── signals ─────────────────────────────────────────────────────────

    def signal(self, sig: Sig) -> int:
        """Route one signal by its target pid; an ``ErrorCode`` for local targets.

        For another worker's target: OK once queued, NOPROC when no worker
        holds its slot, LIMIT (a user signal, dropped and counted) when
        that worker has stopped taking what is sent to it.
        """
        slot = sig.to % PID_STRIDE  # as ``slot_of``, inline: this runs for every message
        if slot == self.slot:
            with self.lock:
                if sig.op in _USER_OPS:
                    self.sent_local += 1
                return self._handle(sig)
        if sig.op in _USER_OPS and self.remote_backlogged(slot):
            with self.lock:
                self.sent_refused += 1
                self.dropped += 1
            return _LIMIT
        if self.remote(slot, sig):
            return _OK
        self.undeliverable(sig)
        return _NOPROC

    def deliver_batch(self, sigs: list[Sig]) -> None:
        """Signals from another worker, in order, under one hold of the lock.

        Each receiver is woken once, after the whole batch: a process woken
        at its first message would only wait again for the lock.
        """
        slot = self.slot
        with self.lock:
            woken: dict[Actor, None] = {}
            self._woken = woken
            try:
                for sig in sigs:
                    if sig.to % PID_STRIDE == slot:  # as ``slot_of``, inline
                        self._handle(sig)
            finally:
                self._woken = None
            for actor in woken:
                actor.wake()

    def undeliverable(self, sig: Sig) -> None:
        """A signal whose target's worker is gone: answer for the dead target."""
        if sig.op == Op.LINK:
            self.signal(Sig(Op.EXIT, sig.sender, sig.to, reason=ExitReason.NOPROC.code))
        elif sig.op in (Op.MONITOR, Op.CALL):
            self.signal(Sig(Op.DOWN, sig.sender, sig.to, sig.ref, ExitReason.NOPROC.code))

    def _handle(self, sig: Sig) -> int:
        """Apply one signal to a local process (the lock is held)."""
        target = self.actors.get(sig.to)
        op = sig.op
        if op == Op.PROBE:
            info = b""
            if target is not None and sig.reason == 1:
                info = json.dumps(self.info_of(sig.to), default=str).encode()
            alive = int(target is not None)
            self.signal(Sig(Op.ALIVE, sig.sender, sig.to, sig.ref, alive, info))
            return ErrorCode.OK
        if target is None:
            if op in (Op.LINK, Op.MONITOR):
                self.undeliverable(sig)
            elif op in _USER_OPS:
                self.dropped += 1
            return ErrorCode.NOPROC
        if op in _USER_OPS:
            if target.user_messages >= self.mailbox_limit:
                target.dropped += 1
                self.dropped += 1
                return ErrorCode.LIMIT
            target.user_messages += 1
            self._enqueue(target, Envelope(_USER_OPS[op], sig.sender, sig.ref, 0, sig.payload))
        elif op in (Op.REPLY, Op.ALIVE):
            if target.awaiting == sig.ref:
                target.reply = Envelope(Kind.MESSAGE, sig.sender, sig.ref, sig.reason, sig.payload)
                target.wake()
        elif op == Op.EXIT:
            if sig.sender in target.links:
                target.links.discard(sig.sender)
                self._exit(target, sig.sender, sig.reason, from_link=True)
        elif op == Op.EXIT_SIGNAL:
            self._exit(target, sig.sender, sig.reason, from_link=False)
        elif op == Op.DOWN:
            if target.monitors.pop(sig.ref, None) is not None:
                if target.awaiting == sig.ref:
                    target.callee_down = True
                    target.wake()
                else:
                    self._enqueue(target, Envelope(Kind.DOWN, sig.sender, sig.ref, sig.reason))
        elif op == Op.LINK:
            target.links.add(sig.sender)
        elif op == Op.UNLINK:
            target.links.discard(sig.sender)
        elif op == Op.MONITOR:
            target.watchers[sig.ref] = sig.sender
        elif op == Op.DEMONITOR:
            target.watchers.pop(sig.ref, None)
        return ErrorCode.OK

    def _exit(self, target: Actor, sender: int, reason: int, *, from_link: bool) -> None:
        if reason == ExitReason.KILLED.code and not from_link:
            self._stop(target, ExitReason.KILLED, f"killed by {self._label(sender)}")
        elif target.trap_exit:
            self._enqueue(target, Envelope(Kind.EXIT, sender, 0, reason))
        elif reason != ExitReason.NORMAL.code:
            why = "linked to" if from_link else "exit signal from"
            self._stop(target, ExitReason.of_code(reason), f"{why} {self._label(sender)}")

    def _enqueue(self, target: Actor, envelope: Envelope) -> None:
        self.delivered += 1
        if target.native is not None:
            self.call_soon(target.native, envelope)
            return
        target.mailbox.append(envelope)
        if self._woken is not None:
            self._woken[target] = None
        else:
            target.wake()

    def _stop(self, actor: Actor, reason: ExitReason, detail: str) -> None:
        if actor.stop:
            return
        actor.stop = reason
        actor.kill(reason, detail)
        actor.wake()

    def _label(self, pid: int) -> str:
        if pid == 0:
            return "the operator"
        actor = self.actors.get(pid)
        if actor is not None:
            return actor.label
        return self._gone_labels.get(pid, f"#{pid}")

    # ── what processes do ───────────────────────────────────────────────

    def sleep(self, actor: Actor, seconds: float) -> None:
        """``rusm.sleep``: park for ``seconds`` unless told to stop.

        Raises:
            Stopped: The process was told to stop while it slept.
        """
        with self.lock:
            _wait_for(actor, lambda: False, seconds)

    def deliver(self, pid: int, envelope: Envelope) -> int:
        """Put a host-made message (a WebSocket frame) in local ``pid``'s mailbox.

        Frames count against the mailbox bound like user messages; a close
        notice (``Kind.CLOSED``) always gets through.
        """
        with self.lock:
            target = self.actors.get(pid)
            if target is None:
                return _NOPROC
            if envelope.kind in _USER_KINDS:
                if target.user_messages >= self.mailbox_limit:
                    target.dropped += 1
                    self.dropped += 1
                    return _LIMIT
                target.user_messages += 1
            self.delivered += 1  # as ``_enqueue``, inline: this runs for every message
            if target.native is not None:
                self.call_soon(target.native, envelope)
            else:
                target.mailbox.append(envelope)
                if target._cond is not None:  # as ``Actor.wake``, inline
                    target._cond.notify_all()
                if target.waker is not None:
                    target.waker()
            return _OK

    def took_over(self, actor: Actor, length: int, cap: int) -> bool:
        """Count a host-made message of ``length`` bytes as delivered and received at once.

        For a process waiting in ``recv`` that takes it without the mailbox
        (a fiber, ``FiberScheduler.hand``): only while nothing is queued
        before it, the process is not stopping and the message fits
        ``cap``; False otherwise, and it goes through ``deliver``.
        """
        with self.lock:
            if actor.mailbox or actor.stop or length > cap:
                return False
            self.delivered += 1
            actor.received += 1
            return True

    def send(self, sender: int, to: int, payload: bytes) -> int:
        """``rusm.send``: OK, NOPROC (known dead), LIMIT (full local mailbox).

        A send to a local process is ``_handle``'s SEND inline (no signal
        made): the hot path of every message between two processes.
        """
        if to % PID_STRIDE != self.slot:  # as ``slot_of``, inline
            return self.signal(Sig(Op.SEND, to, sender, payload=payload))
        with self.lock:
            self.sent_local += 1
            target = self.actors.get(to)
            if target is None:
                self.dropped += 1
                return _NOPROC
            if target.user_messages >= self.mailbox_limit:
                target.dropped += 1
                self.dropped += 1
                return _LIMIT
            envelope = Envelope(_MESSAGE, sender, 0, 0, payload)
            self.delivered += 1
            if target.hand is not None and not target.mailbox and target.hand(envelope):
                target.received += 1  # taken at once, as ``took_over``
                return _OK
            target.user_messages += 1
            if target.native is not None:
                self.call_soon(target.native, envelope)
                return _OK
            target.mailbox.append(envelope)
            if target._cond is not None:  # as ``Actor.wake``, inline
                target._cond.notify_all()
            if target.waker is not None:
                target.waker()
            return _OK

    def receive(
        self, actor: Actor, timeout_s: float | None, cap: int
    ) -> tuple[int, Envelope | None]:
        """``rusm.recv``: (OK, envelope) taken, (TOOBIG, envelope) left, (TIMEOUT, None).

        Raises:
            Stopped: The process was told to stop while it waited.
        """
        with self.lock:
            if not _wait_for(actor, lambda: bool(actor.mailbox), timeout_s):
                return ErrorCode.TIMEOUT, None
            return _take(actor, cap)

    def take(self, actor: Actor, cap: int) -> tuple[int, Envelope | None]:
        """``rusm.recv`` without the wait (a fiber waits parked instead).

        Returns:
            As ``receive``, with (TIMEOUT, None) for an empty mailbox.

        Raises:
            Stopped: The process was told to stop.
        """
        with self.lock:
            mailbox = actor.mailbox
            if actor.stop:
                raise Stopped(actor.stop)
            if not mailbox:
                return _TIMEOUT, None
            envelope = mailbox[0]  # as ``_take``, inline: this runs for every message
            if len(envelope.payload) > cap:
                return _TOOBIG, envelope
            mailbox.popleft()
            if envelope.kind in _USER_KINDS:
                actor.user_messages -= 1
            actor.received += 1
            return _OK, envelope

    def call(
        self, actor: Actor, to: int, payload: bytes, timeout_s: float | None
    ) -> tuple[int, bytes]:
        """``rusm.call``: (OK, reply) or (NOPROC | TIMEOUT | LIMIT, b"").

        The caller monitors the callee for the call's length and uses the
        monitor ref as the call ref, so a dead or dying callee ends the
        wait with NOPROC; a reply that comes after the wait is dropped.

        Raises:
            Stopped: The caller was told to stop while it waited.
        """
        with self.lock:
            code, ref = self.call_begin(actor, to, payload)
            if code == _LIMIT:
                return _LIMIT, b""
            try:
                answered = _wait_for(actor, lambda: self.call_answer(actor) is not None, timeout_s)
                if not answered:
                    return _TIMEOUT, b""
                answer = self.call_answer(actor)
                assert answer is not None
                return answer
            finally:
                self.call_end(actor, to, ref)

    def call_begin(self, actor: Actor, to: int, payload: bytes) -> tuple[int, int]:
        """Start ``rusm.call``: monitor ``to``, send it the request; (code, call ref).

        The code is LIMIT when ``to``'s mailbox is full (the call is over,
        nothing to end), else OK: wait until ``call_answer`` has one (a
        reply or the callee's down wakes the caller), then ``call_end``.
        """
        with self.lock:
            ref = self.new_ref()
            actor.awaiting = ref
            actor.reply = None
            actor.callee_down = False
            actor.monitors[ref] = to
            self.signal(Sig(Op.MONITOR, to, actor.pid, ref))
            code: int = _OK
            if not actor.callee_down:
                code = self.signal(Sig(Op.CALL, to, actor.pid, ref, payload=payload))
            if code == _LIMIT:
                self.call_end(actor, to, ref)
                return _LIMIT, ref
            return _OK, ref

    @staticmethod
    def call_answer(actor: Actor) -> tuple[int, bytes] | None:
        """How the call ``actor`` waits for ended: (OK, reply), (NOPROC, b""); None yet."""
        reply = actor.reply
        if reply is not None:
            return _OK, reply.payload
        if actor.callee_down:
            return _NOPROC, b""
        return None

    def call_end(self, actor: Actor, to: int, ref: int) -> None:
        """The call ``ref`` to ``to`` is over (answered, timed out or abandoned)."""
        with self.lock:
            if actor.awaiting == ref:
                actor.awaiting = 0
                actor.reply = None
            if actor.monitors.pop(ref, None) is not None:
                self.signal(Sig(Op.DEMONITOR, to, actor.pid, ref))

    def probe(self, pid: int, *, want_info: bool) -> tuple[bool, bytes]:
        """Ask another worker whether ``pid`` is alive (and for its info).

        Runs on the asking guest's thread with a private waiter, so it
        needs no process of its own; an unreachable worker means dead.
        """
        waiter = self.probe_begin(pid, want_info=want_info)
        if waiter is None:
            return False, b""
        with self.lock:
            try:
                ready = lambda: waiter.reply is not None  # noqa: E731
                _wait_for(waiter, ready, PROBE_TIMEOUT_S, stoppable=False)
            finally:
                answer = self.probe_end(waiter)
        return answer

    def probe_begin(self, pid: int, *, want_info: bool) -> Actor | None:
        """Send the question of ``probe``; its private waiter, or None when it cannot leave.

        The answer wakes the waiter (its ``waker``, its condition); read it
        with ``probe_end``, once it came or after ``PROBE_TIMEOUT_S``.
        """
        waiter = Actor(0, "probe", lambda _r, _d: None, self.lock)
        ref = self.new_ref()
        waiter.awaiting = ref
        # A private pid the answer is routed to: same slot, far above real pids.
        key = PROBE_PID_BASE + ref
        waiter.pid = key
        with self.lock:
            self.actors[key] = waiter
            if self.remote(slot_of(pid), Sig(Op.PROBE, pid, key, ref, int(want_info))):
                return waiter
            del self.actors[key]
        return None

    def probe_end(self, waiter: Actor) -> tuple[bool, bytes]:
        """The answer a ``probe_begin`` waiter got: (alive, info); (False, b"") for none."""
        with self.lock:
            self.actors.pop(waiter.pid, None)
            waiter.waker = None
        reply = waiter.reply
        if reply is None or reply.reason != 1:
            return False, b""
        return True, reply.payload

    def reply(self, actor: Actor, to: int, ref: int, payload: bytes) -> int:
        """``rusm.reply``: answer call ``ref`` of ``to``."""
        return self.signal(Sig(Op.REPLY, to, actor.pid, ref, payload=payload))

    def link(self, actor: Actor, pid: int) -> int:
        """``rusm.link``: OK, or NOPROC when ``pid`` is a dead local process."""
        if pid == actor.pid:
            return ErrorCode.OK
        with self.lock:
            if slot_of(pid) == self.slot and pid not in self.actors:
                return ErrorCode.NOPROC
            actor.links.add(pid)
            self.signal(Sig(Op.LINK, pid, actor.pid))
        return ErrorCode.OK

    def unlink(self, actor: Actor, pid: int) -> int:
        """``rusm.unlink``: always OK."""
        with self.lock:
            if pid in actor.links:
                actor.links.discard(pid)
                self.signal(Sig(Op.UNLINK, pid, actor.pid))
            # An exit from that link already queued is no longer wanted.
            self._drop_queued(actor, lambda e: e.kind == Kind.EXIT and e.sender == pid)
        return ErrorCode.OK

    def monitor(self, actor: Actor, pid: int) -> int:
        """``rusm.monitor``: the ref (a dead target sends its down at once)."""
        with self.lock:
            ref = self.new_ref()
            actor.monitors[ref] = pid
            self.signal(Sig(Op.MONITOR, pid, actor.pid, ref))
            return ref

    def demonitor(self, actor: Actor, ref: int) -> int:
        """``rusm.demonitor``: OK, or NOTFOUND; a queued down for it is dropped too."""
        with self.lock:
            watched = actor.monitors.pop(ref, None)
            queued = self._drop_queued(actor, lambda e: e.kind == Kind.DOWN and e.ref == ref)
            if watched is None:
                return ErrorCode.OK if queued else ErrorCode.NOTFOUND
            self.signal(Sig(Op.DEMONITOR, watched, actor.pid, ref))
            return ErrorCode.OK

    def exit_signal(self, actor: Actor, pid: int, reason: int) -> int:
        """``rusm.exit_signal`` to another process."""
        return self.signal(Sig(Op.EXIT_SIGNAL, pid, actor.pid, reason=reason))

    def _drop_queued(self, actor: Actor, match: Callable[[Envelope], bool]) -> bool:
        kept = [e for e in actor.mailbox if not match(e)]
        if len(kept) == len(actor.mailbox):
            return False
        actor.mailbox = deque(kept)
        return True

    # ── timers ──────────────────────────────────────────────────────────

    def send_after(self, actor: Actor, to: int, delay_s: float, payload: bytes) -> int:
        """``rusm.send_after``: the timer ref, or LIMIT."""
        with self.lock:
            if len(actor.timers) >= MAX_TIMERS_PER_PROCESS:
                return ErrorCode.LIMIT
            ref = self.new_ref()
            self.timers[ref] = _Timer(actor.pid, to, payload)
            actor.timers.add(ref)
        self.call_later(delay_s, lambda: self._fire(ref))
        return ref

    def cancel_timer(self, actor: Actor, ref: int) -> int:
        """``rusm.cancel_timer``: OK when it will never fire, else NOTFOUND."""
        with self.lock:
            timer = self.timers.get(ref)
            if timer is None or timer.owner != actor.pid:
                return ErrorCode.NOTFOUND
            del self.timers[ref]
            actor.timers.discard(ref)
            return ErrorCode.OK

    def _fire(self, ref: int) -> None:
        with self.lock:
            timer = self.timers.pop(ref, None)
            if timer is None:
                return
            owner = self.actors.get(timer.owner)
            if owner is not None:
                owner.timers.discard(ref)
            self.signal(Sig(Op.TIMER, timer.to, timer.owner, ref, payload=timer.payload))

    # ── names ───────────────────────────────────────────────────────────

    def whereis(self, name: str) -> int | None:
        """The pid registered under ``name`` (this worker's replica), or None."""
        return self.names.get(name)

    def register(self, actor: Actor, name: str) -> int:
        """``rusm.register``: ask the main process, which keeps the registry.

        Raises:
            Stopped: The caller was told to stop while it waited.
        """
        claim = self.register_begin(actor, name)
        if not isinstance(claim, Claim):
            return claim
        with self.lock:
            try:
                if not _wait_for(actor, lambda: claim.answer is not None, NAME_CLAIM_TIMEOUT_S):
                    return ErrorCode.UNAVAILABLE
            finally:
                if claim.answer is None:
                    self.register_abandon(claim)
        return self.register_answer(claim)

    def register_begin(self, actor: Actor, name: str) -> Claim | int:
        """Ask the main process for ``name``: the claim, or EXISTS at once.

        The answer wakes ``actor``; once ``claim.answer`` is set,
        ``register_answer`` finishes the call. A caller that stops waiting
        first (timeout, stop) calls ``register_abandon``.
        """
        with self.lock:
            if actor.names or name in self.names:
                return ErrorCode.EXISTS
            req = next(self._claim_ids)
            claim = Claim(actor, name, req)
            self._claims[req] = claim
        self.to_main(NameClaim(req=req, name=name, pid=actor.pid))
        return claim

    def register_abandon(self, claim: Claim) -> None:
        """Nobody waits for ``claim`` any more: a late grant is given back."""
        with self.lock:
            claim.abandoned = True

    def register_answer(self, claim: Claim) -> int:
        """``rusm.register``'s result once ``claim`` was answered."""
        actor, name = claim.actor, claim.name
        with self.lock:
            self._claims.pop(claim.req, None)
            answer = claim.answer
            if answer is None or not answer.ok:
                return ErrorCode.EXISTS
            # The registry's broadcast may have named it already (names_update).
            if actor.alive and actor.names <= {name}:
                actor.names.add(name)
                self.names[name] = actor.pid
                return ErrorCode.OK
        self.to_main(NameDrop(pid=actor.pid, names=[name]))
        return ErrorCode.EXISTS

    def unregister(self, actor: Actor, name: str) -> int:
        """``rusm.unregister``: only the caller's own name."""
        with self.lock:
            holder = self.names.get(name)
            if name not in actor.names:
                return ErrorCode.NOTFOUND if holder is None else ErrorCode.DENIED
            actor.names.discard(name)
            if holder == actor.pid:
                del self.names[name]
        self.to_main(NameDrop(pid=actor.pid, names=[name]))
        return ErrorCode.OK

    def name_reply(self, answer: NameReply) -> None:
        """The main process settled a claim."""
        with self.lock:
            claim = self._claims.get(answer.req)
            if claim is None:
                return
            if claim.abandoned:
                del self._claims[answer.req]
                if answer.ok:
                    self.to_main(NameDrop(pid=claim.actor.pid, names=[claim.name]))
                return
            claim.answer = answer
            if answer.ok:
                self.names[claim.name] = answer.holder
            claim.actor.wake()

    def names_update(self, update: Names) -> None:
        """Registry changes from the main process."""
        with self.lock:
            if update.full:
                self.names = dict(update.set)
            else:
                self.names.update(update.set)
                for name in update.removed:
                    self.names.pop(name, None)
            # A name main gave a local process (a resident's) is that process's own.
            for name, pid in update.set.items():
                actor = self.actors.get(pid)
                if actor is not None:
                    actor.names.add(name)

    # ── what operators see ──────────────────────────────────────────────

    def describe(self, pid: int) -> dict[str, Any]:
        """Links, monitors, names and mailbox of one process, for list/info."""
        with self.lock:
            actor = self.actors.get(pid)
            if actor is None:
                return {}
            return {
                "links": sorted(actor.links),
                "monitors": sorted(actor.monitors.values()),
                "monitored_by": sorted(actor.watchers.values()),
                "names": sorted(actor.names),
                "mailbox": len(actor.mailbox),
                "received": actor.received,
                "dropped": actor.dropped,
                "trap_exit": actor.trap_exit,
                "timers": len(actor.timers),
                "label_text": actor.user_label,
            }


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
