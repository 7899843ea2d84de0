"""WebSocket connections of a ws listener: one wasm process per connection.

Runs in: worker, on its I/O thread (uvloop); ``WsExchange``'s guest-side
methods run on the connection process's guest thread.

The websockets library's sans-I/O ``ServerProtocol`` parses the
handshake and the frames; this module moves bytes and messages. After a
good handshake the listener's ``name`` component is spawned (its entry
runs for the connection's life) and only then is ``101`` sent, so a
worker at its process limit answers ``503`` instead. Each complete
message (fragments joined, at most ``max-message-bytes``, past which the
library closes with 1009) reaches the process's mailbox as a ``FRAME``
message; the client's close as a ``CLOSED`` message, after which the
process has ``CLOSE_GRACE_S`` to exit (as it has once the connection is
gone after the guest's own ``ws_close``). When the process exits the socket
closes with 1000 (normal) or 1011 (crashed or killed). Pings are
answered by the library; the host pings every ``heartbeat-s``. Once both
the socket and the process are gone, the connection lets go of its
exchange and of its protocol's parser, so reference counting frees it at
once (a burst of sockets is not left for the cycle collector).

The common frames take a shorter path than the library's generic one,
with the same result. A read made only of whole, unfragmented, masked
text and binary frames within ``max-message-bytes`` (what a client
sends, one message a frame) is unmasked and delivered here, while the
protocol is open and its parser holds nothing; anything else (a control
frame, a fragment, a frame cut across reads, an oversized or malformed
one) and the rest of that read go to the library's parser. A message
for a process that waits in ``rusm.recv`` as a fiber, with nothing
queued before it, goes straight into its buffers
(``FiberScheduler.hand``); any other goes to its mailbox. A process's
messages go out as unmasked frames made here (server frames have no
mask, and no extension is ever negotiated), appended to the protocol's
output in order with its own frames (pongs, the close).
"""

from __future__ import annotations

import asyncio
import struct
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from websockets.frames import Frame, Opcode
from websockets.http11 import Request as WsRequest
from websockets.protocol import State
from websockets.server import ServerProtocol

try:  # the library's own C unmasking, as its parser uses
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover (a build without the extension)
    from websockets.utils import apply_mask

from rusmd.abi import MAX_EVENT_BYTES, ErrorCode, ExitReason, Kind, WsKind
from rusmd.actors.records import Envelope
from rusmd.config import model
from rusmd.config.model import Serve
from rusmd.errors import SpawnError
from rusmd.log import Logger
from rusmd.serving.http import simple_response
from rusmd.wasm.exchange import Request
from rusmd.wasm.process import ExitReport

if TYPE_CHECKING:
    from rusmd.wasm.host import WasmHost

# After the client's close (or disconnect) the process gets this long to
# exit on its own before it is stopped with reason shutdown.
CLOSE_GRACE_S = 5.0
# A close reason is at most 123 bytes (RFC 6455: 125-byte control payload).
MAX_CLOSE_REASON_BYTES = 123
# Status codes a guest may close with.
_GUEST_CLOSE_CODES = frozenset({1000}) | frozenset(range(3000, 5000))
_WRITABLE_POLL_S = 0.1
# Bound once: an enum member read through its class costs ~0.1 µs, and
# these are read for every message.
_OPEN = State.OPEN
_TEXT, _BINARY = WsKind.TEXT, WsKind.BINARY
_FRAME = Kind.FRAME
_OK, _LIMIT, _CLOSED = ErrorCode.OK, ErrorCode.LIMIT, ErrorCode.CLOSED
_INVALID, _TOOBIG = ErrorCode.INVALID, ErrorCode.TOOBIG
_monotonic = time.monotonic
# A server frame's head: FIN and the opcode, then the unmasked length
# (RFC 6455 §5.2): in the second byte below 126, else 126 and 16 bits, or
# 127 and 64 bits.
_FIN_TEXT, _FIN_BINARY = 0x80 | Opcode.TEXT, 0x80 | Opcode.BINARY
_FIN_DATA = (_FIN_TEXT, _FIN_BINARY)
_HEAD_16 = struct.Struct("!BBH")
_HEAD_64 = struct.Struct("!BBQ")
# The parts of the library's protocol the frame fast path reads
# (``WsConnection._whole_frames``; releases before 15 name the first
# ``cur_size``); without them every frame takes the library's parser.
_FAST_FRAMES = all(hasattr(ServerProtocol(), name) for name in ("current_size", "reader"))


def _never_handed(_pid: int, _envelope: Envelope) -> bool:
    return False


class WsListener(Protocol):
    """What a connection uses of its listener (``server.ListenerRuntime``)."""

    config: Serve
    host: WasmHost
    log: Logger
    loop: asyncio.AbstractEventLoop
    # Its open connections; ``draining`` once it stopped accepting.
    connections: set[Any]
    draining: bool
    # The ``retry-after`` header line of its 503s.
    retry: bytes

    def access(self, method: str, path: str, status: int) -> None:
        """The access log line (info)."""
        ...

    def when_loaded(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` once the components are loaded (or at ``timeout-s``)."""
        ...

    def overloaded(self, transport: Any) -> None:
        """A connection past max-connections (or during a drain): 503 and close."""
        ...

    def defer(self, conn: WsConnection) -> None:
        """Write ``conn``'s held-back output once this loop iteration's callbacks are done."""
        ...


class WsExchange:
    """The connection as its process sees it (``rusm.request``, ``ws_send``, ``ws_close``)."""

    mode = model.Protocol.WS

    def __init__(self, request: Request, conn: WsConnection, call_soon: Any) -> None:
        self.request = request
        self.conn = conn
        self.call_soon = call_soon
        self.closed = False
        self.pid = 0
        self.writable = conn.writable
        # Made on the I/O thread; a process run as a fiber calls from it too.
        self.loop_thread = threading.get_ident()
        self._outbox: list[tuple[int, bytes]] = []
        self._outbox_lock = threading.Lock()
        self._flush_scheduled = False
        self.problem = ""

    def read(self, which: int, key: bytes) -> bytes | ErrorCode:
        """``rusm.request`` on the upgrade request."""
        return self.request.field(which, key)

    def ws_send(self, kind: int, data: bytes) -> ErrorCode:
        """``rusm.ws_send`` (guest thread, or the I/O thread for a fiber).

        A fiber calls it only once the socket is writable (``fibers``
        parks it until then), and its frame goes out at once.
        """
        if self.closed:
            return _CLOSED
        if kind != _TEXT and kind != _BINARY:  # noqa: PLR1714 (two compares beat a set here)
            return _INVALID
        if len(data) > MAX_EVENT_BYTES:
            return _TOOBIG
        if kind == _TEXT:
            try:
                data.decode("utf-8")
            except UnicodeDecodeError:
                return _INVALID
        if threading.get_ident() == self.loop_thread:
            self.conn.send_message(kind, data)
            return _OK
        while not self.writable.wait(_WRITABLE_POLL_S):
            if self.closed:
                return ErrorCode.CLOSED
        # Frames sent back to back coalesce into one hand-off to the I/O thread.
        with self._outbox_lock:
            self._outbox.append((kind, data))
            if self._flush_scheduled:
                return ErrorCode.OK
            self._flush_scheduled = True
        self.call_soon(self._drain_outbox)
        return ErrorCode.OK

    def _drain_outbox(self) -> None:
        """Send the frames the guest thread queued (I/O thread)."""
        with self._outbox_lock:
            frames = self._outbox
            self._outbox = []
            self._flush_scheduled = False
        self.conn.send_messages(frames)

    def ws_close(self, code: int, reason: bytes) -> ErrorCode:
        """``rusm.ws_close`` (guest thread)."""
        if self.closed:
            return ErrorCode.CLOSED
        if code not in _GUEST_CLOSE_CODES or len(reason) > MAX_CLOSE_REASON_BYTES:
            return ErrorCode.INVALID
        try:
            text = reason.decode("utf-8")
        except UnicodeDecodeError:
            return ErrorCode.INVALID
        self.closed = True
        self.call_soon(self.conn.close_with, code, text)
        return ErrorCode.OK


class WsConnection(asyncio.Protocol):
    """One client connection on a ws listener."""

    def __init__(self, listener: WsListener) -> None:
        self.listener = listener
        self.limits = listener.config
        # No extension is offered, so none is ever negotiated: frames go out
        # as they are (``send_message`` makes them itself).
        self.protocol = ServerProtocol(max_size=listener.config.max_message_bytes)
        # Whole frames skip the library's parser (``_whole_frames``).
        self.fast = _FAST_FRAMES
        # A payload shorter than this has a 7-bit length and is within the limit.
        self.short_payload_below = min(126, listener.config.max_message_bytes + 1)
        # A message straight into a fiber waiting in recv (``FiberScheduler.hand``).
        fibers = getattr(listener.host, "fibers", None)
        self.hand: Callable[[int, Envelope], bool] = (
            fibers.hand if fibers is not None else _never_handed
        )
        self.transport: Any = None
        self.exchange: WsExchange | None = None
        self.current = None  # no HTTP exchange: the sweep's heartbeat skips it
        self.path = ""
        self.parts: list[bytes] = []
        self.parts_kind = 0
        self.deadline = 0.0
        self.last_seen = time.monotonic()
        self.exited = False
        # The grace period's end (``_stop_later``), cancelled when the process
        # exits first: a pending timer would hold the whole connection.
        self.stop_timer: asyncio.TimerHandle | None = None
        self.lost = False  # the socket is gone (``connection_lost``)
        self.flush_pending = False
        self.writable = threading.Event()
        self.writable.set()

    # ── asyncio.Protocol ────────────────────────────────────────────────

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        listener = self.listener
        if listener.draining or len(listener.connections) >= self.limits.max_connections:
            listener.overloaded(transport)
            return
        listener.connections.add(self)
        self.deadline = time.monotonic() + self.limits.header_timeout_s

    def data_received(self, data: bytes) -> None:
        self.last_seen = _monotonic()
        protocol = self.protocol
        if (
            self.fast
            and self.exchange is not None
            and protocol.state is _OPEN
            and protocol.current_size is None
            and not protocol.reader.buffer
        ):
            data = self._whole_frames(data)
            if not data:
                return
        protocol.receive_data(data)
        for event in protocol.events_received():
            if isinstance(event, WsRequest):
                self._handshake(event)
            elif isinstance(event, Frame):
                self._frame(event)
        if protocol.writes:
            self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.listener.connections.discard(self)
        self.writable.set()
        exchange = self.exchange
        if exchange is not None and not exchange.closed:
            exchange.closed = True
            # The code the closing handshake carried (1009 when the host
            # refused a message), else 1006: gone without one.
            frame = self.protocol.close_sent or self.protocol.close_rcvd
            self._tell_closed(frame.code if frame is not None else 1006)
        elif exchange is not None:
            # Closed by the guest's ws_close (no CLOSED message comes then): a
            # process that keeps running after its socket is gone would hold
            # its slot for ever.
            self._stop_later()
        self._release()

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()
        exchange = self.exchange
        fibers = getattr(self.listener.host, "fibers", None)
        if exchange is not None and exchange.pid and fibers is not None:
            fibers.wake(exchange.pid)  # a fiber parked in ws_send may go on

    # ── handshake and frames ────────────────────────────────────────────

    def _handshake(self, ws_request: WsRequest) -> None:
        self.deadline = 0.0
        response = self.protocol.accept(ws_request)
        path, _, query = ws_request.path.partition("?")
        self.path = path
        if response.status_code != 101:
            self.protocol.send_response(response)
            self.listener.access("GET", path, response.status_code)
            return
        request = Request(
            method="GET",
            path=path,
            query=query,
            headers=[
                (name.lower().encode("latin-1"), value.encode("latin-1"))
                for name, value in ws_request.headers.raw_items()
            ],
        )
        exchange = WsExchange(request, self, self.listener.loop.call_soon_threadsafe)
        name = self.limits.name or ""
        if not self.listener.host.loaded:
            # The worker's first second: its components are on their way.
            self.listener.when_loaded(lambda: self._accept_later(exchange, name, response))
            return
        self._accept(exchange, name, response)

    def _accept(self, exchange: WsExchange, name: str, response: Any) -> None:
        if self._spawn(exchange, name):
            self.protocol.send_response(response)
            self.listener.access("GET", self.path, 101)

    def _accept_later(self, exchange: WsExchange, name: str, response: Any) -> None:
        """The handshake that waited for the components (outside ``data_received``)."""
        if self.transport is None or self.transport.is_closing():
            return  # the client left meanwhile
        self._accept(exchange, name, response)
        self._flush()

    def _spawn(self, exchange: WsExchange, name: str) -> bool:
        def exited(report: ExitReport) -> None:
            self.listener.loop.call_soon_threadsafe(self._process_exited, report)

        try:
            exchange.pid = self.listener.host.spawn(
                name, exchange=exchange, on_exit=exited, quiet=True
            )
        except SpawnError as exc:
            self.listener.log.warn(f"ws GET {self.path}: {exc}")
            self.transport.write(
                simple_response(503, "service unavailable", close=True, extra=self.listener.retry)
            )
            self.transport.close()
            self.listener.access("GET", self.path, 503)
            return False
        self.exchange = exchange
        return True

    def _frame(self, frame: Frame) -> None:
        if frame.opcode in (Opcode.TEXT, Opcode.BINARY):
            self.parts_kind = WsKind.TEXT if frame.opcode is Opcode.TEXT else WsKind.BINARY
            self.parts = [bytes(frame.data)]
        elif frame.opcode is Opcode.CONT:
            self.parts.append(bytes(frame.data))
        elif frame.opcode is Opcode.CLOSE:
            exchange = self.exchange
            if exchange is not None and not exchange.closed:
                exchange.closed = True
                code = self.protocol.close_rcvd.code if self.protocol.close_rcvd else 1005
                self._tell_closed(code)
            return
        else:
            return
        if not frame.fin:
            if sum(len(p) for p in self.parts) > self.limits.max_message_bytes:
                self.protocol.fail(1009, "message too big")
            return
        payload = b"".join(self.parts)
        self.parts = []
        exchange = self.exchange
        if exchange is None:
            return
        envelope = Envelope(Kind.FRAME, 0, 0, self.parts_kind, payload)
        if self.hand(exchange.pid, envelope):
            return
        code = self.listener.host.actors.deliver(exchange.pid, envelope)
        if code == ErrorCode.LIMIT:
            self.protocol.fail(1013, "mailbox full")

    def _whole_frames(self, data: bytes) -> bytes:
        """Deliver the whole single-frame messages ``data`` starts with; return the rest.

        Called while the protocol is open and its parser holds nothing. A
        frame is taken here only when the library's parser would take it
        the same way: FIN set, no reserved bit, text or binary, masked, its
        length in 7 or 16 bits and within ``max-message-bytes``, all of it
        in ``data``. At the first frame that is not, the rest is returned
        for the parser, which then sees the stream exactly where it would
        have been.
        """
        limit = self.limits.max_message_bytes
        deliver = self.listener.host.actors.deliver
        pid = self.exchange.pid if self.exchange is not None else 0
        end = len(data)
        if not end:
            return data
        head = data[0]
        if (
            head in _FIN_DATA and end >= 6 and data[1] - 0x80 == end - 6 < self.short_payload_below
        ):  # the usual read: one masked message with a 7-bit length, and nothing else
            kind = _TEXT if head == _FIN_TEXT else _BINARY
            envelope = Envelope(_FRAME, 0, 0, kind, apply_mask(data[6:], data[2:6]))
            if not self.hand(pid, envelope) and deliver(pid, envelope) == _LIMIT:
                self.protocol.fail(1013, "mailbox full")
            return b""
        at = 0
        while end - at >= 6:
            head = data[at]
            if head not in _FIN_DATA:
                break
            length = data[at + 1] ^ 0x80  # the mask bit set: 0-127; unset: 128 and up
            if length < 126:
                start = at + 6
            elif length == 126 and end - at >= 8:
                length = data[at + 2] << 8 | data[at + 3]
                start = at + 8
            else:
                break
            stop = start + length
            if length > limit or stop > end:
                break
            payload = apply_mask(data[start:stop], data[start - 4 : start])
            kind = _TEXT if head == _FIN_TEXT else _BINARY
            at = stop
            envelope = Envelope(_FRAME, 0, 0, kind, payload)
            if not self.hand(pid, envelope) and deliver(pid, envelope) == _LIMIT:
                self.protocol.fail(1013, "mailbox full")
                break  # what follows goes to the parser, which now discards it
        return data[at:] if at else data

    def _tell_closed(self, code: int) -> None:
        exchange = self.exchange
        if exchange is None or self.exited:
            return
        self.listener.host.actors.deliver(exchange.pid, Envelope(Kind.CLOSED, 0, code, 0, b""))
        self._stop_later()

    def _stop_later(self) -> None:
        if not self.exited and self.stop_timer is None:
            self.stop_timer = self.listener.loop.call_later(CLOSE_GRACE_S, self._stop_process)

    def _stop_process(self) -> None:
        if self.exchange is not None and not self.exited:
            self.listener.host.kill(self.exchange.pid, ExitReason.SHUTDOWN, "websocket closed")

    def _process_exited(self, report: ExitReport) -> None:
        self.exited = True
        if self.stop_timer is not None:
            self.stop_timer.cancel()
            self.stop_timer = None
        if self.exchange is not None:
            self.exchange.closed = True
        if report.reason != ExitReason.NORMAL:
            self.listener.log.error(
                f"{self.limits.name}#{self.exchange.pid if self.exchange else 0}: "
                f"ws {self.path} closed 1011 ({report.reason}"
                f"{': ' + report.detail if report.detail else ''})"
            )
        if self.protocol.state is State.OPEN:
            if report.reason == ExitReason.NORMAL:
                self.protocol.send_close(1000, "")
            else:
                self.protocol.send_close(1011, "handler failed")
        self.flush()  # the close frame (and anything held back) before the socket closes
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()
        self._release()

    def _release(self) -> None:
        """Untie the connection once its socket and its process are both gone.

        Its exchange points back at it, and the websockets protocol at its
        own parser (a generator that never finishes): as cycles they would
        wait for the cycle collector, which reaches long-lived objects late,
        and a burst of connections would stay in memory long after it ended.
        """
        if not self.lost or (self.exchange is not None and not self.exited):
            return
        self.exchange = None
        self.protocol.parser.close()

    # ── I/O thread sends ────────────────────────────────────────────────

    def send_messages(self, frames: list[tuple[int, bytes]]) -> None:
        """Send messages a process queued (kind, data), then write them in one go."""
        for kind, data in frames:
            self.send_message(kind, data)

    def send_message(self, kind: int, data: bytes) -> None:
        """Send one message of the process as one unmasked frame, at the iteration's end."""
        protocol = self.protocol
        if protocol.state is not _OPEN:
            return
        head = _FIN_TEXT if kind == _TEXT else _FIN_BINARY
        length = len(data)
        if length < 126:
            frame = b"%c%c%b" % (head, length, data)
        elif length < 65536:
            frame = _HEAD_16.pack(head, 126, length) + data
        else:
            frame = _HEAD_64.pack(head, 127, length) + data
        protocol.writes.append(frame)
        if not self.flush_pending:  # as ``_flush``, inline
            self.flush_pending = True
            self.listener.defer(self)

    def close_with(self, code: int, reason: str) -> None:
        if self.protocol.state is State.OPEN:
            self.protocol.send_close(code, reason)
            self._flush()

    def _flush(self) -> None:
        """Write what the protocol has to send once this loop iteration's callbacks are done.

        As on HTTP connections (``ListenerRuntime.defer``): the iteration's
        writes to all the listener's sockets go out back to back.
        """
        if not self.flush_pending:
            self.flush_pending = True
            self.listener.defer(self)

    def flush(self) -> None:
        """Write what the protocol has to send, now."""
        self.flush_pending = False
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        protocol = self.protocol
        writes = protocol.writes  # as ``data_to_send``, which this takes over
        if not writes:
            return
        protocol.writes = []
        if b"" not in writes:  # no end of stream: all of it in one write
            transport.write(writes[0] if len(writes) == 1 else b"".join(writes))
            return
        before = writes[: writes.index(b"")]
        if before:
            transport.write(b"".join(before))
        transport.close()

    # ── time and drain ──────────────────────────────────────────────────

    def expire(self, now: float) -> None:
        """Handshake timeout, heartbeat pings."""
        if self.deadline and now > self.deadline and self.exchange is None:
            self.flush()
            self.transport.close()
            return
        if self.protocol.state is State.OPEN and now - self.last_seen > self.limits.heartbeat_s:
            self.last_seen = now
            self.protocol.send_ping(b"")
            self._flush()

    def drain(self) -> None:
        """Close with 1001 (going away); the process is stopped."""
        if self.protocol.state is State.OPEN:
            self.protocol.send_close(1001, "server shutting down")
            self._flush()
        if self.exchange is not None and not self.exited:
            self.exchange.closed = True
            self.listener.host.kill(self.exchange.pid, ExitReason.SHUTDOWN, "server shutting down")
        elif self.exchange is None and self.transport is not None:
            self.flush()
            self.transport.close()
