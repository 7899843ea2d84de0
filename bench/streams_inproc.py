"""WebSocket echo and SSE in-process: rusm's whole stream path without sockets.

Runs in: a benchmark process of its own, which plays a worker's I/O
thread. As ``bench/http_inproc.py`` does for HTTP, it builds the real
``WasmHost`` (with its fiber scheduler on a uvloop loop) and real
``ListenerRuntime``\\ s from a manifest, and drives real connections
whose transports only record what is written: no sockets, so the figure
is the CPU of rusm's own code (parsing, mailbox, fiber, host calls,
framing, the deferred writes and the loop's turns), which ``bench http``
cannot separate from the kernel's.

- WebSocket echo: ``CLIENTS`` connections to the ``echo`` guest of
  ``bench/http_servers.py`` (one fiber process each). Each client frame
  (masked, ``hello world``) goes in through ``data_received``; when its
  echo is written, the client's next frame is handed to the connection
  on the next loop turn, as a socket read would be. µs per round trip.
- SSE: ``GET /events`` on a keep-alive connection to ``feed#events``,
  which sends ``EVENTS`` events of ``SSE_DATA`` with ``rusm.sse_event``
  as fast as it can; the stream's end (its last chunk) sends the next
  request. µs per event, the stream's start and end included.

Each figure is the best of ``ROUNDS`` rounds (the machine is shared).
``python -m bench.streams_inproc ws|sse COUNT`` runs COUNT round trips
(or whole streams of at least COUNT events) once, after a warm-up, and
prints nothing: two such runs under an instruction counter, subtracted,
give the instructions of the difference. These runs tick the epoch once
a second (``COUNTED_TICK_S``) instead of every 10 ms: each tick makes a
running fiber yield (a loop turn, a write), and a counter runs the code
some fifty times slower, so a second of it holds about as many events
as a tick of a real run.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import uvloop
import wasmtime
from websockets.frames import Frame, Opcode

from bench.http_baseline import HELLO, SSE_DATA
from bench.http_servers import ECHO, FEED
from rusmd.channel import ComponentImage
from rusmd.config import Overrides, load_environment, load_manifest
from rusmd.config.model import LogLevel
from rusmd.log import Logger
from rusmd.serving.http import HttpConnection
from rusmd.serving.server import ListenerRuntime
from rusmd.serving.ws import WsConnection
from rusmd.wasm import capi
from rusmd.wasm.cache import CompileCache
from rusmd.wasm.engine import compile_engine
from rusmd.wasm.host import WasmHost

ROUNDS = 7
CLIENTS = 16
TRIPS = 20_000
EVENTS = 20_000
UPGRADE = (
    b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\n\r\n"
)
# What the client sends (masked, as clients must) and what the echo is.
CLIENT_FRAME = Frame(Opcode.TEXT, HELLO).serialize(mask=True)
ECHO_FRAME = Frame(Opcode.TEXT, HELLO).serialize(mask=False)
EVENTS_REQUEST = b"GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
# The stream's last chunk: the request after it may go.
STREAM_END = b"0\r\n\r\n"
# Bound on a run that stalls (a bug): it fails instead of hanging.
RUN_TIMEOUT_S = 120.0
# The epoch tick of a counted run (see the module docstring).
COUNTED_TICK_S = 1.0


class _Transport:
    """Records writes; on each, ``on_write`` decides what the client does next."""

    def __init__(self, on_write: Callable[[bytes], None]) -> None:
        self.on_write = on_write
        self.writes = 0
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes += 1
        self.on_write(data)

    def is_closing(self) -> bool:
        return self.closed

    def can_write_eof(self) -> bool:
        return False

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, _name: str, default: Any = None) -> Any:
        return default


class Bench:
    """A host with the ``echo`` and ``feed`` components, and a ws and an sse listener."""

    def __init__(self, app: Path) -> None:
        self.loop = uvloop.new_event_loop()
        asyncio.set_event_loop(self.loop)
        (app / "rusm.toml").write_text(
            '[[serve]]\nprotocol = "ws"\nlisten = "127.0.0.1:9"\nname = "echo"\n'
            '[[serve]]\nprotocol = "sse"\nlisten = "127.0.0.1:10"\n'
            '[serve.routes]\n"GET /events" = "feed#events"\n'
            # A stream is one call into the guest: under an instruction counter
            # it takes far longer than sandboxed's 1 s of CPU.
            '[capabilities.bench]\ninherits = "sandboxed"\nmax-cpu-ms = 3600000\n'
            '[components.echo]\ncapability = "bench"\n'
            '[components.feed]\ncapability = "bench"\n'
        )
        environment = load_environment(app)
        manifest = load_manifest(str(app / "rusm.toml"), Overrides(), environment)
        quiet = Logger(LogLevel.OFF, lambda _record: None)
        self.host = WasmHost(
            manifest, 0, quiet, environment, request_lease=lambda: None, loop=self.loop
        )
        self.host.add_lease(1, 100_000_000)
        cache = CompileCache(app / "cache")
        images = []
        feed = FEED.format(data=SSE_DATA.decode(), size=len(SSE_DATA), count=EVENTS)
        for name, wat in {"echo": ECHO, "feed": feed}.items():
            wasm = bytes(wasmtime.wat2wasm(wat))
            compiled = bytes(wasmtime.Module(compile_engine(), wasm).serialize())
            entry = cache.store(cache.key(wasm), compiled, name)
            images.append(ComponentImage(name=name, cwasm=str(entry.path), digest=entry.digest))
        self.host.load(images)
        self.ws = ListenerRuntime(manifest.serve[0], 0, self.host, quiet, self.loop)
        self.sse = ListenerRuntime(manifest.serve[1], 1, self.host, quiet, self.loop)
        self.clients = [self._ws_client() for _ in range(CLIENTS)]
        self.sse_conn, self.sse_transport = self._sse_client()
        self._left = 0
        self.events = 0

    # ── WebSocket ───────────────────────────────────────────────────────

    def _ws_client(self) -> tuple[WsConnection, _Transport]:
        conn = WsConnection(self.ws)
        transport = _Transport(lambda data: self._echoed(conn, data))
        conn.connection_made(transport)
        conn.data_received(UPGRADE)
        self._until(lambda: transport.writes > 0)
        return conn, transport

    def _echoed(self, conn: WsConnection, data: bytes) -> None:
        if not data.startswith(b"\x81"):
            return  # the 101
        if data != ECHO_FRAME:
            raise AssertionError(f"the echo was {data!r}, not {ECHO_FRAME!r}")
        self._left -= 1
        if self._left >= CLIENTS:
            self.loop.call_soon(conn.data_received, CLIENT_FRAME)  # the client's next read
        elif self._left == 0:
            self.loop.stop()

    def ws_trips(self, count: int) -> None:
        """``count`` echo round trips over the clients (at least one each)."""
        self._left = max(count, CLIENTS)
        for conn, _transport in self.clients:
            conn.data_received(CLIENT_FRAME)
        self._run()

    # ── SSE ─────────────────────────────────────────────────────────────

    def _sse_client(self) -> tuple[HttpConnection, _Transport]:
        conn = HttpConnection(self.sse)
        transport = _Transport(self._streamed)
        conn.connection_made(transport)
        return conn, transport

    def _streamed(self, data: bytes) -> None:
        self.events += data.count(b"\n\n")
        if data.endswith(STREAM_END):
            self._left -= 1
            if self._left > 0:
                self.loop.call_soon(self.sse_conn.data_received, EVENTS_REQUEST)
            else:
                self.loop.stop()

    def sse_streams(self, count: int) -> None:
        """Whole streams of ``EVENTS`` events, at least ``count`` events in all."""
        self._left = max(1, count // EVENTS)
        self.sse_conn.data_received(EVENTS_REQUEST)
        self._run()

    # ── the loop ────────────────────────────────────────────────────────

    def _run(self) -> None:
        timer = self.loop.call_later(RUN_TIMEOUT_S, self._stalled)
        self.loop.run_forever()
        timer.cancel()

    def _stalled(self) -> None:
        self.loop.stop()
        raise SystemExit(f"stalled: {self._left} still to come after {RUN_TIMEOUT_S} s")

    def _until(self, done: Callable[[], bool]) -> None:
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while not done():
            if time.monotonic() > deadline:
                raise SystemExit("the upgrade was not answered")
            self.loop.run_until_complete(asyncio.sleep(0))

    def close(self) -> None:
        for conn, _transport in self.clients:
            conn.connection_lost(None)
        self.sse_conn.connection_lost(None)
        self.host.shutdown(5.0)


def _best(run: Callable[[int], None], count: int, rounds: int = ROUNDS) -> float:
    """Best µs per unit over ``rounds`` rounds of ``count`` units."""
    run(count // 10)
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        run(count)
        best = min(best, (time.perf_counter() - start) / count)
    return best * 1e6


def main() -> int:
    """Print the two figures."""
    with tempfile.TemporaryDirectory() as tmp:
        bench = Bench(Path(tmp))
        try:
            ws_us = _best(bench.ws_trips, TRIPS)
            bench.events = 0
            sse_us = _best(bench.sse_streams, EVENTS)
            expected = (ROUNDS + 1) * EVENTS  # the warm-up is one whole stream too
            print(f"in-process, best of {ROUNDS} rounds")
            print(f"  WebSocket echo, {CLIENTS} clients  {ws_us:6.2f} µs a round trip")
            print(f"  SSE, streams of {EVENTS:,} events  {sse_us:6.2f} µs an event")
            if bench.events != expected:
                print(f"  the streams carried {bench.events:,} events, not {expected:,}")
                return 1
        finally:
            bench.close()
    return 0


def count(what: str, units: int) -> int:
    """Run ``units`` round trips (``ws``) or events (``sse``) once after a warm-up."""
    with tempfile.TemporaryDirectory() as tmp:
        bench = Bench(Path(tmp))
        bench.host._halted.set()  # its ticker ends; this one ticks slower
        ticking = threading.Event()
        threading.Thread(target=_tick_slowly, args=(bench.host, ticking), daemon=True).start()
        try:
            run = bench.ws_trips if what == "ws" else bench.sse_streams
            run(TRIPS // 10 if what == "ws" else EVENTS)
            if units:
                run(units)
        finally:
            ticking.set()
            bench.close()
    return 0


def _tick_slowly(host: WasmHost, stop: threading.Event) -> None:
    """The host's epoch ticker, once every ``COUNTED_TICK_S``."""
    engines = (host.engine.ptr(), host.inline.engine)
    while not stop.wait(COUNTED_TICK_S):
        host.ticks += 1
        for engine in engines:
            capi.engine_increment_epoch(engine)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] in ("ws", "sse") and sys.argv[2].isdigit():
        sys.exit(count(sys.argv[1], int(sys.argv[2])))
    sys.exit(main())
