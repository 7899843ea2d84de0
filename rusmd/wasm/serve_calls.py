"""The serving half of the ``rusm`` host functions: request, respond, SSE, WebSocket.

Runs in: worker, on the thread of the calling handler (the I/O thread for
an inline HTTP handler or a fiber, else the process's guest thread).

Each function checks its pointers against the caller's memory (a bad one
crashes the caller alone) and acts on the caller's exchange: the request
or connection it serves. A process that serves none gets UNAVAILABLE, as
does a function of the wrong kind (``ws_send`` in an HTTP handler).
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from typing import Any

from rusmd.abi import MAX_EVENT_BYTES, ErrorCode
from rusmd.config.model import LogLevel, Protocol
from rusmd.log import Logger
from rusmd.wasm.memory import BadPointer, GuestMemory, check_range
from rusmd.wasm.process import Process, log_for

Impl = Callable[[Process, Any], None]
# Enum members bound once: reading one through its class runs the enum
# type's attribute hook (~0.1 µs), and these are read on every request.
_WS = Protocol.WS
_SSE = Protocol.SSE
_UNAVAILABLE = ErrorCode.UNAVAILABLE
_memmove = ctypes.memmove
_TOOBIG = ErrorCode.TOOBIG


class ServeCalls:
    """Host functions over the exchange a process serves.

    Args:
        log: The worker's logger (for a guest's refused responses).
    """

    def __init__(self, log: Logger) -> None:
        self.log = log

    # Implementations that read their i32 values in place (``args[4 * k]``).
    RAW = frozenset({"request", "respond"})

    def implementations(self) -> dict[str, Impl]:
        """Host function name → implementation."""
        return {
            "request": self.request,
            "respond": self.respond,
            "write": self.write,
            "flush": self.flush,
            "sse_event": self.sse_event,
            "ws_send": self.ws_send,
            "ws_close": self.ws_close,
        }

    def _memory(self, process: Process, function: str) -> GuestMemory:
        if process.memory is None:
            raise BadPointer(f"rusm.{function}: the module exports no memory")
        return process.memory

    def _read(self, process: Process, function: str, ptr: int, length: int) -> bytes:
        return self._memory(process, function).read(function, ptr, length)

    def _exchange(self, process: Process, *modes: Protocol) -> Any:
        exchange = process.exchange
        if exchange is None or exchange.mode not in modes:
            return None
        return exchange

    def _refused(self, process: Process, function: str, code: ErrorCode) -> None:
        exchange = process.exchange
        if code in (ErrorCode.INVALID, ErrorCode.TOOBIG) and exchange is not None:
            why = exchange.problem or code.name
            log_for(self.log, process, LogLevel.WARN, f"{process.label}: rusm.{function}: {why}")

    def request(self, process: Process, args: Any) -> None:
        """``rusm.request(field, key_ptr, key_len, buf_ptr, buf_cap)``.

        A handler's first host calls (its params, headers, the request
        block), so read in place (``RAW``): value ``k`` at ``args[4 * k]``.
        """
        memory = process.memory
        if memory is None:
            raise BadPointer("rusm.request: the module exports no memory")
        key, buffer, capacity = memory.key_and_buffer(
            "request", args[4], args[8], args[12], args[16]
        )
        exchange = process.exchange
        if exchange is None:
            args[0] = _UNAVAILABLE
            return
        found = exchange.read(args[0], key)
        if found.__class__ is ErrorCode:
            args[0] = found
            return
        if capacity and found:
            _memmove(buffer, found, min(capacity, len(found)))
        args[0] = len(found)

    def respond(self, process: Process, args: Any) -> None:
        """``rusm.respond(status, headers_ptr, headers_len, body_ptr, body_len)``.

        The hottest host call (one a request): its values are read in place
        (``RAW``), value ``k`` at ``args[4 * k]``.
        """
        memory = process.memory
        if memory is None:
            raise BadPointer("rusm.respond: the module exports no memory")
        head, body = memory.read_two("respond", args[4], args[8], args[12], args[16])
        exchange = process.exchange
        if exchange is None or exchange.mode is _WS:
            args[0] = _UNAVAILABLE
            return
        code = exchange.respond(args[0], head, body)
        if code:
            self._refused(process, "respond", code)
        args[0] = code

    def write(self, process: Process, values: Any) -> None:
        data = self._read(process, "write", values[0].i32, values[1].i32)
        exchange = self._exchange(process, Protocol.HTTP)
        values[0].i32 = ErrorCode.UNAVAILABLE if exchange is None else exchange.write(data)

    def flush(self, process: Process, values: Any) -> None:
        exchange = self._exchange(process, Protocol.HTTP, Protocol.SSE)
        values[0].i32 = ErrorCode.UNAVAILABLE if exchange is None else exchange.flush()

    def _payload(self, process: Process, function: str, ptr: int, length: int) -> bytes | None:
        """An event or frame's bytes (range checked first); None past MAX_EVENT_BYTES."""
        memory = self._memory(process, function)
        check_range(function, ptr, length, memory.size())
        if length > MAX_EVENT_BYTES:
            return None
        return memory.read(function, ptr, length) if length else b""

    def sse_event(self, process: Process, values: Any) -> None:
        name = self._read(process, "sse_event", values[0].i32, values[1].i32)
        data = self._payload(process, "sse_event", values[2].i32, values[3].i32)
        values[0].i32 = self.sse_event_data(process, name, data)

    def sse_event_data(self, process: Process, name: bytes, data: bytes | None) -> int:
        """``rusm.sse_event`` once its bytes are read (``data`` None: past MAX_EVENT_BYTES).

        A fiber reads them itself (``fibers``) and calls this.
        """
        exchange = process.exchange
        if exchange is None or exchange.mode is not _SSE:
            return _UNAVAILABLE
        if data is None:
            return _TOOBIG
        code: int = exchange.sse_event(name, data)
        return code

    def ws_send(self, process: Process, values: Any) -> None:
        data = self._payload(process, "ws_send", values[1].i32, values[2].i32)
        values[0].i32 = self.ws_send_data(process, values[0].i32, data)

    def ws_send_data(self, process: Process, kind: int, data: bytes | None) -> int:
        """``rusm.ws_send`` once its bytes are read (``data`` None: past MAX_EVENT_BYTES).

        A fiber reads them itself (``fibers``) and calls this.
        """
        exchange = process.exchange
        if exchange is None or exchange.mode is not _WS:
            return _UNAVAILABLE
        if data is None:
            return _TOOBIG
        code: int = exchange.ws_send(kind, data)
        return code

    def ws_close(self, process: Process, values: Any) -> None:
        code = values[0].i32
        reason = self._read(process, "ws_close", values[1].i32, values[2].i32)
        exchange = self._exchange(process, Protocol.WS)
        values[0].i32 = (
            ErrorCode.UNAVAILABLE if exchange is None else exchange.ws_close(code, reason)
        )
