"""A process on a guest thread: run its entry with blocking calls, then finish it.

Runs in: worker, on a guest thread of the runner pool (``runners``).

Only a process whose module imports a WASI call that blocks its thread
(``abi.WASI_BLOCKING``; docs/abi.md names the cases) runs here; every
other runs as a fiber (``fibers``). Its store is made as a fiber's is
(``ThreadHost.new_process_store``); it instantiates, runs
``_initialize`` and its entry with wasmtime's unchecked calls, and the
epoch callback counts its CPU from the tick its call started.
"""

from __future__ import annotations

import ctypes
from typing import Any, Protocol

from wasmtime import _ffi as ffi

from rusmd.abi import ExitReason
from rusmd.wasm import capi
from rusmd.wasm.capi import export
from rusmd.wasm.memory import GuestMemory
from rusmd.wasm.process import ExitReport, Process, ProcessState
from rusmd.wasm.traps import failure

# Guest threads need far more stack than wasm frames may use (512 KiB):
# a host thread that runs out below the wasm limit aborts the process.
GUEST_THREAD_STACK_BYTES = 16 << 20


class ThreadHost(Protocol):
    """What a guest thread uses of the worker's host."""

    ticks: int

    def new_process_store(self, process: Process) -> tuple[Any, ExitReport | None]: ...

    def finish(self, process: Process, report: ExitReport, store: Any) -> None: ...


def run_on_thread(host: ThreadHost, process: Process) -> None:
    """Run ``process`` to its end on this (guest) thread, then finish it."""
    report = ExitReport(ExitReason.CRASHED, "host error")
    store: Any = None
    try:
        report, store = _execute(host, process)
    except Exception as exc:  # a host bug must cost one process, not the worker
        report = ExitReport(ExitReason.CRASHED, f"host error: {type(exc).__name__}: {exc}")
    finally:
        host.finish(process, report, store)


def _execute(host: ThreadHost, process: Process) -> tuple[ExitReport, Any]:
    component = process.component
    store, problem = host.new_process_store(process)
    if problem is not None:
        return problem, store
    assert component.pre is not None and component.shape is not None
    context = capi.store_context(store)
    process.call_started_tick = host.ticks
    process.state = ProcessState.RUNNING
    instance = ffi.wasmtime_instance_t()
    trap = ctypes.POINTER(ffi.wasm_trap_t)()
    error = ffi.wasmtime_instance_pre_instantiate(
        component.pre.ptr(), context, ctypes.byref(instance), ctypes.byref(trap)
    )
    if error or trap:
        return failure(process, error, trap, "instantiate"), store
    if component.shape.has_memory:
        memory = export(context, instance, b"memory")
        if memory is not None:
            process.memory = GuestMemory(context, memory.of.memory)
            process.memory_bytes = process.memory.size()
    name = process.entry or component.shape.entry
    if process.entry:
        results = component.action(name)
        if isinstance(results, str):
            return ExitReport(ExitReason.CRASHED, results), store
    else:
        results = component.shape.entry_results
    values = (ffi.wasmtime_val_raw_t * 1)()
    if component.shape.has_initialize and name != "_start":
        initialize = export(context, instance, b"_initialize")
        if initialize is not None:
            error = ffi.wasmtime_func_call_unchecked(
                context, ctypes.byref(initialize.of.func), values, 1, ctypes.byref(trap)
            )
            if error or trap:
                return failure(process, error, trap, "_initialize"), store
    entry = export(context, instance, name.encode())
    if entry is None:
        return ExitReport(ExitReason.CRASHED, f"entry {name} vanished"), store
    process.call_started_tick = host.ticks
    values = capi.raw_arguments(process.entry_args)
    error = ffi.wasmtime_func_call_unchecked(
        context, ctypes.byref(entry.of.func), values, len(values), ctypes.byref(trap)
    )
    if process.memory is not None:
        process.memory_bytes = process.memory.size()
    if error or trap:
        return failure(process, error, trap, name), store
    if results and values[0].i32 != 0:
        return ExitReport(ExitReason.CRASHED, f"{name} returned {values[0].i32}"), store
    return ExitReport(ExitReason.NORMAL), store
