"""One HTTP request in-process: rusm's whole serving path against bare wasmtime.

Runs in: a benchmark process of its own, which plays a worker's I/O
thread. It builds the real ``WasmHost`` (pooling engine, epoch ticker,
the ``rusm`` host callbacks) and a real ``ListenerRuntime`` from a
manifest, and feeds ``GET /`` to a real ``HttpConnection`` whose
transport only records what is written: no sockets, so the figure is
the CPU of rusm's own code path, which ``bench http`` cannot separate
from the kernel's.

Side by side in one run:

1. the whole request: httptools parse, route, exchange, a fresh instance
   of the handler (``bench.http_servers.HOME``, which calls
   ``rusm.respond``), the response framed and written — against the
   floor: the same module instantiated from an ``InstancePre`` through
   the C API, its export looked up and called, with a ``respond`` host
   callback that does nothing, 16 instances to a store;
2. the inline call alone (``InlinePath.serve`` with its exchange) against
   the same floor.

Each figure is the best of ``ROUNDS`` rounds (the machine is shared);
the ratio is rusm's time over the floor's, so it says how many times the
bare wasmtime cost the request costs.
"""

from __future__ import annotations

import ctypes
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import uvloop
import wasmtime
from wasmtime import _ffi as ffi

from bench.http_servers import HOME
from rusmd.channel import ComponentImage
from rusmd.config import Overrides, load_environment, load_manifest
from rusmd.config.model import LogLevel, Protocol
from rusmd.log import Logger
from rusmd.serving.http import HttpConnection
from rusmd.serving.server import ListenerRuntime
from rusmd.wasm import capi
from rusmd.wasm.cache import CompileCache
from rusmd.wasm.engine import (
    compile_engine,
    dirty_page_scan,
    inline_keep_resident,
    worker_engine,
)
from rusmd.wasm.exchange import Exchange, Request
from rusmd.wasm.host import WasmHost

ROUNDS = 15
REQUESTS = 10_000
STORE_INSTANCES = 16
# Requests between two runs of the loop's queued callbacks (``_drain``).
DRAIN_EVERY = 256
REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n"
_NO_FINALIZER: Any = ctypes.CFUNCTYPE(None, ctypes.c_void_p)(0)


class _Transport:
    """Counts writes; never pauses, never closes."""

    def __init__(self) -> None:
        self.writes = 0
        self.last = b""

    def write(self, data: bytes) -> None:
        self.writes += 1
        self.last = data

    def is_closing(self) -> bool:
        return False

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        pass


def _best(run: Callable[[int], None]) -> float:
    """Best µs per request over ``ROUNDS`` rounds of ``REQUESTS``."""
    run(REQUESTS // 10)
    best = float("inf")
    for _ in range(ROUNDS):
        start = time.perf_counter()
        run(REQUESTS)
        best = min(best, (time.perf_counter() - start) / REQUESTS)
    return best * 1e6


def _drain(loop: Any) -> None:
    """Run the callbacks the requests scheduled (the listener's flushes, no-ops by now).

    A real loop runs each once its read is handled; left queued they would
    pile up, and the benchmark would measure a growing queue.
    """
    loop.call_soon(loop.stop)
    loop.run_forever()


def _rusm(app: Path) -> tuple[Callable[[int], None], Callable[[int], None], _Transport]:
    """(whole request, inline call) runners on a real host and listener."""
    (app / "rusm.toml").write_text(
        '[[serve]]\nprotocol = "http"\nlisten = "127.0.0.1:9"\n'
        '[serve.routes]\n"GET /" = "api#home"\n'
        '[components.api]\ncapability = "sandboxed"\n'
    )
    environment = load_environment(app)
    manifest = load_manifest(str(app / "rusm.toml"), Overrides(), environment)
    quiet = Logger(LogLevel.OFF, lambda _record: None)
    host = WasmHost(manifest, 0, quiet, environment, request_lease=lambda: None)
    host.add_lease(1, 100_000_000)
    cache = CompileCache(app / "cache")
    wasm = wasmtime.wat2wasm(HOME)
    entry = cache.store(cache.key(wasm), wasmtime.Module(compile_engine(), wasm).serialize(), "api")
    host.load([ComponentImage(name="api", cwasm=str(entry.path), digest=entry.digest)])
    loop = uvloop.new_event_loop()
    listener = ListenerRuntime(manifest.serve[0], 0, host, quiet, loop)
    conn = HttpConnection(listener)
    transport = _Transport()
    conn.connection_made(transport)
    component = host.components["api"]

    def whole(count: int) -> None:
        for number in range(count):
            conn.data_received(REQUEST)
            listener.flush_writes()  # what the loop does once the read is handled
            if number % DRAIN_EVERY == 0:
                _drain(loop)

    def inline(count: int) -> None:
        for _ in range(count):
            exchange = Exchange(
                Request("GET", "/", "", []),
                conn,
                Protocol.HTTP,
                True,
                loop.call_soon_threadsafe,
            )
            exchange.budget_ms = 30_000
            host.inline.serve(component, "home", exchange)

    return whole, inline, transport


def _floor() -> Callable[[int], None]:
    """Bare wasmtime: instantiate, look up, call (no-op ``respond``), 16 to a store."""
    # Kept resident as the host's inline pool keeps it.
    keep = inline_keep_resident((), scan=dirty_page_scan())
    engine = worker_engine(64 << 20, 64, keep).engine
    linker = wasmtime.Linker(engine)

    def respond(_env: Any, _caller: Any, address: int, _count: int) -> int:
        capi.I32Args.from_address(address)[0] = 0
        return 0

    callback = ctypes.cast(capi.HostCallback(respond), ffi.wasmtime_func_unchecked_callback_t)
    signature = wasmtime.FuncType([wasmtime.ValType.i32()] * 5, [wasmtime.ValType.i32()])
    error = ffi.wasmtime_linker_define_func_unchecked(
        linker.ptr(), b"rusm", 4, b"respond", 7, signature.ptr(), callback, None, _NO_FINALIZER
    )
    assert not error, "define respond"
    pre = linker.instantiate_pre(wasmtime.Module(engine, wasmtime.wat2wasm(HOME)))
    pre_ptr = pre.ptr()
    instance = ffi.wasmtime_instance_t()
    instance_ref = ctypes.byref(instance)
    trap = ctypes.POINTER(ffi.wasm_trap_t)()
    trap_ref = ctypes.byref(trap)
    item = ffi.wasmtime_extern_t()
    item_ref = ctypes.byref(item)
    func_ref = ctypes.byref(item.of.func)
    values = (ffi.wasmtime_val_raw_t * 1)()
    one = ctypes.c_size_t(1)
    home = (b"home", ctypes.c_size_t(4))
    # The same raw bindings (no argument conversion) rusm's inline path uses.
    instantiate = capi.raw("wasmtime_instance_pre_instantiate", ctypes.c_void_p, release_gil=True)
    call = capi.raw("wasmtime_func_call_unchecked", ctypes.c_void_p, release_gil=True)
    export_get = capi.raw("wasmtime_instance_export_get", ctypes.c_bool)

    def run(count: int) -> None:
        done = 0
        while done < count:
            store = capi.store_new(engine.ptr(), None, _NO_FINALIZER)
            context = capi.store_context(store)
            capi.context_set_epoch_deadline(context, 1 << 40)
            for _ in range(min(STORE_INSTANCES, count - done)):
                instantiate(pre_ptr, context, instance_ref, trap_ref)
                export_get(context, instance_ref, *home, item_ref)
                call(context, func_ref, values, one, trap_ref)
                done += 1
            capi.store_delete(store)
        assert not trap, "the floor's call trapped"

    run.keep = (callback, pre, linker)  # type: ignore[attr-defined]
    return run


def main() -> int:
    """Print both rows."""
    with tempfile.TemporaryDirectory() as tmp:
        whole, inline, transport = _rusm(Path(tmp))
        floor = _floor()
        floor_us = _best(floor)
        whole_us = _best(whole)
        inline_us = _best(inline)
        answered = transport.last.startswith(b"HTTP/1.1 200 OK") and transport.last.endswith(
            b"hello world"
        )
        print(f"in-process, best of {ROUNDS} rounds of {REQUESTS:,}; floor = bare wasmtime")
        print(f"  (instantiate + export + call with a no-op respond, {STORE_INSTANCES} to a store)")
        for what, value in (("whole request", whole_us), ("inline call", inline_us)):
            print(
                f"  {what:<14} rusm {value:6.2f} µs   floor {floor_us:6.2f} µs   "
                f"ratio {value / floor_us:.2f}"
            )
        if not answered:
            print(f"  the last response was not 200 'hello world': {transport.last[:80]!r}")
            return 1
    return 0


def count_requests(count: int) -> int:
    """Serve 500 warm-up requests then ``count`` more, timing nothing.

    ``python -m bench.http_inproc COUNT`` under ``valgrind --tool=callgrind``
    counts instructions; a run with COUNT 0 subtracted from one with COUNT N
    is N requests' worth (``docs/benchmarks.md``, "The node endpoint").
    """
    with tempfile.TemporaryDirectory() as tmp:
        whole, _inline, transport = _rusm(Path(tmp))
        whole(500)
        whole(count)
        return 0 if transport.last.endswith(b"hello world") else 1


if __name__ == "__main__":
    sys.exit(count_requests(int(sys.argv[1])))
