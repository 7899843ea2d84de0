"""Inline HTTP handlers on a real in-process host: fresh instances in a shared store.

Runs in: the test process, which plays a worker's I/O thread: a real
``WasmHost`` (real wasmtime, the pooling engine) serves requests with
``InlinePath.serve`` into an exchange whose connection is a list.

Inline handlers' instances share a store for up to
``INLINE_STORE_INSTANCES`` requests (a store costs more than an
instance). What a user must never notice: state carried from one request
to the next, a failure poisoning the requests after it, memory pinned by
finished requests, or processes refused because the pool filled up.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvloop
import wasmtime

from rusmd.abi import ErrorCode
from rusmd.channel import ComponentImage
from rusmd.config import Overrides, load_environment, load_manifest
from rusmd.config.model import LogLevel, Protocol
from rusmd.log import Logger, LogRecord
from rusmd.serving.http import HttpConnection
from rusmd.serving.server import ListenerRuntime
from rusmd.store.kv import KvStore, Op, Write
from rusmd.wasm.cache import CompileCache
from rusmd.wasm.engine import compile_engine
from rusmd.wasm.exchange import Exchange, Request
from rusmd.wasm.host import WasmHost
from rusmd.wasm.inline import INLINE_STORE_INSTANCES

REQUESTS = INLINE_STORE_INSTANCES * 5 + 3
SETTLE_S = 20.0
RESPOND = """(import "rusm" "respond" (func $respond (param i32 i32 i32 i32 i32) (result i32)))
  (import "rusm" "self" (func $self (result i64)))"""

# Counts in a global and in memory; answers "<global><memory byte>" as two
# digits. A fresh instance answers "11" every time.
COUNTER = f"""(module {RESPOND}
  (memory (export "memory") 1)
  (global $n (mut i32) (i32.const 0))
  (func (export "count")
    (global.set $n (i32.add (global.get $n) (i32.const 1)))
    (i32.store8 (i32.const 100) (i32.add (i32.load8_u (i32.const 100)) (i32.const 1)))
    (i32.store8 (i32.const 0) (i32.add (global.get $n) (i32.const 48)))
    (i32.store8 (i32.const 1) (i32.add (i32.load8_u (i32.const 100)) (i32.const 48)))
    (drop (call $respond (i32.const 200) (i32.const 0) (i32.const 0)
                         (i32.const 0) (i32.const 2))))
  (func (export "whoami")
    ;; Its own pid (rusm.self), 8 bytes little-endian, as the body.
    (i64.store (i32.const 0) (call $self))
    (drop (call $respond (i32.const 200) (i32.const 0) (i32.const 0)
                         (i32.const 0) (i32.const 8))))
  (func (export "boom") unreachable)
  (func (export "spin") (loop $l (br $l)))
  (func (export "grow")
    ;; 40 pages (2.5 MiB) more, then the memory size in pages as the body.
    (drop (memory.grow (i32.const 40)))
    (i32.store8 (i32.const 0) (i32.add (i32.const 48) (i32.div_u (memory.size) (i32.const 10))))
    (drop (call $respond (i32.const 200) (i32.const 0) (i32.const 0)
                         (i32.const 0) (i32.const 1)))))"""
WAITER = """(module
  (import "rusm" "sleep" (func $sleep (param i32) (result i32)))
  (func (export "run") (drop (call $sleep (i32.const 60000)))))"""


class Wire:
    """The connection an exchange writes to."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.closing = False

    def send(self, data: bytes) -> None:
        self.sent.append(data)


class Inline:
    """A host plus a way to serve one request inline."""

    def __init__(self, app: Path, lease_end: int = 1_000_000) -> None:
        (app / "rusm.toml").write_text(
            "[capabilities.web]\nmax-memory-mb = 4\nmax-cpu-ms = 200\n"
            '[components.api]\ncapability = "web"\n'
            '[capabilities.bg]\nmax-memory-mb = 1\n[components.waiter]\ncapability = "bg"\n'
        )
        manifest = load_manifest(str(app / "rusm.toml"), Overrides(), load_environment(app))
        self.records: list[LogRecord] = []
        self.host = WasmHost(
            manifest,
            3,
            Logger(LogLevel.DEBUG, self.records.append),
            load_environment(app),
            request_lease=lambda: self.lease_requests.append(time.monotonic()),
            pool_slots=40,
        )
        self.lease_requests: list[float] = []
        self.host.add_lease(1, lease_end)
        cache = CompileCache(app / "cache")
        engine = compile_engine()
        images = []
        for name, wat in (("api", COUNTER), ("waiter", WAITER)):
            wasm = wasmtime.wat2wasm(wat)
            entry = cache.store(cache.key(wasm), wasmtime.Module(engine, wasm).serialize(), name)
            images.append(ComponentImage(name=name, cwasm=str(entry.path), digest=entry.digest))
        self.host.load(images)

    def serve(self, action: str) -> tuple[str, bytes]:
        """(exit reason, response body) of one request to ``api#action``."""
        return self.serve_exchange(action)[:2]

    def serve_exchange(self, action: str) -> tuple[str, bytes, Exchange]:
        """``serve``, with the exchange (its pid) as well."""
        wire = Wire()
        exchange = Exchange(
            Request("GET", "/", "", []), wire, Protocol.HTTP, inline=True, call_soon=lambda *a: None
        )
        exchange.budget_ms = 30_000
        report = self.host.inline.serve(self.host.components["api"], action, exchange)
        if report.reason == "normal":
            assert exchange.complete()
        return report.reason, b"".join(wire.sent).partition(b"\r\n\r\n")[2], exchange


@pytest.fixture
def inline(tmp_path: Path) -> Iterator[Inline]:
    h = Inline(tmp_path)
    assert h.host.components["api"].inline
    yield h
    h.host.shutdown(5.0)


def test_every_request_sees_a_fresh_instance_across_shared_stores(inline: Inline) -> None:
    answers = [inline.serve("count") for _ in range(REQUESTS)]
    assert answers == [("normal", b"11")] * REQUESTS
    assert inline.host.processes == {}


def test_a_trap_or_a_timeout_does_not_touch_the_requests_after_it(inline: Inline) -> None:
    sequence = ["count", "boom", "count", "count", "spin", "count"] * 4
    answers = [inline.serve(action) for action in sequence]
    for action, (reason, body) in zip(sequence, answers, strict=True):
        if action == "count":
            assert (reason, body) == ("normal", b"11")
        else:
            assert reason == "crashed"
    spun = [r.text for r in inline.records if "cpu limit" in r.text]
    assert len(spun) == 4, spun


def test_a_request_that_grew_its_memory_leaves_the_next_one_a_fresh_one(inline: Inline) -> None:
    # 1 page + 40 = 41 → "4" (tens of pages); a reused memory would say 8.
    for _ in range(INLINE_STORE_INSTANCES + 2):
        assert inline.serve("grow") == ("normal", b"4")
        assert inline.serve("count") == ("normal", b"11")


def test_shared_stores_never_cost_a_process_slot(inline: Inline) -> None:
    # Fill a store partly, then spawn up to the process limit: every spawn
    # must get an instance from the pool.
    for _ in range(INLINE_STORE_INSTANCES - 1):
        assert inline.serve("count") == ("normal", b"11")
    pids = [inline.host.spawn("waiter") for _ in range(inline.host.max_processes)]
    deadline = time.monotonic() + SETTLE_S
    while time.monotonic() < deadline:
        crashed = [r.text for r in inline.records if r.text.startswith("exit ")]
        assert not crashed, crashed
        if {row["state"] for row in inline.host.list()} == {"sleeping"}:
            break
        time.sleep(0.02)
    assert len(inline.host.list()) == len(pids) == 40
    assert inline.serve("count") == ("normal", b"11")


def test_each_request_is_its_own_process_with_a_pid_of_its_own(tmp_path: Path) -> None:
    # A lease of 2,000 serials: the host asks for the next one when fewer
    # than LEASE_LOW_WATER remain, and must never hand out a pid past it.
    inline = Inline(tmp_path, lease_end=2_000)
    try:
        seen: list[int] = []
        for number in range(2_500):
            if number % 100 == 0:  # a spawned process draws from the same serials
                seen.append(inline.host.spawn("waiter"))
                inline.host.kill(seen[-1])
            reason, body, exchange = inline.serve_exchange("whoami")
            assert reason == "normal"
            assert int.from_bytes(body, "little") == exchange.pid  # rusm.self agrees
            seen.append(exchange.pid)
            if inline.lease_requests and len(inline.lease_requests) == 1 and number < 2_000:
                inline.host.add_lease(10_000, 20_000)
                inline.lease_requests.append(0.0)  # answered once
        assert len(set(seen)) == len(seen)
        assert {pid % 1000 for pid in seen} == {3}
        serials = sorted(pid // 1000 for pid in seen)
        assert all(1 <= s < 2_000 or 10_000 <= s < 20_000 for s in serials)
        assert inline.host.processes.keys() <= set(seen)
    finally:
        inline.host.shutdown(5.0)


class Transport:
    """What an HTTP connection writes to: every write kept, never closed by the peer."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, _name: str, default: object = None) -> object:
        return default


def test_an_inline_request_with_no_pid_left_gets_503_retry_after_and_the_connection_lives(
    tmp_path: Path,
) -> None:
    # A worker whose pid serials ran out before the next lease arrived (a
    # burst from many connections): the request is refused like a process
    # limit, with Retry-After, and the connection goes on to its next request.
    (tmp_path / "rusm.toml").write_text(
        '[[serve]]\nprotocol = "http"\nlisten = "127.0.0.1:9"\n'
        '[serve.routes]\n"GET /" = "api#count"\n'
        '[components.api]\ncapability = "sandboxed"\n'
    )
    manifest = load_manifest(str(tmp_path / "rusm.toml"), Overrides(), load_environment(tmp_path))
    quiet = Logger(LogLevel.OFF, lambda _record: None)
    host = WasmHost(manifest, 0, quiet, load_environment(tmp_path), request_lease=lambda: None)
    host.add_lease(1, 3)  # two pids, and no lease ever answers
    cache = CompileCache(tmp_path / "cache")
    wasm = wasmtime.wat2wasm(COUNTER)
    entry = cache.store(cache.key(wasm), wasmtime.Module(compile_engine(), wasm).serialize(), "api")
    host.load([ComponentImage(name="api", cwasm=str(entry.path), digest=entry.digest)])
    loop = uvloop.new_event_loop()
    try:
        listener = ListenerRuntime(manifest.serve[0], 0, host, quiet, loop)
        conn = HttpConnection(listener)
        transport = Transport()
        conn.connection_made(transport)  # type: ignore[arg-type]
        statuses = []
        for _ in range(4):
            transport.written.clear()
            conn.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            listener.flush_writes()
            head = b"".join(transport.written).split(b"\r\n\r\n")[0].lower()
            statuses.append(head.split(b"\r\n")[0])
            if b" 503 " in statuses[-1]:
                assert b"\r\nretry-after: " in head
        assert statuses[:2] == [b"http/1.1 200 ok"] * 2
        assert statuses[2:] == [b"http/1.1 503 service unavailable"] * 2
        assert not transport.closed
    finally:
        host.shutdown(5.0)
        loop.close()


# Reads key "k" of bucket "b" and answers the value (or "none").
KV_READER = """(module
  (import "rusm" "kv_get" (func $get (param i32 i32 i32 i32 i32 i32) (result i32)))
  (import "rusm" "respond" (func $respond (param i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "bk")
  (data (i32.const 16) "none")
  (func (export "read") (local $n i32)
    (local.set $n (call $get (i32.const 0) (i32.const 1) (i32.const 1) (i32.const 1)
                             (i32.const 64) (i32.const 256)))
    (if (i32.lt_s (local.get $n) (i32.const 0))
      (then (drop (call $respond (i32.const 200) (i32.const 0) (i32.const 0)
                                 (i32.const 16) (i32.const 4))))
      (else (drop (call $respond (i32.const 200) (i32.const 0) (i32.const 0)
                                 (i32.const 64) (local.get $n)))))))"""


def test_a_handler_that_only_reads_the_store_is_served_inline(tmp_path: Path) -> None:
    # kv_get is a read of the mapped store: it waits for nothing, so the
    # handler stays on the I/O thread and still sees what was committed.
    (tmp_path / "rusm.toml").write_text(
        '[node]\nstore = "data/kv.mdb"\n'
        "[capabilities.reader]\nallow-storage = true\n"
        '[components.api]\ncapability = "reader"\n'
    )
    manifest = load_manifest(str(tmp_path / "rusm.toml"), Overrides(), load_environment(tmp_path))
    quiet = Logger(LogLevel.OFF, lambda _record: None)
    host = WasmHost(manifest, 0, quiet, load_environment(tmp_path), request_lease=lambda: None)
    host.add_lease(1, 1000)
    assert manifest.node.store is not None
    host.store = KvStore(manifest.node.store)
    cache = CompileCache(tmp_path / "cache")
    wasm = wasmtime.wat2wasm(KV_READER)
    entry = cache.store(cache.key(wasm), wasmtime.Module(compile_engine(), wasm).serialize(), "api")
    host.load([ComponentImage(name="api", cwasm=str(entry.path), digest=entry.digest)])
    try:
        assert host.components["api"].inline

        def serve() -> bytes:
            wire = Wire()
            exchange = Exchange(
                Request("GET", "/", "", []), wire, Protocol.HTTP, inline=True, call_soon=print
            )
            exchange.budget_ms = 30_000
            report = host.inline.serve(host.components["api"], "read", exchange)
            assert report.reason == "normal", report
            assert exchange.complete()
            return b"".join(wire.sent).partition(b"\r\n\r\n")[2]

        assert serve() == b"none"
        assert host.store.apply([Write(b"b", ((Op.SET, b"k", b"stored value"),))]) == [ErrorCode.OK]
        assert serve() == b"stored value"
    finally:
        host.shutdown(5.0)
        host.store.close()
