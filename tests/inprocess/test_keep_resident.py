"""What the inline pool keeps resident, sized from the components it serves.

Runs in: the test process, which plays a worker's I/O thread: a real
``WasmHost`` (real wasmtime, the pooling engine) serves inline requests.

A handler's instance should find its pages resident: a released page
costs a page fault on the next request's first touch of it. Without the
kernel's dirty-page scan the pool keeps resident what its largest inline
module starts with, measured when the components load; with it, only the
pages a request wrote are reset, up to a cap.
"""

from __future__ import annotations

import resource
from collections.abc import Iterator
from pathlib import Path

import pytest
import wasmtime

from rusmd.channel import ComponentImage
from rusmd.config import Overrides, load_environment, load_manifest
from rusmd.config.model import LogLevel, Protocol
from rusmd.log import Logger
from rusmd.wasm import host as host_module
from rusmd.wasm.cache import CompileCache
from rusmd.wasm.engine import (
    INLINE_KEEP_RESIDENT_MAX_BYTES,
    INLINE_KEEP_RESIDENT_MIN_BYTES,
    compile_engine,
    inline_keep_resident,
)
from rusmd.wasm.exchange import Exchange, Request
from rusmd.wasm.host import WasmHost
from rusmd.wasm.inline import INLINE_STORE_INSTANCES

PAGE = 64 << 10
# Each request writes one byte into each of its memory's pages and
# answers the count it found there plus one: "1" from a fresh instance.
TOUCHER = """(module
  (import "rusm" "respond" (func $respond (param i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") {pages})
  (func (export "touch") (local $at i32)
    (i32.store8 (i32.const 8) (i32.add (i32.load8_u (i32.const 8)) (i32.const 49)))
    (local.set $at (i32.const 65536))
    (block $done (loop $next
      (br_if $done (i32.ge_u (local.get $at) (i32.mul (memory.size) (i32.const 65536))))
      (i32.store8 (local.get $at) (i32.add (i32.load8_u (local.get $at)) (i32.const 1)))
      (local.set $at (i32.add (local.get $at) (i32.const 65536)))
      (br $next)))
    (drop (call $respond
      (i32.const 200) (i32.const 0) (i32.const 0) (i32.const 8) (i32.const 1)))))"""
REQUESTS = INLINE_STORE_INSTANCES * 20


class Pool:
    """An in-process host serving one inline component, reloadable."""

    def __init__(self, app: Path) -> None:
        (app / "rusm.toml").write_text(
            '[capabilities.web]\nmax-memory-mb = 8\n[components.api]\ncapability = "web"\n'
        )
        self.app = app
        manifest = load_manifest(str(app / "rusm.toml"), Overrides(), load_environment(app))
        self.host = WasmHost(
            manifest,
            1,
            Logger(LogLevel.OFF, lambda _record: None),
            load_environment(app),
            request_lease=lambda: None,
            pool_slots=8,
        )
        self.host.add_lease(1, 1_000_000)
        self.cache = CompileCache(app / "cache")

    def load(self, pages: int) -> None:
        wasm = wasmtime.wat2wasm(TOUCHER.format(pages=pages))
        serialized = wasmtime.Module(compile_engine(), wasm).serialize()
        entry = self.cache.store(self.cache.key(wasm), serialized, "api")
        self.host.load([ComponentImage(name="api", cwasm=str(entry.path), digest=entry.digest)])

    def serve(self) -> bytes:
        sent: list[bytes] = []

        class Wire:
            def send(self, data: bytes) -> None:
                sent.append(data)

        exchange = Exchange(
            Request("GET", "/", "", []), Wire(), Protocol.HTTP, inline=True, call_soon=print
        )
        exchange.budget_ms = 30_000
        report = self.host.inline.serve(self.host.components["api"], "touch", exchange)
        assert report.reason == "normal", report
        assert exchange.complete()
        return b"".join(sent).partition(b"\r\n\r\n")[2]

    def faults_per_request(self) -> float:
        for _ in range(REQUESTS):  # every slot of the pool used once at least
            assert self.serve() == b"1"
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(REQUESTS):
            assert self.serve() == b"1"
        return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / REQUESTS


@pytest.fixture(params=[False, True], ids=["zeroing", "dirty-scan"])
def pool(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Pool]:
    monkeypatch.setattr(host_module, "dirty_page_scan", lambda: request.param)
    made = Pool(tmp_path)
    yield made
    made.host.shutdown(5.0)


def test_the_pool_keeps_what_the_largest_inline_module_starts_with() -> None:
    assert inline_keep_resident((), scan=False) == INLINE_KEEP_RESIDENT_MIN_BYTES
    assert inline_keep_resident([PAGE, 3 * PAGE], scan=False) == 3 * PAGE
    assert inline_keep_resident([100], scan=False) == INLINE_KEEP_RESIDENT_MIN_BYTES
    assert inline_keep_resident([64 * PAGE], scan=False) == INLINE_KEEP_RESIDENT_MAX_BYTES
    assert inline_keep_resident([PAGE], scan=True) == INLINE_KEEP_RESIDENT_MAX_BYTES


def test_a_handler_touching_every_page_it_starts_with_takes_no_page_faults(pool: Pool) -> None:
    pool.load(pages=5)
    kept = pool.host.stats()["inline_keep_resident_bytes"]
    assert kept >= 5 * PAGE
    # Five pages written a request: released, each would fault again.
    assert pool.faults_per_request() < 0.5


def test_a_reload_with_a_larger_handler_sizes_the_pool_again(pool: Pool) -> None:
    pool.load(pages=2)
    assert pool.faults_per_request() < 0.5
    pool.load(pages=12)  # 768 KiB: the pool is made again when it zeroes what it keeps
    kept = pool.host.stats()["inline_keep_resident_bytes"]
    assert kept >= 12 * PAGE
    assert pool.faults_per_request() < 0.5
    pool.load(pages=1)  # and back: requests still see fresh instances
    assert pool.faults_per_request() < 0.5
