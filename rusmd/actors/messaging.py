"""The actor table's messages: send, receive, call and reply, probes, timers.

Runs in: worker. Every method is safe from any thread: fibers call the
non-waiting halves on the loop thread (``take``, ``call_begin`` /
``call_answer`` / ``call_end``, ``probe_begin`` / ``probe_end``), guest
threads the waiting forms (``receive``, ``call``, ``probe``, ``sleep``),
which park on the actor's condition.

``send``, ``deliver`` and ``take`` are the hot paths of every message:
they repeat ``_handle``'s and ``Actor.wake``'s steps inline.
"""

from __future__ import annotations

from rusmd.abi import MAX_TIMERS_PER_PROCESS, PID_STRIDE, ErrorCode, slot_of
from rusmd.actors.core import TableCore
from rusmd.actors.records import (
    _LIMIT,
    _MESSAGE,
    _NOPROC,
    _OK,
    _TIMEOUT,
    _TOOBIG,
    _USER_KINDS,
    PROBE_PID_BASE,
    PROBE_TIMEOUT_S,
    Actor,
    Envelope,
    Stopped,
    _take,
    _Timer,
    _wait_for,
)
from rusmd.actors.signals import Op
from rusmd.channel import Sig


class Messaging(TableCore):
    """The table's messages between processes (see ``TableCore`` for the args)."""

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
