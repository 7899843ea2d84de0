"""The scheduler: every wasm process a wasmtime fiber on its worker's loop thread.

Runs in: worker, on its loop thread (uvloop); ``FiberScheduler.start``
and ``wake`` may be called from any thread.

Every process (residents, spawned children, supervisor children, call
targets, HTTP handlers not served inline, SSE streams, WebSocket
connections) runs on a fiber, except one whose module imports a WASI
function that blocks its thread (``abi.WASI_BLOCKING``): that one keeps
a guest thread (``runners``; docs/abi.md names the cases).
``wasmtime_func_call_async`` returns a future; polling it on the loop
thread runs the guest until one of these happens:

- it returns or traps (the process ends);
- it waits in a host call that can wait: ``rusm.recv``, ``call``,
  ``sleep``, ``register``, ``is_alive`` and ``info`` on another worker's
  pid, the kv writes (until their commit), a serving write while the
  client reads slowly (``fiber_calls``, ``fiber_writes``);
- it uses up an epoch tick: its deadline yields rather than traps, so a
  busy guest hands the loop back every tick (``EPOCH_TICK_MS``) and
  goes to the back of the run queue (the loop's ready callbacks): no
  process and no socket waits more than about a tick behind it.

In the last case the loop polls it again soon. In the others it is
*parked* until what it waits for comes (a message, a reply, a commit,
the socket drains), its timer fires (a loop timer), or it is told to
stop (the actor's waker queues it; the fibers woken during one loop
iteration run in one callback at its end). A parked fiber that is
stopped is never resumed: its future is dropped, which unwinds its
stack, and what its call left behind (a monitor, a name claim) is
undone. Nothing passes between threads for a message between two local
processes, and a round trip is two polls.

Each poll is timed: a process's ``cpu_ms`` and ``polls`` (its
reductions) show in ``rusmctl list``. Before a poll, a fiber whose last
run was an epoch ago gets a fresh deadline, so it runs a whole tick
before it yields, however long it waited.

The waiting host calls are wasmtime *async* host functions in these
modules' linker; every other import is the same synchronous callback a
threaded process calls. The async callback either finishes at once (a
message is there, the socket is writable) or parks: it hands wasmtime a
continuation that every poll asks whether the call is over. The
continuation answers from C, never entering Python: its callback is
libc's ``strlen`` and its argument a byte the fiber owns, 0 while the
call waits and 1 once it may go on. The scheduler finishes a parked
call itself (the message written into guest memory, the result set)
and only then sets the byte and polls, so a resumed call costs the
poll alone. A call that finishes at once gets a continuation over a
byte that is always 1. A WebSocket frame for a fiber waiting in
``recv`` with nothing queued goes straight into its buffers (``hand``):
no trip through the mailbox.
"""

from __future__ import annotations

import asyncio
import ctypes
import enum
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from functools import partial
from typing import Any, Protocol

from wasmtime import _ffi as ffi

from rusmd.abi import HEADER_BYTES, HEADER_FORMAT, ErrorCode, ExitReason
from rusmd.actors.table import ActorTable, Envelope, Stopped
from rusmd.log import Logger
from rusmd.wasm import capi
from rusmd.wasm.capi import export, pid_of
from rusmd.wasm.memory import BadPointer, GuestMemory, check_range
from rusmd.wasm.process import Exit, ExitReport, Process, ProcessState
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


class FiberScheduler:
    """Starts, polls, parks and ends the worker's fiber processes (I/O thread).

    Args:
        host: The worker's host (its process table, actors and exits).
        loop: The worker's loop.
        thread: The ident of the loop's thread. Optional; defaults to the
            calling thread's (the scheduler is then made on it).
    """

    def __init__(
        self, host: FiberHost, loop: asyncio.AbstractEventLoop, thread: int | None = None
    ) -> None:
        self.host = host
        self.table = host.actors
        self.loop = loop
        self.thread = threading.get_ident() if thread is None else thread
        self.fibers: dict[int, Fiber] = {}
        # Fibers woken on this thread since the loop last ran them.
        self._woken: list[Fiber] = []
        self._running_woken = False
        # Jobs other threads queued for the loop (``_soon``).
        self._inbox: deque[tuple[Callable[[Any], None], Any]] = deque()
        self._inbox_armed = False
        # Re-pointed at a call's values (int32s) and continuation (two
        # pointers) to read and write them in place: cheaper than a ctypes
        # object per access. Only the loop thread uses them.
        self._i32 = ctypes.POINTER(ctypes.c_int32)()
        self._i32_at = ctypes.c_size_t.from_buffer(self._i32)
        self._u32 = ctypes.POINTER(ctypes.c_uint32)()  # the same values as wasm's unsigned
        self._u32_at = ctypes.c_size_t.from_buffer(self._u32)
        self._u64 = ctypes.POINTER(ctypes.c_uint64)()
        self._u64_at = ctypes.c_size_t.from_buffer(self._u64)
        # Where a future writes how it ended (its trap, its error, the
        # entry's result) and an export is looked up: one set for all fibers,
        # since a future writes them only as it completes, inside its own
        # poll, and ``_next`` reads (and clears) them right after that poll.
        self._item = ffi.wasmtime_extern_t()
        self._results = (ffi.wasmtime_val_t * 1)()
        self._trap = ctypes.c_void_p()
        self._error = ctypes.c_void_p()
        self._out = (ctypes.byref(self._trap), ctypes.byref(self._error))
        self._i64 = ctypes.POINTER(ctypes.c_int64)()
        self._i64_at = ctypes.c_size_t.from_buffer(self._i64)
        # The async host functions by name (``define`` adds the others).
        self.callbacks = {"recv": self._async_callback("recv", self._recv)}
        # Synchronous host functions of fibers' own (``define_sync``): the
        # hottest calls, which read the caller from ``current``.
        self.sync_callbacks: dict[str, Any] = {}
        # The fiber being polled (async host calls come from it: polls never nest).
        self.current: Fiber | None = None

    def define(self, bodies: dict[str, Body]) -> None:
        """Make each body the async host function of its name (before any linking)."""
        for name, body in bodies.items():
            self.callbacks[name] = self._async_callback(name, body)

    def define_sync(self, bodies: dict[str, SyncBody]) -> None:
        """Make each body the fibers' synchronous host function of its name.

        ``body(fiber, values)`` gets the call's raw values' address
        (``wasmtime_val_raw_t``, 16 bytes each: read them with ``raw_u32``
        and ``raw_i64``) and sets the result in place; it never waits.
        """
        for name, body in bodies.items():
            self.sync_callbacks[name] = self._sync_callback(name, body)

    # ── any thread ──────────────────────────────────────────────────────

    def start(self, process: Process) -> None:
        """Run ``process`` as a fiber (it is in the process table already)."""
        self._soon(self._start, process)

    def wake(self, pid: int) -> None:
        """Poll ``pid``'s fiber soon: a message, a stop, or the socket drained."""
        fiber = self.fibers.get(pid)
        if fiber is not None:
            self._wake(fiber)

    def wake_fiber(self, fiber: Fiber) -> None:
        """Poll ``fiber`` soon (what its parked call waits for may have come)."""
        self._wake(fiber)

    def _wake(self, fiber: Fiber) -> None:
        if fiber.scheduled or fiber.ended:
            return
        fiber.scheduled = True
        if threading.get_ident() != self.thread:
            self._soon(self._run, fiber)
            return
        # The fibers woken during one loop iteration (a read's messages to
        # several connections) run in one callback after it; those woken
        # while it runs them (one process's message to another) run in it
        # too, for up to a tick (``_run_woken``).
        woken = self._woken
        woken.append(fiber)
        if len(woken) == 1 and not self._running_woken and not self.loop.is_closed():
            self.loop.call_soon(self._run_woken)

    def _soon(self, job: Callable[[Any], None], arg: Any) -> None:
        if self.loop.is_closed():
            return
        if threading.get_ident() == self.thread:
            self.loop.call_soon(job, arg)
            return
        # From another thread (a control call, a guest thread, the kv
        # writer): through the inbox, which wakes the loop once for all
        # that came meanwhile rather than once each (a wake-up is a
        # syscall and a GIL hand-off).
        self._inbox.append((job, arg))
        if not self._inbox_armed:
            self._inbox_armed = True
            self.loop.call_soon_threadsafe(self._drain_inbox)

    def _drain_inbox(self) -> None:
        self._inbox_armed = False  # before draining: a job queued after is not missed
        inbox = self._inbox
        while inbox:
            job, arg = inbox.popleft()
            try:
                job(arg)
            except Exception as exc:  # a host bug costs its job, not the jobs behind it
                self.host.log.error(f"scheduler: {getattr(job, '__name__', job)}: {exc!r}")

    # ── the loop thread ────────────────────────────────────────────────────

    def _run_woken(self) -> None:
        """Run the woken fibers, and those they wake, until none is left or a tick passed.

        The run queue between two processes of this worker is this list,
        not the loop's: a message from one to another costs no loop
        callback. After a tick the rest waits behind the loop's own work
        (its sockets, timers and fibers that used up their tick), so none
        of that waits more than about a tick.
        """
        self._running_woken = True
        started = self.host.ticks
        try:
            while self._woken:
                woken, self._woken = self._woken, []
                for fiber in woken:
                    if fiber.scheduled:  # else something ran it meanwhile
                        self._run(fiber)
                if self.host.ticks != started:
                    break
        finally:
            self._running_woken = False
            if self._woken and not self.loop.is_closed():
                self.loop.call_soon(self._run_woken)

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
            process.actor.waker = partial(self._wake, fiber)
            process.actor.hand = partial(self._hand_to, fiber)
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
        process.busy_ticks = 0
        fiber.future = ctypes.c_void_p(
            _instantiate_async(
                component.fiber_pre_ptr,
                fiber.raw_context,
                ctypes.byref(fiber.instance),
                *self._out,
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
            if fiber.parked and not self._resume(fiber):
                if process.stop_reason:
                    continue
                if fiber.deadline is not None:
                    self._arm(fiber)
                return
            ticks = self.host.ticks
            if fiber.last_tick != ticks:
                # The epoch moved on since it last ran: a whole tick from now
                # before it yields, not a yield at once for time it waited.
                fiber.last_tick = ticks
                _set_deadline(fiber.raw_context, _ONE_TICK)
            self.current = fiber
            started = _clock_ns()
            try:
                done = _poll(fiber.future)
            finally:
                self.current = None
                process.cpu_ns += _clock_ns() - started
                process.polls += 1
            if not done:
                if fiber.parked:
                    if process.state is _RUNNING:
                        process.state = _WAITING
                    if fiber.deadline is not None:
                        self._arm(fiber)
                else:  # it used up a tick: the loop's other work first, then it again
                    fiber.scheduled = True
                    self.loop.call_soon(self._run, fiber)
                return
            _delete_future(fiber.future)
            fiber.future = None
            report = self._next(fiber)
            if report is not None:
                self._end(fiber, report)
                return

    def _resume(self, fiber: Fiber) -> bool:
        """Finish the parked fiber's host call if it can now; True if it did.

        A stop found meanwhile (or a host error) sets the process's stop
        reason instead: the fiber is never resumed.
        """
        process = fiber.process
        try:
            if fiber.handed:  # ``hand`` finished its recv already
                fiber.handed = False
                finished = True
            else:
                finished = self._finish_recv(fiber) if fiber.finish is None else fiber.finish()
        except Stopped as exc:
            self._stopping(process, exc.reason)
            return False
        except BadPointer as exc:
            process.crash = str(exc)
            self._stopping(process, ExitReason.CRASHED, process.crash)
            return False
        except Exception as exc:
            process.crash = f"host error in a parked call: {type(exc).__name__}: {exc}"
            self._stopping(process, ExitReason.CRASHED, process.crash)
            return False
        if not finished:
            return False
        fiber.parked = False
        fiber.cancel = None
        fiber.flag[0] = 1
        fiber.deadline = None
        if fiber.timer is not None:
            fiber.timer.cancel()
            fiber.timer = None
        process.state = _RUNNING
        process.busy_ticks = 0  # its CPU budget is per stretch between waits
        return True

    def _arm(self, fiber: Fiber) -> None:
        """Wake a parked fiber at its deadline (once); it has one."""
        if fiber.deadline is None or fiber.timer is not None:
            return
        delay = max(0.0, fiber.deadline - _monotonic())
        fiber.timer = self.loop.call_later(delay, self._timed_out, fiber)

    def _timed_out(self, fiber: Fiber) -> None:
        fiber.timer = None
        if not fiber.scheduled and not fiber.ended:
            self._run(fiber)

    def _next(self, fiber: Fiber) -> ExitReport | None:
        """The current phase finished: start the next one; the report once it ended."""
        process = fiber.process
        error_at, trap_at = self._error.value, self._trap.value
        if error_at or trap_at:
            self._error.value = self._trap.value = None
        if error_at or trap_at:
            if process.memory is not None:  # a crash near its cap says so
                process.memory_bytes = process.memory.size()
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
            return self._call_entry(fiber)
        if fiber.phase is Phase.INITIALIZE:
            return self._call_entry(fiber)
        if process.memory is not None:
            process.memory_bytes = process.memory.size()
        if fiber.entry_results and self._results[0].of.i32 != 0:
            return ExitReport(
                ExitReason.CRASHED, f"{fiber.entry} returned {self._results[0].of.i32}"
            )
        return ExitReport(ExitReason.NORMAL)

    def _call_entry(self, fiber: Fiber) -> ExitReport | None:
        """Start calling the entry, with its arguments; a report if it is missing."""
        fiber.phase = Phase.CALL
        fiber.arguments = capi.typed_arguments(fiber.process.entry_args)
        if not self._call(fiber, fiber.entry.encode(), fiber.entry_results, fiber.arguments):
            return ExitReport(ExitReason.CRASHED, f"entry {fiber.entry} vanished")
        return None

    def _call(self, fiber: Fiber, name: bytes, results: int, arguments: Any = None) -> bool:
        """Start calling export ``name`` (with ``arguments``); False if the instance lacks it."""
        if not _export_get(
            fiber.raw_context,
            ctypes.byref(fiber.instance),
            name,
            ctypes.c_size_t(len(name)),
            ctypes.byref(self._item),
        ):
            return False
        fiber.process.busy_ticks = 0
        fiber.future = ctypes.c_void_p(
            _call_async(
                fiber.raw_context,
                ctypes.byref(self._item.of.func),
                arguments,
                ctypes.c_size_t(0 if arguments is None else len(arguments)),
                self._results,
                ctypes.c_size_t(results),
                *self._out,
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
        cancel, fiber.cancel = fiber.cancel, None
        if cancel is not None:
            try:
                cancel()
            except Exception as exc:  # a host bug must not keep the process alive
                self.host.log.error(f"{fiber.process.label}: undoing its parked call: {exc!r}")
        self.fibers.pop(fiber.process.pid, None)
        # Its memory goes with its store: nothing may read it through the view.
        fiber.view, fiber.view_size = _NO_VIEW, -1
        self.host.finish(fiber.process, report, fiber.store)
        # Nothing polls it again: untie it from its process. The two point at
        # each other (and its parked call's closure at both), and a cycle
        # waits for the cycle collector, which reaches long-lived objects
        # late; untied, the process, its actor, exchange and connection are
        # freed as soon as the last reference goes.
        fiber.finish = None
        fiber.process.fiber = None

    # ── async host functions (inside a poll, loop thread) ───────────────

    def _stopping(self, process: Process, reason: ExitReason, detail: str = "") -> None:
        if not process.stop_reason:
            process.stop_reason = reason
            process.stop_detail = detail

    def _stop(self, fiber: Fiber, reason: ExitReason, detail: str = "") -> None:
        self._stopping(fiber.process, reason, detail)
        fiber.scheduled = True
        self.loop.call_soon(self._run, fiber)

    def _caller_fiber(self, caller: int, name: str, trap_ret: int) -> Fiber | None:
        """The calling process's fiber found from its store, or None with a trap set."""
        context = _caller_context(ctypes.c_void_p(caller))
        fiber = self.fibers.get(pid_of(context))
        if fiber is None:
            ctypes.c_void_p.from_address(trap_ret).value = new_trap(
                f"rusm.{name}: calling process is unknown"
            )
        return fiber

    def _async_callback(self, name: str, body: Callable[[Fiber, int, int], None]) -> Any:
        """The async host callback of ``rusm.name``: ``body(fiber, args, results)``
        for the calling fiber, which either sets the result or parks the fiber
        (``park``). A bad pointer or a host error traps the guest, as on a
        thread."""
        continue_at = self._u64_at
        continuation = self._u64

        def callback(
            _env: int | None,
            caller: int,
            args: int,
            _nargs: int,
            results: int,
            _nresults: int,
            trap_ret: int,
            cont: int,
        ) -> None:
            # wasmtime wants a continuation even when the call traps: the
            # call is over at the first poll unless the body parked it.
            ready_at = _ALWAYS_ADDRESS
            fiber = self.current
            try:
                if fiber is None:
                    fiber = self._caller_fiber(caller, name, trap_ret)
                if fiber is not None:
                    body(fiber, args, results)
                    if fiber.parked:
                        ready_at = fiber.flag_address
            except BadPointer as exc:
                if fiber is not None:
                    fiber.process.crash = str(exc)
                ctypes.c_void_p.from_address(trap_ret).value = new_trap(str(exc))
            except Exit as exc:
                ctypes.c_void_p.from_address(trap_ret).value = new_trap(str(exc))
            except BaseException as exc:
                if fiber is not None:
                    fiber.process.crash = f"host error in rusm.{name}: {type(exc).__name__}: {exc}"
                trap = new_trap(f"host error in rusm.{name}")
                ctypes.c_void_p.from_address(trap_ret).value = trap
            continue_at.value = cont
            continuation[0] = _STRLEN
            continuation[1] = ready_at

        return AsyncCallback(callback)

    def _sync_callback(self, name: str, body: SyncBody) -> Any:
        """The unchecked host callback of ``rusm.name`` for fibers (see ``define_sync``)."""

        def callback(_env: Any, _caller: int, address: int, _count: int) -> int:
            fiber = self.current
            if fiber is None:  # only a fiber's poll calls into its linker's functions
                return new_trap(f"rusm.{name}: calling process is unknown")
            try:
                body(fiber, address)
                return 0
            except BadPointer as exc:
                fiber.process.crash = str(exc)
                return new_trap(str(exc))
            except Exit as exc:
                return new_trap(str(exc))
            except BaseException as exc:
                fiber.process.crash = f"host error in rusm.{name}: {type(exc).__name__}: {exc}"
                return new_trap(f"host error in rusm.{name}")

        return ctypes.cast(capi.HostCallback(callback), ffi.wasmtime_func_unchecked_callback_t)

    def raw_u32(self, address: int) -> Any:
        """A synchronous call's raw values as uint32s: value ``k``'s at ``4 * k``."""
        self._u32_at.value = address
        return self._u32

    def raw_i64(self, address: int) -> Any:
        """A synchronous call's raw values as int64s: value ``k``'s at ``2 * k``."""
        self._i64_at.value = address
        return self._i64

    def values(self, address: int) -> Any:
        """The int32s at ``address`` (a call's values): value ``k``'s i32 at ``A{k}``.

        The same object every call (re-pointed): read it before the next call.
        """
        self._i32_at.value = address
        return self._i32

    def u32(self, address: int) -> Any:
        """As ``values``, the int32s read as wasm's unsigned."""
        self._u32_at.value = address
        return self._u32

    def set_result(self, result_at: int, value: int) -> None:
        """Make a call's i32 result ``value``."""
        self._i32_at.value = result_at
        i32 = self._i32
        i32[0] = _I32  # the kind, and the padding after it
        i32[_A0] = value

    def park(
        self,
        fiber: Fiber,
        finish: Callable[[], bool] | None,
        *,
        deadline: float | None = None,
        cancel: Callable[[], None] | None = None,
        state: ProcessState = _WAITING,
    ) -> None:
        """Park ``fiber`` in its host call until ``finish()`` (``recv``'s when None) succeeds.

        Args:
            fiber: The calling fiber (inside its async host call).
            finish: Called on the loop thread each time the fiber is woken
                (and at ``deadline``): finishes the call (its result set) and
                returns True, or returns False to wait on.
            deadline: When ``finish`` must be asked again though nothing
                woke the fiber (a monotonic time); None for no timer.
            cancel: Undoes the call if the fiber is stopped while parked.
            state: What ``rusmctl list`` shows meanwhile.
        """
        fiber.parked = True
        fiber.finish = finish
        fiber.cancel = cancel
        fiber.deadline = deadline
        fiber.flag[0] = 0
        fiber.process.state = state
        if fiber.process.actor is not None and fiber.process.actor.stop:
            self._stop(fiber, fiber.process.actor.stop)

    def view(self, fiber: Fiber, function: str) -> tuple[memoryview, int]:
        """The calling fiber's memory as a memoryview, and its size."""
        memory = fiber.process.memory
        if memory is None:
            raise BadPointer(f"rusm.{function}: the module exports no memory")
        size: int = _data_size(memory.context, memory.ref)
        if size != fiber.view_size:
            fiber.view = _memory_view(memory, size)
            fiber.view_size = size
        return fiber.view, size

    # ── recv ────────────────────────────────────────────────────────────

    def _recv(self, fiber: Fiber, args: int, results: int) -> None:
        """``rusm.recv(header, buf, cap, timeout_ms)`` on a fiber."""
        u32 = self._u32
        self._u32_at.value = args
        header, buf, cap, timeout_ms = u32[_A0], u32[_A1], u32[_A2], u32[_A3]
        if timeout_ms > _I32_MAX:  # the one signed argument
            timeout_ms -= 1 << 32
        _view, size = self.view(fiber, "recv")
        if header + HEADER_BYTES > size:
            check_range("recv", header, HEADER_BYTES, size)
        if buf + cap > size:
            check_range("recv", buf, cap, size)
        if timeout_ms < -1:
            self.set_result(results, _INVALID)
            return
        actor = fiber.process.actor
        assert actor is not None
        fiber.header, fiber.buf, fiber.cap, fiber.result_at = header, buf, cap, results
        fiber.deadline = None if timeout_ms < 0 else _monotonic() + timeout_ms / 1000
        if actor.stop:  # never resumed: the run ``park`` schedules ends it
            self.park(fiber, None, deadline=fiber.deadline)
        elif not (actor.mailbox or fiber.deadline is not None) or not self._finish_recv(fiber):
            fiber.parked = True  # as ``park``, inline: the usual end of a round trip
            fiber.finish = None
            fiber.flag[0] = 0

    def _finish_recv(self, fiber: Fiber) -> bool:
        """Take the next message into the guest's buffers, or time out; False to wait on.

        The message's header goes in, and its payload if it fits (else it
        stays in the mailbox: TOOBIG), through the view of the memory made
        when the call came: the ranges were checked against it, and a guest
        waiting in a call cannot grow its memory.

        Raises:
            Stopped: The process was told to stop.
        """
        actor = fiber.process.actor
        assert actor is not None
        if actor.mailbox or actor.stop:
            code, envelope = self.table.take(actor, fiber.cap)
            if envelope is not None:
                self._put(fiber, code, envelope)
                return True
        if fiber.deadline is not None and _monotonic() >= fiber.deadline:
            self.set_result(fiber.result_at, _TIMEOUT)
            return True
        return False

    def _put(self, fiber: Fiber, code: int, envelope: Envelope) -> None:
        """Write a received message into the parked ``recv``'s buffers and set its result.

        The header goes in, and the payload if it was taken (``code`` OK;
        else it stays in the mailbox: TOOBIG).
        """
        view = fiber.view
        payload = envelope.payload
        length = len(payload)
        header = fiber.header
        view[header : header + HEADER_BYTES] = _HEADER.pack(
            envelope.kind, envelope.reason, envelope.sender, envelope.ref, length, 0
        )
        if code == _OK:
            view[fiber.buf : fiber.buf + length] = payload
            code = length
        self._i32_at.value = fiber.result_at  # as ``_set_result``, inline
        i32 = self._i32
        i32[0] = _I32
        i32[_A0] = code

    def hand(self, pid: int, envelope: Envelope) -> bool:
        """Give a message straight to ``pid``'s fiber if it waits in ``recv`` (I/O thread).

        Only while nothing is queued before it (its mailbox is empty), the
        process is not stopping and the message fits the waiting buffer:
        then the message is written into the guest's buffers at once, as
        its ``recv`` would, and the fiber is woken. False otherwise: the
        message goes to the mailbox the usual way (``ActorTable.deliver``).
        """
        fiber = self.fibers.get(pid)
        if fiber is None or not fiber.parked or fiber.finish is not None or fiber.handed:
            return False
        actor = fiber.process.actor
        if actor is None or not self.table.took_over(actor, len(envelope.payload), fiber.cap):
            return False
        self._put(fiber, _OK, envelope)
        fiber.handed = True
        self._wake(fiber)
        return True

    def _hand_to(self, fiber: Fiber, envelope: Envelope) -> bool:
        """``Actor.hand``: a message straight into ``fiber``'s waiting ``recv`` (table lock held).

        Only on the loop thread (the buffers are written with its scratch
        pointers), while the fiber waits in ``recv`` with nothing handed yet
        and the message fits: then as ``hand``, and the fiber is woken.
        """
        if (
            not fiber.parked
            or fiber.finish is not None
            or fiber.handed
            or len(envelope.payload) > fiber.cap
            or threading.get_ident() != self.thread
        ):
            return False
        self._put(fiber, _OK, envelope)
        fiber.handed = True
        self._wake(fiber)
        return True


def _memory_view(memory: GuestMemory, size: int) -> memoryview:
    """``size`` bytes of ``memory`` as a writable memoryview of unsigned bytes."""
    if not size:
        return memoryview(bytearray())
    base = _data(memory.context, memory.ref)
    return memoryview((ctypes.c_uint8 * size).from_address(base)).cast("B")
