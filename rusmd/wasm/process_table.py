"""The host's process table: spawn, enter, finish, kill and describe processes.

Runs in: worker. ``spawn``, ``start_native``, ``kill``, ``list`` and
``info`` on the loop thread (spawns also from guest threads); ``finish``
on the thread the process ended on (the loop thread for a fiber).

``ProcessTable`` is a part of ``WasmHost`` (``host``), which assembles
what it uses: a process is entered in the table and in the actor table
(``_enter``), started as a fiber (``fibers``) or on a guest thread
(``guest_threads``), and finished once it ends: its store deleted, its
actor removed (its links and monitors fire), its exit counted, logged
and told to the main process if it is watched. Limits: the worker's
``max_processes``; a full worker answers ``spawn`` with LIMIT.
"""

from __future__ import annotations

import ctypes
import json
import os
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from rusmd.abi import ErrorCode, ExitReason, slot_of
from rusmd.actors.table import ActorTable
from rusmd.channel import ComponentImage, ProcessExit
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
from rusmd.wasm.capi import NULL_FINALIZER
from rusmd.wasm.components import ComponentLoader, set_wasi
from rusmd.wasm.engine import MAX_TABLE_ELEMENTS, EngineInfo
from rusmd.wasm.fibers import FiberScheduler
from rusmd.wasm.guest_threads import run_on_thread
from rusmd.wasm.inline import InlinePath
from rusmd.wasm.linking import entrypoint_results
from rusmd.wasm.pids import PidLeases
from rusmd.wasm.process import (
    ExitLines,
    ExitReport,
    LoadedComponent,
    Native,
    Process,
    ProcessState,
    log_exit,
)
from rusmd.wasm.runners import RunnerPool

_N = TypeVar("_N", bound=Native)


class ProcessTable:
    """The host's processes and their life (a part of ``WasmHost``)."""

    manifest: Manifest
    slot: int
    log: Logger
    engine: Any  # the processes' wasmtime Engine
    engine_info: EngineInfo
    components: dict[str, LoadedComponent]
    processes: dict[int, Process]
    max_processes: int
    spawned: int
    exits: dict[str, int]
    exit_lines: ExitLines
    pids: PidLeases
    ticks: int
    actors: ActorTable
    fibers: FiberScheduler
    runners: RunnerPool
    inline: InlinePath
    inline_keep_resident: int
    loader: ComponentLoader
    on_watched_exit: Callable[[ProcessExit], None] | None
    _lock: threading.Lock
    _stopping: threading.Event
    _epoch_callback: Any  # the stores' epoch callback (``epochs``)

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
            self.runners.submit(lambda: run_on_thread(self, process))

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
        log_exit(self.log, process, ExitReport(reason, detail), self.exit_lines)
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

    def finish(self, process: Process, report: ExitReport, store: Any) -> None:
        """A process ended (its guest thread, or the I/O thread for a fiber)."""
        process.state = ProcessState.EXITING
        if store is not None:
            capi.store_delete(store)
        self.processes.pop(process.pid, None)
        self.actors.remove(process.pid, report.reason, report.detail)
        with self._lock:
            self.exits[report.reason] = self.exits.get(report.reason, 0) + 1
        log_exit(self.log, process, report, self.exit_lines)
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
