"""What the host keeps of a component and of each process: records, states, exits.

Runs in: worker (any of its threads: a record is made on the loop thread
or a guest thread, and read by host functions on the thread of the
process they serve).

- ``LoadedComponent``: a component as this worker can run it (or why not);
- ``Process``: one wasm process (or a host-native one: a supervisor);
- ``ProcessState``: where a process is in its life;
- ``ExitReport``: how it ended, what the log, its parent and its HTTP
  client hear;
- ``Exit``: raised inside a host function to end the calling process.

``log_for`` and ``log_exit`` write a process's own log lines: within its
``LineBudget``, and its ``exit`` line, within its component's budget of
exit lines (``ExitLines``).
"""

from __future__ import annotations

import ctypes
import enum
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import wasmtime

from rusmd.abi import ExitReason
from rusmd.actors.records import Actor
from rusmd.config.model import Capability, LogLevel
from rusmd.errors import RusmError
from rusmd.log import SUPPRESSED_SUMMARY_INTERVAL_S, LineBudget, Logger, suppressed_line
from rusmd.wasm.abi import Grant
from rusmd.wasm.linking import ModuleShape, action_results
from rusmd.wasm.memory import GuestMemory
from rusmd.wasm.settings import EPOCH_TICK_MS

# Exit lines one component's processes log at once in a worker, then a
# second: a child crash-looping under a supervisor that allows it ends
# thousands of times a second, and a line each (written, shipped to
# main, written again) cost a quarter of its restart rate. The rest are
# counted into a summary line, as OTP's logger limits a burst. Every
# exit is still counted (``rusmctl status``, ``/metrics``).
EXIT_LOG_BURST_LINES = 100
EXIT_LOG_LINES_PER_S = 20.0


class ProcessState(enum.StrEnum):
    """Where a process is in its life."""

    STARTING = "starting"
    RUNNING = "running"
    SLEEPING = "sleeping"
    WAITING = "waiting"
    EXITING = "exiting"


class Exit(RusmError):
    """Raised inside a host callback's bookkeeping to end the process."""


class Native(Protocol):
    """A host-native process (a supervisor)."""

    def on_signal(self, envelope: Any) -> None: ...

    def stopped(self, reason: str, detail: str) -> None: ...

    def describe(self) -> dict[str, Any]: ...


@dataclass
class LoadedComponent:
    """A component as this worker can run it (or why it cannot).

    Attributes:
        name: The component name.
        capability: Its resolved profile.
        grants: The ABI grants the profile gives.
        error: Why it cannot run; empty when it can.
        module: The deserialized module.
        pre: The prepared instantiation.
        shape: Entry export and imports.
        env: The (key, value) pairs its processes see.
    """

    name: str
    capability: Capability
    grants: frozenset[Grant]
    error: str = ""
    module: wasmtime.Module | None = None
    pre: wasmtime.InstancePre | None = None
    shape: ModuleShape | None = None
    env: list[tuple[str, str]] = field(default_factory=list)
    # Serves HTTP on the I/O thread (it imports nothing that may wait).
    inline: bool = False
    # Action export → how many i32 results it returns; "" when it is
    # missing or takes parameters (an error message then).
    actions: dict[str, int | str] = field(default_factory=dict)
    # An action's export name as a raw call takes it: bytes and their length.
    action_names: dict[str, tuple[bytes, Any]] = field(default_factory=dict)
    # Its instantiation for a fiber (``fibers``): from the linker whose
    # ``recv`` and ``ws_send`` are async. None unless ``shape.fiber``.
    fiber_pre: wasmtime.InstancePre | None = None
    fiber_pre_ptr: Any = None
    # Its instantiation on the inline path, in the inline pool's engine
    # (``WasmHost.inline_engine_info``), and the raw pointer (``inline_pre``
    # keeps it alive: the inline path skips the conversion). None unless
    # ``inline``.
    inline_pre: wasmtime.InstancePre | None = None
    inline_pre_ptr: Any = None
    # Action → what ``InlinePath.serve`` needs of it, in one tuple (``inline_plan``).
    plans: dict[str, tuple[Any, ...] | str] = field(default_factory=dict)

    def inline_plan(self, action: str) -> tuple[Any, ...] | str:
        """What running ``action`` inline takes, or why it cannot run (kept in ``plans``).

        The tuple: the ``InstancePre`` pointer, the export name and its
        length as a raw call takes them, whether the action returns an
        i32, whether the module gets a WASI context, whether it has an
        ``_initialize``, its memory limit in bytes and CPU budget in ms.
        """
        results = self.action(action)
        plan: tuple[Any, ...] | str
        if isinstance(results, str):
            plan = results
        elif self.shape is None or not self.inline_pre_ptr:
            plan = f"component {self.name} cannot be instantiated"
        else:
            name, length = self.export_name(action)
            profile = self.capability
            plan = (
                self.inline_pre_ptr,
                name,
                length,
                bool(results),
                self.shape.uses_wasi,
                self.shape.has_initialize,
                profile.max_memory_mb << 20,
                profile.max_cpu_ms,
            )
        self.plans[action] = plan
        return plan

    def export_name(self, action: str) -> tuple[bytes, Any]:
        """``action``'s export name as a raw call takes it (kept in ``action_names``)."""
        encoded = action.encode()
        export = self.action_names[action] = (encoded, ctypes.c_size_t(len(encoded)))
        return export

    def action(self, name: str) -> int | str:
        """Results of export ``name`` (0 or 1), or why it cannot be an action."""
        known = self.actions.get(name)
        if known is not None:
            return known
        answer: int | str = f"component {self.name} exports no function '{name}'"
        if self.module is not None:
            answer = action_results(self.name, self.module, name)
        self.actions[name] = answer
        return answer


# Slots: a worker holds up to [node].max-processes of these at once, and
# a __dict__ per record costs about 56 bytes more (320 against 264). The
# weakref slot: tests watch a record being freed without the collector.
@dataclass(slots=True, weakref_slot=True)
class Process:
    """One wasm process on this worker."""

    pid: int
    component: LoadedComponent  # None only in the inline path's idle record
    parent: int | None
    started_at: float
    started_wall: float
    state: ProcessState = ProcessState.STARTING
    memory_bytes: int = 0
    # Set from other threads; read by the epoch callback and host calls.
    stop_reason: ExitReason | None = None
    stop_detail: str = ""
    # Its actor side (mailbox, links, monitors, names).
    actor: Actor | None = None
    # The main process supervises it (a resident): tell main when it exits.
    watched: bool = False
    # A host-native process (a supervisor) instead of a wasm instance.
    native: Any = None
    # Owned by the thread it runs on (its guest thread, or the loop's).
    call_started_tick: int = 0
    # Epoch ticks it was seen running since it last waited (its CPU budget
    # on a fiber) and in all (its CPU on a guest thread).
    busy_ticks: int = 0
    cpu_ticks: int = 0
    # Its fiber's polls (its reductions) and the time they took.
    polls: int = 0
    cpu_ns: int = 0
    memory: GuestMemory | None = None
    crash: str = ""
    exit_code: int | None = None
    cpu_exceeded: bool = False
    # Serving: the export to run instead of the entry, the request or
    # connection it serves, who hears how it ended, and whether its
    # spawn and normal exit stay out of the log (one per request).
    entry: str = ""
    # An ad-hoc process's entrypoint arguments, (wasm type, value) each.
    entry_args: tuple[tuple[str, int | float], ...] = ()
    exchange: Any = None
    on_exit: Callable[[ExitReport], None] | None = None
    quiet: bool = False
    # Its fiber, when it runs as one on the I/O thread (``fibers``).
    fiber: Any = None
    # The token bucket of its log lines, made with its first line.
    log_budget: LineBudget | None = None

    @property
    def label(self) -> str:
        """``component#pid``, as the log and ``rusmctl list`` show it."""
        return f"{self.component.name}#{self.pid}"

    def cpu_ms(self) -> float:
        """CPU its guest used: its polls' time on a fiber, its ticks on a thread."""
        return self.cpu_ns / 1e6 + self.cpu_ticks * EPOCH_TICK_MS


@dataclass(frozen=True)
class ExitReport:
    """How a process ended."""

    reason: ExitReason
    detail: str = ""
    backtrace: tuple[str, ...] = ()


def log_for(
    log: Logger,
    process: Process,
    level: LogLevel,
    text: str,
    *,
    source: str | None = None,
    cut_bytes: int = 0,
) -> None:
    """Log a line of ``process``, or one it caused (a failed spawn), within its budget.

    A guest logging or spawning in a tight loop gets its
    ``LineBudget``'s burst, then its rate; the lines over it are
    counted and reported by a ``log: suppressed N lines`` line.
    """
    if not log.enabled(level):
        return
    budget = process.log_budget
    if budget is None:
        budget = process.log_budget = LineBudget()
    allowed = budget.take()
    suppressed = budget.summary_due()
    if suppressed:
        log.warn(suppressed_line(suppressed, process.label))
    if allowed:
        log.log(level, text, source=source, cut_bytes=cut_bytes)


class ExitLines:
    """Each component's budget of exit lines in this worker, and what it held back.

    A component's processes share one ``LineBudget`` (``EXIT_LOG_BURST_LINES``,
    then ``EXIT_LOG_LINES_PER_S``); an exit line over it is counted, and
    ``summaries`` hands the counts over for ``log: suppressed N exit
    lines`` lines. Thread-safe: processes end on the loop thread, on guest
    threads and on the I/O thread.

    Args:
        clock: Monotonic seconds; injected by tests.
        burst: Exit lines a component may log at once.
        per_s: Exit lines a second after the burst.
    """

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        *,
        burst: int = EXIT_LOG_BURST_LINES,
        per_s: float = EXIT_LOG_LINES_PER_S,
    ) -> None:
        self._clock = clock
        self.burst, self.per_s = burst, per_s
        self._budgets: dict[str, LineBudget] = {}
        self._lock = threading.Lock()

    def take(self, component: str) -> bool:
        """Whether one more exit line of ``component`` may go out now."""
        with self._lock:
            budget = self._budgets.get(component)
            if budget is None:
                budget = self._budgets[component] = LineBudget(
                    self._clock,
                    burst=self.burst,
                    per_s=self.per_s,
                    summary_interval_s=SUPPRESSED_SUMMARY_INTERVAL_S,
                )
            return budget.take()

    def summaries(self, *, everything: bool = False) -> list[tuple[str, int]]:
        """(component, exit lines held back) whose summary is due, or all with ``everything``."""
        with self._lock:
            due = [
                (name, budget.take_suppressed() if everything else budget.summary_due())
                for name, budget in self._budgets.items()
            ]
        return [(name, count) for name, count in due if count]

    def summary_line(self, component: str, count: int) -> str:
        """The line that reports ``count`` exit lines of ``component`` held back."""
        return (
            f"log: suppressed {count} exit lines of {component} (over {self.per_s:g} a second, "
            f"burst {self.burst}); rusmctl status and /metrics count every exit"
        )


def log_exit(
    log: Logger, process: Process, report: ExitReport, exit_lines: ExitLines | None = None
) -> None:
    """The ``exit`` line of ``process`` (and what its log budget held back).

    Args:
        log: The worker's logger.
        process: The process that ended.
        report: How it ended.
        exit_lines: Its component's budget of exit lines; None logs every one.
    """
    budget = process.log_budget
    if budget is not None and budget.suppressed:
        log.warn(suppressed_line(budget.take_suppressed(), process.label))
    if process.quiet and report.reason in (ExitReason.NORMAL, ExitReason.SHUTDOWN):
        return
    if report.reason == ExitReason.CRASHED:
        level = LogLevel.ERROR
    elif report.reason == ExitReason.KILLED:
        level = LogLevel.WARN
    else:
        level = LogLevel.INFO
    if not log.enabled(level):
        return
    if exit_lines is not None and not exit_lines.take(process.component.name):
        return
    text = f"exit {process.label} {report.reason}"
    if report.detail:
        text += f" ({report.detail})"
    log.log(level, text)
    if report.reason == ExitReason.CRASHED:
        for line in report.backtrace:
            log.error(f"  at {line}", source=process.label)
