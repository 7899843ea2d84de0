"""One request a guest serves: what it reads, what it answers, how it goes out.

Runs in: worker. The serving host functions (``rusm.request``,
``rusm.respond``, ``rusm.write``, ``rusm.flush``, ``rusm.sse_event``;
``serve_calls``) call into an ``Exchange`` from the thread the handler
runs on: the worker's I/O thread for an inline handler, a guest thread
otherwise. The listeners (``rusmd.serving``) make one per request.
Bytes reach the socket only on the I/O thread: an inline exchange
writes at once, a threaded one hands each write to the loop in order
(``call_soon_threadsafe`` keeps it FIFO) and waits while the socket's
send buffer is over its high-water mark.

Framing is the host's: the response goes out with ``Content-Length``
when the handler finished before anything was flushed, chunked
otherwise. Guests cannot set the framing headers (``Content-Length``,
``Transfer-Encoding``, ``Connection``, ``Upgrade``) or smuggle a CR, LF
or NUL into a header.
"""

from __future__ import annotations

import asyncio
import re
import struct
import threading
import time
from collections.abc import Callable
from email.utils import formatdate
from http import HTTPStatus
from typing import Protocol
from urllib.parse import parse_qsl, unquote

from rusmd.abi import (
    BLOCK_ENTRY_FORMAT,
    MAX_EVENT_BYTES,
    MAX_RESPONSE_HEADER_BYTES,
    MAX_STATUS,
    MIN_STATUS,
    RESPONSE_HOLD_BYTES,
    ErrorCode,
    RequestField,
)
from rusmd.config import model
from rusmd.errors import RusmError

# Headers whose framing the host owns; a guest setting one gets INVALID.
HOST_HEADERS = frozenset({b"content-length", b"transfer-encoding", b"connection", b"upgrade"})
DEFAULT_CONTENT_TYPE = b"content-type: text/plain; charset=utf-8\r\n"
SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
    b"x-accel-buffering: no\r\ntransfer-encoding: chunked\r\n"
)
_TOKEN_LINE = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+):[ \t]*([^\x00\r\n]*?)[ \t]*")
_STATUS_LINES = {
    s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n".encode("latin-1") for s in HTTPStatus
}
# A writer on a guest thread re-checks whether its client left this often
# while the socket is too full to take more.
_WRITABLE_POLL_S = 0.1


def _writable() -> threading.Event:
    event = threading.Event()
    event.set()
    return event


# Inline exchanges never wait for the socket (they run on the I/O thread):
# one shared, always-set event spares each request making its own.
_ALWAYS_WRITABLE = _writable()
# Bound once: an enum member read through its class costs ~0.1 µs.
_OK = ErrorCode.OK
_CLOSED, _INVALID, _TOOBIG = ErrorCode.CLOSED, ErrorCode.INVALID, ErrorCode.TOOBIG
# Line ends, as the byte values ``in`` looks for: ``b"\n" in data`` first tries
# the bytes as an integer and pays for the exception (~0.3 µs an event).
_LF, _CR = ord("\n"), ord("\r")
_monotonic = time.monotonic
# ``data: `` and the blank line after it: an unnamed event's bytes besides its data.
_DATA_FRAMING_BYTES = len(b"data: \n\n")


def status_line(status: int) -> bytes:
    """``HTTP/1.1 <status> <reason>\\r\\n`` (a bare code for unnamed statuses)."""
    line = _STATUS_LINES.get(status)
    if line is None:
        line = f"HTTP/1.1 {status} Status {status}\r\n".encode()
    return line


class _DateHeader:
    """The ``date`` header, formatted once a second."""

    def __init__(self) -> None:
        self._second = 0
        self._line = b""

    def line(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._line = f"date: {formatdate(now, usegmt=True)}\r\n".encode()
        return self._line


DATE = _DateHeader()
# Status line + default content type, by status: the head of a response
# that set no headers of its own (``Exchange.complete``).
_PLAIN_HEADS: dict[int, bytes] = {}
# The request block's entry header (``abi.BLOCK_ENTRY_FORMAT``), and the
# fields it names, bound once: this runs once per request that asks.
_BLOCK_ENTRY = struct.Struct(BLOCK_ENTRY_FORMAT).pack
_BLOCK = RequestField.BLOCK.value
_METHOD = RequestField.METHOD.value
_PATH = RequestField.PATH.value
_QUERY = RequestField.QUERY.value
_PARAM = RequestField.PARAM.value
_HEADER = RequestField.HEADER.value

# The params of a request no route parameter was bound for (never mutated).
_NO_PARAMS: dict[str, str] = {}


class Request:
    """A parsed request, as the handler reads it.

    Attributes:
        method: ``GET``, ``POST``, ...
        path: The path as sent (percent-encoded), without the query.
        query: The raw query string, without the ``?``.
        headers: (lower-case name, value) pairs in arrival order.
        body: The de-chunked body.
        params: Route parameters, decoded.
        keep_alive: The client wants the connection kept open.
    """

    __slots__ = ("body", "headers", "keep_alive", "method", "params", "path", "query")

    def __init__(  # noqa: PLR0917 (positional: made once a request, keywords cost ~0.25 µs)
        self,
        method: str,
        path: str,
        query: str,
        headers: list[tuple[bytes, bytes]],
        body: bytes = b"",
        keep_alive: bool = True,
        params: dict[str, str] | None = None,
    ) -> None:
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers
        self.body = body
        self.params: dict[str, str] = _NO_PARAMS if params is None else params
        self.keep_alive = keep_alive

    def header(self, name: bytes) -> bytes | None:
        """A header's value (repeats joined with ``, ``), or None."""
        lower = name.lower()
        values = [v for n, v in self.headers if n == lower]
        if not values:
            return None
        return b", ".join(values)

    def block(self) -> bytes:
        """The request block (``RequestField.BLOCK``): every field but the body at once."""
        entry = _BLOCK_ENTRY
        method = self.method.encode()
        path = self.path.encode()
        query = self.query.encode()
        parts = [
            entry(_METHOD, 0, len(method)),
            method,
            entry(_PATH, 0, len(path)),
            path,
            entry(_QUERY, 0, len(query)),
            query,
        ]
        for name, text in self.params.items():
            key, value = name.encode(), text.encode()
            parts += (entry(_PARAM, len(key), len(value)), key, value)
        for key, value in self.headers:
            parts += (entry(_HEADER, len(key), len(value)), key, value)
        return b"".join(parts)

    def field(self, which: int, key: bytes) -> bytes | ErrorCode:
        """``rusm.request``: the bytes of one request field, or an error code."""
        if which == _BLOCK:
            return self.block()
        if which == RequestField.METHOD:
            return self.method.encode()
        if which == RequestField.PATH:
            return self.path.encode()
        if which == RequestField.QUERY:
            return self.query.encode()
        if which == RequestField.BODY:
            return self.body
        if which == RequestField.HEADERS:
            return b"".join(n + b": " + v + b"\n" for n, v in self.headers)
        if which == RequestField.HEADER:
            header = self.header(key)
            return ErrorCode.NOTFOUND if header is None else header
        if which == RequestField.PARAM:
            param = self.params.get(key.decode("utf-8", "replace"))
            return ErrorCode.NOTFOUND if param is None else param.encode()
        if which == RequestField.QUERY_PARAM:
            wanted = unquote(key.decode("utf-8", "replace"))
            for name, text in parse_qsl(self.query, keep_blank_values=True):
                if name == wanted:
                    return text.encode()
            return ErrorCode.NOTFOUND
        return ErrorCode.INVALID


class Sink(Protocol):
    """The connection an exchange writes to; every method runs on the I/O thread."""

    def send(self, data: bytes) -> None: ...


class HeaderError(RusmError, ValueError):
    """A guest's response header block is malformed; the message says where."""


def parse_header_block(block: bytes) -> tuple[bytes, bool]:
    """Guest header lines → wire lines; and whether a content-type was set.

    A handler usually sends the same block on every request (a constant in
    its data), so a block parsed once is answered from ``_PARSED_BLOCKS``.

    Raises:
        HeaderError: A line that is not ``Name: value``, a CR/NUL in a value,
            or a header the host owns.
    """
    parsed = _PARSED_BLOCKS.get(block)
    if parsed is None:
        parsed = _parse_header_block(block)
        if len(_PARSED_BLOCKS) >= PARSED_BLOCKS_KEPT:
            _PARSED_BLOCKS.clear()
        _PARSED_BLOCKS[block] = parsed
    return parsed


# Header blocks parsed, by their bytes: bounded so that handlers sending a
# different block per request (a per-request cookie, say) cost a parse each
# and never grow the worker's memory.
PARSED_BLOCKS_KEPT = 256
_PARSED_BLOCKS: dict[bytes, tuple[bytes, bool]] = {}


def _parse_header_block(block: bytes) -> tuple[bytes, bool]:
    out = []
    has_type = False
    for number, raw in enumerate(block.split(b"\n"), 1):
        line = raw[:-1] if raw.endswith(b"\r") else raw
        if not line:
            continue
        found = _TOKEN_LINE.fullmatch(line)
        if found is None:
            shown = line[:80].decode("utf-8", "replace")
            raise HeaderError(f"header line {number} {shown!r} is not 'Name: value'")
        name = found.group(1).lower()
        if name in HOST_HEADERS:
            raise HeaderError(f"header line {number}: {name.decode()} is set by the host")
        if name == b"content-type":
            has_type = True
        out.append(found.group(1) + b": " + found.group(2) + b"\r\n")
    return b"".join(out), has_type


class Exchange:
    """One request (HTTP or SSE) being served by a guest.

    Args:
        request: The parsed request.
        sink: The connection, written on the I/O thread.
        mode: HTTP or SSE.
        inline: The handler runs on the I/O thread itself.
        call_soon: ``loop.call_soon_threadsafe`` (used when not inline).
        head_only: A HEAD request: the body is counted, never sent.
    """

    # Defaults shared by every exchange until set (one per request: its
    # construction is on the hot path, so it writes only what differs).
    status = 0
    head = b""  # validated guest header lines
    has_type = False
    held_bytes = 0
    started = False  # the head went out: chunked from here on
    closing = False  # the connection closes after this response
    closed = False  # the client left (set on the I/O thread)
    timed_out = False  # the wall budget ran out
    done = False
    last_write = 0.0  # monotonic time of the last write (SSE heartbeats)
    budget_ms = 0  # the wall budget (inline handlers: the CPU deadline too)
    pid = 0
    component = ""
    timer: asyncio.TimerHandle | None = None
    problem = ""  # why the guest's response was refused (for the log)
    _flush_scheduled = False
    inline = False
    # Inline exchanges never wait for the socket (they run on the I/O thread).
    writable = _ALWAYS_WRITABLE
    call_soon: Callable[..., object]  # set only when not inline

    def __init__(  # noqa: PLR0917 (positional: made once a request, keywords cost ~0.25 µs)
        self,
        request: Request,
        sink: Sink,
        mode: model.Protocol,
        inline: bool,
        call_soon: Callable[..., object],
        head_only: bool = False,
    ) -> None:
        self.request = request
        self.sink = sink
        self.mode = mode
        self.head_only = head_only
        self.held: list[bytes] = []
        if inline:
            self.inline = True
        else:
            self.call_soon = call_soon
            self.writable = _writable()
            self._outbox: list[bytes] = []
            self._outbox_lock = threading.Lock()
            self.last_write = time.monotonic()

    def read(self, which: int, key: bytes) -> bytes | ErrorCode:
        """``rusm.request``: the bytes of one request field, or an error code."""
        return self.request.field(which, key)

    def run_on_loop(self) -> None:
        """Its process runs as a fiber on the I/O thread: send directly.

        ``writable`` stays the connection's real state; the fiber's writes
        park on it (``fiber_writes.WRITERS``) instead of waiting here.
        """
        self.inline = True

    # ── the response ────────────────────────────────────────────────────

    def respond(self, status: int, headers: bytes, body: bytes) -> ErrorCode:
        """``rusm.respond``: set the status and headers, hold the first body bytes."""
        if self.closed:
            return ErrorCode.CLOSED
        if self.status:
            return ErrorCode.EXISTS
        if not MIN_STATUS <= status <= MAX_STATUS:
            self.problem = f"status {status} is not 200-599"
            return ErrorCode.INVALID
        if headers:
            if len(headers) > MAX_RESPONSE_HEADER_BYTES:
                self.problem = f"{len(headers)} header bytes (at most {MAX_RESPONSE_HEADER_BYTES})"
                return ErrorCode.TOOBIG
            try:
                self.head, self.has_type = parse_header_block(headers)
            except HeaderError as exc:
                self.problem = str(exc)
                return ErrorCode.INVALID
        self.status = status
        if not body:
            return _OK
        self.held.append(body)  # as ``write`` does, without the second call
        self.held_bytes = held = self.held_bytes + len(body)
        return self.flush() if held > RESPONSE_HOLD_BYTES else _OK

    def write(self, data: bytes) -> ErrorCode:
        """``rusm.write``: append to the body (an implicit 200 first)."""
        if self.closed:
            return ErrorCode.CLOSED
        if not self.status:
            self.status = 200
        if not data:
            return ErrorCode.OK
        self.held.append(data)
        self.held_bytes += len(data)
        if self.held_bytes > RESPONSE_HOLD_BYTES:
            return self.flush()
        return ErrorCode.OK

    def flush(self) -> ErrorCode:
        """``rusm.flush``: send the head (once) and what is held, chunked."""
        if self.closed:
            return ErrorCode.CLOSED
        if not self.status:
            self.status = 200
        out = b""
        if not self.started:
            self.started = True
            out = (
                SSE_HEAD + DATE.line() + b"\r\n"
                if self.mode is model.Protocol.SSE
                else self._head(chunked=True)
            )
        if self.held and not self.head_only:
            body = b"".join(self.held)
            out += b"%x\r\n%b\r\n" % (len(body), body)
        self.held.clear()
        self.held_bytes = 0
        if out:
            self._send(out)
        return ErrorCode.OK

    def sse_event(self, name: bytes, data: bytes) -> ErrorCode:
        """``rusm.sse_event``: one event on the stream (the head goes first)."""
        if self.closed:
            return _CLOSED
        if name and (_LF in name or _CR in name):
            return _INVALID
        if len(data) > MAX_EVENT_BYTES:
            return _TOOBIG
        if _LF in data or _CR in data:  # a data line each
            data = b"\ndata: ".join(data.replace(b"\r\n", b"\n").split(b"\n"))
        if name:
            event = b"event: %b\ndata: %b\n\n" % (name, data)
            chunk = b"%x\r\n%b\r\n" % (len(event), event)
        else:  # the common event, framed as its chunk in one piece
            chunk = b"%x\r\ndata: %b\n\n\r\n" % (len(data) + _DATA_FRAMING_BYTES, data)
        if not self.started:
            self.started = True
            self.status = 200
            chunk = SSE_HEAD + DATE.line() + b"\r\n" + chunk
        if self.inline:  # as ``_send``, inline: a stream sends thousands of these
            self.last_write = _monotonic()
            self.sink.send(chunk)
        else:
            self._send(chunk)
        return _OK

    def heartbeat(self) -> None:
        """An idle SSE stream's keep-alive comment (I/O thread)."""
        if self.started and not self.done and not self.closed:
            comment = b": heartbeat\n\n"
            self.last_write = time.monotonic()
            self.sink.send(b"%x\r\n%b\r\n" % (len(comment), comment))

    def _head(self, *, chunked: bool, length: int = 0) -> bytes:
        head = status_line(self.status) + self.head
        if not self.has_type:
            head += DEFAULT_CONTENT_TYPE
        head += DATE.line()
        if chunked:
            head += b"transfer-encoding: chunked\r\n"
        else:
            head += b"content-length: %d\r\n" % length
        if self.closing:
            head += b"connection: close\r\n"
        return head + b"\r\n"

    def _send(self, data: bytes) -> None:
        self.last_write = time.monotonic()
        if self.inline:
            self.sink.send(data)
            return
        while not self.writable.wait(_WRITABLE_POLL_S):
            if self.closed:
                return
        # Writes from the guest thread coalesce: one hand-off to the I/O
        # thread carries everything written until it runs.
        with self._outbox_lock:
            self._outbox.append(data)
            if self._flush_scheduled:
                return
            self._flush_scheduled = True
        self.call_soon(self._drain_outbox)

    def _drain_outbox(self) -> None:
        """Send what the guest thread wrote (I/O thread)."""
        with self._outbox_lock:
            data = b"".join(self._outbox)
            self._outbox.clear()
            self._flush_scheduled = False
        self.sink.send(data)

    # ── the end (I/O thread) ────────────────────────────────────────────

    def complete(self) -> bool:
        """The handler returned: send the rest; False if it never answered."""
        if self.done:
            return True
        self.done = True
        if self.closed:
            return True
        if not self.status:
            return False
        if self.started:
            if self.head_only:  # a HEAD response has no body, not even the last chunk
                return True
            tail = b""
            if self.held:
                body = b"".join(self.held)
                tail = b"%x\r\n%b\r\n" % (len(body), body)
            self.sink.send(tail + b"0\r\n\r\n")
            return True
        held = self.held
        body = (held[0] if len(held) == 1 else b"".join(held)) if held else b""
        if self.head or self.has_type or self.closing or self.head_only:
            head = self._head(chunked=False, length=len(body))
            self.sink.send(head if self.head_only else head + body)
            return True
        # The common answer: the default type, kept alive, made in one piece.
        prefix = _PLAIN_HEADS.get(self.status)
        if prefix is None:
            prefix = _PLAIN_HEADS[self.status] = status_line(self.status) + DEFAULT_CONTENT_TYPE
        self.sink.send(b"%b%bcontent-length: %d\r\n\r\n%b" % (prefix, DATE.line(), len(body), body))
        return True
