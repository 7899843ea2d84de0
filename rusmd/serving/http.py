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
- the head not complete ``header-timeout-s`` after its first byte, or the
  body not ``body-timeout-s`` after the head → 408.

Each of those answers once and closes the connection. Requests are
answered in arrival order (pipelining): parsed requests queue behind the
one being served, and reading pauses while the queue is long. A
keep-alive connection idle for ``idle-timeout-s`` is closed; during a
drain the response in flight says ``Connection: close`` and idle
connections close at once.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import TYPE_CHECKING, Any

import httptools

from rusmd.serving.exchange import DATE, Exchange, Mode, Request, status_line

if TYPE_CHECKING:
    from rusmd.serving.server import ListenerRuntime

# Parsed requests that may wait behind the one being served before the
# connection stops reading: bounds what one pipelining client can queue.
MAX_PIPELINED = 16
# Bytes of request line and headers together may exceed the two limits by
# this much (the request line's method and version, separators, CRLFs).
HEAD_SLACK_BYTES = 8192
# How long a connection closed between requests (idle timeout, drain)
# keeps reading and dropping what the client still sends: closing a socket
# with unread bytes makes the kernel send a reset instead of a FIN, and a
# client whose next request crossed our close would see "reset" rather
# than the clean close HTTP/1.1 lets it retry after.
LINGER_S = 2.0


class Reject(Exception):
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

    def __init__(self, listener: ListenerRuntime) -> None:
        self.listener = listener
        self.limits = listener.config
        self.transport: Any = None
        self.parser = httptools.HttpRequestParser(self)
        self.peer = ""
        self.pending: deque[Request | Reject] = deque()
        self.current: Exchange | None = None
        self.busy = False
        self.dead = False  # refused or closing: ignore further input
        self.closing = False  # close after the response in flight
        self.phase = Phase.IDLE
        self.deadline = 0.0
        self.head_seen = 0
        self.lingering = False  # half-closed between requests: drop input, then close
        self.paused = False  # reading paused by a long pipeline queue
        # Written this loop iteration, not yet sent: one response's bytes, or a list.
        self.out: bytes | list[bytes] | None = None
        self._reset()

    def _reset(self) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.header_bytes = 0
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
        self.deadline = _monotonic() + self.limits.header_timeout_s

    def data_received(self, data: bytes) -> None:
        if self.dead:
            return
        if self.phase <= _HEAD:
            self.head_seen += len(data)
        try:
            self.parser.feed_data(data)
            if self.phase == _HEAD and self.head_seen > self._head_limit():
                raise Reject(431, "request head over its limit")
        except Reject as exc:
            self._refuse(exc)
        except httptools.HttpParserUpgrade:
            # An Upgrade (h2c, websocket) on an http listener is ignored, as
            # RFC 9110 lets a server do: the request is answered normally and
            # the connection closes, since what follows is not HTTP/1.1.
            self.dead = True
            if self.transport is not None:
                self.paused = True
                self.transport.pause_reading()
        except httptools.HttpParserError as exc:
            # httptools turns an exception raised in a callback (on_url,
            # on_header, on_body) into HttpParserCallbackError and keeps the
            # original only as __context__: that is where a limit's Reject is.
            cause = exc.__context__
            self._refuse(
                cause if isinstance(cause, Reject) else Reject(400, f"malformed request ({exc})")
            )
        self._drive()

    def connection_lost(self, exc: Exception | None) -> None:
        self.dead = True
        self.out = None
        self.listener.connections.discard(self)
        current = self.current
        if current is not None:
            current.closed = True
            current.writable.set()
            self.listener.client_left(current)

    def pause_writing(self) -> None:
        if self.current is not None:
            self.current.writable.clear()

    def resume_writing(self) -> None:
        current = self.current
        if current is not None:
            current.writable.set()
            fibers = getattr(self.listener.host, "fibers", None)
            if current.pid and fibers is not None:
                fibers.wake(current.pid)  # a fiber parked in a write may go on

    # ── httptools callbacks ─────────────────────────────────────────────

    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = []
        self.header_bytes = 0
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
        # until then the head limit in ``data_received`` bounds what arrives.
        self.header_bytes += len(name) + len(value)
        lower = name.lower()
        if lower == b"content-length" and int(value) > self.limits.max_body_bytes:
            raise Reject(413, f"body over {self.limits.max_body_bytes} bytes")
        self.headers.append((lower, value))

    def on_headers_complete(self) -> None:
        limits = self.limits
        if len(self.headers) > limits.max_headers:
            raise Reject(431, f"more than {limits.max_headers} headers")
        if self.header_bytes > limits.max_header_bytes:
            raise Reject(431, f"headers over {limits.max_header_bytes} bytes")
        self.phase = _BODY
        self.deadline = _monotonic() + limits.body_timeout_s

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
        pending = self.pending
        pending.append(
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
        if len(pending) >= MAX_PIPELINED and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()

    # ── serving, in order ───────────────────────────────────────────────

    def _head_limit(self) -> int:
        return self.limits.max_url_bytes + self.limits.max_header_bytes + HEAD_SLACK_BYTES

    def _refuse(self, reject: Reject) -> None:
        self.dead = True
        self.pending.append(reject)
        if self.transport is not None:
            self.paused = True
            self.transport.pause_reading()

    def _drive(self) -> None:
        """Serve queued requests one at a time until one is in flight."""
        pending = self.pending
        while pending and not self.busy and self.transport is not None:
            item = pending.popleft()
            if isinstance(item, Reject):
                self.listener.refused(self, item)
                self.send(simple_response(item.status, item.why, close=True))
                self._close()
                return
            if not item.keep_alive or self.listener.draining:
                self.closing = True
            self.busy = True
            self.listener.dispatch(self, item)
        # (An answer given within dispatch has made the connection idle already.)
        if self.phase == _QUEUED and not self.busy and not pending and not self.dead:
            self.phase = _IDLE
            self.deadline = _monotonic() + self.limits.idle_timeout_s
            if self.paused:
                self.paused = False
                self.transport.resume_reading()

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
            self._close()
            return
        self._drive()

    def _close(self) -> None:
        self.dead = True
        self.deadline = 0.0
        if self.transport is not None:
            self.flush()
            self.transport.close()

    def _close_idle(self) -> None:
        """Close between requests: FIN now, the socket once the client is done.

        The client may have sent its next request already; it sees the FIN
        (a clean close, no response bytes) and retries elsewhere, and what it
        sent is read and dropped (``dead``) rather than answered with a reset.
        """
        if self.transport is None or not self.transport.can_write_eof():
            self._close()
            return
        self.dead = True
        self.lingering = True
        self.deadline = _monotonic() + LINGER_S
        self.flush()
        self.transport.write_eof()

    # ── time and drain (from the listener's sweep) ─────────────────────

    def expire(self, now: float) -> None:
        """Act on a passed deadline."""
        if self.lingering and now >= self.deadline:
            self._close()
            return
        if self.dead or not self.deadline or now < self.deadline:
            return
        if self.phase == Phase.IDLE and not self.head_seen:
            self._close_idle()
        elif self.phase in (Phase.IDLE, Phase.HEAD):
            self._refuse(Reject(408, "request head not received in time"))
            self._drive()
        elif self.phase == Phase.BODY:
            self._refuse(Reject(408, "request body not received in time"))
            self._drive()

    def drain(self) -> None:
        """Stop after the response in flight; close at once when idle.

        An SSE stream has no end of its own: its process is stopped
        (reason shutdown) and the stream ends cleanly.
        """
        self.closing = True
        current = self.current
        if current is not None:
            current.closing = True
            if current.mode is Mode.SSE and current.pid:
                self.listener.host.kill(current.pid, "shutdown", "the worker is stopping")
        if not self.busy and not self.pending and not self.dead:
            self._close_idle()
