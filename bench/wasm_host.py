"""Wasm host costs: instantiate, host call, export call, spawn+run+exit rate.

Runs in: a benchmark process of its own, which plays one worker: it
builds the real ``WasmHost`` (pooling engine, guest threads, epoch
ticker, the ``rusm`` host callbacks) from modules compiled through the
real AOT cache.

Side by side in one run, each rusm figure beside wasmtime-py's plain API:

1. instantiate from an ``InstancePre`` (store + limits + deadline +
   instantiate + drop), with the pooling allocator and without it:
   rusm's raw C-API path against ``Store()`` + ``set_limits`` +
   ``pre.instantiate`` on the same engine;
2. one guest→host call: a guest loop calling ``rusm.self`` through
   rusm's raw callback (a real process on the host), against the same
   loop calling a ``Linker.define_func`` Python function;
3. one host→guest export call: ``wasmtime_func_call_unchecked`` (what the
   host uses) against ``Func.__call__``;
4. processes spawned, run and exited per second on one worker: the
   host's ``spawn`` (pid, log gate, guest thread, store, instance, entry,
   exit bookkeeping), against a plain loop that instantiates and calls
   ``run`` on one thread.

Each figure is the median of several trials; the last column says how
many times faster rusm is than the plain API (plain time / rusm time,
or rusm rate / plain rate), so above 1 means rusm is faster.
"""

from __future__ import annotations

import ctypes
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import wasmtime
from wasmtime import _ffi as ffi

from rusmd.channel import ComponentImage
from rusmd.config import Overrides, load_environment, load_manifest
from rusmd.config.model import LogLevel
from rusmd.log import Logger
from rusmd.wasm.cache import CompileCache
from rusmd.wasm.engine import (
    compile_engine,
    dirty_page_scan,
    inline_keep_resident,
    make_config,
    worker_engine,
)
from rusmd.wasm.host import WasmHost

TRIALS = 5
INSTANTIATIONS = 5000
HOST_CALLS = 200_000
EXPORT_CALLS = 100_000
SPAWNS = 3000

EMPTY = '(module (memory (export "memory") 1) (func (export "run")))'
CALLER = f"""(module
  (import "rusm" "self" (func $self (result i64)))
  (memory (export "memory") 1)
  (func (export "run") (local $i i32)
    (loop $l
      (drop (call $self))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $l (i32.lt_u (local.get $i) (i32.const {HOST_CALLS}))))))"""
IDENT = '(module (func (export "ident") (param i32) (result i32) local.get 0))'
_NULL_FINALIZER = ctypes.CFUNCTYPE(None, ctypes.c_void_p)(0)


def _median(trial: Callable[[], float]) -> float:
    return statistics.median(trial() for _ in range(TRIALS))


def _row(what: str, rusm: float, plain: float, unit: str, *, higher_is_better: bool) -> None:
    faster = rusm / plain if higher_is_better else plain / rusm
    figures = f"rusm {rusm:>10.2f} {unit:<6} plain {plain:>10.2f} {unit:<6}"
    print(f"{what:<44} {figures} {faster:5.1f}× faster")


def _host(app: Path) -> tuple[WasmHost, CompileCache]:
    (app / "rusm.toml").write_text(
        "[capabilities.plain]\nmax-memory-mb = 16\n"
        '[components.empty]\ncapability = "plain"\n[components.caller]\ncapability = "plain"\n'
    )
    manifest = load_manifest(str(app / "rusm.toml"), Overrides(), load_environment(app))
    host = WasmHost(
        manifest,
        0,
        Logger(LogLevel.OFF, lambda _r: None),
        load_environment(app),
        request_lease=lambda: None,
    )
    host.add_lease(1, 10_000_000)
    cache = CompileCache(app / "cache")
    engine = compile_engine()
    images = []
    for name, wat in (("empty", EMPTY), ("caller", CALLER)):
        wasm = wasmtime.wat2wasm(wat)
        entry = cache.store(cache.key(wasm), wasmtime.Module(engine, wasm).serialize(), name)
        images.append(ComponentImage(name=name, cwasm=str(entry.path), digest=entry.digest))
    host.load(images)
    return host, cache


def _raw_instantiate(engine: wasmtime.Engine, pre: wasmtime.InstancePre) -> float:
    """rusm's per-process path (guest_threads): raw store, limiter, deadline, instantiate, drop."""
    instance = ffi.wasmtime_instance_t()
    trap = ctypes.POINTER(ffi.wasm_trap_t)()
    start = time.perf_counter()
    for pid in range(INSTANTIATIONS):
        store = ffi.wasmtime_store_new(engine.ptr(), ctypes.c_void_p(pid + 1), _NULL_FINALIZER)
        context = ffi.wasmtime_store_context(store)
        ffi.wasmtime_store_limiter(store, 16 << 20, 100_000, 1, 1, 1)
        ffi.wasmtime_context_set_epoch_deadline(context, 1)
        error = ffi.wasmtime_instance_pre_instantiate(
            pre.ptr(), context, ctypes.byref(instance), ctypes.byref(trap)
        )
        assert not error and not trap
        ffi.wasmtime_store_delete(store)
    return (time.perf_counter() - start) / INSTANTIATIONS * 1e6


def _plain_instantiate(engine: wasmtime.Engine, pre: wasmtime.InstancePre) -> float:
    start = time.perf_counter()
    for _ in range(INSTANTIATIONS):
        store = wasmtime.Store(engine)
        store.set_limits(memory_size=16 << 20, instances=1, tables=1, memories=1)
        store.set_epoch_deadline(1)
        pre.instantiate(store)
        del store
    return (time.perf_counter() - start) / INSTANTIATIONS * 1e6


def instantiate() -> None:
    wasm = wasmtime.wat2wasm(EMPTY)
    keep = inline_keep_resident((), scan=dirty_page_scan())  # as the inline pool keeps it
    pooled = worker_engine(16 << 20, keep_resident_bytes=keep).engine
    default = wasmtime.Engine(make_config())
    pres = {}
    for label, engine in (("pooling", pooled), ("default", default)):
        linker = wasmtime.Linker(engine)
        pres[label] = (engine, linker.instantiate_pre(wasmtime.Module(engine, wasm)))
    for label in ("pooling", "default"):
        _row(
            f"instantiate, {label} allocator (µs)",
            _median(lambda label=label: _raw_instantiate(*pres[label])),  # type: ignore[misc]
            _median(lambda label=label: _plain_instantiate(*pres[label])),  # type: ignore[misc]
            "µs",
            higher_is_better=False,
        )


def _wait_empty(host: WasmHost) -> None:
    while host.processes:
        time.sleep(0.0005)


def host_call(host: WasmHost) -> None:
    def rusm_trial() -> float:
        start = time.perf_counter()
        host.spawn("caller")
        _wait_empty(host)
        return (time.perf_counter() - start) / HOST_CALLS * 1e6

    engine = wasmtime.Engine(make_config())
    linker = wasmtime.Linker(engine)
    linker.define_func("rusm", "self", wasmtime.FuncType([], [wasmtime.ValType.i64()]), lambda: 7)
    pre = linker.instantiate_pre(wasmtime.Module(engine, wasmtime.wat2wasm(CALLER)))

    def plain_trial() -> float:
        store = wasmtime.Store(engine)
        store.set_epoch_deadline(1_000_000)
        run = pre.instantiate(store).exports(store)["run"]
        assert isinstance(run, wasmtime.Func)
        start = time.perf_counter()
        run(store)
        return (time.perf_counter() - start) / HOST_CALLS * 1e6

    _row(
        "guest→host call (µs)",
        _median(rusm_trial),
        _median(plain_trial),
        "µs",
        higher_is_better=False,
    )


def export_call() -> None:
    engine = wasmtime.Engine(make_config())
    store = wasmtime.Store(engine)
    store.set_epoch_deadline(1_000_000)
    instance = wasmtime.Instance(store, wasmtime.Module(engine, wasmtime.wat2wasm(IDENT)), [])
    ident = instance.exports(store)["ident"]
    assert isinstance(ident, wasmtime.Func)
    context = store._context()
    values = (ffi.wasmtime_val_raw_t * 1)()
    trap = ctypes.POINTER(ffi.wasm_trap_t)()
    func = ctypes.byref(ident._func)

    def raw_trial() -> float:
        start = time.perf_counter()
        for i in range(EXPORT_CALLS):
            values[0].i32 = i
            error = ffi.wasmtime_func_call_unchecked(context, func, values, 1, ctypes.byref(trap))
            assert not error and not trap
        return (time.perf_counter() - start) / EXPORT_CALLS * 1e6

    def plain_trial() -> float:
        start = time.perf_counter()
        for i in range(EXPORT_CALLS // 10):
            ident(store, i)
        return (time.perf_counter() - start) / (EXPORT_CALLS // 10) * 1e6

    _row(
        "host→guest export call (µs)",
        _median(raw_trial),
        _median(plain_trial),
        "µs",
        higher_is_better=False,
    )


def plain_spawn_trial(spawns: int) -> Callable[[], float]:
    """The baseline of a spawn rate: wasmtime-py's instantiate-and-run loop, per second."""
    engine = wasmtime.Engine(make_config())
    pre = wasmtime.Linker(engine).instantiate_pre(
        wasmtime.Module(engine, bytes(wasmtime.wat2wasm(EMPTY)))
    )

    def trial() -> float:
        start = time.perf_counter()
        for _ in range(spawns):
            store = wasmtime.Store(engine)
            store.set_limits(memory_size=16 << 20, instances=1, tables=1, memories=1)
            store.set_epoch_deadline(100)
            run = pre.instantiate(store).exports(store)["run"]
            assert isinstance(run, wasmtime.Func)
            run(store)
            del store
        return spawns / (time.perf_counter() - start)

    return trial


def spawn_rate(host: WasmHost) -> None:
    def rusm_trial() -> float:
        start = time.perf_counter()
        for _ in range(SPAWNS):
            while len(host.processes) >= host.max_processes - 1:
                time.sleep(0.0001)
            host.spawn("empty")
        _wait_empty(host)
        return SPAWNS / (time.perf_counter() - start)

    plain_trial = plain_spawn_trial(SPAWNS)

    _row(
        "spawn+run+exit per second, one worker",
        _median(rusm_trial),
        _median(plain_trial),
        "/s",
        higher_is_better=True,
    )


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="rusm-bench-") as directory:
        host, _cache = _host(Path(directory))
        try:
            instantiate()
            host_call(host)
            export_call()
            spawn_rate(host)
        finally:
            host.shutdown(5.0)
    return 0
