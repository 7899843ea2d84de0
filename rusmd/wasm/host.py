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

``WasmHost`` assembles the worker's wasm host from parts, each a module
of its own, along a one-way chain (none of them imports this module;
those that call back into the host take it as a ``Protocol`` of what
they use): the process records (``process``), pid leases (``pids``),
loading components (``components``), the process table and the
processes' life (``process_table``: spawn, enter, finish, kill, list),
processes on guest threads (``guest_threads``), the epoch ticker and
callback (``epochs``), the inline HTTP path (``inline``), the host
callbacks (``callbacks``, ``calls``, ``serve_calls``, ``kv_calls``), the
scheduler (``fibers``, built on ``fiber``, ``fiber_callbacks`` and
``fiber_recv``) and its async host functions (``fiber_calls``,
``fiber_writes``). What is left here is the wiring (``__init__``),
loading (``load``), and the host's own teardown (``shutdown``).

The hot paths use wasmtime's C API through ``wasmtime._ffi`` directly
(unchecked calls, raw host callbacks): that is 10-20x cheaper per call
than wasmtime-py's wrappers (see docs/benchmarks.md). Host callbacks
never raise: an error becomes a trap for the calling process only.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import uvloop

from rusmd.abi import ExitReason
from rusmd.actors.table import ActorTable
from rusmd.channel import ComponentImage, ProcessExit
from rusmd.config.environment import Environment
from rusmd.config.model import Manifest
from rusmd.log import Logger
from rusmd.wasm.callbacks import CoreCalls, host_callbacks
from rusmd.wasm.calls import ActorCalls
from rusmd.wasm.capacity import largest_heap_bytes, manifest_layout, plan, read_kernel
from rusmd.wasm.components import ComponentLoader
from rusmd.wasm.engine import (
    PROCESS_KEEP_RESIDENT_BYTES,
    EngineInfo,
    dirty_page_scan,
    inline_keep_resident,
    worker_engine,
)
from rusmd.wasm.epochs import EpochCallback, EpochClock
from rusmd.wasm.fiber_calls import FiberCalls
from rusmd.wasm.fiber_writes import ServingWrites
from rusmd.wasm.fibers import FiberScheduler
from rusmd.wasm.guest_threads import GUEST_THREAD_STACK_BYTES
from rusmd.wasm.inline import INLINE_STORE_INSTANCES, InlinePath
from rusmd.wasm.kv_calls import KvCalls
from rusmd.wasm.linking import LinkerSet
from rusmd.wasm.pids import PidLeases
from rusmd.wasm.process import ExitLines, LoadedComponent, Process
from rusmd.wasm.process_table import ProcessTable
from rusmd.wasm.runners import RunnerPool
from rusmd.wasm.serve_calls import ServeCalls

if TYPE_CHECKING:
    from rusmd.store.committer import GroupCommitter
    from rusmd.store.kv import KvStore


class WasmHost(ProcessTable, EpochClock):
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
        self.exit_lines = ExitLines()
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
        self.inline = InlinePath(
            self,
            self.inline_engine_info.engine.ptr(),
            self.pids,
            slot,
            log,
            exit_lines=self.exit_lines,
        )
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
        self._epoch_callback = EpochCallback(self._on_epoch)
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

    def log_held_exits(self, *, everything: bool = False) -> None:
        """The ``log: suppressed N exit lines`` lines now due (all held, with ``everything``).

        The worker's heartbeat calls it; ``shutdown`` with ``everything``.
        """
        for component, count in self.exit_lines.summaries(everything=everything):
            self.log.warn(self.exit_lines.summary_line(component, count))

    def shutdown(self, timeout_s: float) -> None:
        """End every process (reason shutdown), waiting up to ``timeout_s``."""
        self._stopping.set()
        for pid in list(self.processes):
            self.kill(pid, ExitReason.SHUTDOWN)
        deadline = time.monotonic() + timeout_s
        while self.processes and time.monotonic() < deadline:
            time.sleep(0.01)
        self.log_held_exits(everything=True)
        self.runners.close()
        if not self.processes:
            self._halted.set()
            if self._own_loop is not None:
                self._own_loop.stop()


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
