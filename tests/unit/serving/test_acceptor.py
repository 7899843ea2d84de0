"""Taking connections off a listen socket, and turning one too many away.

Runs in: any (a real uvloop loop and real loopback sockets for the
burst; a fake loop, socket and transport for the rest; no daemon).

``Acceptor.ready`` is what the loop calls once when the listen socket is
readable: it must take a whole burst off the kernel's queue then, not
one connection (libuv's way, which left a burst waiting seconds behind a
busy worker's turns), and pause rather than spin when the process is out
of file descriptors. ``TurnedAway`` answers a connection past
``max-connections`` and closes it without a reset.
"""

from __future__ import annotations

import asyncio
import errno
import socket
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import uvloop

from rusmd.serving import acceptor
from rusmd.serving.acceptor import ACCEPT_PAUSE_S, Acceptor, TurnedAway
from rusmd.serving.http import LINGER_S

# Clients of the burst: queued in the kernel before the acceptor looks.
BURST = 64
# Bound on turning the loop until the burst's protocols are connected.
WAIT_S = 10.0
ANSWER = b"HTTP/1.1 503 Service Unavailable\r\nretry-after: 1\r\n\r\n"


class Counted(asyncio.Protocol):
    """Counts connections made; ``done`` once ``BURST`` are."""

    def __init__(self, made: list[Any], done: asyncio.Future[None]) -> None:
        self.made = made
        self.done = done

    def connection_made(self, transport: Any) -> None:
        self.made.append(transport)
        if len(self.made) == BURST and not self.done.done():
            self.done.set_result(None)


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    event_loop = uvloop.new_event_loop()
    yield event_loop
    event_loop.close()


@pytest.fixture
def listening() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(BURST * 2)
    sock.setblocking(False)
    yield sock
    sock.close()


def test_burst_of_queued_connections_is_taken_in_one_readiness(
    loop: asyncio.AbstractEventLoop, listening: socket.socket
) -> None:
    address = listening.getsockname()
    # connect() returns once the kernel completed the handshake: every
    # client is in the listen socket's queue before the acceptor looks.
    clients = [socket.create_connection(address) for _ in range(BURST)]
    made: list[Any] = []
    done: asyncio.Future[None] = loop.create_future()
    warnings: list[str] = []
    taker = Acceptor(loop, listening, lambda: Counted(made, done), warnings.append)
    try:
        taker.ready()

        with pytest.raises(BlockingIOError):
            listening.accept()  # nothing is left in the kernel's queue
        loop.run_until_complete(asyncio.wait_for(done, WAIT_S))
        assert len(made) == BURST
        assert warnings == []
    finally:
        for transport in made:
            transport.close()
        for client in clients:
            client.close()
        loop.run_until_complete(asyncio.sleep(0))


class FakeLoop:
    """Records what the acceptor asks of the loop."""

    def __init__(self) -> None:
        self.readers: dict[int, Callable[[], None]] = {}
        self.later: list[tuple[float, Callable[[], None]]] = []
        self.tasks = 0

    def add_reader(self, fd: int, callback: Callable[[], None]) -> None:
        self.readers[fd] = callback

    def remove_reader(self, fd: int) -> bool:
        return self.readers.pop(fd, None) is not None

    def call_later(self, delay: float, callback: Callable[[], None]) -> None:
        self.later.append((delay, callback))


class OutOfFiles:
    """A listen socket whose accept fails with EMFILE."""

    def fileno(self) -> int:
        return 7

    def getsockname(self) -> tuple[str, int]:
        return ("127.0.0.1", 8080)

    def __init__(self) -> None:
        self.closed = False

    def accept(self) -> tuple[socket.socket, Any]:
        raise OSError(errno.EMFILE, "Too many open files")

    def close(self) -> None:
        self.closed = True


def test_accepting_pauses_when_out_of_file_descriptors_and_warns_once() -> None:
    fake = FakeLoop()
    warnings: list[str] = []
    taker = Acceptor(fake, OutOfFiles(), asyncio.Protocol, warnings.append)  # type: ignore[arg-type]
    taker.start()

    taker.ready()

    assert fake.readers == {}  # no spinning on a socket that stays readable
    assert [delay for delay, _ in fake.later] == [ACCEPT_PAUSE_S]
    fake.later.pop()[1]()  # the pause ends
    assert list(fake.readers) == [7]
    taker.ready()
    assert len(warnings) == 1
    assert warnings[0].startswith("accept 127.0.0.1:8080: Too many open files (the open-files")


def test_closed_acceptor_does_not_resume_after_a_pause() -> None:
    fake = FakeLoop()
    listen = OutOfFiles()
    taker = Acceptor(fake, listen, asyncio.Protocol, lambda _text: None)  # type: ignore[arg-type]
    taker.start()
    taker.ready()

    taker.close()  # a drain began during the pause
    fake.later.pop()[1]()

    assert fake.readers == {}
    assert listen.closed  # this worker's copy: the port is freed once every copy is closed


class FakeTransport:
    def __init__(self) -> None:
        self.protocol: Any = None
        self.written = b""
        self.eof_written = False
        self.closed = False

    def get_protocol(self) -> Any:
        return self.protocol

    def set_protocol(self, protocol: Any) -> None:
        self.protocol = protocol

    def write(self, data: bytes) -> None:
        self.written += data

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof_written = True

    def close(self) -> None:
        self.closed = True


class Refusing(asyncio.Protocol):
    """The connection that turned the client away; told when the socket is gone."""

    def __init__(self) -> None:
        self.lost = 0

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost += 1


def turned_away(lingering: set[TurnedAway]) -> tuple[TurnedAway, FakeTransport, Refusing]:
    transport = FakeTransport()
    refusing = Refusing()
    transport.protocol = refusing
    away = TurnedAway(lingering, now=100.0)
    away.take(transport, ANSWER)
    return away, transport, refusing


def test_turned_away_connection_gets_its_answer_and_a_half_close_at_once() -> None:
    lingering: set[TurnedAway] = set()

    away, transport, _refusing = turned_away(lingering)

    assert transport.written == ANSWER
    assert transport.eof_written
    assert not transport.closed  # its request is still to be read: closing now sends a reset
    assert transport.protocol is away
    assert lingering == {away}


def test_turned_away_connection_drops_the_request_and_closes_on_the_clients_end() -> None:
    lingering: set[TurnedAway] = set()
    away, transport, refusing = turned_away(lingering)

    away.data_received(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
    keep_open = away.eof_received()
    away.connection_lost(None)

    assert transport.written == ANSWER
    assert not keep_open  # the loop closes it: every byte was read
    assert lingering == set()
    assert refusing.lost == 1


def test_turned_away_connection_closes_after_linger_s_if_the_client_stays() -> None:
    lingering: set[TurnedAway] = set()
    away, transport, _refusing = turned_away(lingering)

    away.expire(100.0 + LINGER_S - 0.01)
    assert not transport.closed
    away.expire(100.0 + LINGER_S)

    assert transport.closed
    assert lingering == set()


def test_turned_away_connections_past_the_bound_are_closed_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(acceptor, "MAX_TURNED_AWAY", 2)
    lingering: set[TurnedAway] = set()
    turned_away(lingering)
    turned_away(lingering)

    _away, transport, _refusing = turned_away(lingering)

    assert transport.written == ANSWER
    assert transport.closed
    assert len(lingering) == 2
