"""The serving writes as a fiber makes them: parked while the client reads slowly.

Runs in: worker, on its loop thread (inside a fiber's poll, or when the
scheduler finishes a parked write).

``ws_send``, ``sse_event``, ``write`` and ``flush`` of a process that runs
as a fiber (``fibers``) are async host functions: while the client's
socket is backed up (its exchange's ``writable`` is clear) the fiber
parks, and the socket draining wakes it (the listener calls
``FiberScheduler.wake``); then the write runs as it would on a guest
thread (``serve_calls``). The common case, a writable socket, sends at
once from the guest's memory.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from rusmd.abi import MAX_EVENT_BYTES
from rusmd.config import model
from rusmd.wasm import capi
from rusmd.wasm.abi import FUNCTIONS
from rusmd.wasm.fiber import A0, A1, A2, A3, Body, Fiber, i32_index
from rusmd.wasm.fibers import FiberScheduler
from rusmd.wasm.memory import check_range
from rusmd.wasm.serve_calls import ServeCalls

_WS, _SSE = model.Protocol.WS, model.Protocol.SSE
# Serving functions that wait while the client reads too slowly: async on
# a fiber (the fiber parks), as a thread they wait on the exchange.
WRITERS = ("ws_send", "sse_event", "write", "flush")


class ServingWrites:
    """The async serving writes.

    Args:
        fibers: The worker's scheduler (it parks and finishes them).
        serve_calls: The serving host functions (the writes run them).
    """

    def __init__(self, fibers: FiberScheduler, serve_calls: ServeCalls) -> None:
        self.fibers = fibers
        self.serve_calls = serve_calls

    def bodies(self) -> dict[str, Body]:
        """Host function name → async body (``FiberScheduler.define``)."""
        bodies: dict[str, Body] = {"ws_send": self._ws_send, "sse_event": self._sse_event}
        for name in WRITERS:
            if name not in bodies:
                bodies[name] = self._writer(name)
        return bodies

    def _ws_send(self, fiber: Fiber, args: int, results: int) -> None:
        """``rusm.ws_send(kind, ptr, len)``: its frame goes out once the socket takes it."""
        u32 = self.fibers.u32(args)
        kind, ptr, length = u32[A0], u32[A1], u32[A2]
        view, size = self.fibers.view(fiber, "ws_send")
        if ptr + length > size:
            check_range("ws_send", ptr, length, size)
        process = fiber.process
        exchange = process.exchange
        writable = getattr(exchange, "writable", None)  # as ``_blocked``, inline
        if writable is not None and not writable.is_set() and not exchange.closed:
            self._park_write(fiber, partial(self._ws_send_later, fiber, results, kind, ptr, length))
            return
        if exchange is not None and exchange.mode is _WS and length <= MAX_EVENT_BYTES:
            code = exchange.ws_send(kind, view[ptr : ptr + length].tobytes())
        else:  # as ``ws_send_data`` does it, which the common case above skips
            data = view[ptr : ptr + length].tobytes() if length <= MAX_EVENT_BYTES else None
            code = self.serve_calls.ws_send_data(process, kind, data)
        self.fibers.set_result(results, code)

    def _ws_send_later(self, fiber: Fiber, results: int, kind: int, ptr: int, length: int) -> bool:
        if _blocked(fiber.process.exchange):
            return False
        view, _size = self.fibers.view(fiber, "ws_send")
        data = _payload(view, ptr, length)
        self.fibers.set_result(results, self.serve_calls.ws_send_data(fiber.process, kind, data))
        return True

    def _sse_event(self, fiber: Fiber, args: int, results: int) -> None:
        """``rusm.sse_event(name, name_len, data, data_len)``: once the socket takes it."""
        u32 = self.fibers.u32(args)
        name_ptr, name_len, ptr, length = u32[A0], u32[A1], u32[A2], u32[A3]
        view, size = self.fibers.view(fiber, "sse_event")
        if name_ptr + name_len > size:
            check_range("sse_event", name_ptr, name_len, size)
        if ptr + length > size:
            check_range("sse_event", ptr, length, size)
        process = fiber.process
        exchange = process.exchange
        writable = getattr(exchange, "writable", None)  # as ``_blocked``, inline
        if writable is not None and not writable.is_set() and not exchange.closed:
            later = partial(self._sse_event_later, fiber, results, name_ptr, name_len, ptr, length)
            self._park_write(fiber, later)
            return
        name = view[name_ptr : name_ptr + name_len].tobytes() if name_len else b""
        if exchange is not None and exchange.mode is _SSE and length <= MAX_EVENT_BYTES:
            code = exchange.sse_event(name, view[ptr : ptr + length].tobytes())
        else:  # as ``sse_event_data`` does it, which the common case above skips
            data = view[ptr : ptr + length].tobytes() if length <= MAX_EVENT_BYTES else None
            code = self.serve_calls.sse_event_data(process, name, data)
        self.fibers.set_result(results, code)

    def _sse_event_later(  # noqa: PLR0917 (the parked call's arguments)
        self, fiber: Fiber, results: int, name_ptr: int, name_len: int, ptr: int, length: int
    ) -> bool:
        if _blocked(fiber.process.exchange):
            return False
        view, _size = self.fibers.view(fiber, "sse_event")
        name = view[name_ptr : name_ptr + name_len].tobytes() if name_len else b""
        data = _payload(view, ptr, length)
        self.fibers.set_result(results, self.serve_calls.sse_event_data(fiber.process, name, data))
        return True

    def _writer(self, name: str) -> Callable[[Fiber, int, int], None]:
        """The async form of serving function ``name`` (``write``, ``flush``): it
        waits, parked, while the client's socket is backed up, then runs as usual."""
        implementation = getattr(self.serve_calls, name)
        indexes = [i32_index(k) for k in range(len(FUNCTIONS[name].params))]

        def body(fiber: Fiber, args: int, results: int) -> None:
            process = fiber.process
            given = self.fibers.values(args)
            values = capi.Values()
            for k, index in enumerate(indexes):
                values[k].i32 = given[index]

            def finish() -> bool:
                if _blocked(process.exchange):
                    return False
                implementation(process, values)
                self.fibers.set_result(results, values[0].i32)
                return True

            if not finish():
                self._park_write(fiber, finish)

        return body

    def _park_write(self, fiber: Fiber, finish: Callable[[], bool]) -> None:
        """Park ``fiber`` in a serving write until the socket drains (or the client leaves)."""
        self.fibers.park(fiber, finish)


def _blocked(exchange: Any) -> bool:
    """Whether a serving write must wait: the socket is full and the client still there."""
    writable = getattr(exchange, "writable", None)
    return writable is not None and not writable.is_set() and not exchange.closed


def _payload(view: memoryview, ptr: int, length: int) -> bytes | None:
    """An event or frame's bytes (the range is checked); None past MAX_EVENT_BYTES."""
    if length > MAX_EVENT_BYTES:
        return None
    return view[ptr : ptr + length].tobytes() if length else b""
