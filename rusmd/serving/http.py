"""HTTP/1.1 connections of an http or sse listener, parsed with httptools.

Runs in: worker, on its I/O thread (uvloop).

httptools parses and enforces nothing, so every limit is counted here
against the listener's keys (``docs/operations.md``, "Listener limits"):

- request target longer than ``max-url-bytes`` → 414;
- more than ``max-headers`` headers, or more than ``max-header-bytes``
  of them → 431, once the head is complete; a head still arriving is cut
  off (431) as soon as it passes ``max-url-bytes`` + ``max-header-bytes``
  + 8 KiB, so a header that never ends cannot grow without bound;
- a body (declared or de-chunked) over ``max-body-bytes`` → 413, before
  it is read when ``Content-Length`` says so;
- anything httptools refuses (a bad ``Content-Length`` such as ``+5`` or
  ``0x5``, both ``Content-Length`` and chunked, a bad chunk size) → 400;
- an HTTP/1.1 request without exactly one ``Host``, or an HTTP/1.0 one
  with two → 400 (RFC 9112 §3.2); any version but 1.0 and 1.1 (0.9,
  2.0, 1.2) → 505;
- the head not complete ``header-timeout-s`` after its first byte, or the
  body not ``body-timeout-s`` after the head → 408.

Each of those answers once and closes the connection for writing; what
the client still sends (the rest of a 2 MiB header) is read and dropped
for ``LINGER_S``, so it reads our answer instead of a reset.

Requests are answered in arrival order (pipelining) by one loop
(``_pump``), never by recursion: parsed requests queue behind the one
being served; parsing stops while ``MAX_PIPELINED`` wait, and the rest of
a read waits unparsed while reading pauses; one connection serves at
most ``MAX_SERVED_PER_TURN`` requests before the loop runs other work,
and none while the client leaves its responses unread. A keep-alive
connection idle for ``idle-timeout-s`` is closed. During a drain every
request already read is answered, the last with ``Connection: close``;
an idle connection closes once it has been idle ``DRAIN_IDLE_S`` with no
request bytes waiting in the kernel, so a client's next request is
answered or goes to a live worker, never dropped.
"""

from __future__ import annotations

import asyncio
import fcntl
import sys
import termios
import time
from collections import deque
from typing import TYPE_CHECKING, Any, Protocol

import httptools

from rusmd.abi import ExitReason
from rusmd.config import model
from rusmd.config.model import Serve
from rusmd.errors import RusmError
from rusmd.wasm.exchange import DATE, Exchange, Request, status_line

if TYPE_CHECKING:
    from rusmd.wasm.host import WasmHost

# Parsed requests that may wait behind the one being served before the
# connection stops parsing (and reading): bounds what one pipelining
# client can queue. Bytes it sent beyond that wait unparsed in the
# connection's backlog, at most one read's worth, since reading pauses.
MAX_PIPELINED = 16
# Bytes handed to the parser at once: a read of pipelined requests is
# parsed in slices of this size so the queue bound holds within one read
# (a 256 KiB read of bare GETs is ~14,000 requests).
PARSE_SLICE_BYTES = 4096
# Requests one connection serves in one loop iteration before it lets the
# loop run other connections' work: a client that pipelines thousands of
# requests cannot hold the I/O thread.
MAX_SERVED_PER_TURN = 64
# Bytes of request line and headers together may exceed the two limits by
# this much (the request line's method and version, separators, CRLFs).
HEAD_SLACK_BYTES = 8192
# How long a connection closed between requests (idle timeout, drain) or
# after a refusal keeps reading and dropping what the client still sends:
# closing a socket with unread bytes makes the kernel send a reset instead
# of a FIN, and a client still sending (its next request, the rest of a
# 2 MiB header) would see "reset" rather than our answer or the clean
# close HTTP/1.1 lets it retry after.
LINGER_S = 2.0
# During a drain a keep-alive connection is closed only once it has been
# idle this long with no request bytes pending: a busy client's next
# request is usually already on its way when its previous response
# arrives, and is answered (with ``Connection: close``) rather than
# crossing our close.
DRAIN_IDLE_S = 0.5


class Reject(RusmError):
    """The request is refused with ``status`` and the connection closed."""

    def __init__(self, status: int, why: str) -> None:
        super().__init__(why)
        self.status = status
        self.why = why


def simple_response(
    status: int, text: str, *, close: bool, extra: bytes = b"", head_only: bool = False
) -> bytes:
    """A small text response the host makes itself (404, 405, 503, ...).

    For a HEAD request (``head_only``) the length is announced, the body not sent.
    """
    body = (text + "\n").encode()
    head = status_line(status) + b"content-type: text/plain; charset=utf-8\r\n" + extra
    head += DATE.line() + b"content-length: %d\r\n" % len(body)
    if close:
        head += b"connection: close\r\n"
    return head + b"\r\n" if head_only else head + b"\r\n" + body


class HttpListener(Protocol):
    """What a connection uses of its listener (``server.ListenerRuntime``)."""

    config: Serve
    host: WasmHost
    loop: asyncio.AbstractEventLoop
    # Its open connections; ``draining`` once it stopped accepting.
    connections: set[Any]
    draining: bool

    def dispatch(self, conn: HttpConnection, request: Request) -> None:
        """Serve one request of ``conn`` (it calls back ``conn.answered``)."""
        ...

    def refused(self, conn: HttpConnection, reject: Reject) -> None:
        """A request was refused (logged)."""
        ...

    def overloaded(self, transport: Any) -> None:
        """A connection past max-connections (or during a drain): 503 and close."""
        ...

    def client_left(self, exchange: Any) -> None:
        """The client of a running handler went away."""
        ...

    def defer(self, conn: HttpConnection) -> None:
        """Write ``conn``'s held-back output once this loop iteration's callbacks are done."""
        ...


class Phase:
    """Where a connection is in reading its next request (a deadline each)."""

    IDLE = 0  # between requests (keep-alive): idle-timeout-s
    HEAD = 1  # request line and headers arriving: header-timeout-s
    BODY = 2  # body arriving: body-timeout-s
    QUEUED = 3  # a whole request read; nothing to wait for from the client


# The phases as plain module constants: the hot path reads them per request.
_IDLE, _HEAD, _BODY, _QUEUED = Phase.IDLE, Phase.HEAD, Phase.BODY, Phase.QUEUED
_monotonic = time.monotonic
# Method names as the parser gives them → as requests carry them.
_METHODS = {m.encode(): m for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")}


class HttpConnection(asyncio.Protocol):
    """One client connection on an http or sse listener."""

    # Slots: read several times a request; a fixed layout keeps each read
    # one indexed load instead of a dict lookup (30 attributes fill
    # CPython's shared-key instance dicts).
    __slots__ = (
        "backlog",
        "body",
        "body_bytes",
        "busy",
        "closing",
        "connection_header",
        "current",
        "dead",
        "deadline",
        "dispatched_at",
        "draining",
        "head_seen",
        "header_bytes",
        "headers",
        "hosts",
        "idle_since",
        "limits",
        "lingering",
        "listener",
        "out",
        "parser",
        "paused",
        "peer",
        "pending",
        "phase",
        "pumping",
        "stalled_since",
        "transport",
        "turn_scheduled",
        "url",
        "write_paused",
    )

    def __init__(self, listener: HttpListener) -> None:
        self.listener = listener
        self.limits = listener.config
        self.transport: Any = None
        self.parser = httptools.HttpRequestParser(self)
        self.peer = ""
        self.pending: deque[Request | Reject] = deque()
        self.backlog = b""  # read but not yet parsed (the queue was full)
        self.current: Exchange | None = None
        self.busy = False
        self.pumping = False  # inside ``_pump``: a nested call only flags more work
        self.turn_scheduled = False  # a ``_pump`` is queued for the next iteration
        self.dead = False  # refused or closing: ignore further input
        self.closing = False  # close after the response in flight
        self.draining = False  # the listener drains: answer what was read, then close
        self.phase = Phase.IDLE
        self.deadline = 0.0
        self.idle_since = 0.0
        self.dispatched_at = 0.0  # the request in flight's start, for the duration histogram
        self.head_seen = 0
        self.lingering = False  # half-closed: drop input, then close
        self.paused = False  # reading paused (queue full, backlog, refusal)
        self.write_paused = False  # the transport's buffer is over its high-water mark
        self.stalled_since = 0.0  # when it went over
        # Written this loop iteration, not yet sent: one response's bytes, or a list.
        self.out: bytes | list[bytes] | None = None
        self._reset()

    def _reset(self) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.header_bytes = 0
        self.hosts = 0
        self.connection_header = False
        self.body: list[bytes] | None = None  # made by the first body bytes
        self.body_bytes = 0

    # ── asyncio.Protocol ────────────────────────────────────────────────

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        listener = self.listener
        if listener.draining or len(listener.connections) >= self.limits.max_connections:
            listener.overloaded(transport)
            self.dead = True
            return
        listener.connections.add(self)
        self.phase = Phase.IDLE
        self.idle_since = now = _monotonic()
        self.deadline = now + self.limits.header_timeout_s

    def data_received(self, data: bytes) -> None:
        if self.dead:
            return
        if self.backlog:
            self.backlog += data
        else:
            self.backlog = data
        self._pump()

    def connection_lost(self, exc: Exception | None) -> None:
        self.dead = True
        self.out = None
        self.backlog = b""
        self.pending.clear()
        self.listener.connections.discard(self)
        current = self.current
        if current is not None:
            current.closed = True
            current.writable.set()
            self.listener.client_left(current)

    def pause_writing(self) -> None:
        self.write_paused = True
        self.stalled_since = _monotonic()
        if self.current is not None:
            self.current.writable.clear()

    def resume_writing(self) -> None:
        self.write_paused = False
        current = self.current
        if current is not None:
            current.writable.set()
            fibers = getattr(self.listener.host, "fibers", None)
            if current.pid and fibers is not None:
                fibers.wake(current.pid)  # a fiber parked in a write may go on
        if self.pending or self.backlog:
            self._pump()  # pipelined requests held back while the client did not read

    # ── httptools callbacks ─────────────────────────────────────────────

    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = []
        self.header_bytes = 0
        self.hosts = 0
        self.connection_header = False
        self.body = None
        if self.phase != _HEAD:
            self.phase = _HEAD
            self.deadline = _monotonic() + self.limits.header_timeout_s

    def on_url(self, url: bytes) -> None:
        self.url += url
        if len(self.url) > self.limits.max_url_bytes:
            raise Reject(414, f"request target over {self.limits.max_url_bytes} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        # Counted here, checked once the head is complete (``on_headers_complete``):
        # until then the head limit in ``_parse`` bounds what arrives.
        self.header_bytes += len(name) + len(value)
        lower = name.lower()
        # Compared, not hashed: the names differ in length from most headers,
        # so each comparison ends at once (a set lookup hashes every name).
        if lower == b"host":
            self.hosts += 1
        elif lower == b"content-length" or lower == b"connection":  # noqa: PLR1714
            self._watched(lower, value)
        self.headers.append((lower, value))

    def _watched(self, lower: bytes, value: bytes) -> None:
        if lower == b"content-length":
            if int(value) > self.limits.max_body_bytes:
                raise Reject(413, f"body over {self.limits.max_body_bytes} bytes")
        else:
            self.connection_header = True

    def on_headers_complete(self) -> None:
        limits = self.limits
        if len(self.headers) > limits.max_headers:
            raise Reject(431, f"more than {limits.max_headers} headers")
        if self.header_bytes > limits.max_header_bytes:
            raise Reject(431, f"headers over {limits.max_header_bytes} bytes")
        # The common request, HTTP/1.1 with one Host and no Connection header,
        # is told by keep-alive alone (cheap: the version string is not):
        # without that header only 1.1 keeps the connection alive.
        if self.hosts != 1 or self.connection_header or not self.parser.should_keep_alive():
            self._check_version()
        self.phase = _BODY
        self.deadline = _monotonic() + limits.body_timeout_s

    def _check_version(self) -> None:
        """RFC 9112 §3.2: a 1.1 request carries exactly one Host, a 1.0 one at most one.

        Anything but 1.0 and 1.1 (0.9 has no headers at all, 2.0 is not
        spoken on this port) is refused with 505.
        """
        version = self.parser.get_http_version()
        if version == "1.1":
            if self.hosts != 1:
                raise Reject(400, "no Host header" if not self.hosts else "more than one Host")
        elif version != "1.0":
            raise Reject(505, f"HTTP/{version} is not supported (HTTP/1.0 and 1.1 are)")
        elif self.hosts > 1:
            raise Reject(400, "more than one Host")

    def on_body(self, body: bytes) -> None:
        if self.body is None:
            self.body = []
            self.body_bytes = 0
        self.body_bytes += len(body)
        if self.body_bytes > self.limits.max_body_bytes:
            raise Reject(413, f"body over {self.limits.max_body_bytes} bytes")
        self.body.append(body)

    def on_message_complete(self) -> None:
        parser = self.parser
        path, _, query = self.url.decode("latin-1").partition("?")
        if query:
            query = query.partition("#")[0]
        method = parser.get_method()
        body = self.body
        self.pending.append(
            Request(
                _METHODS.get(method) or method.decode("latin-1"),
                path,
                query,
                self.headers,
                b"".join(body) if body else b"",
                parser.should_keep_alive() and not parser.should_upgrade(),
            )
        )
        self.phase = _QUEUED
        self.deadline = 0.0
        self.head_seen = 0

    # ── reading and serving, in order ───────────────────────────────────

    def _head_limit(self) -> int:
        return self.limits.max_url_bytes + self.limits.max_header_bytes + HEAD_SLACK_BYTES

    def _pump(self) -> None:
        """Parse and serve, in order, until a request is in flight or input runs out.

        One loop, never recursion: an answer given inside ``dispatch`` (an
        inline handler) calls ``answered``, which calls here again; that
        nested call returns at once and this loop serves the next request.
        Parsing stops while ``MAX_PIPELINED`` requests wait (the rest of
        the read waits in ``backlog`` and reading pauses); serving yields
        to the loop after ``MAX_SERVED_PER_TURN`` requests, and waits while
        the client does not read its responses (``write_paused``).
        """
        if self.pumping:
            return
        self.pumping = True
        pending = self.pending
        served = 0
        try:
            while self.transport is not None:
                if pending and not self.busy:
                    if served >= MAX_SERVED_PER_TURN or self.write_paused:
                        if not self.write_paused:
                            self._next_turn()
                        break
                    served += 1
                    item = pending.popleft()
                    if isinstance(item, Reject):
                        self._answer_refusal(item)
                    else:
                        if not item.keep_alive or self.draining:
                            self._last_before_close(item)
                        self.busy = True
                        self.listener.dispatch(self, item)
                elif self.backlog and len(pending) < MAX_PIPELINED and not self.dead:
                    # The next slice of what was read goes to the parser (inline:
                    # this runs once a request).
                    data = self.backlog
                    if len(data) > PARSE_SLICE_BYTES:
                        data, self.backlog = data[:PARSE_SLICE_BYTES], data[PARSE_SLICE_BYTES:]
                    else:
                        self.backlog = b""
                    if self.phase <= _HEAD:
                        self.head_seen += len(data)
                    try:
                        self.parser.feed_data(data)
                    except (Reject, httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
                        self._parse_failed(exc)
                    else:
                        if self.phase == _HEAD and self.head_seen > self._head_limit():
                            self._refuse(Reject(431, "request head over its limit"))
                else:
                    break
        finally:
            self.pumping = False
        if self.phase == _QUEUED and not self.busy and not pending and not self.dead:
            self.phase = _IDLE
            self.idle_since = now = _monotonic()
            self.deadline = now + self.limits.idle_timeout_s
        if self.paused or self.backlog or self.dead or len(pending) >= MAX_PIPELINED:
            self._settle_reading()

    def _answer_refusal(self, reject: Reject) -> None:
        self.pending.clear()
        self.listener.refused(self, reject)
        self.send(simple_response(reject.status, reject.why, close=True))
        self._linger()

    def _last_before_close(self, request: Request) -> None:
        """Mark the connection closing if ``request``'s answer is its last."""
        if not request.keep_alive or (
            not self.pending and not self.backlog and self.phase == _QUEUED
        ):
            self.closing = True

    def _parse_failed(self, exc: Exception) -> None:
        """What the parser refused: an upgrade, a limit, a malformed request."""
        if isinstance(exc, Reject):
            self._refuse(exc)
        elif isinstance(exc, httptools.HttpParserUpgrade):
            # An Upgrade (h2c, websocket) on an http listener is ignored, as
            # RFC 9110 lets a server do: the request is answered normally and
            # the connection closes, since what follows is not HTTP/1.1.
            self.dead = True
            self.backlog = b""
        else:
            # httptools turns an exception raised in a callback (on_url,
            # on_header, on_body) into HttpParserCallbackError and keeps the
            # original only as __context__: that is where a limit's Reject is.
            cause = exc.__context__
            if isinstance(cause, Reject):
                self._refuse(cause)
            elif "HTTP version" in str(exc):
                self._refuse(Reject(505, "unsupported HTTP version"))
            else:
                self._refuse(Reject(400, f"malformed request ({exc})"))

    def _settle_reading(self) -> None:
        """After a pump: reading paused while input waits unparsed, resumed after."""
        if self.transport is None or self.lingering:
            return
        hold = self.dead or bool(self.backlog) or len(self.pending) >= MAX_PIPELINED
        if hold != self.paused:
            self.paused = hold
            if hold:
                self.transport.pause_reading()
            else:
                self.transport.resume_reading()

    def _next_turn(self) -> None:
        if not self.turn_scheduled:
            self.turn_scheduled = True
            self.listener.loop.call_soon(self._turn)

    def _turn(self) -> None:
        self.turn_scheduled = False
        self._pump()

    def _refuse(self, reject: Reject) -> None:
        self.dead = True
        self.backlog = b""
        self.pending.append(reject)

    def send(self, data: bytes) -> None:
        """Write to the socket at the end of this loop iteration (I/O thread).

        What a connection sends in one iteration goes out in one write, and
        the listener writes all its connections' together once the
        iteration's reads are handled (``ListenerRuntime.defer``): a burst
        of writes wakes a waiting client once, not once per response.
        """
        out = self.out
        if out is None:
            if self.transport is not None:
                self.out = data
                self.listener.defer(self)
        elif isinstance(out, list):
            out.append(data)
        else:
            self.out = [out, data]

    def flush(self) -> None:
        """Write what ``send`` has held back (I/O thread)."""
        out = self.out
        if out is None:
            return
        self.out = None
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(b"".join(out) if isinstance(out, list) else out)

    def answered(self) -> None:
        """The response in flight is complete: close, or serve the next."""
        self.busy = False
        self.current = None
        if self.closing or (self.dead and not self.pending):
            self._linger()
        elif not self.pumping:  # else the pump that dispatched it goes on
            self._pump()

    def _close(self) -> None:
        self.dead = True
        self.deadline = 0.0
        self.pending.clear()
        self.backlog = b""
        if self.transport is not None:
            self.flush()
            self.transport.close()

    def _linger(self) -> None:
        """Close for writing now, for reading once the client is done.

        The client may still be sending (its next request, the rest of an
        oversized head or body); it sees our answer, or a FIN (a clean
        close that HTTP/1.1 lets it retry after), never a reset: what it
        sends meanwhile is read and dropped (``dead``) for ``LINGER_S``.
        """
        transport = self.transport
        if transport is None or not transport.can_write_eof():
            self._close()
            return
        self.dead = True
        self.lingering = True
        self.pending.clear()
        self.backlog = b""
        self.deadline = _monotonic() + LINGER_S
        self.flush()
        if not transport.is_closing():
            transport.write_eof()
        if self.paused:
            self.paused = False
            transport.resume_reading()

    # ── time and drain (from the listener's sweep) ─────────────────────

    def expire(self, now: float) -> None:
        """Act on a passed deadline (and, while draining, close when idle)."""
        if self.lingering:
            if now >= self.deadline:
                self._close()
            return
        if self.write_paused and now - self.stalled_since > self.limits.body_timeout_s:
            # The client has read nothing of its responses for that long
            # (a pipelining client that never reads): nothing more can reach
            # it, so the connection and what it holds are dropped.
            self.dead = True
            self.transport.abort()
            return
        if self.draining and self._idle_for(now) >= DRAIN_IDLE_S:
            self._linger()
            return
        if self.dead or not self.deadline or now < self.deadline:
            return
        if self.phase == Phase.IDLE and not self.head_seen:
            self._linger()
        elif self.phase in (Phase.IDLE, Phase.HEAD):
            self._refuse(Reject(408, "request head not received in time"))
            self._pump()
        elif self.phase == Phase.BODY:
            self._refuse(Reject(408, "request body not received in time"))
            self._pump()

    def _idle_for(self, now: float) -> float:
        """How long nothing has been in flight, queued or arriving; 0 when busy.

        Bytes the kernel holds for us but the loop has not read yet count
        as arriving: closing on them would drop a request already sent.
        """
        if (
            self.busy
            or self.pending
            or self.backlog
            or self.phase != Phase.IDLE
            or self.head_seen
            or self.dead
        ):
            return 0.0
        if _unread_bytes(self.transport):
            return 0.0
        return now - self.idle_since

    def drain(self) -> None:
        """Answer what was read, the last response with ``Connection: close``; then close.

        A request being served or already read (pipelined) is answered; a
        request arriving on an idle keep-alive connection is answered with
        ``Connection: close``; a connection idle ``DRAIN_IDLE_S`` with no
        bytes pending closes cleanly (``expire``). An SSE stream has no end
        of its own: its process is stopped (reason shutdown) and the stream
        ends cleanly.
        """
        self.draining = True
        current = self.current
        if current is not None and current.mode is model.Protocol.SSE and current.pid:
            self.closing = True
            current.closing = True
            self.listener.host.kill(current.pid, ExitReason.SHUTDOWN, "the worker is stopping")


def _unread_bytes(transport: Any) -> int:
    """Bytes received on ``transport``'s socket that nobody has read yet (FIONREAD)."""
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None:
        return 0
    try:
        raw = fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0")
    except OSError:
        return 0
    return int.from_bytes(raw, sys.byteorder)
