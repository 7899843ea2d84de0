"""Supervise the compile child from the main loop, never blocking it.

Runs in: main (``rusmd`` and ``rusmd check``); it starts
``python -m rusmd.wasm.compiler`` and never imports wasmtime itself.

A ``CompileRun`` hands its jobs to one compile child, reads the child's
JSON-line events from a non-blocking pipe, and enforces the ``[node]``
compile limits on every ``tick``:

- a module compiling for longer than ``compile-timeout-s`` gets the child
  SIGKILLed: that component fails with ``compile exceeded 60 s; killed``
  and a fresh child takes the remaining jobs (reading and hashing the
  file before it is under the same limit, counted apart);
- a child whose resident memory passes ``compile-memory-mb`` is handled
  the same way (``compile exceeded 2048 MiB of memory; killed``);
- a child that dies mid-module fails that module with its exit status and
  the tail of its stderr, and a fresh child takes the rest; one that dies
  before it started any module fails all its remaining jobs, so every
  restart makes progress.

Before compiling a reactor the child pre-initialises it with Wizer
(``rusmd.wasm.preinit``), within the same limits. What that came to is
each result's ``preinit``; the run logs a reactor that was not
pre-initialised at ``info`` (``compile web: not pre-initialized: its
_initialize calls the import …``) and, once, at ``warn``, a Wizer it
could not find, with how to install it.

Every child is signalled and reaped through a pidfd, so no signal or
wait ever reaches a recycled pid. In the daemon, the main process's
``Reaper`` (``rusmd.main.reaper``) collects every child with
``waitpid(-1)``: a run given that reaper claims each child as it starts
it, so an exit the reaper collects first comes back through
``child_exited`` with its status, and it releases the pid when it collects
the child itself. Without a reaper (``rusmd check``) the run is its
children's only waiter.

Wiring into a selectors loop: set ``on_fd_change`` before ``start``; it
is called with ``(old_fd, None)`` just before a pipe is closed and with
``(None, new_fd)`` once a new one is open (a replacement child may come
from ``on_readable`` as well as from ``tick``), so the owner unregisters
and registers there and calls ``on_readable`` when the fd is readable.
Consecutive children never share an fd number. Call ``tick`` at least
every few hundred milliseconds: it enforces the limits and reaps.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import select
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from rusmd.channel import ComponentImage
from rusmd.config.model import Manifest
from rusmd.log import Logger
from rusmd.main.reaper import Reaper, describe_exit, wait_status
from rusmd.wasm.artifacts import ArtifactError, resolve_artifact
from rusmd.wasm.preinit import PREINITIALIZED, SKIPPED
from rusmd.wasm.settings import FULL_LAYOUT, MemoryLayout

COMPILER_MODULE = "rusmd.wasm.compiler"
# Importing the compile child's modules takes well under a second; a child
# silent for this long before its first module is wedged.
STARTUP_TIMEOUT_S = 30.0
# A child that closed its stdout but is not gone this long after is killed.
EXIT_GRACE_S = 5.0
# cancel() waits this long for a SIGKILLed child to be reaped.
REAP_TIMEOUT_S = 5.0
# One event line is a few hundred bytes; a longer one is a broken child,
# and buffering it without bound would grow the main process.
MAX_LINE_BYTES = 64 * 1024
# on_readable reads at most this much per call, so a chatty child cannot
# hold the loop.
MAX_READ_BYTES = 1 << 20
# How much of the child's stderr a failure message quotes.
STDERR_TAIL_BYTES = 4096
STDERR_TAIL_LINES = 3
MAX_TAIL_CHARS = 500
# compile_blocking's own loop: how often it ticks and updates progress.
BLOCKING_TICK_S = 0.1
# Progress lines for long compiles: a big module is announced at once, a
# small one once it takes a while; then a line every PROGRESS_EVERY_S.
PROGRESS_MIN_BYTES = 1_000_000
PROGRESS_AFTER_S = 1.0
PROGRESS_EVERY_S = 2.0
# What systemd hands the main process alone; its children (the compile
# child, the node endpoint) have no use for it.
SCRUBBED_VARIABLES = (
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "LISTEN_PID",
    "LISTEN_FDS",
    "LISTEN_FDNAMES",
)


@dataclass(frozen=True)
class CompileJob:
    """One component to compile.

    Attributes:
        name: The component name.
        path: Absolute path of its resolved artifact.
        pre_initialize: Its ``pre-initialize`` setting. Optional; defaults
            to True.
    """

    name: str
    path: str
    pre_initialize: bool = True


@dataclass(frozen=True)
class CompileResult:
    """What compiling one component came to.

    Attributes:
        name: The component name.
        ok: True when ``cwasm`` is ready to load.
        cwasm: Path of the cache entry ("" on failure).
        digest: The entry's blake2b digest, for ``cache.verify``.
        cached: True when the entry was already in the cache.
        seconds: Compile time (0 for a cache hit).
        error: Why it failed, naming the component (``component api: …``).
        preinit: For a reactor, what pre-initialisation came to, as the
            compile child says it: ``pre-initialized``, ``off`` or
            ``skipped: <why>``; "" for a module without a start-up.
    """

    name: str
    ok: bool
    cwasm: str = ""
    digest: str = ""
    cached: bool = False
    seconds: float = 0.0
    error: str = ""
    preinit: str = ""

    @property
    def reason(self) -> str:
        """``error`` without its ``component <name>: `` prefix."""
        return self.error.removeprefix(f"component {self.name}: ")

    def image(self) -> ComponentImage:
        """The ``ComponentImage`` a worker receives for this component."""
        return ComponentImage(
            name=self.name, cwasm=self.cwasm, digest=self.digest, error=self.error
        )


def failed(name: str, error: str) -> CompileResult:
    """A failed result for ``name``."""
    return CompileResult(name=name, ok=False, error=error)


def jobs_for(manifest: Manifest) -> tuple[list[CompileJob], dict[str, CompileResult]]:
    """Compile jobs for every component, and failures for those without a usable artifact."""
    jobs: list[CompileJob] = []
    failures: dict[str, CompileResult] = {}
    for name, component in manifest.components.items():
        if component.source is not None:
            failures[name] = failed(
                name,
                f"component {name}: its bundle comes from {component.source}; "
                "JavaScript components arrive with the JS runtime",
            )
            continue
        try:
            artifact = resolve_artifact(Path(manifest.app_dir), name)
        except ArtifactError as exc:
            failures[name] = failed(name, str(exc))
            continue
        jobs.append(
            CompileJob(name=name, path=str(artifact.path), pre_initialize=component.pre_initialize)
        )
    return jobs, failures


@dataclass(eq=False)
class _Child:
    """One compile child and what it is doing."""

    proc: subprocess.Popen[bytes]
    pidfd: int
    stdout_fd: int
    stderr_fd: int
    jobs: list[CompileJob]
    spawned_at: float
    last_event_at: float
    buffer: bytearray = field(default_factory=bytearray)
    current: str | None = None
    current_since: float = 0.0
    current_bytes: int = 0
    compiling: bool = False
    retired_at: float | None = None
    blame_pending: bool = False
    exit_status: str = ""
    reaped: bool = False
    usage: psutil.Process | None = None


class CompileRun:
    """Compiles a list of components in a supervised child, driven by the owner's loop.

    Args:
        jobs: The components to compile, in order.
        cache_dir: The AOT cache directory (the child creates and checks it).
        timeout_s: ``[node].compile-timeout-s``: wall-clock limit per module.
        memory_mb: ``[node].compile-memory-mb``: the child's resident-memory limit.
        log: Where ``compile <name>: …`` lines go.
        layout: The memory layout to compile for (``capacity.manifest_layout``).
            Optional; defaults to ``FULL_LAYOUT``.
        clock: Monotonic seconds; injected by tests.
        reaper: The main process's reaper, which claims each child.
            Optional; defaults to None (the run is its children's only
            waiter, as in ``rusmd check``).

    Attributes:
        results: One result per job so far, by component name.
        warnings: What the children warned of (a missing Wizer), each once.
        on_fd_change: Called ``(old_fd, None)`` before the pipe ``fileno()``
            returned is closed and ``(None, new_fd)`` after a new one opens.
    """

    def __init__(
        self,
        jobs: list[CompileJob],
        cache_dir: Path,
        *,
        timeout_s: float,
        memory_mb: int,
        log: Logger,
        layout: MemoryLayout = FULL_LAYOUT,
        clock: Callable[[], float] = time.monotonic,
        reaper: Reaper | None = None,
    ) -> None:
        self.jobs = list(jobs)
        self.layout = layout
        self.cache_dir = Path(cache_dir).absolute()
        self.timeout_s = timeout_s
        self.memory_mb = memory_mb
        self.log = log
        self.clock = clock
        self.reaper = reaper
        self.results: dict[str, CompileResult] = {}
        self.warnings: list[str] = []
        self.on_fd_change: Callable[[int | None, int | None], None] | None = None
        self._child: _Child | None = None
        self._exiting: list[_Child] = []
        self._sizes: dict[str, int] = {}
        self._started = False
        self._last_fd = 2

    # ── the owner's API ──────────────────────────────────────────────────

    def start(self) -> None:
        """Start a compile child for every job (nothing when there are none); once."""
        if not self._started:
            self._started = True
            self._spawn(self._remaining())

    def fileno(self) -> int | None:
        """The child's stdout pipe to watch for reading; None when no child runs."""
        return self._child.stdout_fd if self._child is not None else None

    def on_readable(self) -> None:
        """Read what the child wrote and act on every complete line; never blocks."""
        child = self._child
        if child is None:
            return
        total = 0
        while total < MAX_READ_BYTES:
            try:
                chunk = os.read(child.stdout_fd, 65536)
            except BlockingIOError:
                break
            if not chunk:
                self._on_eof(child)
                return
            total += len(chunk)
            child.buffer.extend(chunk)
            self._handle_lines(child)
            if child is not self._child:
                return  # a line made us retire it

    def tick(self) -> None:
        """Reap exited children and enforce the time and memory limits."""
        now = self.clock()
        for old in list(self._exiting):
            self._reap_exiting(old, now)
        child = self._child
        if child is None:
            return
        if self._reap(child):
            # It exited: read what it wrote last; its pipe then reads EOF.
            self.on_readable()
            if self._child is child:
                self._on_eof(child)  # a stray holder of the pipe keeps it open
            return
        if child.current is not None and now - child.current_since > self.timeout_s:
            self._kill(child, f"compile exceeded {self.timeout_s:g} s; killed")
        elif child.current is None and now - child.last_event_at > max(
            STARTUP_TIMEOUT_S, self.timeout_s
        ):
            silent_s = now - child.last_event_at
            self._kill(child, f"the compile child sent nothing for {silent_s:.0f} s; killed")
        elif self._rss_bytes(child) > self.memory_mb << 20:
            self._kill(child, f"compile exceeded {self.memory_mb} MiB of memory; killed")

    def cancel(self) -> None:
        """Kill and reap every child (the daemon is stopping); unfinished jobs fail."""
        child = self._child
        if child is not None:
            _send_kill(child)
            self._retire(child)
        for old in self._exiting:
            _send_kill(old)
            if _wait_reaped(old, REAP_TIMEOUT_S):
                self._collected(old)
            self._release(old)
        self._exiting.clear()
        for job in self._remaining():
            self.results[job.name] = failed(job.name, f"component {job.name}: compile cancelled")

    def child_exited(self, pid: int, status: int) -> None:
        """Record how a child of this run ended when another ``waitpid(-1)`` reaped it.

        The main process's reaper collects every child of the process and
        calls this for the pids the run claimed. ``tick`` acts on the exit.
        Without this call the run still notices the exit, but not its status.

        Args:
            pid: The pid that was reaped.
            status: Its raw wait status.
        """
        for child in (self._child, *self._exiting):
            if child is not None and not child.reaped and child.proc.pid == pid:
                child.reaped = True
                child.proc.returncode = os.waitstatus_to_exitcode(status)
                child.exit_status = describe_exit(status)

    @property
    def done(self) -> bool:
        """Every job has a result and every child is reaped."""
        return self._child is None and not self._exiting and not self._remaining()

    @property
    def current(self) -> tuple[str, float] | None:
        """The component being compiled and its seconds so far, for ``rusmctl status``."""
        child = self._child
        if child is None or child.current is None:
            return None
        return child.current, self.clock() - child.current_since

    @property
    def current_bytes(self) -> int:
        """The size of the module in ``current`` (0 when none)."""
        child = self._child
        return child.current_bytes if child is not None and child.current is not None else 0

    @property
    def current_compiling(self) -> bool:
        """True once ``current`` missed the cache and is being compiled."""
        child = self._child
        return child is not None and child.current is not None and child.compiling

    # ── spawning and retiring children ──────────────────────────────────

    def _remaining(self) -> list[CompileJob]:
        return [job for job in self.jobs if job.name not in self.results]

    def _spawn(self, jobs: list[CompileJob]) -> None:
        assert self._child is None, "one compile child at a time"
        if not jobs:
            return
        document = {
            "cache_dir": str(self.cache_dir),
            "components": [
                {"name": job.name, "path": job.path, "pre_initialize": job.pre_initialize}
                for job in jobs
            ],
            "timeout_s": self.timeout_s,
            "memory_mb": self.memory_mb,
            "memory_layout": [self.layout.reservation_bytes, self.layout.guard_bytes],
            "parent_pid": os.getpid(),
        }
        stdin_fd = os.memfd_create("rusmd-compile-job", os.MFD_CLOEXEC)
        stderr_fd = os.memfd_create("rusmd-compile-stderr", os.MFD_CLOEXEC)
        try:
            os.write(stdin_fd, json.dumps(document).encode())
            os.lseek(stdin_fd, 0, os.SEEK_SET)
            proc = subprocess.Popen(
                [sys.executable, "-m", COMPILER_MODULE],
                stdin=stdin_fd,
                stdout=subprocess.PIPE,
                stderr=stderr_fd,
                close_fds=True,
                start_new_session=True,
                env=_child_environment(),
            )
        except OSError as exc:
            os.close(stderr_fd)
            for job in jobs:
                self._fail(job.name, f"cannot start the compile child: {exc}")
            return
        finally:
            os.close(stdin_fd)
        assert proc.stdout is not None
        # A number above the last child's: an owner that compares fileno()
        # values (rather than using on_fd_change) still sees every change.
        stdout_fd = fcntl.fcntl(proc.stdout.fileno(), fcntl.F_DUPFD_CLOEXEC, self._last_fd + 1)
        proc.stdout.close()
        os.set_blocking(stdout_fd, False)
        self._last_fd = stdout_fd
        child = _Child(
            proc=proc,
            pidfd=os.pidfd_open(proc.pid),
            stdout_fd=stdout_fd,
            stderr_fd=stderr_fd,
            jobs=jobs,
            spawned_at=self.clock(),
            last_event_at=self.clock(),
        )
        with contextlib.suppress(psutil.Error):
            child.usage = psutil.Process(proc.pid)
        if self.reaper is not None:
            # Claimed before the loop's next reap, so no exit goes unclaimed.
            self.reaper.claim(proc.pid, self.child_exited)
        self._child = child
        if self.on_fd_change is not None:
            self.on_fd_change(None, stdout_fd)

    def _kill(self, child: _Child, why: str) -> None:
        """SIGKILL ``child``, fail what it was doing with ``why``, start a child for the rest."""
        _send_kill(child)
        self._retire(child)
        self._blame(child, why, why)

    def _on_eof(self, child: _Child) -> None:
        """Its stdout closed before ``done``: it died; blame it once its status is known."""
        child.blame_pending = True
        self._retire(child)
        self._reap_exiting(child, self.clock())

    def _retire(self, child: _Child) -> None:
        """Stop reading ``child`` and keep it for reaping."""
        if self._child is child:
            self._child = None
            self._close_stdout(child)
        if child.retired_at is None:
            child.retired_at = self.clock()
            self._exiting.append(child)

    def _reap_exiting(self, child: _Child, now: float) -> None:
        if not self._reap(child):
            assert child.retired_at is not None
            if now - child.retired_at > EXIT_GRACE_S:
                _send_kill(child)
            return
        self._exiting.remove(child)
        if child.blame_pending:
            child.blame_pending = False
            tail = _stderr_tail(child.stderr_fd)
            detail = f" ({child.exit_status})" + (f": {tail}" if tail else "")
            self._blame(
                child,
                f"the compile child died while compiling it{detail}",
                f"the compile child exited before compiling it{detail}",
            )
        self._release(child)

    def _blame(self, child: _Child, why_current: str, why_rest: str) -> None:
        """Fail the module ``child`` was on and start a child for the rest.

        With no module under way, fail all its unfinished jobs instead, so
        every restart makes progress.
        """
        if child.current is not None and child.current not in self.results:
            self._fail(child.current, why_current)
            self._spawn(self._remaining())
            return
        for job in child.jobs:
            if job.name not in self.results:
                self._fail(job.name, why_rest)

    # ── events ──────────────────────────────────────────────────────────

    def _handle_lines(self, child: _Child) -> None:
        while self._child is child:
            end = child.buffer.find(b"\n")
            if end < 0:
                if len(child.buffer) > MAX_LINE_BYTES:
                    self._kill(child, "the compile child wrote a malformed event; killed")
                return
            line = bytes(child.buffer[:end])
            del child.buffer[: end + 1]
            self._on_line(child, line)

    def _on_line(self, child: _Child, line: bytes) -> None:
        try:
            event = json.loads(line)
        except ValueError:
            event = None
        if not isinstance(event, dict) or not isinstance(event.get("event"), str):
            self.log.warn(f"compile: ignored a line the compile child wrote: {line[:200]!r}")
            return
        kind = event["event"]
        child.last_event_at = self.clock()
        if kind == "done":
            child.current = None
            self._retire(child)
            for job in child.jobs:
                if job.name not in self.results:
                    self._fail(job.name, "the compile child finished without reporting on it")
            return
        if kind == "warning":
            self._warn(str(event.get("message", "")))
            return
        name = event.get("component")
        if not isinstance(name, str) or name not in {job.name for job in child.jobs}:
            self.log.warn(f"compile: ignored an event for an unknown component: {line[:200]!r}")
            return
        if kind == "start":
            child.current, child.current_since, child.compiling = name, self.clock(), False
            child.current_bytes = _int(event.get("bytes"))
            self._sizes[name] = child.current_bytes
        elif kind in ("preinit", "compiling"):
            # The limit is per phase: reading and hashing the file, running
            # the start-up in Wizer, then compiling.
            child.compiling, child.current_since = True, self.clock()
        elif kind in ("hit", "compiled", "error"):
            self._on_outcome(child, name, kind, event)

    def _on_outcome(self, child: _Child, name: str, kind: str, event: dict[str, Any]) -> None:
        if child.current == name:
            child.current = None
        if kind == "error":
            message = str(event.get("message") or f"component {name}: compile failed")
            self._record(failed(name, message))
            return
        cwasm, digest = str(event.get("cwasm", "")), str(event.get("digest", ""))
        preinit = str(event.get("preinit") or "")
        if kind == "hit":
            self._record(
                CompileResult(
                    name=name, ok=True, cwasm=cwasm, digest=digest, cached=True, preinit=preinit
                )
            )
            return
        seconds = float(event.get("seconds") or 0.0)
        if event.get("problem"):
            self.log.warn(f"compile {name}: cache entry {event['problem']}; rebuilt")
        self._record(
            CompileResult(
                name=name, ok=True, cwasm=cwasm, digest=digest, seconds=seconds, preinit=preinit
            )
        )

    def _fail(self, name: str, why: str) -> None:
        self._record(failed(name, f"component {name}: {why}"))

    def _warn(self, message: str) -> None:
        # Each child of a run finds Wizer missing again; the operator hears it once.
        if message and message not in self.warnings:
            self.warnings.append(message)
            self.log.warn(f"compile: {message}")

    def _record(self, result: CompileResult) -> None:
        self.results[result.name] = result
        done = ", pre-initialized" if result.preinit == PREINITIALIZED else ""
        if not result.ok:
            self.log.error(f"compile {result.name}: {result.reason}")
        elif result.cached:
            self.log.debug(f"compile {result.name}: cache hit{done}")
        else:
            size = format_size(self._sizes.get(result.name, 0))
            self.log.info(
                f"compile {result.name}: compiled in {result.seconds:.2f} s ({size}){done}"
            )
        if result.ok and result.preinit.startswith(SKIPPED):
            why = result.preinit.removeprefix(SKIPPED)
            self.log.info(f"compile {result.name}: not pre-initialized: {why}")

    # ── process plumbing ────────────────────────────────────────────────

    def _close_stdout(self, child: _Child) -> None:
        if child.stdout_fd < 0:
            return
        if self.on_fd_change is not None:
            self.on_fd_change(child.stdout_fd, None)
        os.close(child.stdout_fd)
        child.stdout_fd = -1

    def _reap(self, child: _Child) -> bool:
        """Collect ``child`` if it has exited; True once it is reaped."""
        if child.reaped:
            return True
        try:
            info = os.waitid(os.P_PIDFD, child.pidfd, os.WEXITED | os.WNOHANG)
        except ChildProcessError:
            # Some other waitpid(-1) collected it: gone, status unknown.
            child.reaped, child.exit_status = True, "exited"
            child.proc.returncode = -1
            return True
        if info is None:
            return False
        child.reaped = True
        self._collected(child)
        child.exit_status = describe_exit(wait_status(info))
        code = info.si_status if info.si_code == os.CLD_EXITED else -info.si_status
        child.proc.returncode = code
        return True

    def _collected(self, child: _Child) -> None:
        """This run's own wait collected ``child``: the reaper must forget its pid now."""
        if self.reaper is not None:
            self.reaper.release(child.proc.pid)

    def _release(self, child: _Child) -> None:
        for fd in (child.pidfd, child.stderr_fd):
            with contextlib.suppress(OSError):
                os.close(fd)
        child.pidfd = child.stderr_fd = -1

    def _rss_bytes(self, child: _Child) -> int:
        if child.usage is None:
            return 0
        try:
            rss: int = child.usage.memory_info().rss
        except psutil.Error:
            return 0
        return rss


def _send_kill(child: _Child) -> None:
    if child.reaped or child.pidfd < 0:
        return
    with contextlib.suppress(ProcessLookupError, OSError):
        signal.pidfd_send_signal(child.pidfd, signal.SIGKILL)


def _wait_reaped(child: _Child, timeout_s: float) -> bool:
    """Block until ``child`` is reaped (only ``cancel`` does: the daemon is stopping).

    Returns:
        True when this wait collected it (its pid is free for reuse from now).
    """
    if child.reaped or child.pidfd < 0:
        return False
    poller = select.poll()
    poller.register(child.pidfd, select.POLLIN)
    poller.poll(int(timeout_s * 1000))
    collected = False
    with contextlib.suppress(ChildProcessError):
        info = os.waitid(os.P_PIDFD, child.pidfd, os.WEXITED | os.WNOHANG)
        if info is not None:
            child.proc.returncode = info.si_status
            collected = True
    child.reaped = True
    if child.proc.returncode is None:
        child.proc.returncode = -1
    return collected


def _stderr_tail(fd: int) -> str:
    """The last few lines the child wrote to stderr, on one line."""
    if fd < 0:
        return ""
    try:
        size = os.fstat(fd).st_size
        data = os.pread(fd, STDERR_TAIL_BYTES, max(0, size - STDERR_TAIL_BYTES))
    except OSError:
        return ""
    lines = [line.strip() for line in data.decode("utf-8", "replace").splitlines()]
    tail = " / ".join([line for line in lines if line][-STDERR_TAIL_LINES:])
    tail = re.sub(r"[\x00-\x08\x0b-\x1f\x7f]", "?", tail)
    return tail if len(tail) <= MAX_TAIL_CHARS else "…" + tail[-MAX_TAIL_CHARS:]


def _child_environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in SCRUBBED_VARIABLES}


def _int(value: object) -> int:
    return value if isinstance(value, int) else 0


def format_size(size_bytes: int) -> str:
    """``8.1 MB``, ``412 KB`` or ``90 bytes`` (decimal units)."""
    if size_bytes >= 1_000_000:
        return f"{size_bytes / 1_000_000:.1f} MB"
    if size_bytes >= 1000:
        return f"{size_bytes / 1000:.0f} KB"
    return f"{size_bytes} bytes"


# ── the blocking form, for ``rusmd check`` ──────────────────────────────


class _Progress:
    """Human lines for compiles an operator would otherwise wait on in silence."""

    def __init__(self, write: Callable[[str], None]) -> None:
        self.write = write
        self.announced: dict[str, float] = {}  # component → seconds at its last line
        self.closed: set[str] = set()

    def update(self, run: CompileRun) -> None:
        for name in list(self.announced):
            if name in run.results and name not in self.closed:
                self.closed.add(name)
                result = run.results[name]
                if result.ok:
                    self.write(f"  {name}: compiled in {result.seconds:.1f} s")
                else:
                    self.write(f"  {name}: failed")
        current = run.current
        if current is None or not run.current_compiling:
            return
        name, seconds = current
        if name not in self.announced:
            if run.current_bytes > PROGRESS_MIN_BYTES or seconds > PROGRESS_AFTER_S:
                self.write(f"compiling {name} ({format_size(run.current_bytes)})…")
                self.announced[name] = seconds
        elif seconds - self.announced[name] >= PROGRESS_EVERY_S:
            self.write(f"  {name}: {seconds:.1f} s…")
            self.announced[name] = seconds


def compile_blocking(
    jobs: list[CompileJob],
    cache_dir: Path,
    *,
    timeout_s: float,
    memory_mb: int,
    log: Logger,
    layout: MemoryLayout = FULL_LAYOUT,
    progress: Callable[[str], None] | None = None,
    warnings: list[str] | None = None,
) -> dict[str, CompileResult]:
    """Run a ``CompileRun`` to the end with its own selector; the results by name.

    Args:
        progress: Receives human lines for long compiles (``compiling api
            (8.1 MB)…``, ``  api: 3.0 s…``, ``  api: compiled in 4.2 s``).
        warnings: Gets the run's warnings appended (a missing Wizer).
    """
    run = CompileRun(
        jobs, cache_dir, timeout_s=timeout_s, memory_mb=memory_mb, log=log, layout=layout
    )
    reporter = _Progress(progress) if progress is not None else None
    with selectors.DefaultSelector() as selector:

        def follow(old_fd: int | None, new_fd: int | None) -> None:
            if old_fd is not None:
                selector.unregister(old_fd)
            if new_fd is not None:
                selector.register(new_fd, selectors.EVENT_READ)

        run.on_fd_change = follow
        try:
            run.start()
            while not run.done:
                if selector.get_map():
                    for _key, _events in selector.select(BLOCKING_TICK_S):
                        run.on_readable()
                else:
                    time.sleep(BLOCKING_TICK_S / 10)
                run.tick()
                if reporter is not None:
                    reporter.update(run)
        finally:
            if not run.done:
                run.cancel()
    if reporter is not None:
        reporter.update(run)
    if warnings is not None:
        warnings.extend(run.warnings)
    return dict(run.results)
