"""Serving processes (WebSocket, SSE, HTTP) as wasmtime fibers on the I/O thread.

Runs in: worker, on its I/O thread (uvloop); ``FiberScheduler.start`` and
``wake`` may be called from any thread.

A process that serves a WebSocket, an SSE stream or an HTTP request
(one not served inline), of a component whose imports never wait except
in ``rusm.recv`` and the serving writes (``ModuleShape.fiber``), runs on
a fiber rather than a guest thread.
``wasmtime_func_call_async`` returns a future; polling it on the I/O
thread runs the guest until one of these happens:

- it returns or traps (the process ends);
- it waits in ``rusm.recv`` on an empty mailbox, or in a serving write
  (``ws_send``, ``sse_event``, ``write``, ``flush``) while the client
  reads slowly;
- it uses up an epoch tick: its deadline yields rather than traps, so a
  busy guest hands the loop back every tick (``EPOCH_TICK_MS``) and its
  CPU budget is counted as on a thread.

In the last case the loop polls it again soon. In the others it is
*parked* until its mailbox has a message, its ``recv`` times out, the
socket drains, or it is told to stop (the actor's waker schedules a
poll). A parked fiber that is stopped is never resumed: its future is
dropped, which unwinds its stack. Nothing passes between threads for a
message, and a WebSocket round trip is one poll.

``recv`` and the serving writes are wasmtime *async* host functions in
these modules' linker: the host callback either finishes at once (a
message is there, the socket is writable) or hands wasmtime a
continuation that the next polls ask until it can finish. Every other
import is the same synchronous callback a threaded process calls.
"""

from __future__ import annotations

import asyncio
import ctypes
import enum
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from wasmtime import _ffi as ffi

from rusmd.abi import HEADER_BYTES, ErrorCode, ExitReason
from rusmd.actors.table import ActorTable, Stopped
from rusmd.wasm import capi
from rusmd.wasm.abi import FUNCTIONS
from rusmd.wasm.calls import write_received
from rusmd.wasm.capi import export, pid_of
from rusmd.wasm.memory import BadPointer, GuestMemory, check_range
from rusmd.wasm.process import ExitReport, Process, ProcessState
from rusmd.wasm.serve_calls import ServeCalls
from rusmd.wasm.traps import failure, new_trap

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


class Continuation(ctypes.Structure):
    """``wasmtime_async_continuation_t``: asked on each poll until it returns true."""

    _fields_ = (
        ("callback", ctypes.c_void_p),
        ("env", ctypes.c_void_p),
        ("finalizer", ctypes.c_void_p),
    )


# An async host callback: (env, caller, args, nargs, results, nresults,
# trap_ret, continuation_ret). Its values are ``wasmtime_val_t``: 32
# bytes each, the kind at 0 and the value at 8.
AsyncCallback = ctypes.CFUNCTYPE(
    None,
    ctypes.c_void_p,
    ctypes.c_void_p,
    ctypes.c_void_p,
    ctypes.c_size_t,
    ctypes.c_void_p,
    ctypes.c_size_t,
    ctypes.c_void_p,
    ctypes.POINTER(Continuation),
)
_ContinuationCallback = ctypes.CFUNCTYPE(ctypes.c_bool, ctypes.c_void_p)
_VAL_BYTES = ctypes.sizeof(ffi.wasmtime_val_t)
_VAL_OF = ffi.wasmtime_val_t.of.offset
_I32 = 0  # WASMTIME_I32
# Serving functions that wait while the client reads too slowly: async on
# a fiber (the fiber parks), as a thread they wait on the exchange.
WRITERS = ("ws_send", "sse_event", "write", "flush")


def _arg(args: int, index: int) -> int:
    return ctypes.c_int32.from_address(args + index * _VAL_BYTES + _VAL_OF).value


def _set_result(results: int, value: int) -> None:
    ctypes.c_uint8.from_address(results).value = _I32
    ctypes.c_int32.from_address(results + _VAL_OF).value = value


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
        self.instance = ffi.wasmtime_instance_t()
        self.item = ffi.wasmtime_extern_t()
        self.results = (ffi.wasmtime_val_t * 1)()
        self.trap = ctypes.c_void_p()
        self.error = ctypes.c_void_p()
        # Parked in an async host call whose continuation is not ready.
        self.parked = False
        # What the parked call needs to finish: a ready test and the finish.
        self.ready: Callable[[], bool] = _never
        self.finish: Callable[[], bool] = _never
        self.deadline: float | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.scheduled = False
        self.ended = False
        # Its parked call finished during the last poll: wasmtime hands
        # back once more before the guest runs on, so poll again at once.
        self.resumed = False

    def refs(self) -> tuple[Any, Any]:
        """The trap and error out-slots, cleared, as a future's last two arguments."""
        self.trap.value = None
        self.error.value = None
        return ctypes.byref(self.trap), ctypes.byref(self.error)


def _never() -> bool:
    return False


def _finished_at_once(_env: int | None) -> bool:
    return True


class FiberHost(Protocol):
    """What the fiber scheduler uses of the worker's host."""

    ticks: int
    actors: ActorTable

    def new_process_store(self, process: Process) -> tuple[Any, ExitReport | None]: ...

    def finish(self, process: Process, report: ExitReport, store: Any) -> None: ...


class FiberScheduler:
    """Starts, polls, parks and ends the worker's fiber processes (I/O thread).

    Args:
        host: The worker's host (its process table, actors and exits).
        loop: The worker's loop; the scheduler must be made on its thread.
        serve_calls: The serving host functions (the writers run them).
    """

    def __init__(
        self, host: FiberHost, loop: asyncio.AbstractEventLoop, serve_calls: ServeCalls
    ) -> None:
        self.host = host
        self.loop = loop
        self.serve_calls = serve_calls
        self.thread = threading.get_ident()
        self.fibers: dict[int, Fiber] = {}
        self._continue = _ContinuationCallback(self._continuation)
        self._continue_address = ctypes.cast(self._continue, ctypes.c_void_p).value
        self._done = _ContinuationCallback(_finished_at_once)
        self._done_address = ctypes.cast(self._done, ctypes.c_void_p).value
        self.callbacks = {"recv": self._async_callback("recv", self._recv)}
        for name in WRITERS:
            self.callbacks[name] = self._async_callback(name, self._writer(name))
        # The fiber being polled (async host calls come from it: polls never nest).
        self.current: Fiber | None = None

    # ── any thread ──────────────────────────────────────────────────────

    def start(self, process: Process) -> None:
        """Run ``process`` as a fiber (it is in the process table already)."""
        self._soon(self._start, process)

    def wake(self, pid: int) -> None:
        """Poll ``pid``'s fiber soon: a message, a stop, or the socket drained."""
        fiber = self.fibers.get(pid)
        if fiber is not None and not fiber.scheduled and not fiber.ended:
            fiber.scheduled = True
            self._soon(self._run, fiber)

    def _soon(self, job: Callable[..., None], *args: Any) -> None:
        if self.loop.is_closed():
            return
        if threading.get_ident() == self.thread:
            self.loop.call_soon(job, *args)
        else:
            self.loop.call_soon_threadsafe(job, *args)

    # ── the I/O thread ──────────────────────────────────────────────────

    def _start(self, process: Process) -> None:
        host = self.host
        component = process.component
        store, problem = host.new_process_store(process)
        if problem is not None:
            host.finish(process, problem, store)
            return
        context = capi.store_context(store)
        fiber = Fiber(process, store, context)
        process.fiber = fiber
        self.fibers[process.pid] = fiber
        if process.actor is not None:
            pid = process.pid
            process.actor.waker = lambda: self.wake(pid)
        name = process.entry or (component.shape.entry if component.shape else "")
        if process.entry:
            results = component.action(name)
            if isinstance(results, str):
                self._end(fiber, ExitReport(ExitReason.CRASHED, results))
                return
        else:
            results = component.shape.entry_results if component.shape else 0
        fiber.entry, fiber.entry_results = name, int(results)
        run_on_loop = getattr(process.exchange, "run_on_loop", None)
        if run_on_loop is not None:
            run_on_loop()
        process.state = ProcessState.RUNNING
        process.call_started_tick = host.ticks
        fiber.future = ctypes.c_void_p(
            _instantiate_async(
                component.fiber_pre_ptr,
                fiber.raw_context,
                ctypes.byref(fiber.instance),
                *fiber.refs(),
            )
        )
        self._run(fiber)

    def _run(self, fiber: Fiber) -> None:
        """Poll ``fiber`` until it parks, yields or ends."""
        fiber.scheduled = False
        process = fiber.process
        while not fiber.ended:
            if process.stop_reason:
                self._end(fiber, ExitReport(process.stop_reason, process.stop_detail))
                return
            if fiber.parked:
                if not self._can_finish(fiber):
                    self._arm(fiber)
                    return
                process.state = ProcessState.RUNNING
                process.call_started_tick = self.host.ticks  # time parked is not CPU time
            self.current = fiber
            fiber.resumed = False
            try:
                done = _poll(fiber.future)
            finally:
                self.current = None
            if not done:
                if fiber.resumed and not fiber.parked:
                    continue
                if fiber.parked:
                    process.state = ProcessState.WAITING
                    self._arm(fiber)
                else:  # it used up a tick: let the loop run, then carry on
                    fiber.scheduled = True
                    self.loop.call_soon(self._run, fiber)
                return
            _delete_future(fiber.future)
            fiber.future = None
            report = self._next(fiber)
            if report is not None:
                self._end(fiber, report)
                return

    def _can_finish(self, fiber: Fiber) -> bool:
        """Whether polling the parked fiber would let its host call finish."""
        if fiber.ready():
            return True
        return fiber.deadline is not None and time.monotonic() >= fiber.deadline

    def _arm(self, fiber: Fiber) -> None:
        """Wake a parked fiber at its deadline (once)."""
        if fiber.deadline is None or fiber.timer is not None:
            return
        delay = max(0.0, fiber.deadline - time.monotonic())
        fiber.timer = self.loop.call_later(delay, self._timed_out, fiber)

    def _timed_out(self, fiber: Fiber) -> None:
        fiber.timer = None
        if not fiber.scheduled and not fiber.ended:
            self._run(fiber)

    def _next(self, fiber: Fiber) -> ExitReport | None:
        """The current phase finished: start the next one; the report once it ended."""
        process = fiber.process
        error_at, trap_at = fiber.error.value, fiber.trap.value
        if error_at or trap_at:
            where = fiber.entry if fiber.phase is Phase.CALL else fiber.phase.value
            return failure(
                process,
                ctypes.cast(error_at, ctypes.POINTER(ffi.wasmtime_error_t)) if error_at else None,
                ctypes.cast(trap_at, ctypes.POINTER(ffi.wasm_trap_t)) if trap_at else None,
                where,
            )
        component = process.component
        shape = component.shape
        assert shape is not None
        if fiber.phase is Phase.INSTANTIATE:
            if shape.has_memory:
                memory = export(fiber.context, fiber.instance, b"memory")
                if memory is not None:
                    process.memory = GuestMemory(fiber.context, memory.of.memory)
                    process.memory_bytes = process.memory.size()
            if shape.has_initialize and fiber.entry != "_start":
                fiber.phase = Phase.INITIALIZE
                if self._call(fiber, b"_initialize", 0):
                    return None
            fiber.phase = Phase.CALL
            if not self._call(fiber, fiber.entry.encode(), fiber.entry_results):
                return ExitReport(ExitReason.CRASHED, f"entry {fiber.entry} vanished")
            return None
        if fiber.phase is Phase.INITIALIZE:
            fiber.phase = Phase.CALL
            if not self._call(fiber, fiber.entry.encode(), fiber.entry_results):
                return ExitReport(ExitReason.CRASHED, f"entry {fiber.entry} vanished")
            return None
        if process.memory is not None:
            process.memory_bytes = process.memory.size()
        if fiber.entry_results and fiber.results[0].of.i32 != 0:
            return ExitReport(
                ExitReason.CRASHED, f"{fiber.entry} returned {fiber.results[0].of.i32}"
            )
        return ExitReport(ExitReason.NORMAL)

    def _call(self, fiber: Fiber, name: bytes, results: int) -> bool:
        """Start calling export ``name``; False if the instance lacks it."""
        if not _export_get(
            fiber.raw_context,
            ctypes.byref(fiber.instance),
            name,
            ctypes.c_size_t(len(name)),
            ctypes.byref(fiber.item),
        ):
            return False
        fiber.process.call_started_tick = self.host.ticks
        fiber.future = ctypes.c_void_p(
            _call_async(
                fiber.raw_context,
                ctypes.byref(fiber.item.of.func),
                None,
                ctypes.c_size_t(0),
                fiber.results,
                ctypes.c_size_t(results),
                *fiber.refs(),
            )
        )
        return True

    def _end(self, fiber: Fiber, report: ExitReport) -> None:
        """Drop the fiber (unwinding it if it is parked) and end its process."""
        fiber.ended = True
        if fiber.timer is not None:
            fiber.timer.cancel()
            fiber.timer = None
        if fiber.future is not None:
            _delete_future(fiber.future)
            fiber.future = None
        self.fibers.pop(fiber.process.pid, None)
        self.host.finish(fiber.process, report, fiber.store)
        # Nothing polls it again: untie it from its process. The two point at
        # each other (and its parked call's closures at both), and a cycle
        # waits for the cycle collector, which reaches long-lived objects
        # late; untied, the process, its actor, exchange and connection are
        # freed as soon as the last reference goes.
        fiber.ready = fiber.finish = _never
        fiber.process.fiber = None

    # ── async host functions (inside a poll, I/O thread) ────────────────

    def _park(self, fiber: Fiber, ready: Callable[[], bool], finish: Callable[[], bool]) -> None:
        fiber.parked = True
        fiber.ready = ready
        fiber.finish = finish

    def _continuation(self, env: int | None) -> bool:
        """Asked by each poll of a parked host call: finish it now if it can."""
        fiber = self.fibers.get(env or 0)
        if fiber is None or fiber.ended:
            return False
        try:
            if fiber.finish():
                fiber.parked = False
                fiber.resumed = True
                fiber.deadline = None
                if fiber.timer is not None:
                    fiber.timer.cancel()
                    fiber.timer = None
                return True
            return False
        except Stopped as exc:  # never resume it: the next run ends it
            self._stop(fiber, exc.reason)
            return False
        except BaseException as exc:
            fiber.process.crash = f"host error in a parked call: {type(exc).__name__}: {exc}"
            self._stop(fiber, ExitReason.CRASHED, fiber.process.crash)
            return False

    def _stop(self, fiber: Fiber, reason: ExitReason, detail: str = "") -> None:
        process = fiber.process
        if not process.stop_reason:
            process.stop_reason = reason
            process.stop_detail = detail
        fiber.scheduled = True
        self.loop.call_soon(self._run, fiber)

    def _enter(self, caller: int, name: str, trap_ret: int) -> Fiber | None:
        """The calling process's fiber, or None with a trap set."""
        if self.current is not None:
            return self.current
        context = _caller_context(ctypes.c_void_p(caller))
        fiber = self.fibers.get(pid_of(context))
        if fiber is None:
            ctypes.c_void_p.from_address(trap_ret).value = new_trap(
                f"rusm.{name}: calling process is unknown"
            )
        return fiber

    def _finished(self, cont: Any) -> None:
        """A host call that finished at once: its continuation says so on the first poll."""
        cont[0].callback = self._done_address
        cont[0].env = None

    def _async_callback(self, name: str, body: Callable[[Fiber, int, int, Any], None]) -> Any:
        """The async host callback of ``rusm.name``: ``body(fiber, args, results,
        continuation)`` for the calling fiber. A bad pointer or a host error
        traps the guest, as on a thread."""

        def callback(
            _env: int | None,
            caller: int,
            args: int,
            _nargs: int,
            results: int,
            _nresults: int,
            trap_ret: int,
            cont: Any,
        ) -> None:
            fiber = None
            # wasmtime wants a continuation even when the call traps: by
            # default the call is over at the first poll; a body that
            # waits replaces it.
            self._finished(cont)
            try:
                fiber = self._enter(caller, name, trap_ret)
                if fiber is not None:
                    body(fiber, args, results, cont)
            except BadPointer as exc:
                if fiber is not None:
                    fiber.process.crash = str(exc)
                ctypes.c_void_p.from_address(trap_ret).value = new_trap(str(exc))
            except BaseException as exc:
                if fiber is not None:
                    fiber.process.crash = f"host error in rusm.{name}: {type(exc).__name__}: {exc}"
                trap = new_trap(f"host error in rusm.{name}")
                ctypes.c_void_p.from_address(trap_ret).value = trap

        return AsyncCallback(callback)

    def _wait(
        self, fiber: Fiber, cont: Any, ready: Callable[[], bool], finish: Callable[[], bool]
    ) -> None:
        """Park ``fiber`` in its host call until ``finish()`` (asked when ``ready()``) succeeds."""
        self._park(fiber, ready, finish)
        cont[0].callback = self._continue_address
        cont[0].env = fiber.process.pid

    def _recv(self, fiber: Fiber, args: int, results: int, cont: Any) -> None:
        """``rusm.recv(header, buf, cap, timeout_ms)`` on a fiber."""
        process = fiber.process
        header, buf, cap, timeout_ms = (_arg(args, k) for k in range(4))
        memory = process.memory
        if memory is None:
            raise BadPointer("rusm.recv: the module exports no memory")
        size = memory.size()
        check_range("recv", header, HEADER_BYTES, size)
        check_range("recv", buf, cap, size)
        if timeout_ms < -1:
            _set_result(results, ErrorCode.INVALID)
            self._finished(cont)
            return
        actor = process.actor
        assert actor is not None
        table = self.host.actors
        fiber.deadline = None if timeout_ms < 0 else time.monotonic() + timeout_ms / 1000

        def finish() -> bool:
            code, envelope = table.receive(actor, 0, cap)
            if envelope is None:
                if fiber.deadline is not None and time.monotonic() >= fiber.deadline:
                    _set_result(results, ErrorCode.TIMEOUT)
                    return True
                return False
            _set_result(results, write_received(memory, header, buf, code, envelope))
            return True

        self._wait(fiber, cont, lambda: bool(actor.mailbox) or bool(actor.stop), finish)

    def _writer(self, name: str) -> Callable[[Fiber, int, int, Any], None]:
        """The async form of serving function ``name`` (``WRITERS``): it waits,
        parked, while the client's socket is backed up, then runs as usual."""
        implementation = getattr(self.serve_calls, name)
        count = len(FUNCTIONS[name].params)

        def body(fiber: Fiber, args: int, results: int, cont: Any) -> None:
            process = fiber.process
            values = capi.Values()
            for k in range(count):
                values[k].i32 = _arg(args, k)
            exchange = process.exchange
            writable = getattr(exchange, "writable", None)

            def ready() -> bool:
                return writable is None or writable.is_set() or bool(exchange.closed)

            def finish() -> bool:
                if not ready():
                    return False
                implementation(process, values)
                _set_result(results, values[0].i32)
                return True

            if finish():
                self._finished(cont)
                return
            fiber.deadline = None
            self._wait(fiber, cont, ready, finish)

        return body
