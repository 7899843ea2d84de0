"""The fibers' host callbacks: async and synchronous, over wasmtime's C API.

Runs in: worker, on its loop thread (inside a fiber's poll; ``park`` and
the value accessors also when the scheduler finishes a parked call).

``FiberCallbacks`` is the first part of the scheduler (``fibers``): the
state it shares with the rest (its fibers, the loop, the scratch
pointers a call's values are read through), the wrappers that make a
body into the async or synchronous host function of ``rusm.<name>``,
and what a body uses: the accessors of a call's values, ``set_result``,
``park`` and ``view``. An async callback either finishes at once or
parks its fiber: it hands wasmtime a continuation whose callback is
libc's ``strlen`` over the fiber's flag byte (``fiber``), so a poll asks
whether the call is over without entering Python.
"""

from __future__ import annotations

import asyncio
import ctypes
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from wasmtime import _ffi as ffi

from rusmd.abi import ExitReason
from rusmd.wasm import capi
from rusmd.wasm.capi import pid_of
from rusmd.wasm.fiber import (
    _A0,
    _ALWAYS_ADDRESS,
    _I32,
    _STRLEN,
    _WAITING,
    AsyncCallback,
    Body,
    Fiber,
    FiberHost,
    SyncBody,
    _caller_context,
    _data_size,
    _memory_view,
)
from rusmd.wasm.memory import BadPointer
from rusmd.wasm.process import Exit, Process, ProcessState
from rusmd.wasm.traps import new_trap


class FiberCallbacks:
    """The fibers' host callbacks and the state the scheduler shares with them.

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
        self.callbacks: dict[str, Any] = {}
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

    # The scheduler's own (``fibers.FiberScheduler``, further down the
    # chain): a stop found in a call polls the fiber (``_stop``), a handed
    # message wakes it (``fiber_recv``). Declared here so the chain needs no
    # import back up; the scheduler's methods replace them.
    def _run(self, fiber: Fiber) -> None:
        """Poll ``fiber`` until it parks, yields or ends (``FiberScheduler._run``)."""
        raise NotImplementedError

    def _wake(self, fiber: Fiber) -> None:
        """Poll ``fiber`` soon (``FiberScheduler._wake``)."""
        raise NotImplementedError

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
