"""The HTTP/1.1 connection protocol, fed bytes through a fake transport.

Runs in: any (pure logic: no sockets, no loop, no daemon).

``HttpConnection`` is driven the way uvloop drives it (``connection_made``,
``data_received``, ``connection_lost``) and the way the listener's sweep
does (``expire(now)``, ``drain()``), against a fake listener that answers
each dispatched request with its path, at once or when the test says.
Time is a fake clock the module reads instead of ``time.monotonic``, so
every timeout is crossed by passing a value, never by sleeping.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from rusmd.config.model import Protocol, Serve
from rusmd.serving import http
from rusmd.serving.http import (
    LINGER_S,
    MAX_PIPELINED,
    HttpConnection,
    Reject,
    simple_response,
)
from rusmd.wasm.exchange import Exchange, Request

START = 1000.0
STATUS_LINE = re.compile(rb"HTTP/1\.1 (\d{3}) ")

LIMITS = Serve(
    protocol=Protocol.HTTP,
    listen="127.0.0.1:8080",
    max_connections=3,
    max_url_bytes=256,
    max_header_bytes=1024,
    max_headers=5,
    max_body_bytes=64,
    header_timeout_s=2.0,
    body_timeout_s=3.0,
    idle_timeout_s=5.0,
)


class Clock:
    """The monotonic clock ``rusmd.serving.http`` sees."""

    def __init__(self) -> None:
        self.now = START

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[Clock]:
    fake = Clock()
    monkeypatch.setattr(http, "_monotonic", fake.monotonic)
    yield fake


class FakeTransport:
    """What uvloop's TCP transport offers the protocol, recorded."""

    def __init__(self, end_iteration: Callable[[], None]) -> None:
        self.sent = b""
        self.writes = 0
        self.closed = False
        self.eof_written = False
        self.aborted = False
        self.reading = True
        self.end_iteration = end_iteration

    @property
    def written(self) -> bytes:
        """Everything written once the loop iteration in progress has ended."""
        self.end_iteration()
        return self.sent

    @written.setter
    def written(self, data: bytes) -> None:
        self.sent = data

    def write(self, data: bytes) -> None:
        assert not self.closed and not self.eof_written, "write after close"
        self.sent += data
        self.writes += 1

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = self.aborted = True

    def is_closing(self) -> bool:
        return self.closed

    @property
    def ended(self) -> bool:
        """The server is done with the connection: closed, or closed for writing."""
        return self.closed or self.eof_written

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default  # no socket: no unread bytes to ask the kernel about

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof_written = True

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def take(self) -> bytes:
        data, self.written = self.written, b""
        return data


class FakeLoop:
    """``call_soon`` recorded; ``run_queued`` is one later loop iteration."""

    def __init__(self) -> None:
        self.queued: list[Callable[[], None]] = []
        self.iterations = 0

    def call_soon(self, callback: Callable[[], None]) -> None:
        self.queued.append(callback)

    def run_queued(self) -> bool:
        queued, self.queued = self.queued, []
        for callback in queued:
            callback()
        if queued:
            self.iterations += 1
        return bool(queued)


@dataclass
class FakeListener:
    """The listener attributes ``HttpConnection`` uses; answers with the path.

    With ``hold`` set, dispatched requests wait in ``held`` until
    ``answer()``, like a handler still running.
    """

    config: Serve = LIMITS
    hold: bool = False
    connections: set[Any] = field(default_factory=set)
    draining: bool = False
    dispatched: list[Request] = field(default_factory=list)
    held: list[tuple[HttpConnection, Request]] = field(default_factory=list)
    refusals: list[int] = field(default_factory=list)
    turned_away: int = 0
    left: list[Any] = field(default_factory=list)
    host: Any = None
    unflushed: list[HttpConnection] = field(default_factory=list)
    loop: FakeLoop = field(default_factory=FakeLoop)

    def defer(self, conn: HttpConnection) -> None:
        self.unflushed.append(conn)

    def end_iteration(self) -> None:
        """What the loop does once the callbacks of one iteration have run.

        It writes what was deferred, then runs the callbacks queued for the
        next iterations (a connection yielding after a batch of pipelined
        requests) until none are left.
        """
        while True:
            unflushed, self.unflushed = self.unflushed, []
            for conn in unflushed:
                conn.flush()
            if not self.loop.run_queued():
                return

    def dispatch(self, conn: HttpConnection, request: Request) -> None:
        self.dispatched.append(request)
        if self.hold:
            self.held.append((conn, request))
        else:
            self._answer(conn, request)

    def answer(self) -> None:
        conn, request = self.held.pop(0)
        self._answer(conn, request)

    def _answer(self, conn: HttpConnection, request: Request) -> None:
        conn.send(simple_response(200, f"{request.method} {request.path}", close=conn.closing))
        conn.answered()

    def refused(self, conn: HttpConnection, reject: Reject) -> None:
        self.refusals.append(reject.status)

    def overloaded(self, transport: FakeTransport) -> None:
        self.turned_away += 1
        transport.write(simple_response(503, "service unavailable", close=True))
        transport.close()

    def client_left(self, exchange: Any) -> None:
        self.left.append(exchange)


def connect(listener: FakeListener) -> tuple[HttpConnection, FakeTransport]:
    conn = HttpConnection(listener)  # type: ignore[arg-type]
    transport = FakeTransport(listener.end_iteration)
    conn.connection_made(transport)
    return conn, transport


def get(path: str, *headers: str) -> bytes:
    return ("\r\n".join([f"GET {path} HTTP/1.1", "Host: t", *headers]) + "\r\n\r\n").encode()


def statuses(data: bytes) -> list[int]:
    """The status code of every response in ``data``."""
    return [int(code) for code in STATUS_LINE.findall(data)]


@pytest.fixture
def listener(clock: Clock) -> FakeListener:
    return FakeListener()


# ── parsing ─────────────────────────────────────────────────────────────


def test_request_reaches_dispatch_with_its_parts(listener: FakeListener) -> None:
    conn, _ = connect(listener)

    conn.data_received(
        b"POST /users/7?x=1&y=2 HTTP/1.1\r\nHost: t\r\nX-Thing: A\r\nContent-Length: 5\r\n\r\nhello"
    )

    [request] = listener.dispatched
    assert (request.method, request.path, request.query) == ("POST", "/users/7", "x=1&y=2")
    assert request.header(b"X-THING") == b"A"
    assert request.body == b"hello"
    assert request.keep_alive


def test_request_split_across_reads_is_dispatched_once_whole(listener: FakeListener) -> None:
    conn, _ = connect(listener)
    data = b"POST /in HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello"

    for i in range(len(data)):
        conn.data_received(data[i : i + 1])

    assert [r.body for r in listener.dispatched] == [b"hello"]


def test_chunked_body_is_dechunked(listener: FakeListener) -> None:
    conn, _ = connect(listener)

    conn.data_received(
        b"POST /in HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    )

    assert [r.body for r in listener.dispatched] == [b"hello world"]


# ── limits: one answer, then the connection closes ──────────────────────

REFUSED = {
    "url_over_max_url_bytes": (b"GET /" + b"u" * 256 + b" HTTP/1.1\r\n\r\n", 414),
    "headers_over_max_header_bytes": (get("/", "X-Big: " + "b" * 1024), 431),
    "more_than_max_headers": (get("/", *(f"X-{i}: 1" for i in range(5))), 431),
    "head_that_never_ends": (b"GET / HTTP/1.1\r\nX-Endless: " + b"e" * 10_000, 431),
    "declared_body_over_max_body_bytes": (
        b"POST / HTTP/1.1\r\nContent-Length: 65\r\n\r\n",
        413,
    ),
    "chunked_body_over_max_body_bytes": (
        b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"20\r\n"
        + b"c" * 32
        + b"\r\n"
        + b"21\r\n"
        + b"c" * 33
        + b"\r\n0\r\n\r\n",
        413,
    ),
    "content_length_plus": (b"POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\nhello", 400),
    "content_length_hex": (b"POST / HTTP/1.1\r\nContent-Length: 0x5\r\n\r\nhello", 400),
    "content_length_negative": (b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
    "content_length_list": (b"POST / HTTP/1.1\r\nContent-Length: 5, 6\r\n\r\nhello", 400),
    "content_length_and_chunked": (
        b"POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
        400,
    ),
    "bad_chunk_size": (
        b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        400,
    ),
    "garbage_request_line": (b"\x16\x03\x01 not http\r\n\r\n", 400),
}


def test_upgrade_request_is_answered_normally_then_closed(listener: FakeListener) -> None:
    conn, transport = connect(listener)

    conn.data_received(get("/", "Connection: Upgrade", "Upgrade: h2c") + get("/never"))

    assert statuses(transport.written) == [200]
    assert b"connection: close\r\n" in transport.written
    assert transport.ended
    assert [r.path for r in listener.dispatched] == ["/"]


@pytest.mark.parametrize(("data", "status"), REFUSED.values(), ids=REFUSED.keys())
def test_bad_request_gets_its_status_and_is_closed_without_dispatch(
    listener: FakeListener, data: bytes, status: int
) -> None:
    conn, transport = connect(listener)

    conn.data_received(data)

    assert statuses(transport.written) == [status]
    assert b"connection: close\r\n" in transport.written
    assert transport.ended
    assert listener.dispatched == []
    assert listener.refusals == [status]


ACCEPTED = {
    "url_of_max_url_bytes": b"GET /" + b"u" * 255 + b" HTTP/1.1\r\nHost: t\r\n\r\n",
    "max_headers": get("/", *(f"X-{i}: 1" for i in range(4))),
    "body_of_max_body_bytes": b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 64\r\n\r\n"
    + b"b" * 64,
    "content_length_with_extra_whitespace": (
        b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length:  5 \r\n\r\nhello"
    ),
}


@pytest.mark.parametrize("data", ACCEPTED.values(), ids=ACCEPTED.keys())
def test_request_at_a_limit_is_served(listener: FakeListener, data: bytes) -> None:
    conn, transport = connect(listener)

    conn.data_received(data)

    assert statuses(transport.written) == [200]
    assert not transport.ended


def test_bytes_after_a_refused_request_are_ignored(listener: FakeListener) -> None:
    conn, transport = connect(listener)

    conn.data_received(b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n")
    conn.data_received(get("/after"))

    assert statuses(transport.written) == [400]
    assert listener.dispatched == []


# ── pipelining and keep-alive ───────────────────────────────────────────


def test_pipelined_requests_are_dispatched_one_at_a_time_in_order(clock: Clock) -> None:
    listener = FakeListener(hold=True)
    conn, transport = connect(listener)

    conn.data_received(get("/1") + get("/2") + get("/3"))

    assert [r.path for r in listener.dispatched] == ["/1"]
    listener.answer()
    assert [r.path for r in listener.dispatched] == ["/1", "/2"]
    listener.answer()
    listener.answer()
    assert transport.written.count(b"HTTP/1.1 200 OK") == 3
    assert transport.written.index(b"GET /1") < transport.written.index(b"GET /2")
    assert transport.written.index(b"GET /2") < transport.written.index(b"GET /3")
    assert not transport.ended


def test_responses_of_one_iteration_go_out_in_one_write_at_its_end(listener: FakeListener) -> None:
    first, first_transport = connect(listener)
    second, second_transport = connect(listener)

    first.data_received(get("/1") + get("/2") + get("/3"))
    second.data_received(get("/4"))

    assert (first_transport.sent, second_transport.sent) == (b"", b"")
    listener.end_iteration()
    assert first_transport.writes == 1 and second_transport.writes == 1
    assert statuses(first_transport.sent) == [200, 200, 200]
    assert first_transport.sent.index(b"GET /1") < first_transport.sent.index(b"GET /3")
    assert b"GET /4" in second_transport.sent


def test_response_before_a_close_is_written_before_the_socket_closes(
    listener: FakeListener,
) -> None:
    conn, transport = connect(listener)

    conn.data_received(get("/last", "Connection: close"))

    assert transport.ended
    assert statuses(transport.sent) == [200]
    assert b"connection: close\r\n" in transport.sent


def test_pipelined_queue_at_its_bound_pauses_reading_until_served(clock: Clock) -> None:
    listener = FakeListener(hold=True)
    conn, transport = connect(listener)

    conn.data_received(b"".join(get(f"/{i}") for i in range(MAX_PIPELINED + 1)))

    assert not transport.reading
    for _ in range(MAX_PIPELINED + 1):
        listener.answer()
    assert transport.reading
    assert len(listener.dispatched) == MAX_PIPELINED + 1


def test_ten_thousand_pipelined_requests_in_one_read_are_answered_in_order(
    listener: FakeListener,
) -> None:
    conn, transport = connect(listener)
    count = 10_000

    conn.data_received(b"".join(get(f"/{i}") for i in range(count)))
    written = transport.written

    assert statuses(written) == [200] * count
    paths = re.findall(rb"GET (/\d+)\n", written)
    assert paths == [f"/{i}".encode() for i in range(count)]
    # served a batch a loop iteration, never all in one callback
    assert listener.loop.iterations >= count // http.MAX_SERVED_PER_TURN
    assert transport.reading and not transport.ended


def test_pipelined_requests_wait_while_the_client_does_not_read(
    listener: FakeListener,
) -> None:
    conn, transport = connect(listener)
    conn.pause_writing()

    conn.data_received(b"".join(get(f"/{i}") for i in range(100)))

    assert listener.dispatched == []  # its earlier responses are still unread
    assert not transport.reading  # the queue is full: the rest of the read waits unparsed
    assert len(conn.pending) <= MAX_PIPELINED + http.PARSE_SLICE_BYTES // len(get("/0"))
    conn.resume_writing()
    assert statuses(transport.written) == [200] * 100
    assert transport.reading


def test_client_reading_nothing_for_body_timeout_s_is_cut_off(
    listener: FakeListener, clock: Clock
) -> None:
    conn, transport = connect(listener)
    conn.data_received(get("/0"))
    conn.pause_writing()  # its responses pile up unread
    conn.data_received(get("/1"))

    conn.expire(clock.now + LIMITS.body_timeout_s)
    assert not transport.aborted
    conn.expire(clock.now + LIMITS.body_timeout_s + 0.01)
    assert transport.aborted


VERSIONS_AND_HOSTS = {
    "http_1_1_without_host": (b"GET / HTTP/1.1\r\n\r\n", 400),
    "http_1_1_with_two_hosts": (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    "http_1_0_with_two_hosts": (b"GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    "http_2_0": (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505),
    "http_1_2": (b"GET / HTTP/1.2\r\nHost: a\r\n\r\n", 505),
    "http_0_9": (b"GET /\r\n\r\n", 505),
}


@pytest.mark.parametrize("data,status", VERSIONS_AND_HOSTS.values(), ids=VERSIONS_AND_HOSTS.keys())
def test_request_with_bad_version_or_host_is_refused_without_dispatch(
    listener: FakeListener, data: bytes, status: int
) -> None:
    conn, transport = connect(listener)

    conn.data_received(data + get("/after"))

    assert statuses(transport.written) == [status]
    assert listener.dispatched == []
    assert transport.ended


def test_http_1_0_request_without_host_is_served(listener: FakeListener) -> None:
    conn, transport = connect(listener)

    conn.data_received(b"GET /old HTTP/1.0\r\n\r\n")

    assert statuses(transport.written) == [200]


def test_refused_connection_keeps_reading_and_dropping_until_the_linger_ends(
    listener: FakeListener, clock: Clock
) -> None:
    """A client still sending a huge head sees the 414, not a reset."""
    conn, transport = connect(listener)

    conn.data_received(b"GET /" + b"u" * 1000)
    conn.data_received(b"u" * 100_000)

    assert statuses(transport.written) == [414]
    assert transport.eof_written and transport.reading and not transport.closed
    conn.expire(clock.now + LINGER_S)
    assert transport.closed


def test_keep_alive_connection_serves_request_after_request(listener: FakeListener) -> None:
    conn, transport = connect(listener)

    for i in range(3):
        conn.data_received(get(f"/{i}"))

    assert statuses(transport.written) == [200, 200, 200]
    assert b"connection: close" not in transport.written
    assert not transport.ended


@pytest.mark.parametrize(
    "data",
    [get("/", "Connection: close"), b"GET / HTTP/1.0\r\n\r\n"],
    ids=["connection_close", "http_1_0"],
)
def test_request_without_keep_alive_is_answered_then_closed(
    listener: FakeListener, data: bytes
) -> None:
    conn, transport = connect(listener)

    conn.data_received(data + get("/never"))

    assert statuses(transport.written) == [200]
    assert b"connection: close\r\n" in transport.written
    assert transport.ended
    assert [r.path for r in listener.dispatched] == ["/"]


# ── timeouts (the listener's sweep calls expire) ────────────────────────


def test_head_not_complete_in_header_timeout_gets_408(listener: FakeListener, clock: Clock) -> None:
    conn, transport = connect(listener)
    clock.now = START + 1.0
    conn.data_received(b"GET / HTTP/1.1\r\nX-Slow:")

    conn.expire(START + 1.0 + LIMITS.header_timeout_s - 0.01)
    assert transport.written == b""

    conn.expire(START + 1.0 + LIMITS.header_timeout_s)
    assert statuses(transport.written) == [408]
    assert transport.ended
    assert listener.refusals == [408]


def test_head_dribbled_a_byte_at_a_time_still_gets_408(
    listener: FakeListener, clock: Clock
) -> None:
    """The header timeout runs from the head's first byte, not from the last one."""
    conn, transport = connect(listener)
    head = get("/", *(f"X-{i}: 1" for i in range(4)))

    for i, byte in enumerate(head[:-1]):
        clock.now = START + 0.1 * i
        conn.data_received(bytes([byte]))
        conn.expire(clock.now)
        if transport.written:
            break

    assert statuses(transport.written) == [408]
    assert listener.dispatched == []


def test_body_not_complete_in_body_timeout_gets_408(listener: FakeListener, clock: Clock) -> None:
    conn, transport = connect(listener)
    conn.data_received(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nabc")

    conn.expire(START + LIMITS.body_timeout_s - 0.01)
    assert transport.written == b""

    conn.expire(START + LIMITS.body_timeout_s)
    assert statuses(transport.written) == [408]
    assert transport.ended


def test_idle_keep_alive_connection_is_closed_after_idle_timeout_without_a_response(
    listener: FakeListener, clock: Clock
) -> None:
    conn, transport = connect(listener)
    conn.data_received(get("/"))
    transport.take()

    conn.expire(START + LIMITS.idle_timeout_s - 0.01)
    assert not transport.eof_written

    conn.expire(START + LIMITS.idle_timeout_s)
    assert transport.eof_written
    assert transport.written == b""


def test_idle_close_drops_a_request_that_crossed_it_then_closes(
    listener: FakeListener, clock: Clock
) -> None:
    """A request racing the idle close is read and dropped, not answered with a reset."""
    conn, transport = connect(listener)
    conn.data_received(get("/"))
    clock.now = START + LIMITS.idle_timeout_s
    conn.expire(clock.now)

    conn.data_received(get("/late"))

    assert [r.path for r in listener.dispatched] == ["/"]
    assert transport.eof_written and not transport.closed
    conn.expire(clock.now + LINGER_S)
    assert transport.closed


def test_connection_that_never_sends_is_closed_without_a_response(
    listener: FakeListener, clock: Clock
) -> None:
    conn, transport = connect(listener)

    conn.expire(START + LIMITS.header_timeout_s)

    assert transport.eof_written
    assert transport.written == b""


def test_request_in_flight_is_not_timed_out(clock: Clock) -> None:
    listener = FakeListener(hold=True)
    conn, transport = connect(listener)
    conn.data_received(get("/slow"))

    conn.expire(START + 3600.0)
    listener.answer()

    assert statuses(transport.written) == [200]
    assert not transport.ended


# ── connections: admission, drain, the client leaving ───────────────────


def test_connection_past_max_connections_is_turned_away(listener: FakeListener) -> None:
    admitted = [connect(listener) for _ in range(LIMITS.max_connections)]

    conn, transport = connect(listener)
    conn.data_received(get("/"))

    assert listener.turned_away == 1
    assert statuses(transport.written) == [503]
    assert conn not in listener.connections
    assert len(listener.connections) == len(admitted)
    assert listener.dispatched == []


def test_closed_connection_frees_its_slot(listener: FakeListener) -> None:
    first, _ = connect(listener)
    for _ in range(LIMITS.max_connections - 1):
        connect(listener)

    first.connection_lost(None)
    connect(listener)

    assert listener.turned_away == 0


def test_connection_to_a_draining_listener_is_turned_away(listener: FakeListener) -> None:
    listener.draining = True

    connect(listener)

    assert listener.turned_away == 1


def test_drain_half_closes_a_connection_idle_for_drain_idle_s(
    listener: FakeListener, clock: Clock
) -> None:
    conn, transport = connect(listener)
    conn.data_received(get("/"))
    transport.take()

    conn.drain()
    conn.expire(clock.now)
    assert not transport.ended  # the client's next request may be on its way
    clock.now += http.DRAIN_IDLE_S
    conn.expire(clock.now)

    assert transport.eof_written
    assert transport.written == b""


def test_drain_answers_a_request_arriving_on_an_idle_connection_with_close(
    listener: FakeListener, clock: Clock
) -> None:
    conn, transport = connect(listener)
    conn.data_received(get("/first"))
    transport.take()

    conn.drain()
    clock.now += http.DRAIN_IDLE_S / 2
    conn.expire(clock.now)
    conn.data_received(get("/next"))

    answer = transport.take()
    assert statuses(answer) == [200]
    assert b"connection: close\r\n" in answer
    assert transport.ended


def test_drain_answers_every_request_already_read_the_last_with_close(clock: Clock) -> None:
    listener = FakeListener(hold=True)
    conn, transport = connect(listener)
    conn.data_received(get("/in-flight") + get("/queued"))

    conn.drain()
    listener.answer()
    first = transport.take()
    listener.answer()
    second = transport.take()

    assert statuses(first) == [200]
    assert b"connection: close" not in first
    assert statuses(second) == [200]
    assert b"connection: close\r\n" in second
    assert transport.ended
    assert [r.path for r in listener.dispatched] == ["/in-flight", "/queued"]


def test_client_leaving_mid_request_marks_the_exchange_closed(clock: Clock) -> None:
    listener = FakeListener(hold=True)
    conn, _ = connect(listener)
    conn.data_received(get("/slow"))
    exchange = Exchange(
        listener.dispatched[0], conn, Protocol.HTTP, inline=False, call_soon=lambda *a: None
    )
    conn.current = exchange

    conn.connection_lost(ConnectionResetError())

    assert exchange.closed
    assert listener.left == [exchange]
    assert conn not in listener.connections
