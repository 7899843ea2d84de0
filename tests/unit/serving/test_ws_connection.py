"""A WebSocket connection's life on the worker's loop, fed bytes through a fake transport.

Runs in: any (a real uvloop loop that the test turns by hand; no
sockets, no daemon). The host is a fake that records spawns, or the
real ``WasmHost`` running a WAT echo guest as a fiber or on a guest
thread.

``WsConnection`` is driven the way uvloop drives it: an upgrade request,
client frames, the client's close, ``connection_lost``, and the process's
exit report arriving from the host. What is checked is what stays behind
once a connection is over: nothing of it may outlive its socket and its
process, and it must be freed as soon as the last reference goes, not
when the cycle collector gets round to it (issue #17: a closed
connection was held for ``CLOSE_GRACE_S`` by a timer nobody cancelled,
and a connection, its process, fiber, actor and exchange formed cycles
that a burst of sockets left for the collector, in memory meanwhile).
"""

from __future__ import annotations

import asyncio
import gc
import time
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import uvloop
import wasmtime
from websockets.frames import Close, Frame, Opcode

from rusmd.abi import ErrorCode, WsKind
from rusmd.channel import ComponentImage
from rusmd.config import Overrides, load_environment, load_manifest
from rusmd.config.model import LogLevel, Protocol, Serve
from rusmd.log import Logger
from rusmd.serving import ws
from rusmd.serving.server import ListenerRuntime
from rusmd.serving.ws import WsConnection
from rusmd.wasm.cache import CompileCache
from rusmd.wasm.engine import compile_engine
from rusmd.wasm.host import WasmHost
from rusmd.wasm.process import ExitReport
from tests.guests.ws_echo import ws_echo_wat

PID = 1_001_000
UPGRADE = (
    b"GET /chat HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\n\r\n"
)
LIMITS = Serve(protocol=Protocol.WS, listen="127.0.0.1:8082", name="echo")
# A max-message-bytes that a 64-bit frame length stays within and a test can pass.
FRAME_LIMITS = Serve(
    protocol=Protocol.WS, listen="127.0.0.1:8082", name="echo", max_message_bytes=100_000
)
# Bound on turning the loop until something due now has happened.
WAIT_S = 5.0


def client_frame(opcode: Opcode, data: bytes) -> bytes:
    """A frame as a client sends it (masked)."""
    return Frame(opcode, data).serialize(mask=True)


CLIENT_CLOSE = client_frame(Opcode.CLOSE, Close(1000, "done").serialize())


class FakeTransport:
    def __init__(self) -> None:
        self.sent = b""
        self.closed = False

    def write(self, data: bytes) -> None:
        self.sent += data

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


class FakeActors:
    """A mailbox that takes ``room`` messages (no bound by default), then answers LIMIT."""

    def __init__(self, room: int | None = None) -> None:
        self.kinds: list[int] = []
        self.taken: list[tuple[int, int, bytes]] = []  # (kind, reason, payload) in order
        self.room = room

    def deliver(self, pid: int, envelope: Any) -> int:
        self.kinds.append(envelope.kind)
        if self.room is not None and len(self.taken) >= self.room:
            return ErrorCode.LIMIT
        self.taken.append((envelope.kind, envelope.reason, envelope.payload))
        return 0


class FakeHost:
    """Spawns nothing; keeps each process's exit callback until it is told the process ended."""

    def __init__(self) -> None:
        self.actors = FakeActors()
        self.on_exit: dict[int, Callable[[ExitReport], None]] = {}
        self.killed: list[int] = []
        self.loaded = True  # its components are loaded: handshakes go on at once

    def spawn(self, name: str, **options: Any) -> int:
        self.on_exit[PID] = options["on_exit"]
        return PID

    def kill(self, pid: int, reason: str = "killed", detail: str = "") -> bool:
        self.killed.append(pid)
        return True

    def exit(self, pid: int, report: ExitReport) -> None:
        """The process ended: the host forgets it and tells its listener."""
        self.on_exit.pop(pid)(report)


class FakeLog:
    def warn(self, text: str) -> None:
        pass

    def error(self, text: str) -> None:
        pass


class FakeListener:
    """What ``WsConnection`` uses of ``ListenerRuntime``; deferred writes go out at once."""

    def __init__(self, loop: asyncio.AbstractEventLoop, config: Serve = LIMITS) -> None:
        self.config = config
        self.loop = loop
        self.host = FakeHost()
        self.log = FakeLog()
        self.connections: set[WsConnection] = set()
        self.draining = False
        self.retry = b""

    def defer(self, conn: WsConnection) -> None:
        conn.flush()

    def access(self, method: str, path: str, status: int) -> None:
        pass

    def overloaded(self, transport: Any) -> None:
        transport.close()


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    event_loop = uvloop.new_event_loop()
    yield event_loop
    event_loop.close()


def turn(loop: asyncio.AbstractEventLoop) -> None:
    """Run what is due now (the exit report hops onto the loop), without waiting for timers."""
    loop.run_until_complete(asyncio.sleep(0))


def turn_until(
    loop: asyncio.AbstractEventLoop,
    done: Callable[[], bool],
    on_timeout: Callable[[], object] = lambda: "",
) -> None:
    """Turn the loop until ``done()``; ``on_timeout()`` says what was left if it never is."""
    deadline = time.monotonic() + WAIT_S
    while not done():
        assert time.monotonic() < deadline, f"timed out turning the loop: {on_timeout()}"
        turn(loop)
        time.sleep(0.001)  # a guest thread may need the GIL to get on


def open_connection(
    listener: FakeListener | ListenerRuntime, loop: asyncio.AbstractEventLoop
) -> tuple[WsConnection, FakeTransport]:
    """A connection whose upgrade was answered 101 (its process is spawned)."""
    conn = WsConnection(listener)  # type: ignore[arg-type]
    transport = FakeTransport()
    conn.connection_made(transport)
    conn.data_received(UPGRADE)
    turn(loop)  # the listener writes what the iteration's callbacks made at its end
    assert transport.sent.startswith(b"HTTP/1.1 101 "), transport.sent
    return conn, transport


def test_ws_connection_closed_by_its_client_is_freed_once_its_process_exits(
    loop: asyncio.AbstractEventLoop,
) -> None:
    listener = FakeListener(loop)
    conn, transport = open_connection(listener, loop)
    conn.data_received(CLIENT_CLOSE)  # the process is told, and given CLOSE_GRACE_S to exit
    listener.host.exit(PID, ExitReport("normal"))
    turn(loop)
    conn.connection_lost(None)
    assert transport.closed
    gone = weakref.ref(conn)
    del conn, transport
    gc.collect()
    assert gone() is None, [type(r).__name__ for r in gc.get_referrers(gone())]
    assert listener.host.killed == []


def test_ws_connection_whose_process_outlives_the_grace_period_is_stopped(
    loop: asyncio.AbstractEventLoop, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ws, "CLOSE_GRACE_S", 0.0)
    listener = FakeListener(loop)
    conn, _transport = open_connection(listener, loop)
    conn.data_received(CLIENT_CLOSE)
    turn_until(loop, lambda: bool(listener.host.killed))
    assert listener.host.killed == [PID]


def masked(opcode: Opcode, data: bytes, *, fin: bool = True) -> bytes:
    """A client frame (masked) that may be a fragment."""
    return Frame(opcode, data, fin).serialize(mask=True)


TEXT = masked(Opcode.TEXT, b"hello")
BINARY_300_DATA = bytes(range(256)) + b"x" * 44
BINARY_300 = masked(Opcode.BINARY, BINARY_300_DATA)  # a 16-bit length
EMPTY = masked(Opcode.TEXT, b"")
# What the parser refuses: unmasked (1002), a reserved bit (1002), over the limit (1009).
UNMASKED = Frame(Opcode.TEXT, b"bare").serialize(mask=False)
RESERVED_BIT = bytes([TEXT[0] | 0x40]) + TEXT[1:]
TOO_BIG = masked(Opcode.BINARY, b"z" * 100_001)
# Client reads, as uvloop hands them over: each list is one connection's.
READS: dict[str, list[bytes]] = {
    "one message a read": [TEXT, EMPTY, masked(Opcode.BINARY, b"b" * 125), TEXT],
    "three frames in one read": [TEXT + BINARY_300 + EMPTY],
    "a frame cut in its header and its payload": [TEXT[:1], TEXT[1:4], TEXT[4:] + BINARY_300],
    "a ping between two messages": [TEXT + masked(Opcode.PING, b"p") + BINARY_300],
    "a fragmented message then a whole one": [
        masked(Opcode.TEXT, b"frag", fin=False) + masked(Opcode.CONT, b"ment") + TEXT
    ],
    "a 64-bit length": [masked(Opcode.BINARY, b"y" * 70_000) + TEXT],
    "an unmasked frame after a good one": [TEXT + UNMASKED + TEXT],
    "a reserved bit": [TEXT + RESERVED_BIT + TEXT],
    "a frame over max-message-bytes": [TEXT + TOO_BIG + TEXT],
    "the client's close after a message": [TEXT + CLIENT_CLOSE],
    "a message after the close": [CLIENT_CLOSE + TEXT],
}


def serve_reads(
    loop: asyncio.AbstractEventLoop, reads: list[bytes], *, fast: bool, room: int | None = None
) -> tuple[list[tuple[int, int, bytes]], bytes, bool]:
    """Feed ``reads`` to a connection: (messages delivered, bytes written, closed)."""
    listener = FakeListener(loop, FRAME_LIMITS)
    listener.host.actors = FakeActors(room)
    conn, transport = open_connection(listener, loop)
    conn.fast = fast
    upgrade_answer = transport.sent
    for data in reads:
        conn.data_received(data)
        turn(loop)
    return listener.host.actors.taken, transport.sent[len(upgrade_answer) :], transport.closed


@pytest.mark.parametrize("case", sorted(READS))
def test_ws_frames_reach_the_mailbox_as_the_library_parser_would_deliver_them(
    loop: asyncio.AbstractEventLoop, case: str
) -> None:
    fast = serve_reads(loop, READS[case], fast=True)
    parsed = serve_reads(loop, READS[case], fast=False)
    assert fast == parsed
    assert fast[0], "every case delivers something"


def test_ws_frames_past_a_full_mailbox_are_dropped_and_the_socket_closes_1013(
    loop: asyncio.AbstractEventLoop,
) -> None:
    reads = [TEXT + BINARY_300 + TEXT + EMPTY]
    for fast in (True, False):
        taken, sent, closed = serve_reads(loop, reads, fast=fast, room=2)
        assert [payload for _kind, _reason, payload in taken] == [b"hello", BINARY_300_DATA]
        assert (
            Frame(Opcode.CLOSE, Close(1013, "mailbox full").serialize()).serialize(mask=False)
            in sent
        )
        assert closed


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65_535, 65_536])
@pytest.mark.parametrize("kind", [WsKind.TEXT, WsKind.BINARY])
def test_ws_message_goes_out_as_the_frame_the_library_would_make(
    loop: asyncio.AbstractEventLoop, size: int, kind: WsKind
) -> None:
    listener = FakeListener(loop)
    conn, transport = open_connection(listener, loop)
    before = len(transport.sent)
    data = b"a" * size
    conn.send_message(kind, data)
    turn(loop)
    opcode = Opcode.TEXT if kind == WsKind.TEXT else Opcode.BINARY
    assert transport.sent[before:] == Frame(opcode, data).serialize(mask=False)


# ── with the real host ──────────────────────────────────────────────────

ECHOES = {
    "fiber": ws_echo_wat(threaded=False),
    "thread": ws_echo_wat(threaded=True),
}


@pytest.fixture(params=sorted(ECHOES))
def real_listener(
    request: pytest.FixtureRequest, tmp_path: Any, loop: asyncio.AbstractEventLoop
) -> Iterator[ListenerRuntime]:
    """A ws listener whose ``echo`` is the fiber or the thread echo, on a real host."""
    (tmp_path / "rusm.toml").write_text(
        '[[serve]]\nprotocol = "ws"\nlisten = "127.0.0.1:9"\nname = "echo"\n'
        '[components.echo]\ncapability = "sandboxed"\n'
    )
    environment = load_environment(tmp_path)
    manifest = load_manifest(str(tmp_path / "rusm.toml"), Overrides(), environment)
    quiet = Logger(LogLevel.OFF, lambda _record: None)
    host = WasmHost(
        manifest, 0, quiet, environment, request_lease=lambda: None, pool_slots=8, loop=loop
    )
    host.add_lease(1, 1_000_000)
    cache = CompileCache(tmp_path / "cache")
    wasm = bytes(wasmtime.wat2wasm(ECHOES[request.param]))
    compiled = bytes(wasmtime.Module(compile_engine(), wasm).serialize())
    entry = cache.store(cache.key(wasm), compiled, "echo")
    host.load([ComponentImage(name="echo", cwasm=str(entry.path), digest=entry.digest)])
    try:
        yield ListenerRuntime(manifest.serve[0], 0, host, quiet, loop)
    finally:
        host.shutdown(WAIT_S)


def test_ws_connection_and_its_process_are_freed_without_the_cycle_collector(
    real_listener: ListenerRuntime, loop: asyncio.AbstractEventLoop
) -> None:
    host = real_listener.host
    gc.disable()  # whatever is still alive at the end was not freed by reference counting
    try:
        conn, transport = open_connection(real_listener, loop)
        assert conn.exchange is not None
        pid = conn.exchange.pid
        conn.data_received(client_frame(Opcode.TEXT, b"ping"))
        turn_until(loop, lambda: transport.sent.endswith(b"\x81\x04ping"))
        process = host.processes[pid]
        watched: dict[str, weakref.ref[Any]] = {
            "connection": weakref.ref(conn),
            "exchange": weakref.ref(conn.exchange),
            "websockets protocol": weakref.ref(conn.protocol),
            "process": weakref.ref(process),
            "actor": weakref.ref(process.actor),
        }
        if process.fiber is not None:
            watched["fiber"] = weakref.ref(process.fiber)
        del process
        conn.data_received(CLIENT_CLOSE)
        turn_until(loop, lambda: transport.closed)  # closed once the process exited
        assert pid not in host.processes
        conn.connection_lost(None)  # what uvloop does once the socket is closed
        del conn

        def alive() -> list[str]:
            return [name for name, ref in watched.items() if ref() is not None]

        # A guest thread lets go of its process once it is back in the runner pool.
        turn_until(loop, lambda: not alive(), on_timeout=alive)
    finally:
        gc.enable()


def test_ws_process_echoes_every_message_in_order_whole_or_cut_across_reads(
    real_listener: ListenerRuntime, loop: asyncio.AbstractEventLoop
) -> None:
    conn, transport = open_connection(real_listener, loop)
    start = len(transport.sent)
    messages = [f"m{n}".encode() * (n % 7 + 1) for n in range(40)]
    burst = b"".join(client_frame(Opcode.TEXT, m) for m in messages[:30])
    conn.data_received(burst)  # thirty messages in one read
    rest = b"".join(client_frame(Opcode.BINARY, m) for m in messages[30:])
    for at in range(0, len(rest), 5):  # ten more, five bytes a read
        conn.data_received(rest[at : at + 5])
    expected = b"".join(
        Frame(Opcode.TEXT if n < 30 else Opcode.BINARY, m).serialize(mask=False)
        for n, m in enumerate(messages)
    )
    turn_until(loop, lambda: len(transport.sent) - start >= len(expected))
    assert transport.sent[start:] == expected
    conn.data_received(CLIENT_CLOSE)
    turn_until(loop, lambda: transport.closed)
    conn.connection_lost(None)


def test_ws_message_larger_than_the_waiting_buffer_is_toobig_and_the_echo_guest_ends(
    real_listener: ListenerRuntime, loop: asyncio.AbstractEventLoop
) -> None:
    conn, transport = open_connection(real_listener, loop)
    conn.data_received(client_frame(Opcode.TEXT, b"small"))
    turn_until(loop, lambda: transport.sent.endswith(b"\x81\x05small"))
    # Over the guest's 4096-byte buffer: its recv says TOOBIG and it returns,
    # a normal exit, so the socket closes with 1000.
    conn.data_received(client_frame(Opcode.BINARY, b"x" * 5000))
    turn_until(loop, lambda: transport.closed)
    closing = Frame(Opcode.CLOSE, Close(1000, "").serialize()).serialize(mask=False)
    assert transport.sent.endswith(closing)
    conn.connection_lost(None)
