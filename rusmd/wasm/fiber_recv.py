"""``rusm.recv`` on a fiber, and messages handed straight into a waiting ``recv``.

Runs in: worker, on its loop thread (inside a fiber's poll, or when the
scheduler finishes a parked ``recv``); ``Actor.hand`` is called with the
table's lock held and declines off the loop thread.

``recv`` is the hottest waiting call: it is parked inline rather than
through ``park``, finished by the scheduler itself (``_finish_recv``,
no closure), and a WebSocket frame or a local message for a fiber
waiting in it with nothing queued is written into its buffers at once
(``hand``, ``_hand_to``): no trip through the mailbox.
"""

from __future__ import annotations

import asyncio
import threading

from rusmd.abi import HEADER_BYTES
from rusmd.actors.records import Envelope
from rusmd.wasm.fiber import (
    _A0,
    _A1,
    _A2,
    _A3,
    _HEADER,
    _I32,
    _I32_MAX,
    _INVALID,
    _OK,
    _TIMEOUT,
    Fiber,
    FiberHost,
    _monotonic,
)
from rusmd.wasm.fiber_callbacks import FiberCallbacks
from rusmd.wasm.memory import check_range


class FiberRecv(FiberCallbacks):
    """The scheduler's ``recv`` and its hand-offs (see ``FiberCallbacks`` for the args)."""

    def __init__(
        self, host: FiberHost, loop: asyncio.AbstractEventLoop, thread: int | None = None
    ) -> None:
        super().__init__(host, loop, thread)
        # The async host functions by name (``define`` adds the others).
        self.callbacks["recv"] = self._async_callback("recv", self._recv)

    def _recv(self, fiber: Fiber, args: int, results: int) -> None:
        """``rusm.recv(header, buf, cap, timeout_ms)`` on a fiber."""
        u32 = self._u32
        self._u32_at.value = args
        header, buf, cap, timeout_ms = u32[_A0], u32[_A1], u32[_A2], u32[_A3]
        if timeout_ms > _I32_MAX:  # the one signed argument
            timeout_ms -= 1 << 32
        _view, size = self.view(fiber, "recv")
        if header + HEADER_BYTES > size:
            check_range("recv", header, HEADER_BYTES, size)
        if buf + cap > size:
            check_range("recv", buf, cap, size)
        if timeout_ms < -1:
            self.set_result(results, _INVALID)
            return
        actor = fiber.process.actor
        assert actor is not None
        fiber.header, fiber.buf, fiber.cap, fiber.result_at = header, buf, cap, results
        fiber.deadline = None if timeout_ms < 0 else _monotonic() + timeout_ms / 1000
        if actor.stop:  # never resumed: the run ``park`` schedules ends it
            self.park(fiber, None, deadline=fiber.deadline)
        elif not (actor.mailbox or fiber.deadline is not None) or not self._finish_recv(fiber):
            fiber.parked = True  # as ``park``, inline: the usual end of a round trip
            fiber.finish = None
            fiber.flag[0] = 0

    def _finish_recv(self, fiber: Fiber) -> bool:
        """Take the next message into the guest's buffers, or time out; False to wait on.

        The message's header goes in, and its payload if it fits (else it
        stays in the mailbox: TOOBIG), through the view of the memory made
        when the call came: the ranges were checked against it, and a guest
        waiting in a call cannot grow its memory.

        Raises:
            Stopped: The process was told to stop.
        """
        actor = fiber.process.actor
        assert actor is not None
        if actor.mailbox or actor.stop:
            code, envelope = self.table.take(actor, fiber.cap)
            if envelope is not None:
                self._put(fiber, code, envelope)
                return True
        if fiber.deadline is not None and _monotonic() >= fiber.deadline:
            self.set_result(fiber.result_at, _TIMEOUT)
            return True
        return False

    def _put(self, fiber: Fiber, code: int, envelope: Envelope) -> None:
        """Write a received message into the parked ``recv``'s buffers and set its result.

        The header goes in, and the payload if it was taken (``code`` OK;
        else it stays in the mailbox: TOOBIG).
        """
        view = fiber.view
        payload = envelope.payload
        length = len(payload)
        header = fiber.header
        view[header : header + HEADER_BYTES] = _HEADER.pack(
            envelope.kind, envelope.reason, envelope.sender, envelope.ref, length, 0
        )
        if code == _OK:
            view[fiber.buf : fiber.buf + length] = payload
            code = length
        self._i32_at.value = fiber.result_at  # as ``_set_result``, inline
        i32 = self._i32
        i32[0] = _I32
        i32[_A0] = code

    def hand(self, pid: int, envelope: Envelope) -> bool:
        """Give a message straight to ``pid``'s fiber if it waits in ``recv`` (I/O thread).

        Only while nothing is queued before it (its mailbox is empty), the
        process is not stopping and the message fits the waiting buffer:
        then the message is written into the guest's buffers at once, as
        its ``recv`` would, and the fiber is woken. False otherwise: the
        message goes to the mailbox the usual way (``ActorTable.deliver``).
        """
        fiber = self.fibers.get(pid)
        if fiber is None or not fiber.parked or fiber.finish is not None or fiber.handed:
            return False
        actor = fiber.process.actor
        if actor is None or not self.table.took_over(actor, len(envelope.payload), fiber.cap):
            return False
        self._put(fiber, _OK, envelope)
        fiber.handed = True
        self._wake(fiber)
        return True

    def _hand_to(self, fiber: Fiber, envelope: Envelope) -> bool:
        """``Actor.hand``: a message straight into ``fiber``'s waiting ``recv`` (table lock held).

        Only on the loop thread (the buffers are written with its scratch
        pointers), while the fiber waits in ``recv`` with nothing handed yet
        and the message fits: then as ``hand``, and the fiber is woken.
        """
        if (
            not fiber.parked
            or fiber.finish is not None
            or fiber.handed
            or len(envelope.payload) > fiber.cap
            or threading.get_ident() != self.thread
        ):
            return False
        self._put(fiber, _OK, envelope)
        fiber.handed = True
        self._wake(fiber)
        return True
