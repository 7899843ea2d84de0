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

The scheduler is one class built along a one-way chain of modules:
``fiber`` (the fiber's record and the raw async C API), then
``fiber_callbacks`` (the host callbacks, ``park`` and the accessors of
a call's values), then ``fiber_recv`` (``recv`` and the hand-offs into
it), then this module: the run queue and the loop that starts, polls,
resumes and ends fibers.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Callable
from functools import partial
from typing import Any

from wasmtime import _ffi as ffi

from rusmd.abi import ExitReason
from rusmd.actors.records import Stopped
from rusmd.wasm import capi
from rusmd.wasm.capi import export
from rusmd.wasm.fiber import (
    _NO_VIEW,
    _ONE_TICK,
    _RUNNING,
    _WAITING,
    Fiber,
    Phase,
    _call_async,
    _clock_ns,
    _delete_future,
    _export_get,
    _instantiate_async,
    _monotonic,
    _poll,
    _set_deadline,
)
from rusmd.wasm.fiber_recv import FiberRecv
from rusmd.wasm.memory import BadPointer, GuestMemory
from rusmd.wasm.process import ExitReport, Process, ProcessState
from rusmd.wasm.traps import failure


class FiberScheduler(FiberRecv):
    """Starts, polls, parks and ends the worker's fiber processes (I/O thread).

    Args:
        host: The worker's host (its process table, actors and exits).
        loop: The worker's loop.
        thread: The ident of the loop's thread. Optional; defaults to the
            calling thread's (the scheduler is then made on it).
    """

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
