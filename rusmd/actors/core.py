"""The actor table's core: membership, signal routing, exits, links and monitors.

Runs in: worker. Every method is safe from any thread (the table's one
lock; ``table`` says who calls it from where).

``TableCore`` is the first part of ``ActorTable``: the state every part
shares, the process membership, the routing of signals by pid (a local
target's handled at once, another worker's queued for the mesh) and OTP's
exit semantics: what an exit, a link's exit and a down do to a process.
``rusm.link``, ``unlink``, ``monitor``, ``demonitor`` and
``exit_signal`` are here beside the signals they send.
"""

from __future__ import annotations

import itertools
import json
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from rusmd.abi import MAILBOX_LIMIT, PID_STRIDE, ErrorCode, ExitReason, Kind, slot_of
from rusmd.actors.records import (
    _LIMIT,
    _NOPROC,
    _OK,
    _USER_OPS,
    GONE_LABELS_KEPT,
    Actor,
    Claim,
    Envelope,
    _removed,
    _Timer,
)
from rusmd.actors.signals import Op
from rusmd.channel import Message, NameDrop, Sig


class TableCore:
    """The state of one worker's actor table, its membership, signals and links.

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
