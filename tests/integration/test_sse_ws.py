"""SSE streams and WebSockets on the real daemon, seen from their clients.

Runs in: any (the test process; ``rusmd`` runs as a subprocess, the
guests are WAT compiled with ``wasmtime.wat2wasm`` at test time).

Two guests. ``stream`` is a handler component whose actions serve the
routes of two sse listeners: a fixed list of events, an endless stream,
an idle one (for heartbeats), a 404, a trap after the first event, and a
stream fed by the process's mailbox. ``echo`` is the component of a ws
listener: it sends every message back with its kind, answers ``pid``
with its own pid, traps on ``trap``, closes with 4000 "bye" on ``bye``
(and returns) or on ``linger`` (and keeps waiting in ``rusm.recv``), and
logs ``closed CODE`` when the client closes. The clients are
``http.client`` for SSE and the ``websockets`` library for WebSockets.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import signal
import socket
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import pytest
import wasmtime
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as connect_async
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection as SyncConnection
from websockets.sync.client import connect

from rusmd.errors import EX_OK
from tests.integration.conftest import App, Daemon, free_port

# Upper bound on any one wait (an event, a frame, a log line, an exit) on
# a loaded two-core machine; never a measure of speed.
WAIT_S = 20.0
# The ws listener's max-message-bytes: the echo guest's buffer is as big.
MAX_MESSAGE_BYTES = 4096
# The sse listener whose idle stream must see heartbeats.
HEARTBEAT_S = 1
# Messages of MAX_MESSAGE_BYTES the echo guest sends for ``flood``: far
# more than the kernel's socket buffers hold, so its ws_send must wait.
FLOOD_MESSAGES = 4000
# Events the fiber sse action ``burst`` sends.
BURST_EVENTS = 2000
# Concurrent WebSockets in the many-connections test, and how many
# handshakes are in flight at once while opening them.
MANY = 1000
HANDSHAKES_IN_FLIGHT = 50
# Opening, asking and closing MANY sockets on a loaded two-core machine.
MANY_WAIT_S = 180.0

# Turns the i64 on the stack into decimal digits ending at byte 240 and
# returns where they start (the length is 240 minus that).
ITOA = """
  (func $itoa (param $v i64) (result i32)
    (local $p i32)
    (local.set $p (i32.const 240))
    (loop $digit
      (local.set $p (i32.sub (local.get $p) (i32.const 1)))
      (i32.store8 (local.get $p)
        (i32.add (i32.const 48) (i32.wrap_i64 (i64.rem_u (local.get $v) (i64.const 10)))))
      (local.set $v (i64.div_u (local.get $v) (i64.const 10)))
      (br_if $digit (i64.ne (local.get $v) (i64.const 0))))
    (local.get $p))
"""

# The sse actions. recv's header is at 0 (kind at 0), payloads at 1024.
# It imports a WASI call that blocks its thread (unused): its processes
# keep a guest thread each, beside ``RELAY_WAT``'s fibers.
STREAM_WAT = f"""
(module
  (import "wasi_snapshot_preview1" "poll_oneoff"
    (func $poll_oneoff (param i32 i32 i32 i32) (result i32)))
  (import "rusm" "self" (func $self (result i64)))
  (import "rusm" "sleep" (func $sleep (param i32) (result i32)))
  (import "rusm" "recv" (func $recv (param i32 i32 i32 i32) (result i32)))
  (import "rusm" "respond" (func $respond (param i32 i32 i32 i32 i32) (result i32)))
  (import "rusm" "flush" (func $flush (result i32)))
  (import "rusm" "sse_event" (func $event (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 256) "greeting")
  (data (i32.const 272) "hello")
  (data (i32.const 288) "first line\\nsecond line\\nthird")
  (data (i32.const 320) "count")
  (data (i32.const 328) "3")
  (data (i32.const 336) "pid")
  (data (i32.const 344) "tick")
  (data (i32.const 352) "message")
  (data (i32.const 360) "no such topic\\n")
  (data (i32.const 384) "before")
  {ITOA}
  (func $send_pid
    (local $p i32)
    (local.set $p (call $itoa (call $self)))
    (drop (call $event (i32.const 336) (i32.const 3)
      (local.get $p) (i32.sub (i32.const 240) (local.get $p)))))
  (func (export "events")
    (drop (call $event (i32.const 256) (i32.const 8) (i32.const 272) (i32.const 5)))
    (drop (call $event (i32.const 0) (i32.const 0) (i32.const 288) (i32.const 28)))
    (drop (call $event (i32.const 320) (i32.const 5) (i32.const 328) (i32.const 1))))
  ;; Ignores CLOSED on purpose: only the host can end it.
  (func (export "endless")
    (call $send_pid)
    (loop $forever
      (drop (call $event (i32.const 344) (i32.const 4) (i32.const 328) (i32.const 1)))
      (drop (call $sleep (i32.const 20)))
      (br $forever)))
  (func (export "idle")
    (drop (call $flush))
    (loop $forever
      (drop (call $sleep (i32.const 60000)))
      (br $forever)))
  (func (export "missing")
    (drop (call $respond (i32.const 404) (i32.const 0) (i32.const 0)
      (i32.const 360) (i32.const 14))))
  (func (export "trap")
    (drop (call $event (i32.const 384) (i32.const 6) (i32.const 328) (i32.const 1)))
    (unreachable))
  ;; Every MESSAGE (kind 0) in the mailbox goes out as a `message` event.
  (func (export "inbox")
    (local $n i32)
    (call $send_pid)
    (loop $serve
      (local.set $n (call $recv (i32.const 0) (i32.const 1024) (i32.const 4096) (i32.const -1)))
      (if (i32.and (i32.ge_s (local.get $n) (i32.const 0)) (i32.eqz (i32.load (i32.const 0))))
        (then (drop (call $event (i32.const 352) (i32.const 7) (i32.const 1024) (local.get $n)))))
      (br $serve)))
)
"""

# An sse component whose processes run as fibers (no WASI call that blocks):
# ``relay`` sends its pid, then each MESSAGE as a ``message`` event;
# ``burst`` sends 2000 numbered events and returns.
RELAY_WAT = f"""
(module
  (import "rusm" "self" (func $self (result i64)))
  (import "rusm" "recv" (func $recv (param i32 i32 i32 i32) (result i32)))
  (import "rusm" "sse_event" (func $event (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 336) "pid")
  (data (i32.const 352) "message")
  {ITOA}
  (func (export "relay")
    (local $n i32) (local $p i32)
    (local.set $p (call $itoa (call $self)))
    (drop (call $event (i32.const 336) (i32.const 3)
      (local.get $p) (i32.sub (i32.const 240) (local.get $p))))
    (loop $serve
      (local.set $n (call $recv (i32.const 0) (i32.const 1024) (i32.const 4096) (i32.const -1)))
      (if (i32.and (i32.ge_s (local.get $n) (i32.const 0)) (i32.eqz (i32.load (i32.const 0))))
        (then (drop (call $event (i32.const 352) (i32.const 7) (i32.const 1024) (local.get $n)))))
      (br $serve)))
  (func (export "burst")
    (local $i i32) (local $p i32)
    (loop $next
      (local.set $p (call $itoa (i64.extend_i32_u (local.get $i))))
      (if (i32.lt_s (call $event (i32.const 0) (i32.const 0)
                      (local.get $p) (i32.sub (i32.const 240) (local.get $p)))
                    (i32.const 0))
        (then (return)))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $next (i32.lt_u (local.get $i) (i32.const {BURST_EVENTS})))))
)
"""

# The ws component. Kinds: FRAME 5 (reason at 4: 1 text, 2 binary), CLOSED 6
# (close code in ref, at 16). Besides echoing it answers ``spin`` by
# looping forever and ``nap`` with ``timeout`` once a 50 ms recv timed out.
# Its imports (a WASI clock among them) let it run as a fiber on the I/O thread; ``NAPPER_WAT`` (the
# same echo, with a ``rusm.sleep`` before each reply, importing WASI's
# blocking ``poll_oneoff``) runs on a thread.
ECHO_WAT = f"""
(module
  (import "wasi_snapshot_preview1" "clock_time_get"
    (func $clock (param i32 i64 i32) (result i32)))
  (import "rusm" "self" (func $self (result i64)))
  (import "rusm" "log" (func $log (param i32 i32 i32) (result i32)))
  (import "rusm" "recv" (func $recv (param i32 i32 i32 i32) (result i32)))
  (import "rusm" "ws_send" (func $ws_send (param i32 i32 i32) (result i32)))
  (import "rusm" "ws_close" (func $ws_close (param i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 256) "pid")
  (data (i32.const 264) "trap")
  (data (i32.const 272) "bye")
  (data (i32.const 280) "closed ")
  (data (i32.const 288) "linger")
  (data (i32.const 296) "spin")
  (data (i32.const 304) "nap")
  (data (i32.const 312) "timeout")
  (data (i32.const 320) "flood")
  (data (i32.const 328) "done")
  (data (i32.const 336) "badrecv")
  {ITOA}
  ;; Is the payload at 1024 (n bytes) the string at ptr (len bytes)?
  (func $is (param $ptr i32) (param $len i32) (param $n i32) (result i32)
    (local $i i32)
    (if (i32.ne (local.get $n) (local.get $len)) (then (return (i32.const 0))))
    (block $differ
      (loop $byte
        (br_if $differ (i32.ge_u (local.get $i) (local.get $len)))
        (if (i32.ne (i32.load8_u (i32.add (local.get $ptr) (local.get $i)))
                    (i32.load8_u (i32.add (i32.const 1024) (local.get $i))))
          (then (return (i32.const 0))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $byte)))
    (i32.const 1))
  (func (export "run")
    (local $n i32) (local $p i32)
    (loop $serve
      (local.set $n (call $recv (i32.const 0) (i32.const 1024) (i32.const {MAX_MESSAGE_BYTES})
        (i32.const -1)))
      (if (i32.eq (i32.load (i32.const 0)) (i32.const 6))
        (then
          (local.set $p (i32.sub (call $itoa (i64.load (i32.const 16))) (i32.const 7)))
          (memory.copy (local.get $p) (i32.const 280) (i32.const 7))
          (drop (call $log (i32.const 2) (local.get $p) (i32.sub (i32.const 240) (local.get $p))))
          (return)))
      (if (i32.eq (i32.load (i32.const 0)) (i32.const 5))
        (then
          (if (call $is (i32.const 256) (i32.const 3) (local.get $n))
            (then
              (local.set $p (call $itoa (call $self)))
              (drop (call $ws_send (i32.const 1) (local.get $p)
                (i32.sub (i32.const 240) (local.get $p))))
              (br $serve)))
          (if (call $is (i32.const 264) (i32.const 4) (local.get $n)) (then (unreachable)))
          (if (call $is (i32.const 272) (i32.const 3) (local.get $n))
            (then
              (drop (call $ws_close (i32.const 4000) (i32.const 272) (i32.const 3)))
              (return)))
          (if (call $is (i32.const 288) (i32.const 6) (local.get $n))
            (then
              (drop (call $ws_close (i32.const 4000) (i32.const 272) (i32.const 3)))
              (br $serve)))
          (if (call $is (i32.const 296) (i32.const 4) (local.get $n))
            (then (loop $spin (br $spin))))
          ;; badrecv: a recv whose header pointer lies outside memory.
          (if (call $is (i32.const 336) (i32.const 7) (local.get $n))
            (then
              (drop (call $recv (i32.const 70000) (i32.const 1024) (i32.const 16) (i32.const -1)))))
          ;; flood: FLOOD_MESSAGES binary messages of the buffer, then "done".
          (if (call $is (i32.const 320) (i32.const 5) (local.get $n))
            (then
              (local.set $p (i32.const 0))
              (loop $more
                (i32.store (i32.const 1024) (local.get $p))
                (drop (call $ws_send
                  (i32.const 2) (i32.const 1024) (i32.const {MAX_MESSAGE_BYTES})))
                (local.set $p (i32.add (local.get $p) (i32.const 1)))
                (br_if $more (i32.lt_u (local.get $p) (i32.const {FLOOD_MESSAGES}))))
              (drop (call $ws_send (i32.const 1) (i32.const 328) (i32.const 4)))
              (br $serve)))
          ;; nap: a recv of 50 ms on an empty mailbox must time out (-6).
          (if (call $is (i32.const 304) (i32.const 3) (local.get $n))
            (then
              (if (i32.eq (call $recv (i32.const 0) (i32.const 1024) (i32.const 16)
                                      (i32.const 50))
                          (i32.const -6))
                (then (drop (call $ws_send (i32.const 1) (i32.const 312) (i32.const 7)))))
              (br $serve)))
          ;; A WASI call on the way (it runs on the fiber like any import).
          (drop (call $clock (i32.const 1) (i64.const 1) (i32.const 600)))
          (drop (call $ws_send (i32.load (i32.const 4)) (i32.const 1024) (local.get $n)))))
      (br $serve)))
)
"""


NAPPER_WAT = """
(module
  (import "wasi_snapshot_preview1" "poll_oneoff"
    (func $poll_oneoff (param i32 i32 i32 i32) (result i32)))
  (import "rusm" "recv" (func $recv (param i32 i32 i32 i32) (result i32)))
  (import "rusm" "sleep" (func $sleep (param i32) (result i32)))
  (import "rusm" "ws_send" (func $ws_send (param i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "run")
    (local $n i32)
    (loop $serve
      (local.set $n (call $recv (i32.const 0) (i32.const 1024) (i32.const 4096) (i32.const -1)))
      (if (i32.eq (i32.load (i32.const 0)) (i32.const 6)) (then (return)))
      (if (i32.eq (i32.load (i32.const 0)) (i32.const 5))
        (then
          (drop (call $sleep (i32.const 1)))
          (drop (call $ws_send (i32.load (i32.const 4)) (i32.const 1024) (local.get $n)))))
      (br $serve))))
"""


class Ports:
    """The serving ports of the test app."""

    def __init__(self, sse: int) -> None:
        self.sse = sse
        self.quiet_sse = free_port()
        self.ws = free_port()
        self.napper_ws = free_port()


def write_app(app: App) -> Ports:
    """Two sse listeners (the second with a 1 s heartbeat), a ws listener, both guests."""
    ports = Ports(app.serve_port)
    wasm = app.directory / "wasm"
    wasm.mkdir(exist_ok=True)
    (wasm / "stream.wasm").write_bytes(wasmtime.wat2wasm(STREAM_WAT))
    (wasm / "echo.wasm").write_bytes(wasmtime.wat2wasm(ECHO_WAT))
    (wasm / "napper.wasm").write_bytes(wasmtime.wat2wasm(NAPPER_WAT))
    (wasm / "relay.wasm").write_bytes(wasmtime.wat2wasm(RELAY_WAT))
    routes = "\n".join(
        [
            f'"GET /{action}" = "stream#{action}"'
            for action in ("events", "endless", "missing", "trap", "inbox")
        ]
        + ['"GET /relay" = "relay#relay"', '"GET /burst" = "relay#burst"']
    )
    app.manifest.write_text(
        f'[node]\nlisten = "127.0.0.1:{app.node_port}"\n[log]\nlevel = "info"\n'
        f'[[serve]]\nprotocol = "sse"\nlisten = "127.0.0.1:{ports.sse}"\n'
        f"[serve.routes]\n{routes}\n"
        f'[[serve]]\nprotocol = "sse"\nlisten = "127.0.0.1:{ports.quiet_sse}"\n'
        f"heartbeat-s = {HEARTBEAT_S}\n"
        '[serve.routes]\n"GET /idle" = "stream#idle"\n'
        f'[[serve]]\nprotocol = "ws"\nlisten = "127.0.0.1:{ports.ws}"\nname = "echo"\n'
        f"max-message-bytes = {MAX_MESSAGE_BYTES}\n"
        f'[[serve]]\nprotocol = "ws"\nlisten = "127.0.0.1:{ports.napper_ws}"\nname = "napper"\n'
        "[components.stream]\n[components.echo]\n[components.napper]\n[components.relay]\n"
    )
    return ports


@pytest.fixture
def ports(app: App) -> Ports:
    return write_app(app)


@pytest.fixture
def one_worker(ports: Ports, start_daemon: Callable[..., Daemon]) -> Daemon:
    """The daemon with one worker (profile light on 2 cores): every process side by side."""
    return start_daemon(cpus=2)


# ── clients ─────────────────────────────────────────────────────────────


class StreamCut(Exception):
    """The server closed the connection before the stream's last chunk."""


class SseStream:
    """One SSE request on a raw socket, read block by block (an event or a
    comment: its lines), with the chunked framing checked by hand so that
    a clean end (the last chunk) and a cut connection look different."""

    def __init__(self, port: int, target: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT_S)
        self.sock.sendall(
            f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            "Accept: text/event-stream\r\n\r\n".encode()
        )
        self.raw = b""  # received, not yet de-chunked
        self.body = b""  # de-chunked, not yet split into blocks
        self.ended = False  # the last chunk arrived
        while b"\r\n\r\n" not in self.raw:
            self._receive()
        head, _, self.raw = self.raw.partition(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        self.status = int(status_line.split()[1])
        self.headers = {
            name.lower(): value.strip() for name, _, value in (x.partition(":") for x in lines)
        }
        assert self.headers.get("transfer-encoding") == "chunked", self.headers

    def _receive(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise StreamCut(f"closed with {self.raw + self.body!r} unread")
        self.raw += data

    def _dechunk(self) -> None:
        while not self.ended and b"\r\n" in self.raw:
            size_line, _, rest = self.raw.partition(b"\r\n")
            size = int(size_line, 16)
            if len(rest) < size + 2:
                return
            assert rest[size : size + 2] == b"\r\n", rest
            self.body += rest[:size]
            self.raw = rest[size + 2 :]
            self.ended = size == 0

    def next_block(self) -> tuple[str, ...] | None:
        """The next block's lines; None once the stream ended cleanly.

        Raises:
            StreamCut: The connection closed before the last chunk.
        """
        while True:
            self._dechunk()
            if b"\n\n" in self.body:
                block, _, self.body = self.body.partition(b"\n\n")
                return tuple(block.decode().split("\n"))
            if self.ended:
                assert not self.body, f"the stream ended inside a block: {self.body!r}"
                return None
            self._receive()

    def blocks_to_end(self) -> list[tuple[str, ...]]:
        """Every block up to the clean end of the stream."""
        blocks = []
        while (block := self.next_block()) is not None:
            blocks.append(block)
        return blocks

    def pid(self) -> int:
        """The stream's first event: ``pid`` with the process's pid."""
        block = self.next_block()
        assert block is not None and block[0] == "event: pid", block
        return int(block[1].removeprefix("data: "))

    def close(self) -> None:
        self.sock.close()


@contextmanager
def sse(port: int, target: str) -> Iterator[SseStream]:
    stream = SseStream(port, target)
    try:
        yield stream
    finally:
        stream.close()


def ws_connect(ports: Ports, port: int = 0) -> SyncConnection:
    return connect(f"ws://127.0.0.1:{port or ports.ws}/", open_timeout=WAIT_S, close_timeout=WAIT_S)


def ws_pid(ws: SyncConnection) -> int:
    ws.send("pid")
    return int(ws.recv(timeout=WAIT_S))


def closed_by_server(ws: SyncConnection) -> ConnectionClosed:
    """Wait for the server to close ``ws``; the close it sent."""
    with pytest.raises(ConnectionClosed) as closed:
        ws.recv(timeout=WAIT_S)
    return closed.value


# ── the daemon's view ───────────────────────────────────────────────────


def listed(daemon: Daemon) -> dict[int, dict[str, Any]]:
    """``rusmctl list --json`` by pid."""
    result = daemon.ctl("list", "--json")
    assert result.returncode == EX_OK, result.stderr
    return {row["pid"]: row for row in json.loads(result.stdout)["processes"]}


def wait_gone(daemon: Daemon, pids: set[int], timeout_s: float = WAIT_S) -> None:
    daemon.wait_for(
        lambda: not pids & listed(daemon).keys(), timeout_s, f"processes {sorted(pids)[:5]}… to end"
    )


def guest_lines(daemon: Daemon, source: str) -> list[str]:
    return [r["text"] for r in daemon.log_records() if r["source"] == source]


# ── SSE ─────────────────────────────────────────────────────────────────


def test_sse_events_arrive_in_order_with_names_and_split_data_then_the_stream_ends(
    ports: Ports, one_worker: Daemon
) -> None:
    with sse(ports.sse, "/events") as stream:
        assert stream.status == 200
        assert stream.headers["content-type"] == "text/event-stream"
        assert stream.headers["cache-control"] == "no-cache"
        assert stream.blocks_to_end() == [
            ("event: greeting", "data: hello"),
            ("data: first line", "data: second line", "data: third"),
            ("event: count", "data: 3"),
        ]


def test_sse_client_disconnecting_from_an_endless_stream_ends_its_process(
    ports: Ports, one_worker: Daemon
) -> None:
    with sse(ports.sse, "/endless") as stream:
        pid = stream.pid()
        assert stream.next_block() == ("event: tick", "data: 3")
        row = listed(one_worker).get(pid)
        assert row is not None and row["component"] == "stream", row
    wait_gone(one_worker, {pid})
    with sse(ports.sse, "/events") as stream:
        assert len(stream.blocks_to_end()) == 3  # the listener serves on


def test_sse_idle_stream_gets_heartbeat_comments(ports: Ports, one_worker: Daemon) -> None:
    with sse(ports.quiet_sse, "/idle") as stream:
        assert stream.headers["content-type"] == "text/event-stream"
        assert stream.next_block() == (": heartbeat",)
        assert stream.next_block() == (": heartbeat",)


def test_sse_action_responding_404_before_any_event_gets_a_plain_404(
    ports: Ports, one_worker: Daemon
) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", ports.sse, timeout=WAIT_S)
    try:
        conn.request("GET", "/missing")
        response = conn.getresponse()
        assert response.status == 404
        assert response.getheader("content-type") == "text/plain; charset=utf-8"
        assert response.read() == b"no such topic\n"
    finally:
        conn.close()


def test_sse_action_trapping_mid_stream_cuts_only_its_stream(
    ports: Ports, one_worker: Daemon
) -> None:
    with sse(ports.sse, "/inbox") as survivor:
        pid = survivor.pid()
        with sse(ports.sse, "/trap") as doomed:
            assert doomed.next_block() == ("event: before", "data: 3")
            with pytest.raises(StreamCut):
                doomed.next_block()
        assert one_worker.ctl("send", str(pid), "still here").returncode == EX_OK
        assert survivor.next_block() == ("event: message", "data: still here")


def test_sse_stream_process_receives_rusmctl_send_and_emits_it_as_events(
    ports: Ports, one_worker: Daemon
) -> None:
    with sse(ports.sse, "/inbox") as stream:
        pid = stream.pid()
        assert pid in listed(one_worker)
        for text in ("first news", "second\nnews"):
            assert one_worker.ctl("send", str(pid), text).returncode == EX_OK
        assert stream.next_block() == ("event: message", "data: first news")
        assert stream.next_block() == ("event: message", "data: second", "data: news")


def test_sse_fiber_relays_its_mailbox_and_ends_when_the_client_leaves(
    ports: Ports, one_worker: Daemon
) -> None:
    with sse(ports.sse, "/relay") as stream:
        pid = stream.pid()
        assert listed(one_worker)[pid]["runs"] == "fiber"
        for text in ("first news", "second news"):
            assert one_worker.ctl("send", str(pid), text).returncode == EX_OK
        assert stream.next_block() == ("event: message", "data: first news")
        assert stream.next_block() == ("event: message", "data: second news")
        inbox_pid = 0
        with sse(ports.sse, "/inbox") as threaded:
            inbox_pid = threaded.pid()
            assert listed(one_worker)[inbox_pid]["runs"] == "thread"
    wait_gone(one_worker, {pid, inbox_pid})


def test_sse_fiber_burst_arrives_whole_and_in_order(ports: Ports, one_worker: Daemon) -> None:
    with sse(ports.sse, "/burst") as stream:
        blocks = stream.blocks_to_end()
    assert blocks == [(f"data: {n}",) for n in range(BURST_EVENTS)]


# ── WebSocket ───────────────────────────────────────────────────────────


def test_ws_text_and_binary_messages_echo_with_their_kind(ports: Ports, one_worker: Daemon) -> None:
    with ws_connect(ports) as ws:
        ws.send("héllo, wörld")
        assert ws.recv(timeout=WAIT_S) == "héllo, wörld"
        ws.send(b"\x00\x01\xfe\xff")
        assert ws.recv(timeout=WAIT_S) == b"\x00\x01\xfe\xff"
        ws.send(bytes(range(256)) * 16)  # max-message-bytes exactly
        assert ws.recv(timeout=WAIT_S) == bytes(range(256)) * 16


async def _open_many(port: int, count: int) -> list[ClientConnection | BaseException]:
    gate = asyncio.Semaphore(HANDSHAKES_IN_FLIGHT)

    async def open_one() -> ClientConnection:
        async with gate:
            return await connect_async(
                f"ws://127.0.0.1:{port}/", open_timeout=WAIT_S, close_timeout=WAIT_S
            )

    return await asyncio.gather(*(open_one() for _ in range(count)), return_exceptions=True)


async def _ask_pid(ws: ClientConnection) -> int:
    await ws.send("pid")
    return int(await asyncio.wait_for(ws.recv(), WAIT_S))


async def _many_connections(daemon: Daemon, ports: Ports) -> None:
    opened = await _open_many(ports.ws, MANY)
    sockets = [ws for ws in opened if isinstance(ws, ClientConnection)]
    try:
        pids = await asyncio.gather(*(_ask_pid(ws) for ws in sockets))
        per_worker = Counter(pid % 1000 for pid in pids)
        failures = Counter(repr(exc)[:120] for exc in opened if isinstance(exc, BaseException))
        assert len(sockets) == MANY, f"opened {len(sockets)}; per worker {per_worker}; {failures}"
        assert len(set(pids)) == MANY, per_worker
        rows = await asyncio.to_thread(listed, daemon)
        assert {pid for pid, row in rows.items() if row["component"] == "echo"} == set(pids)
    finally:
        await asyncio.gather(*(ws.close() for ws in sockets))
    await asyncio.to_thread(wait_gone, daemon, set(pids), MANY_WAIT_S)


@pytest.mark.timeout(600)
def test_ws_1000_concurrent_connections_each_have_their_own_process(
    ports: Ports, start_daemon: Callable[..., Daemon]
) -> None:
    daemon = start_daemon()  # two workers: the kernel spreads the accepts
    asyncio.run(asyncio.wait_for(_many_connections(daemon, ports), MANY_WAIT_S * 2))


def test_ws_guest_trapping_closes_only_its_socket_with_1011(
    ports: Ports, one_worker: Daemon
) -> None:
    with ws_connect(ports) as before, ws_connect(ports) as doomed, ws_connect(ports) as other:
        doomed_pid = ws_pid(doomed)
        doomed.send("trap")
        closed = closed_by_server(doomed)
        assert closed.rcvd is not None and closed.rcvd.code == 1011
        for ws in (before, other):
            ws.send("still echoing")
            assert ws.recv(timeout=WAIT_S) == "still echoing"
        wait_gone(one_worker, {doomed_pid})
        with ws_connect(ports) as after:
            after.send(b"new")
            assert after.recv(timeout=WAIT_S) == b"new"


def test_ws_client_close_reaches_the_guest_and_its_process_ends(
    ports: Ports, one_worker: Daemon
) -> None:
    with ws_connect(ports) as ws:
        pid = ws_pid(ws)
        assert pid in listed(one_worker)
        ws.close(code=4001, reason="done")
    one_worker.wait_for(
        lambda: "closed 4001" in guest_lines(one_worker, f"echo#{pid}"),
        WAIT_S,
        "the guest to log the client's close code",
    )
    wait_gone(one_worker, {pid})


def test_ws_guest_closing_with_4000_bye_is_seen_by_the_client(
    ports: Ports, one_worker: Daemon
) -> None:
    with ws_connect(ports) as ws:
        pid = ws_pid(ws)
        ws.send("bye")
        closed = closed_by_server(ws)
        assert closed.rcvd is not None
        assert (closed.rcvd.code, closed.rcvd.reason) == (4000, "bye")
    wait_gone(one_worker, {pid})


def test_ws_guest_running_on_after_its_own_close_is_stopped_once_the_socket_is_gone(
    ports: Ports, one_worker: Daemon
) -> None:
    with ws_connect(ports) as ws:
        pid = ws_pid(ws)
        ws.send("linger")
        closed = closed_by_server(ws)
        assert closed.rcvd is not None and closed.rcvd.code == 4000
    wait_gone(one_worker, {pid})


def test_ws_process_runs_as_a_fiber_unless_it_imports_a_function_that_waits(
    ports: Ports, one_worker: Daemon
) -> None:
    with ws_connect(ports) as echo, ws_connect(ports, ports.napper_ws) as napper:
        echo_pid = ws_pid(echo)
        napper.send("zzz")
        assert napper.recv(timeout=WAIT_S) == "zzz"
        rows = listed(one_worker)
        [napper_pid] = [pid for pid, row in rows.items() if row["component"] == "napper"]
        assert rows[echo_pid]["runs"] == "fiber"
        assert rows[napper_pid]["runs"] == "thread"
        for ws in (echo, napper):
            ws.send(b"both kinds echo")
            assert ws.recv(timeout=WAIT_S) == b"both kinds echo"


def test_ws_fiber_sending_to_a_client_that_does_not_read_waits_without_stalling_others(
    ports: Ports, one_worker: Daemon
) -> None:
    with ws_connect(ports) as flooded, ws_connect(ports) as other:
        flooded.send("flood")
        # Nobody reads `flooded`: its guest's ws_send parks the fiber once
        # the socket is backed up, and the I/O thread serves on.
        for n in range(20):
            other.send(f"meanwhile {n}")
            assert other.recv(timeout=WAIT_S) == f"meanwhile {n}"
        for n in range(FLOOD_MESSAGES):
            message = flooded.recv(timeout=WAIT_S)
            assert isinstance(message, bytes) and len(message) == MAX_MESSAGE_BYTES
            assert int.from_bytes(message[:4], "little") == n
        assert flooded.recv(timeout=WAIT_S) == "done"


def test_ws_fiber_recv_with_a_bad_pointer_crashes_only_its_process_naming_it(
    ports: Ports, one_worker: Daemon
) -> None:
    with ws_connect(ports) as bad, ws_connect(ports) as other:
        pid = ws_pid(bad)
        bad.send("badrecv")
        closed = closed_by_server(bad)
        assert closed.rcvd is not None and closed.rcvd.code == 1011
        wait_gone(one_worker, {pid})
        lines = [t for t in guest_lines(one_worker, "rusm") if f"echo#{pid}" in t]
        assert any("bad pointer: rusm.recv(ptr=70000, len=32)" in t for t in lines), lines
        other.send("fine")
        assert other.recv(timeout=WAIT_S) == "fine"


def test_ws_fiber_recv_with_a_timeout_times_out_on_an_empty_mailbox(
    ports: Ports, one_worker: Daemon
) -> None:
    with ws_connect(ports) as ws:
        ws.send("nap")
        assert ws.recv(timeout=WAIT_S) == "timeout"
        ws.send("awake")
        assert ws.recv(timeout=WAIT_S) == "awake"


def test_ws_fiber_spinning_is_stopped_at_its_cpu_budget_and_never_stalls_other_sockets(
    ports: Ports, one_worker: Daemon
) -> None:
    with ws_connect(ports) as spinner, ws_connect(ports) as other:
        spinner_pid = ws_pid(spinner)
        worker_pid = one_worker.workers()[0]["pid"]
        spinner.send("spin")
        # The spinner has a 1000 ms CPU budget; while it burns it, the
        # I/O thread it runs on keeps serving the other socket.
        for n in range(20):
            other.send(f"while spinning {n}")
            assert other.recv(timeout=WAIT_S) == f"while spinning {n}"
        with pytest.raises(TimeoutError):
            spinner.recv(timeout=0)  # not closed yet: the echoes came first
        closed = closed_by_server(spinner)
        assert closed.rcvd is not None and closed.rcvd.code == 1011
        wait_gone(one_worker, {spinner_pid})
        assert any(
            "cpu limit" in text
            for text in guest_lines(one_worker, "rusm")
            if f"echo#{spinner_pid}" in text
        )
        other.send("after")
        assert other.recv(timeout=WAIT_S) == "after"
        assert one_worker.workers()[0]["pid"] == worker_pid


def test_ws_fiber_waiting_in_recv_is_killed_by_rusmctl_and_its_socket_closes_1011(
    ports: Ports, one_worker: Daemon
) -> None:
    with ws_connect(ports) as ws, ws_connect(ports) as other:
        pid = ws_pid(ws)
        assert one_worker.ctl("kill", str(pid)).returncode == EX_OK
        closed = closed_by_server(ws)
        assert closed.rcvd is not None and closed.rcvd.code == 1011
        wait_gone(one_worker, {pid})
        other.send("unaffected")
        assert other.recv(timeout=WAIT_S) == "unaffected"


def test_ws_message_over_max_message_bytes_closes_with_1009(
    ports: Ports, one_worker: Daemon
) -> None:
    with ws_connect(ports) as ws, ws_connect(ports) as other:
        pid = ws_pid(ws)
        ws.send(b"x" * (MAX_MESSAGE_BYTES + 1))
        closed = closed_by_server(ws)
        assert closed.rcvd is not None and closed.rcvd.code == 1009
        other.send("fine")
        assert other.recv(timeout=WAIT_S) == "fine"
    wait_gone(one_worker, {pid})


def test_ws_sigterm_closes_open_sockets_with_1001_and_the_daemon_exits_0(
    ports: Ports, start_daemon: Callable[..., Daemon]
) -> None:
    daemon = start_daemon()
    with ExitStack() as stack:
        sockets = [stack.enter_context(ws_connect(ports)) for _ in range(4)]
        for ws in sockets:
            ws_pid(ws)
        daemon.signal(signal.SIGTERM)
        codes = []
        for ws in sockets:
            closed = closed_by_server(ws)
            codes.append(closed.rcvd.code if closed.rcvd is not None else None)
        assert codes == [1001] * len(sockets)
        assert daemon.wait_exit(WAIT_S * 3) == 0
