"""The wasm host of one worker: components, processes, CPU and memory limits.

Runs in: worker. Control methods (``load``, ``spawn``, ``kill``,
``list``, ``info``) are called on the worker's event-loop thread
(``shutdown`` from a thread beside it, while the loop ends the
processes). Every process runs as a fiber on the loop thread
(``fibers``), except one whose module imports a WASI call that blocks
its thread: that one runs on a guest thread (``runners``). The ``rusm``
host functions run on the thread of the process that calls them.

A process is one wasmtime store plus one instance of its component's
module, created from a prepared ``InstancePre``. It runs its entry
export (``run``, else ``_start``) and exits with a reason:

- ``normal``: the entry returned, or exit code 0;
- ``crashed``: a trap, running out of memory, a bad pointer handed to a
  host function, its CPU budget, a non-zero exit code;
- ``killed``: ``rusmctl kill`` or another process's ``rusm.kill``;
- ``shutdown``: the worker is stopping.

Limits per process: a store limiter caps its memory at the profile's
``max-memory-mb`` and its instances, memories and tables at one each.
CPU: one ticker thread per worker advances the epochs of its engines
(the processes' and the inline pool's, ``engine``) every
``EPOCH_TICK_MS``; each store's epoch callback runs once per tick while
its guest runs, counts the ticks of the current call against
``max-cpu-ms`` (on a fiber, the ticks it was seen running since it last
waited; on a thread, the ticks since), refreshes the memory figure
``rusmctl list`` shows, makes a fiber yield the loop, and ends the
process when it is killed. A fiber parked in a host call is ended by a
kill at once (its future dropped); a thread blocked in one is woken.

``WasmHost`` keeps the process table and the processes' life (spawn,
run, finish, kill, the epoch ticker) and assembles the rest, each a
module of its own: pid leases (``pids``), loading components
(``components``), the inline HTTP path (``inline``), the host functions
(``callbacks``, ``calls``, ``serve_calls``, ``kv_calls``), the scheduler
(``fibers``) and its async host functions (``fiber_calls``,
``fiber_writes``). The parts that call back into the host take it as a
``Protocol`` of what they use; none of them imports this module.

The hot paths use wasmtime's C API through ``wasmtime._ffi`` directly
(unchecked calls, raw host callbacks): that is 10-20x cheaper per call
than wasmtime-py's wrappers (see docs/benchmarks.md). Host callbacks
never raise: an error becomes a trap for the calling process only.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import os
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import uvloop
from wasmtime import _bindings
from wasmtime import _ffi as ffi

from rusmd.abi import ErrorCode, ExitReason, slot_of
from rusmd.actors.table import ActorTable
from rusmd.channel import ComponentImage, ProcessExit
from rusmd.config.environment import Environment
from rusmd.config.model import (
    BUILTIN_CAPABILITIES,
    BuiltinCapability,
    Capability,
    LogLevel,
    Manifest,
)
from rusmd.errors import SpawnError
from rusmd.log import Logger
from rusmd.wasm import capi
from rusmd.wasm.callbacks import CoreCalls, host_callbacks
from rusmd.wasm.calls import ActorCalls
from rusmd.wasm.capacity import largest_heap_bytes, manifest_layout, plan, read_kernel
from rusmd.wasm.capi import NULL_FINALIZER, export, pid_of
from rusmd.wasm.components import ComponentLoader, set_wasi
from rusmd.wasm.engine import (
    MAX_TABLE_ELEMENTS,
    PROCESS_KEEP_RESIDENT_BYTES,
    EngineInfo,
    dirty_page_scan,
    inline_keep_resident,
    worker_engine,
)
from rusmd.wasm.fiber_calls import FiberCalls
from rusmd.wasm.fiber_writes import ServingWrites
from rusmd.wasm.fibers import FiberScheduler
from rusmd.wasm.inline import INLINE_STORE_INSTANCES, InlinePath
from rusmd.wasm.kv_calls import KvCalls
from rusmd.wasm.linking import LinkerSet, entrypoint_results
from rusmd.wasm.memory import GuestMemory
from rusmd.wasm.pids import PidLeases
from rusmd.wasm.process import (
    ExitReport,
    LoadedComponent,
    Native,
    Process,
    ProcessState,
    log_exit,
)
from rusmd.wasm.runners import RunnerPool
from rusmd.wasm.serve_calls import ServeCalls
from rusmd.wasm.settings import EPOCH_TICK_MS
from rusmd.wasm.traps import failure, new_error

if TYPE_CHECKING:
    from rusmd.store.committer import GroupCommitter
    from rusmd.store.kv import KvStore

# Guest threads need far more stack than wasm frames may use (512 KiB):
# a host thread that runs out below the wasm limit aborts the process.
GUEST_THREAD_STACK_BYTES = 16 << 20

_EpochCallback = _bindings._wasmtime_store_epoch_deadline_callback.argtypes[1]
_N = TypeVar("_N", bound=Native)


class WasmHost:
    """Components and processes of one worker.

    Args:
        manifest: The resolved manifest.
        slot: This worker's slot (the last three digits of its pids).
        log: A logger safe to call from any thread.
        environment: Env values for granted keys (process env, then .env).
        request_lease: Called (from any thread) when pid serials run low.
        max_processes: Processes alive at once on this worker. Optional;
            defaults to the pool's slots.
        actors: The worker's actor table; a local-only one when omitted
            (in-process use: no mesh, no main process).
        on_watched_exit: Told (any thread) when a watched process exits.
        pool_slots: Instance slots of the pooling allocator. Optional;
            defaults to ``[node].max-processes``; either way no more than
            ``vm.max_map_count`` and the address space back
            (``capacity.plan``, which says why in a warning).
        loop: The worker's event loop; the host must then be made on its
            thread. Optional: without one (in-process use: tests,
            benchmarks) the host starts a loop of its own on a thread named
            ``rusm-loop``, and its fibers run there; ``shutdown`` stops it.
    """

    def __init__(
        self,
        manifest: Manifest,
        slot: int,
        log: Logger,
        environment: Environment,
        *,
        request_lease: Callable[[], None],
        max_processes: int | None = None,
        actors: ActorTable | None = None,
        on_watched_exit: Callable[[ProcessExit], None] | None = None,
        pool_slots: int | None = None,
        loop: Any = None,
    ) -> None:
        self.manifest = manifest
        self.slot = slot
        self.log = log
        self._size_engines(pool_slots or max_processes or manifest.node.max_processes)
        self.max_processes = max_processes or self.capacity.slots
        self.components: dict[str, LoadedComponent] = {}
        self.loaded = False  # the first ``load`` has run: a missing component is not coming
        self.processes: dict[int, Process] = {}
        self.spawned = 0
        self.exits: dict[str, int] = {}
        self._lock = threading.Lock()
        self.pids = PidLeases(slot, request_lease)
        self.ticks = 0
        self._stopping = threading.Event()
        # Set once shutdown is over: the ticker runs until then, since the
        # processes being stopped need its ticks to notice (a guest between
        # host calls is only interrupted at an epoch).
        self._halted = threading.Event()
        self._own_loop: OwnLoop | None = None
        if loop is None:
            self._own_loop = OwnLoop()
            loop = self._own_loop.loop
        self.loop = loop
        self.actors = actors or _local_table(slot, loop)
        self.actors.info_of = self.local_info
        self.on_watched_exit = on_watched_exit
        # The node store (set by the worker after it opened it), or why not.
        self.store: KvStore | None = None
        self.committer: GroupCommitter | None = None
        self.store_error = ""
        self.inline = InlinePath(self, self.inline_engine_info.engine.ptr(), self.pids, slot, log)
        self.serve_calls = ServeCalls(log)
        threading.stack_size(GUEST_THREAD_STACK_BYTES)
        # Only for processes whose module imports a WASI call that blocks.
        self.runners = RunnerPool(self.max_processes)
        thread = self._own_loop.thread_id if self._own_loop is not None else None
        self.fibers = FiberScheduler(self, loop, thread)
        actor_calls = ActorCalls(self)
        kv_calls = KvCalls(self)
        fiber_calls = FiberCalls(self.fibers, self, actor_calls, kv_calls)
        self.fibers.define(fiber_calls.bodies())
        self.fibers.define_sync(fiber_calls.sync_bodies())
        self.fibers.define(ServingWrites(self.fibers, self.serve_calls).bodies())
        callbacks = host_callbacks(
            {
                **CoreCalls(self).implementations(),
                **actor_calls.implementations(),
                **self.serve_calls.implementations(),
                **kv_calls.implementations(),
            },
            self.processes,
            self.inline,
            raw=ServeCalls.RAW,
            fibers=self.fibers,
        )
        # wasmtime calls them by address: they live as long as the host.
        self._callbacks = callbacks
        self._epoch_callback = _EpochCallback(self._on_epoch)
        self.inline_linkers = LinkerSet(self.inline_engine_info.engine, callbacks)
        self.loader = ComponentLoader(
            manifest,
            environment,
            log,
            engine=self.engine,
            linkers=LinkerSet(
                self.engine, callbacks, self.fibers.callbacks, self.fibers.sync_callbacks
            ),
        )
        self._ticker = threading.Thread(target=self._tick, name="epoch", daemon=True)
        self._ticker.start()
        if self.capacity.warning:
            self.log.warn(f"limits: {self.capacity.warning}")
        if not self.engine_info.pooling:
            self.log.warn(
                f"worker {slot}: pooling allocator unavailable, using on-demand allocation "
                f"({self.engine_info.fallback_reason})"
            )

    def _size_engines(self, wanted: int) -> None:
        """The processes' pool (``wanted`` slots, as the kernel backs) and the inline pool."""
        heap_bytes = largest_heap_bytes(self.manifest)
        layout = manifest_layout(self.manifest)
        self.capacity = plan(self.slot, wanted, layout, heap_bytes, read_kernel())
        self.engine_info: EngineInfo = worker_engine(
            heap_bytes, self.capacity.slots, PROCESS_KEEP_RESIDENT_BYTES, layout
        )
        self.engine = self.engine_info.engine
        # Inline instances come from a small pool of their own, whose freed
        # slots stay resident: its few slots serve request after request,
        # while a process's slot gives its pages back when the process ends.
        # How much each keeps is sized again when components load (``load``).
        self._heap_bytes = heap_bytes
        self._layout = layout
        self.dirty_scan = dirty_page_scan()
        self.inline_keep_resident = inline_keep_resident((), scan=self.dirty_scan)
        self.inline_engine_info = worker_engine(
            heap_bytes, INLINE_STORE_INSTANCES, self.inline_keep_resident, layout
        )

    # ── components and pids ─────────────────────────────────────────────

    def load(self, images: list[ComponentImage]) -> None:
        """(Re)load components from the compile step's images (loop thread).

        Without the kernel's dirty-page scan the inline pool keeps resident
        what its largest inline module starts with (``inline_keep_resident``):
        when that changes, the pool is made again, between two requests
        (inline requests run on this thread too).
        """
        components = self.loader.load(images)
        keep = inline_keep_resident(
            (c.shape.initial_memory_bytes for c in components.values() if c.inline and c.shape),
            scan=self.dirty_scan,
        )
        if keep != self.inline_keep_resident:
            self.inline_keep_resident = keep
            self.inline_engine_info = worker_engine(
                self._heap_bytes, INLINE_STORE_INSTANCES, keep, self._layout
            )
            self.inline_linkers = LinkerSet(self.inline_engine_info.engine, self._callbacks)
            self.inline.use_engine(self.inline_engine_info.engine.ptr())
            self.log.debug(f"worker {self.slot}: inline slots keep {keep >> 10} KiB resident")
        self.loader.load_inline(
            components, images, self.inline_engine_info.engine, self.inline_linkers
        )
        self.components = components
        self.loaded = True

    def add_lease(self, start: int, end: int) -> None:
        """Pid serials ``[start, end)`` are ours (from the main process)."""
        self.pids.add(start, end)

    # ── processes ───────────────────────────────────────────────────────

    def spawn(
        self,
        name: str,
        parent: int | None = None,
        *,
        link: bool = False,
        watched: bool = False,
        entry: str = "",
        exchange: Any = None,
        on_exit: Callable[[ExitReport], None] | None = None,
        quiet: bool = False,
    ) -> int:
        """Start a process of component ``name``; return its pid.

        Args:
            name: The component.
            parent: The spawning process, if any.
            link: Link it to ``parent`` (a local process) before it runs.
            watched: Tell ``on_watched_exit`` when it exits (residents).
            entry: Run this export instead of the entry (a route's action).
            exchange: The request or connection the process serves.
            on_exit: Called (guest thread) with its exit report.
            quiet: Keep its spawn and normal exit out of the log.

        It runs as a fiber on the loop thread, unless its module imports a
        WASI call that blocks (``ModuleShape.fiber``): then on a guest thread.

        Raises:
            SpawnError: No such component, it cannot run, or the worker is full.
        """
        if self._stopping.is_set():
            raise SpawnError(f"worker {self.slot} is stopping", ErrorCode.UNAVAILABLE)
        component = self.components.get(name)
        if component is None:
            if name in self.manifest.components:
                raise SpawnError(f"component {name} is still compiling", ErrorCode.UNAVAILABLE)
            raise SpawnError(f"no component named {name!r}", ErrorCode.NOTFOUND)
        if component.error:
            raise SpawnError(component.error, ErrorCode.UNAVAILABLE)
        if not entry and component.shape is not None and not component.shape.entry:
            raise SpawnError(
                f"component {name} exports neither 'run' nor '_start': it can serve "
                "routes but not run as a process",
                ErrorCode.UNAVAILABLE,
            )
        self._check_room()
        process = Process(
            pid=self.pids.allocate(),
            component=component,
            parent=parent,
            started_at=time.monotonic(),
            started_wall=time.time(),
            watched=watched,
            entry=entry,
            exchange=exchange,
            on_exit=on_exit,
            quiet=quiet,
        )
        self._enter(process, link_to=parent if link else None)
        self._begin(process)
        return process.pid

    def spawn_module(
        self,
        name: str,
        image: ComponentImage,
        *,
        profile: Capability,
        entry: str,
        entry_args: list[tuple[str, int | float]],
        inbox: list[bytes],
    ) -> int:
        """Start an ad-hoc process (``rusmctl spawn --module``); return its pid.

        The module is loaded and its imports checked under ``profile`` as a
        manifest component's are; ``entry`` must take exactly the wasm types
        of ``entry_args``. ``inbox`` is in its mailbox, from pid 0, before
        it runs (``docs/abi.md``, "Ad-hoc processes").

        Raises:
            SpawnError: It cannot load, is denied an import, its entrypoint
                does not match, or the worker is full; nothing was started.
        """
        if self._stopping.is_set():
            raise SpawnError(f"worker {self.slot} is stopping", ErrorCode.UNAVAILABLE)
        component = self.loader.load_module(name, profile, image)
        if component.error or component.module is None:
            raise SpawnError(component.error or f"{name} did not load", ErrorCode.UNAVAILABLE)
        wanted = [kind for kind, _ in entry_args]
        results = entrypoint_results(name, component.module, entry, wanted)
        if isinstance(results, str):
            raise SpawnError(results, ErrorCode.INVALID)
        component.actions[entry] = results
        self._check_room()
        process = Process(
            pid=self.pids.allocate(),
            component=component,
            parent=None,
            started_at=time.monotonic(),
            started_wall=time.time(),
            entry=entry,
            entry_args=tuple(entry_args),
        )
        self._enter(process, link_to=None)
        for data in inbox:
            self.actors.send(0, process.pid, data)
        self._begin(process)
        return process.pid

    def _check_room(self) -> None:
        if len(self.processes) >= self.max_processes:
            raise SpawnError(
                f"worker {self.slot} is at its process limit ({self.max_processes}; "
                "[node].max-processes sizes it)",
                ErrorCode.LIMIT,
            )

    def _begin(self, process: Process) -> None:
        """Run ``process`` (in the table already): as a fiber, else on a guest thread."""
        if not process.quiet and self.log.enabled(LogLevel.DEBUG):
            self.log.debug(f"spawn {process.label} {process.component.capability.grants()}")
        if process.component.fiber_pre_ptr:
            self.fibers.start(process)
        else:
            self.runners.submit(lambda: self._run(process))

    def _enter(
        self,
        process: Process,
        link_to: int | None,
        native: Callable[[Any], None] | None = None,
    ) -> None:
        """Make ``process`` known: in the process table and as an actor."""

        def stop(reason: ExitReason, detail: str) -> None:
            if not process.stop_reason:
                process.stop_reason = reason
                process.stop_detail = detail
            if process.native is not None:
                process.native.stopped(reason, detail)

        process.actor = self.actors.add(process.pid, process.label, stop, native)
        self.processes[process.pid] = process
        with self._lock:  # spawns come from the loop thread and guest threads
            self.spawned += 1
        if link_to is not None:
            with self.actors.lock:
                parent = self.actors.get(link_to)
                if parent is None:
                    self.actors.kill(
                        process.pid, ExitReason.NOPROC, "its parent exited before it started"
                    )
                else:
                    parent.links.add(process.pid)
                    process.actor.links.add(link_to)

    def start_native(self, kind: str, parent: int, make: Callable[[int], _N]) -> tuple[int, _N]:
        """Start a host-native process (``make(pid)`` builds it) linked to ``parent``."""
        if self._stopping.is_set():
            raise SpawnError(f"worker {self.slot} is stopping", ErrorCode.UNAVAILABLE)
        pid = self.pids.allocate()
        native = make(pid)
        process = Process(
            pid=pid,
            component=LoadedComponent(
                name=kind,
                capability=BUILTIN_CAPABILITIES[BuiltinCapability.SANDBOXED],
                grants=frozenset(),
            ),
            parent=parent,
            started_at=time.monotonic(),
            started_wall=time.time(),
            state=ProcessState.RUNNING,
            native=native,
        )
        self._enter(process, link_to=parent, native=native.on_signal)
        assert process.actor is not None
        process.actor.trap_exit = True
        self.log.debug(f"spawn {process.label} native")
        return pid, native

    def is_alive(self, pid: int) -> bool:
        """Is ``pid`` alive? Local pids at once; others by asking their worker."""
        if slot_of(pid) == self.slot:
            return pid in self.processes
        return self.actors.probe(pid, want_info=False)[0]

    def exit_native(self, pid: int, reason: ExitReason, detail: str = "") -> None:
        """A host-native process (a supervisor) ends with ``reason``."""
        process = self.processes.pop(pid, None)
        if process is None:
            return
        process.state = ProcessState.EXITING
        self.actors.remove(pid, reason, detail)
        with self._lock:
            self.exits[reason] = self.exits.get(reason, 0) + 1
        log_exit(self.log, process, ExitReport(reason, detail))
        self._tell_main(process, reason, detail)

    def _tell_main(self, process: Process, reason: ExitReason, detail: str) -> None:
        if process.watched and self.on_watched_exit is not None:
            self.on_watched_exit(
                ProcessExit(
                    pid=process.pid,
                    component=process.component.name,
                    reason=reason,
                    detail=detail,
                )
            )

    def kill(self, pid: int, reason: ExitReason = ExitReason.KILLED, detail: str = "") -> bool:
        """Ask process ``pid`` to end with ``reason``; False if there is none."""
        if pid not in self.processes:
            return False
        return self.actors.kill(pid, reason, detail)

    def list(self) -> list[dict[str, Any]]:
        """One row per live process."""
        now = time.monotonic()
        return [self._row(p, now) for p in list(self.processes.values())]

    def info(self, pid: int) -> dict[str, Any] | None:
        """One process in detail, or None (other workers' pids by asking them)."""
        if slot_of(pid) != self.slot:
            alive, payload = self.actors.probe(pid, want_info=True)
            if not alive:
                return None
            try:
                row: dict[str, Any] = json.loads(payload)
            except ValueError:
                return None
            return row
        return self.local_info(pid)

    def local_info(self, pid: int) -> dict[str, Any] | None:
        """One process of this worker in detail, or None."""
        process = self.processes.get(pid)
        if process is None:
            return None
        row = self._row(process, time.monotonic())
        profile = process.component.capability
        shape = process.component.shape
        row.update(
            {
                "capability": profile.name,
                "grants": profile.grants(),
                "max_memory_bytes": profile.max_memory_mb << 20,
                "max_cpu_ms": profile.max_cpu_ms,
                "entry": shape.entry if shape else "",
                "parent": process.parent,
                "started": process.started_wall,
            }
        )
        if process.native is not None:
            row.update(process.native.describe())
        return row

    def stats(self) -> dict[str, Any]:
        """Counts for ``rusmctl status`` (inline requests count as processes)."""
        exits = dict(self.exits)
        for reason, count in self.inline.exits.items():
            exits[reason] = exits.get(reason, 0) + count
        return {
            "processes": len(self.processes),
            "spawned": self.spawned + self.inline.spawned,
            "exits": exits,
            "pooling": self.engine_info.pooling,
            "inline_keep_resident_bytes": self.inline_keep_resident,
        }

    def shutdown(self, timeout_s: float) -> None:
        """End every process (reason shutdown), waiting up to ``timeout_s``."""
        self._stopping.set()
        for pid in list(self.processes):
            self.kill(pid, ExitReason.SHUTDOWN)
        deadline = time.monotonic() + timeout_s
        while self.processes and time.monotonic() < deadline:
            time.sleep(0.01)
        self.runners.close()
        if not self.processes:
            self._halted.set()
            if self._own_loop is not None:
                self._own_loop.stop()

    def _row(self, process: Process, now: float) -> dict[str, Any]:
        row = {
            "pid": process.pid,
            "component": process.component.name,
            "label": process.label,
            "worker": self.slot,
            "state": str(process.state),
            "runs": "fiber" if process.fiber is not None else "thread",
            "memory_bytes": process.memory_bytes,
            "cpu_ms": round(process.cpu_ms(), 3),
            "polls": process.polls,
            "uptime_s": round(now - process.started_at, 3),
        }
        row.update(self.actors.describe(process.pid))
        return row

    # ── the guest thread ────────────────────────────────────────────────

    def _run(self, process: Process) -> None:
        report = ExitReport(ExitReason.CRASHED, "host error")
        store: Any = None
        try:
            report, store = self._execute(process)
        except Exception as exc:  # a host bug must cost one process, not the worker
            report = ExitReport(ExitReason.CRASHED, f"host error: {type(exc).__name__}: {exc}")
        finally:
            self.finish(process, report, store)

    def finish(self, process: Process, report: ExitReport, store: Any) -> None:
        """A process ended (its guest thread, or the I/O thread for a fiber)."""
        process.state = ProcessState.EXITING
        if store is not None:
            capi.store_delete(store)
        self.processes.pop(process.pid, None)
        self.actors.remove(process.pid, report.reason, report.detail)
        with self._lock:
            self.exits[report.reason] = self.exits.get(report.reason, 0) + 1
        log_exit(self.log, process, report)
        self._tell_main(process, report.reason, report.detail)
        if process.on_exit is not None:
            process.on_exit(report)

    def new_process_store(self, process: Process) -> tuple[Any, ExitReport | None]:
        """A process's own store (limits, WASI, epoch callback); (store or None, why not)."""
        component = process.component
        for preopen in component.capability.preopen:
            if not os.path.isdir(preopen.host):
                return None, ExitReport(
                    ExitReason.CRASHED,
                    f"preopen {preopen.guest}: host directory {preopen.host} does not exist",
                )
        if process.stop_reason:
            return None, ExitReport(process.stop_reason, process.stop_detail)
        assert component.pre is not None and component.shape is not None
        store = capi.store_new(self.engine.ptr(), ctypes.c_void_p(process.pid), NULL_FINALIZER)
        context = capi.store_context(store)
        capi.store_limiter(
            store, component.capability.max_memory_mb << 20, MAX_TABLE_ELEMENTS, 1, 1, 1
        )
        if component.shape.uses_wasi:
            problem = set_wasi(context, component)
            if problem:
                return store, ExitReport(ExitReason.CRASHED, problem)
        capi.store_epoch_deadline_callback(store, self._epoch_callback, None, NULL_FINALIZER)
        capi.context_set_epoch_deadline(context, 1)
        return store, None

    def _execute(self, process: Process) -> tuple[ExitReport, Any]:
        component = process.component
        store, problem = self.new_process_store(process)
        if problem is not None:
            return problem, store
        assert component.pre is not None and component.shape is not None
        context = capi.store_context(store)
        process.call_started_tick = self.ticks
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
        process.call_started_tick = self.ticks
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

    # ── epoch ticks ─────────────────────────────────────────────────────

    def _tick(self) -> None:
        interval = EPOCH_TICK_MS / 1000
        engine = self.engine.ptr()
        while not self._halted.wait(interval):
            self.ticks += 1
            capi.engine_increment_epoch(engine)
            # Read each tick: a load may have made the inline pool again.
            capi.engine_increment_epoch(self.inline.engine)
            self.runners.nudge()

    def _on_epoch(self, context: Any, _data: Any, delta: Any, kind: Any) -> int:
        """Runs once per tick while a process's wasm runs (its thread, or the loop's)."""
        try:
            process = self.processes.get(pid_of(context))
            fiber = False
            if process is not None:
                fiber = process.fiber is not None
                if process.memory is not None:
                    process.memory_bytes = process.memory.size()
                if process.stop_reason:
                    return new_error(process.stop_reason)
                process.busy_ticks += 1
                if fiber:
                    # Ticks it was seen running since it last waited.
                    used_ms = process.busy_ticks * EPOCH_TICK_MS
                else:
                    process.cpu_ticks += 1
                    used_ms = (self.ticks - process.call_started_tick) * EPOCH_TICK_MS
                if used_ms > process.component.capability.max_cpu_ms:
                    process.cpu_exceeded = True
                    return new_error("cpu limit")
            delta[0] = 1
            # A fiber gives the loop back every tick (WASMTIME_UPDATE_DEADLINE_YIELD).
            kind[0] = 1 if fiber else 0
            return 0
        except BaseException:
            return new_error("host error in epoch callback")


def _local_table(slot: int, loop: asyncio.AbstractEventLoop) -> ActorTable:
    """An actor table for a host without a worker around it (in-process use)."""

    def call_soon(job: Callable[..., None], *args: Any) -> None:
        loop.call_soon_threadsafe(job, *args)

    def call_later(delay_s: float, job: Callable[[], None]) -> None:
        loop.call_soon_threadsafe(loop.call_later, delay_s, job)

    return ActorTable(
        slot,
        remote=lambda _slot, _sig: False,
        to_main=lambda _message: None,
        call_soon=call_soon,
        call_later=call_later,
    )


class OwnLoop:
    """The event loop of a host made without one, running on a thread of its own."""

    def __init__(self) -> None:
        self.loop = uvloop.new_event_loop()  # as a worker's
        started = threading.Event()
        self.thread_id = 0

        def run() -> None:
            self.thread_id = threading.get_ident()
            asyncio.set_event_loop(self.loop)
            self.loop.call_soon(started.set)
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, name="rusm-loop", daemon=True)
        self.thread.start()
        started.wait()

    def stop(self) -> None:
        """Stop the loop (its thread then ends); callbacks queued after it are dropped."""
        if not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5.0)
