"""The ``rusm`` host functions' C callbacks, and the core functions: self, log, exit, sleep, spawn.

Runs in: worker, on the thread of the calling process: the loop thread
for a fiber or an inline handler, else its guest thread.

Every ``rusm`` function reaches Python through one raw callback
(``host_callbacks``) that finds the calling process, looks up its memory
on its first call, and runs the implementation with the call's values.
The other families of functions are ``calls`` (actors), ``serve_calls``
(serving) and ``kv_calls`` (the store); the core ones are here
(``CoreCalls``). Callbacks never raise: a bad pointer, ``rusm.exit`` or a
host error becomes a trap for the calling process only.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Callable, Collection
from typing import Any, Protocol

from wasmtime import _ffi as ffi

from rusmd.abi import ErrorCode
from rusmd.actors.records import Stopped
from rusmd.actors.table import ActorTable
from rusmd.config.model import LogLevel
from rusmd.errors import SpawnError
from rusmd.log import Logger
from rusmd.wasm import abi, capi
from rusmd.wasm.capi import pid_of
from rusmd.wasm.inline import InlinePath
from rusmd.wasm.memory import BadPointer, GuestMemory, check_range
from rusmd.wasm.process import Exit, Process, ProcessState, log_for
from rusmd.wasm.runners import RunnerPool
from rusmd.wasm.traps import new_trap

# A guest log line longer than this is cut (and says so).
MAX_LOG_LINE_BYTES = 16 << 10

Impl = Callable[[Process, Any], None]

_LOG_LEVELS = {
    abi.LogLevel.ERROR: LogLevel.ERROR,
    abi.LogLevel.WARN: LogLevel.WARN,
    abi.LogLevel.INFO: LogLevel.INFO,
    abi.LogLevel.DEBUG: LogLevel.DEBUG,
}
_caller_export_get = capi.raw("wasmtime_caller_export_get", ctypes.c_bool)
_caller_context = capi.caller_context_raw
_MEMORY = (b"memory", ctypes.c_size_t(6))


class Polling(Protocol):
    """The fiber scheduler as the callbacks see it: which fiber its thread polls."""

    thread: int
    current: Any  # a ``fiber.Fiber`` (its ``process``), or None between polls


def host_callbacks(
    implementations: dict[str, Impl],
    processes: dict[int, Process],
    inline: InlinePath,
    raw: Collection[str] = (),
    fibers: Polling | None = None,
) -> dict[str, Any]:
    """The C callback of every ``rusm`` function, by name.

    Args:
        implementations: Every ABI function's implementation.
        processes: The worker's process table (the calling process is found in it).
        inline: The inline path (its current process calls from the I/O thread).
        raw: The functions whose implementations read their values in place.
        fibers: The fiber scheduler (the fiber it polls calls from its thread).
    """
    assert set(implementations) == set(abi.FUNCTIONS), "every ABI function is implemented"
    return {
        name: host_callback(name, impl, processes, inline, raw=name in raw, fibers=fibers)
        for name, impl in implementations.items()
    }


def host_callback(
    name: str,
    impl: Impl,
    processes: dict[int, Process],
    inline: InlinePath,
    *,
    raw: bool = False,
    fibers: Polling | None = None,
) -> Any:
    """The C callback for host function ``name``.

    ``impl`` gets the values as ``capi.Values`` (``values[1].i32``), or,
    with ``raw``, as i32s indexed in place (value ``k`` at ``args[4 * k]``).
    """
    get_ident = threading.get_ident
    values_at = capi.Values.from_address
    args_at = capi.I32Args.from_address
    caller_ref = inline.caller
    inline_args = inline.args
    point_args = inline.args_at

    def callback(_env: Any, caller: int, address: int, _count: int) -> int:
        process = None
        try:
            current = inline.current
            if current is not None and inline.thread == get_ident():
                # The inline request's process: the I/O thread's reusable
                # ctypes objects stand for the caller and the values.
                process = current
                if process.memory is None:
                    caller_ref.value = caller
                    if _caller_export_get(caller_ref, *_MEMORY, inline.memory_ref):
                        process.memory = inline.memory
                if raw:
                    point_args.value = address
                    impl(process, inline_args)
                else:
                    impl(process, values_at(address))
                return 0
            fiber = fibers.current if fibers is not None else None
            if (
                fiber is not None
                and fiber.process.memory is not None
                and (fibers is not None and fibers.thread == get_ident())
            ):
                # The fiber being polled on the loop thread: no lookup by its store.
                process = fiber.process
                impl(process, args_at(address) if raw else values_at(address))
                return 0
            context = _caller_context(ctypes.c_void_p(caller))
            process = processes.get(pid_of(context))
            if process is None:
                return new_trap(f"rusm.{name}: calling process is unknown")
            if process.memory is None and process.component.shape is not None:
                memory = ffi.wasmtime_extern_t()
                if _caller_export_get(ctypes.c_void_p(caller), *_MEMORY, ctypes.byref(memory)):
                    process.memory = GuestMemory(context, memory.of.memory)
            impl(process, args_at(address) if raw else values_at(address))
            return 0
        except BadPointer as exc:
            if process is not None:
                process.crash = str(exc)
            return new_trap(str(exc))
        except Exit as exc:
            return new_trap(str(exc))
        except BaseException as exc:
            if process is not None:
                process.crash = f"host error in rusm.{name}: {type(exc).__name__}: {exc}"
            return new_trap(f"host error in rusm.{name}")

    return ctypes.cast(capi.HostCallback(callback), ffi.wasmtime_func_unchecked_callback_t)


class CoreHost(Protocol):
    """What the core functions use of the worker's host."""

    log: Logger
    actors: ActorTable
    runners: RunnerPool
    ticks: int

    def spawn(self, name: str, parent: int | None = None) -> int: ...


class CoreCalls:
    """``rusm.self``, ``log``, ``exit``, ``sleep`` and ``spawn``.

    Args:
        host: The worker's host.
    """

    def __init__(self, host: CoreHost) -> None:
        self.host = host
        self.log = host.log
        self.actors = host.actors
        self.runners = host.runners

    def implementations(self) -> dict[str, Impl]:
        """Host function name → implementation."""
        return {
            "self": self.self_,
            "log": self.log_line,
            "exit": self.exit,
            "sleep": self.sleep,
            "spawn": self.spawn,
        }

    def self_(self, process: Process, values: Any) -> None:
        values[0].i64 = process.pid

    def log_line(self, process: Process, values: Any) -> None:
        level_value, ptr, length = values[0].i32, values[1].i32, values[2].i32
        memory = self._memory(process, "log")
        # The range is checked whatever the level: a bad pointer crashes the
        # guest the same way with logging off as with it on.
        check_range("log", ptr, length, memory.size())
        if level_value not in _LOG_LEVELS:
            values[0].i32 = ErrorCode.INVALID
            return
        level = _LOG_LEVELS[abi.LogLevel(level_value)]
        if not self.log.enabled(level):
            values[0].i32 = ErrorCode.OK
            return
        # Only what the line can show is read: a guest may pass its whole memory.
        cut = length > MAX_LOG_LINE_BYTES
        data = memory.read("log", ptr, MAX_LOG_LINE_BYTES if cut else length)
        try:
            text = data.decode("utf-8", errors="strict" if not cut else "ignore")
        except UnicodeDecodeError:
            values[0].i32 = ErrorCode.INVALID
            return
        cut_bytes = length - len(text.encode()) if cut else 0
        log_for(self.log, process, level, text, source=process.label, cut_bytes=cut_bytes)
        values[0].i32 = ErrorCode.OK

    def exit(self, process: Process, values: Any) -> None:
        process.exit_code = values[0].i32
        raise Exit(f"exit({process.exit_code})")

    def sleep(self, process: Process, values: Any) -> None:
        ms = values[0].i32
        if ms < 0:
            values[0].i32 = ErrorCode.INVALID
            return
        process.state = ProcessState.SLEEPING
        assert process.actor is not None
        self.runners.blocking()
        try:
            self.actors.sleep(process.actor, ms / 1000)
        except Stopped as exc:
            raise Exit(str(exc)) from None
        finally:
            self.runners.unblocked()
            process.state = ProcessState.RUNNING
        # Time asleep is not CPU time.
        process.call_started_tick = self.host.ticks
        values[0].i32 = ErrorCode.OK

    def spawn(self, process: Process, values: Any) -> None:
        memory = self._memory(process, "spawn")
        raw = memory.read("spawn", values[0].i32, values[1].i32)
        try:
            name = raw.decode("utf-8")
        except UnicodeDecodeError:
            values[0].i64 = ErrorCode.INVALID
            return
        try:
            values[0].i64 = self.host.spawn(name, parent=process.pid)
        except SpawnError as exc:
            log_for(self.log, process, LogLevel.WARN, f"spawn from {process.label} failed: {exc}")
            values[0].i64 = exc.code

    def _memory(self, process: Process, function: str) -> GuestMemory:
        if process.memory is None:
            raise BadPointer(f"rusm.{function}: the module exports no memory")
        return process.memory
