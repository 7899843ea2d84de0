"""The inline path: an HTTP handler run on the I/O thread, in a fresh instance per request.

Runs in: worker, on its I/O thread (uvloop): inline handlers run there,
one at a time, and own everything here.

A handler whose module imports nothing that may wait
(``ModuleShape.inline``) is not spawned as a process: ``InlinePath.serve``
instantiates it and calls its action in place, then answers. The hot
path of serving, kept lean: no actor side (an inline handler imports
nothing that needs one), no epoch callback (the deadline is the budget
itself: past it wasm traps with an interrupt), and the instantiate and
call go straight to the C API with the GIL released so the epoch ticker
keeps running. The process still has a pid: its log lines and
``rusm.self`` use it. It is not in the host's process table: it lives
and ends within one call, on the thread that runs ``rusmctl list`` and
``kill``, so neither could ever see it. Host functions it calls find it
as the inline path's ``current`` process (``callbacks``).

Every request gets a new instance (its own memory, globals, table), but
up to ``INLINE_STORE_INSTANCES`` of them share one store: making a store
costs twice an instantiation. A store is dropped after any failure, when
full, and when an instance's memory grew past
``INLINE_REUSE_MEMORY_BYTES`` (so finished instances pin little).
"""

from __future__ import annotations

import ctypes
import threading
from typing import Any, Protocol

import wasmtime
from wasmtime import _ffi as ffi

from rusmd.abi import PID_STRIDE, ExitReason
from rusmd.log import Logger
from rusmd.wasm import capi
from rusmd.wasm.components import set_wasi
from rusmd.wasm.engine import MAX_TABLE_ELEMENTS
from rusmd.wasm.memory import GuestMemory
from rusmd.wasm.pids import PidLeases
from rusmd.wasm.process import ExitLines, ExitReport, LoadedComponent, Process, log_exit
from rusmd.wasm.settings import EPOCH_TICK_MS
from rusmd.wasm.traps import failure

# Pids the inline path takes from the lease at once (then hands out
# without the lock).
INLINE_PID_BLOCK = 256
# Inline handlers' fresh instances one store holds before it is dropped
# (each holds a slot of the inline pool until then: it has this many).
INLINE_STORE_INSTANCES = 16
# A store is dropped after an instance whose memory grew past this, so
# finished instances never pin much memory.
INLINE_REUSE_MEMORY_BYTES = 1 << 20

# The inline path's C calls, raw (``capi.raw``): no argument conversion,
# so every argument is a ctypes object. Instantiate and call may run guest
# code for long: they drop the GIL (the epoch ticker needs it to interrupt
# them). Both return the error pointer as a plain integer (0 or None when
# there is none); ``_error_at`` makes it a pointer again for ``failure``.
_instantiate = capi.raw("wasmtime_instance_pre_instantiate", ctypes.c_void_p, release_gil=True)
_call = capi.raw("wasmtime_func_call_unchecked", ctypes.c_void_p, release_gil=True)
_export_get = capi.export_get_raw
_set_deadline = capi.raw("wasmtime_context_set_epoch_deadline", None)
_ONE = ctypes.c_size_t(1)
_PID_STRIDE = PID_STRIDE
_get_ident = threading.get_ident
_INITIALIZE = (b"_initialize", ctypes.c_size_t(11))
_NORMAL = ExitReport(ExitReason.NORMAL)


def _error_at(address: int | None) -> Any:
    """A raw call's error result as the pointer ``failure`` takes (None if none)."""
    return ctypes.cast(address, ctypes.POINTER(ffi.wasmtime_error_t)) if address else None


class InlineHost(Protocol):
    """What the inline path reads of its host on each request."""

    # The epoch ticker's count (``WasmHost.ticks``).
    ticks: int


class InlinePath:
    """Serves inline requests: the store their instances share, and the C values they reuse.

    Args:
        host: The worker's host (its epoch ticks).
        engine: The inline pool's engine, as a raw pointer.
        pids: The worker's pid leases.
        slot: This worker's slot.
        log: The worker's logger.
        exit_lines: The worker's budget of exit lines by component.

    Attributes:
        spawned: Requests served (each counts as a process spawned).
        exits: Exit reason → count, for the requests that ended abnormally.
    """

    # Slots: read several times a request and on each of its host calls; a
    # fixed layout keeps each read one indexed load instead of a dict
    # lookup (30 attributes fill CPython's shared-key instance dicts).
    __slots__ = (
        "args",
        "args_at",
        "caller",
        "context",
        "current",
        "deadline_budget",
        "deadline_tick",
        "deadlines",
        "engine",
        "exit_lines",
        "exits",
        "func_ref",
        "host",
        "instance",
        "instance_ref",
        "item",
        "item_ref",
        "limit",
        "log",
        "memory",
        "memory_item",
        "memory_ref",
        "next_serial",
        "pids",
        "process",
        "result",
        "serial_end",
        "slot",
        "spawned",
        "store",
        "thread",
        "trap",
        "trap_ref",
        "uses",
        "values",
    )

    def __init__(
        self,
        host: InlineHost,
        engine: Any,
        pids: PidLeases,
        slot: int,
        log: Logger,
        *,
        exit_lines: ExitLines,
    ):
        self.host = host
        self.exit_lines = exit_lines
        self.engine = engine
        self.pids = pids
        self.slot = slot
        self.log = log
        self.spawned = 0
        self.exits: dict[str, int] = {}
        self.store: Any = None
        self.context: Any = None
        self.limit = 0
        self.uses = 0
        self.instance = ffi.wasmtime_instance_t()
        self.instance_ref = ctypes.byref(self.instance)
        self.trap = ctypes.POINTER(ffi.wasm_trap_t)()
        self.trap_ref = ctypes.byref(self.trap)
        self.item = ffi.wasmtime_extern_t()
        self.item_ref = ctypes.byref(self.item)
        self.func_ref = ctypes.byref(self.item.of.func)
        self.values = (ffi.wasmtime_val_raw_t * 1)()
        # The action's i32 result, read as a plain int.
        self.result = (ctypes.c_int32 * 1).from_buffer(self.values)
        # Epoch deadlines (in ticks, as raw call arguments) by budget in ms,
        # and the budget and tick the store's deadline was last set for.
        self.deadlines: dict[int, Any] = {}
        self.deadline_budget = -1
        self.deadline_tick = -1
        # The current instance's exported memory (looked up on its first host call).
        self.memory_item = ffi.wasmtime_extern_t()
        self.memory_ref = ctypes.byref(self.memory_item)
        self.memory: GuestMemory | None = None
        # The process being served (set only while its action runs) and the
        # thread it runs on: a host call from that thread while it is set is
        # that process's, found without asking wasmtime for the store data.
        self.current: Process | None = None
        self.thread = 0
        # A host call's caller and values, re-pointed for each inline call
        # (cheaper than new ctypes objects; only the I/O thread uses them).
        self.caller = ctypes.c_void_p()
        self.args = ctypes.POINTER(ctypes.c_int32)()
        self.args_at = ctypes.c_size_t.from_buffer(self.args)
        # Pid serials taken for inline requests, not yet handed out.
        self.next_serial = 0
        self.serial_end = 0
        # One Process record reused for every inline request (reset each time).
        self.process = Process(
            pid=0,
            component=None,  # type: ignore[arg-type]
            parent=None,
            started_at=0.0,
            started_wall=0.0,
            quiet=True,
        )

    # ── one request ─────────────────────────────────────────────────────

    def serve(self, component: LoadedComponent, action: str, exchange: Any) -> ExitReport:
        """Run ``action`` of a fresh instance on this (the I/O) thread for one request."""
        plan = component.plans.get(action) or component.inline_plan(action)
        if isinstance(plan, str):
            return ExitReport(ExitReason.CRASHED, plan)
        pre, name, length, results, uses_wasi, has_initialize, limit, cpu_ms = plan
        serial = self.next_serial
        if serial < self.serial_end:
            self.next_serial = serial + 1
            pid = serial * _PID_STRIDE + self.slot
        else:
            pid = self.pids.allocate()
            self.next_serial, self.serial_end = self.pids.take(INLINE_PID_BLOCK)
        exchange.pid = pid
        process = self.begin(pid, component, action, exchange)
        context = self.ready(self.engine, limit)
        keep = False
        try:
            if uses_wasi:
                problem = set_wasi(context, component)
                if problem:
                    return self._ended(process, ExitReport(ExitReason.CRASHED, problem))
            budget_ms = min(exchange.budget_ms, cpu_ms)
            self.deadline(context, budget_ms, self.host.ticks)
            trap = self.trap
            trap_ref = self.trap_ref
            self.thread = _get_ident()
            self.current = process
            error = _instantiate(pre, context, self.instance_ref, trap_ref)
            if error or trap:
                return self._ended(
                    process,
                    failure(process, _error_at(error), self.take_trap(), "instantiate"),
                )
            if has_initialize:
                failed = self._initialize(process, budget_ms)
                if failed is not None:
                    return failed
            if not _export_get(context, self.instance_ref, name, length, self.item_ref):
                return self._ended(
                    process, ExitReport(ExitReason.CRASHED, f"entry {action} vanished")
                )
            error = _call(context, self.func_ref, self.values, _ONE, trap_ref)
            if error or trap:
                return self._ended(
                    process,
                    self._failure(process, _error_at(error), self.take_trap(), budget_ms),
                )
            if results and self.result[0]:
                return self._ended(
                    process, ExitReport(ExitReason.CRASHED, f"{action} returned {self.result[0]}")
                )
            self.spawned += 1
            keep = self.reusable(process)
            return _NORMAL
        finally:
            self.current = None
            process.exchange = None
            if not keep:
                self.reset()
                self.clean()

    def _initialize(self, process: Process, budget_ms: int) -> ExitReport | None:
        """Run the fresh instance's ``_initialize``; None when it went well."""
        context = self.context
        if _export_get(context, self.instance_ref, *_INITIALIZE, self.item_ref):
            error = _call(context, self.func_ref, self.values, _ONE, self.trap_ref)
            if error or self.trap:
                return self._ended(
                    process,
                    self._failure(process, _error_at(error), self.take_trap(), budget_ms),
                )
        return None

    def _failure(self, process: Process, error: Any, trap: Any, budget_ms: int) -> ExitReport:
        """A trap of an inline handler; an interrupt means its budget ran out."""
        if trap:
            code = ctypes.c_uint8()
            if ffi.wasmtime_trap_code(trap, ctypes.byref(code)) and (
                code.value == wasmtime.TrapCode.INTERRUPT.value
            ):
                process.cpu_exceeded = True
        report = failure(process, error, trap, process.entry)
        if process.cpu_exceeded:
            return ExitReport(
                ExitReason.CRASHED,
                f"cpu limit: ran over its {budget_ms} ms budget",
                report.backtrace,
            )
        return report

    def _ended(self, process: Process, report: ExitReport) -> ExitReport:
        """Count and log an inline handler's abnormal end."""
        self.spawned += 1
        self.exits[report.reason] = self.exits.get(report.reason, 0) + 1
        log_exit(self.log, process, report, self.exit_lines)
        return report

    # ── the reused record ───────────────────────────────────────────────

    def begin(self, pid: int, component: LoadedComponent, action: str, exchange: Any) -> Process:
        """The reused process record, set for a new request.

        Its failure fields (crash, exit code, CPU flag, memory figure) are
        cleared by ``clean`` after a request that failed, the only kind
        that sets them.
        """
        process = self.process
        process.pid = pid
        process.component = component
        process.entry = action
        process.exchange = exchange
        process.memory = None
        return process

    def clean(self) -> None:
        """Clear what a failed request left on the reused process record."""
        process = self.process
        process.memory_bytes = 0
        process.crash = ""
        process.exit_code = None
        process.cpu_exceeded = False

    # ── the shared store ────────────────────────────────────────────────

    def ready(self, engine: Any, limit: int) -> Any:
        """The store context for the next instance (a new store when needed)."""
        if self.store is None or self.limit != limit:
            self.reset()
            self.open(engine, limit)
        self.uses += 1
        return self.context

    def deadline(self, context: Any, budget_ms: int, tick: int) -> None:
        """Set the epoch deadline for a budget, unless it is already set.

        The deadline counts from the epoch when it is set, so within one
        store, budget and tick (``WasmHost.ticks``) it is the same value
        and is not set again. The ticker advances the epoch and ``ticks``
        one after the other: an instance may start one tick later than the
        tick it was read at, so the deadline has one tick of slack.
        """
        if budget_ms == self.deadline_budget and tick == self.deadline_tick:
            return
        ticks = self.deadlines.get(budget_ms)
        if ticks is None:
            ticks = self.deadlines[budget_ms] = ctypes.c_uint64(budget_ms // EPOCH_TICK_MS + 2)
        _set_deadline(context, ticks)
        self.deadline_budget = budget_ms
        self.deadline_tick = tick

    def reusable(self, process: Process) -> bool:
        """Whether the store may take another instance after ``process`` ended well."""
        memory = process.memory
        return (
            self.uses < INLINE_STORE_INSTANCES
            and memory is not None
            and memory.size() <= INLINE_REUSE_MEMORY_BYTES
        )

    def open(self, engine: Any, limit: int) -> None:
        """A new store whose memories may grow to ``limit`` bytes."""
        self.store = capi.store_new(engine, None, capi.NULL_FINALIZER)
        self.context = capi.store_context(self.store)
        self.memory = GuestMemory(self.context, self.memory_item.of.memory)
        capi.store_limiter(
            self.store,
            limit,
            MAX_TABLE_ELEMENTS,
            INLINE_STORE_INSTANCES,
            INLINE_STORE_INSTANCES,
            INLINE_STORE_INSTANCES,
        )
        self.limit = limit
        self.uses = 0

    def take_trap(self) -> Any:
        """The trap the last call left (the caller owns it); the slot is cleared."""
        taken = ctypes.cast(self.trap, ctypes.POINTER(ffi.wasm_trap_t))
        ctypes.memset(ctypes.addressof(self.trap), 0, ctypes.sizeof(self.trap))
        return taken

    def use_engine(self, engine: Any) -> None:
        """Make the next instances in ``engine`` (a raw pointer): the pool was made again."""
        self.reset()
        self.engine = engine

    def reset(self) -> None:
        """Drop the store and every instance in it."""
        if self.store is not None:
            capi.store_delete(self.store)
        self.store = None
        self.context = None
        self.deadline_budget = -1
