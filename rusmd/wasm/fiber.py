"""One fiber: its record, and wasmtime's async C API it runs through.

Runs in: worker, on its loop thread (the scheduler makes and polls
fibers there; ``fibers`` says when).

A process that runs as a fiber (``fibers``) has a ``Fiber``: its store,
the future ``wasmtime_func_call_async`` returned, and what its parked host
call waits for. This module binds the raw C functions the scheduler and
the fibers' host callbacks call (``capi.raw``: plain integers, no ctypes
object per call), the constants they read a call's values with, and the
``FiberHost`` protocol: what the scheduler uses of the worker's host.
Nothing here runs guest code by itself.
"""

from __future__ import annotations

import asyncio
import ctypes
import enum
import struct
import time
from collections.abc import Callable
from typing import Any, Protocol

from wasmtime import _ffi as ffi

from rusmd.abi import HEADER_FORMAT, ErrorCode
from rusmd.actors.table import ActorTable
from rusmd.log import Logger
from rusmd.wasm import capi
from rusmd.wasm.memory import GuestMemory
from rusmd.wasm.process import ExitReport, Process, ProcessState

# wasmtime's async C API, bound raw (``capi.raw``). Polling runs guest
# code: it drops the GIL (the epoch ticker needs it to make the guest
# yield).
_instantiate_async = capi.raw(
    "wasmtime_instance_pre_instantiate_async", ctypes.c_void_p, release_gil=True
)
_call_async = capi.raw("wasmtime_func_call_async", ctypes.c_void_p)
_poll = capi.raw("wasmtime_call_future_poll", ctypes.c_bool, release_gil=True)
_delete_future = capi.raw("wasmtime_call_future_delete", None)
_export_get = capi.export_get_raw
_caller_context = capi.caller_context_raw
# A memory's size and base as plain integers (``memory`` binds the same).
_data_size = capi.raw("wasmtime_memory_data_size", ctypes.c_size_t)
_data = capi.raw("wasmtime_memory_data", ctypes.c_void_p)
_set_deadline = capi.raw("wasmtime_context_set_epoch_deadline", None)
_ONE_TICK = ctypes.c_uint64(1)

# An async host callback: (env, caller, args, nargs, results, nresults,
# trap_ret, continuation_ret), every pointer a plain integer (ctypes would
# make an object of each). Its values are ``wasmtime_val_t``: 32 bytes
# each, the kind at 0 and the value at 8; the continuation is
# ``wasmtime_async_continuation_t``: callback, env, finalizer.
AsyncCallback = ctypes.CFUNCTYPE(
    None,
    ctypes.c_void_p,
    ctypes.c_void_p,
    ctypes.c_void_p,
    ctypes.c_size_t,
    ctypes.c_void_p,
    ctypes.c_size_t,
    ctypes.c_void_p,
    ctypes.c_void_p,
)
_VAL_BYTES = ctypes.sizeof(ffi.wasmtime_val_t)
_VAL_OF: int = ffi.wasmtime_val_t.of.offset


def i32_index(k: int) -> int:
    """Where value ``k``'s i32 is in a values array read as int32s."""
    return (k * _VAL_BYTES + _VAL_OF) // 4


# Where the i32s of values 0-3 are (``FiberScheduler.u32``, ``values``).
A0, A1, A2, A3 = _A0, _A1, _A2, _A3 = [i32_index(k) for k in range(4)]
# A call's values as ``wasmtime_val_t`` structs (``value.of.i64``); the
# longest waiting call has 6.
ValArgs = ffi.wasmtime_val_t * 8
_I32 = 0  # WASMTIME_I32
_I32_MAX = (1 << 31) - 1
# libc's strlen is every continuation's callback. wasmtime passes it the
# continuation's env: the address of a byte followed by a NUL, so it
# returns that byte (0 or 1), which is what a C function declared to
# return bool leaves in the return register. A parked call's byte is its
# fiber's ``flag``; a call that finished at once points at ``_ALWAYS``.
_STRLEN = ctypes.cast(ctypes.CDLL(None).strlen, ctypes.c_void_p).value
_ALWAYS = (ctypes.c_uint8 * 2)(1, 0)
_ALWAYS_ADDRESS = ctypes.addressof(_ALWAYS)
_HEADER = struct.Struct(HEADER_FORMAT)
_NO_VIEW = memoryview(b"")
# Bound once: an enum member read through its class costs ~0.1 µs.
_OK = ErrorCode.OK
_TIMEOUT = ErrorCode.TIMEOUT
_INVALID = ErrorCode.INVALID
_RUNNING = ProcessState.RUNNING
_WAITING = ProcessState.WAITING
_monotonic = time.monotonic
_clock_ns = time.perf_counter_ns
# A parked call's body: (fiber, args address, results address).
Body = Callable[["Fiber", int, int], None]
# A fiber's synchronous call's body: (fiber, values address).
SyncBody = Callable[["Fiber", int], None]


class Phase(enum.Enum):
    """What the fiber's current future is doing."""

    INSTANTIATE = "instantiate"
    INITIALIZE = "_initialize"
    CALL = "call"


class Fiber:
    """One process's fiber: its store, its current future, and what it waits for."""

    def __init__(self, process: Process, store: Any, context: Any) -> None:
        self.process = process
        self.store = store
        self.context = context
        # The address read in place: ``ctypes.cast`` would tie the pointer and
        # its result in a reference cycle, one more per process for the
        # cycle collector.
        self.raw_context = ctypes.c_void_p(ctypes.c_void_p.from_buffer(context).value)
        self.future: Any = None  # a c_void_p: raw calls take no bare ints
        self.phase = Phase.INSTANTIATE
        self.entry = ""
        self.entry_results = 0
        # The entry's arguments (an ad-hoc process's), kept for as long as
        # the call's future may read them; None when it takes none.
        self.arguments: Any = None
        self.instance = ffi.wasmtime_instance_t()
        # Parked in an async host call whose continuation is not ready.
        self.parked = False
        # What its parked call's continuation answers (the strlen of it):
        # 0 while it waits, 1 once the scheduler finished the call.
        self.flag = (ctypes.c_uint8 * 2)()
        self.flag_address = ctypes.addressof(self.flag)
        # How its parked call finishes (True once it did); None for
        # ``recv``, whose arguments are kept below.
        self.finish: Callable[[], bool] | None = None
        # What undoes its parked call if it is stopped instead (a call's
        # monitor, a name claim); None when there is nothing to undo.
        self.cancel: Callable[[], None] | None = None
        self.header = 0
        self.buf = 0
        self.cap = 0
        self.result_at = 0  # the call's result value (a ``wasmtime_val_t``)
        # Its parked recv was given a message (``hand``): it goes on when polled.
        self.handed = False
        self.deadline: float | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.scheduled = False
        self.ended = False
        # The host's tick when it last ran: a fiber that waited longer gets
        # a fresh epoch deadline before its next poll.
        self.last_tick = -1
        # Its memory as a memoryview, made again when its size changes (a
        # grow is the only thing that can move it).
        self.view = _NO_VIEW
        self.view_size = -1


class FiberHost(Protocol):
    """What the fiber scheduler uses of the worker's host."""

    ticks: int
    actors: ActorTable
    log: Logger

    def new_process_store(self, process: Process) -> tuple[Any, ExitReport | None]: ...

    def finish(self, process: Process, report: ExitReport, store: Any) -> None: ...


def _memory_view(memory: GuestMemory, size: int) -> memoryview:
    """``size`` bytes of ``memory`` as a writable memoryview of unsigned bytes."""
    if not size:
        return memoryview(bytearray())
    base = _data(memory.context, memory.ref)
    return memoryview((ctypes.c_uint8 * size).from_address(base)).cast("B")
