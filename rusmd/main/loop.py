"""The main process: one selectors loop that supervises everything else.

Runs in: main.

The main process stays fork-clean: no threads, no asyncio, no guest code,
no LMDB environment; it never imports wasmtime, lmdb, uvloop, httptools
or websockets. Signal handlers only enqueue (through the wakeup fd); the
loop turns them into named steps:

    wait → handle signals → reap children → pool deadlines → control
    sweep → watchdog → (drained? exit)

SIGTERM/SIGINT drain (stop accepting, let workers finish up to the
timeout, then kill) and exit 0; a second one SIGKILLs the workers and
the compile child at once, and the daemon exits 0 once they are reaped.
SIGHUP and ``rusmctl reload`` re-read the manifest: an invalid one is
rejected with its errors and the running app is untouched; a valid one
is compiled, then rolls the workers one at a time.

Components are compiled by a child process (``main.compile``) that
the loop watches like any other descriptor, so a slow or pathological
module never stalls the control socket. The workers get the compiled
images when it is done; READY=1 waits for it. Resident components are
spawned once, on a worker each, when the first images arrive.

One ``Reaper`` (``main.reaper``) collects the exits of every child,
workers and compile children alike, and hands each to the pool or the
compile run that claimed its pid. The pool reports to the main process
through ``PoolEvents``, which ``MainProcess`` implements.
"""

from __future__ import annotations

import enum
import os
import selectors
import signal
import sys
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rusmd import __version__
from rusmd.channel import (
    Answer,
    Channel,
    ComponentImage,
    NameClaim,
    NameDrop,
    ProcessExit,
    WorkerDown,
)
from rusmd.config import Overrides, load_environment, load_manifest
from rusmd.config.model import LogLevel, Manifest, Profile, Protocol
from rusmd.config.sizing import usable_cores, worker_count
from rusmd.control.server import ControlServer
from rusmd.errors import ConfigError, RusmError
from rusmd.log import (
    RUNTIME_SOURCE,
    JsonFormatter,
    Logger,
    LogOutput,
    LogRecord,
    LogRing,
    TextFormatter,
    stream_is_tty,
)
from rusmd.main.commands import dispatch
from rusmd.main.compile import CompileJob, CompileResult, CompileRun, jobs_for
from rusmd.main.endpoint import NodeEndpoint
from rusmd.main.listeners import (
    Listener,
    backlog_warnings,
    close_listeners,
    fit_open_files,
    open_files_warnings,
    open_listeners,
    read_somaxconn,
)
from rusmd.main.pool import WorkerPool, WorkerState
from rusmd.main.queries import Queries
from rusmd.main.reaper import Reaper
from rusmd.main.residents import Registry, Residents
from rusmd.main.systemd import Notifier
from rusmd.wasm.cache import default_cache_dir
from rusmd.wasm.capacity import manifest_layout

# How long SIGTERM lets workers drain before they are killed; below
# systemd's TimeoutStopSec in the shipped unit.
DRAIN_TIMEOUT_S = 30.0
# Upper bound on one loop wait: deadlines (heartbeats, quarantine ends,
# drains) are checked at least this often.
LOOP_TICK_S = 0.2


class DaemonState(enum.StrEnum):
    """The main process's own life."""

    STARTING = "starting"
    RUNNING = "running"
    DRAINING = "draining"


CompileDone = Callable[[list[ComponentImage], dict[str, CompileResult]], None]
ReloadReply = Callable[[bool, str], None]
UpgradeReply = Callable[[bool, dict[str, Any]], None]


class _Compiling:
    """A compile run in progress and what to do with its results."""

    def __init__(
        self, run: CompileRun, failed: dict[str, CompileResult], done: CompileDone
    ) -> None:
        self.run = run
        self.failed = failed
        self.done = done
        # An ad-hoc module's compile: a reload may cancel it (its caller is
        # told); a manifest's compile is only ever replaced by another.
        self.cancellable_by_reload = False


class MainProcess:
    """The daemon's main process; the worker pool's ``PoolEvents``.

    Args:
        manifest: The validated manifest it starts with.
        overrides: The command-line flags, re-applied on every reload.
        config_path: The manifest path as given, for reloads.
        socket_path: Where the control socket goes.
        json_logs: ``--log-format json``.
        cores: ``--cpus``: usable cores to size profiles by. Optional;
            defaults to the detected count.
    """

    def __init__(
        self,
        manifest: Manifest,
        overrides: Overrides,
        config_path: str,
        socket_path: Path,
        *,
        json_logs: bool = False,
        cores: int | None = None,
    ) -> None:
        self.manifest = manifest
        self.overrides = overrides
        self.config_path = config_path
        self.socket_path = socket_path
        self.state = DaemonState.STARTING
        self.started_at = time.monotonic()
        self.started_wall = time.time()
        self.signals: deque[int] = deque()
        self.selector = selectors.DefaultSelector()
        self.notifier = Notifier.from_environ(os.environ)
        self.ring = LogRing()
        self.formatter = JsonFormatter() if json_logs else TextFormatter(stream_is_tty(sys.stderr))
        # Made before the logger: every line goes through it, never blocking.
        self.log_output = LogOutput.for_stream(sys.stderr, on_caught_up=self._log_dropped)
        self._log_output_watched = False
        self.log = Logger(manifest.log.level, self.emit)
        self.cores = cores or usable_cores()
        self.profile = manifest.node.profile
        self.listeners: list[Listener] = []
        self.control = ControlServer(socket_path, self.selector, self._dispatch, self.log.warn)
        self.reaper = Reaper()
        self.pool: WorkerPool | None = None
        self.queries = Queries(self._send_query)
        self.registry = Registry(broadcast=self._broadcast, reply=self._send_to_slot)
        self.residents = Residents(
            manifest,
            self.log,
            ask=self.queries.ask,
            pick_worker=self.pick_worker,
            registry=self.registry,
        )
        self.compiling: _Compiling | None = None
        self.endpoint = NodeEndpoint(
            manifest, socket_path, self.log, self.reaper, on_fd_change=self._follow_endpoint_fd
        )
        self.compile_results: dict[str, CompileResult] = {}
        self.residents_spawned = False
        self._next_worker = 0
        self.exit_code = 0
        self.reloads = 0
        self._last_watchdog = 0.0
        self._wakeup_r, self._wakeup_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    # ── the loop ────────────────────────────────────────────────────────

    def run(self) -> int:
        """Start everything, loop until drained, return the exit code."""
        self.install_signal_handlers()
        for warning in self.manifest.warnings:
            self.log.warn(f"config: {warning}")  # the text `rusmd check` prints
        self.listeners = open_listeners(self.manifest.serve, os.environ)
        self._fit_limits(self.manifest)
        self.control.open()
        self.pool = WorkerPool(
            self.manifest,
            worker_count(self.profile, self.cores),
            listeners=[listener.sock for listener in self.listeners],
            log=self.log,
            events=self,
            reaper=self.reaper,
        )
        self.pool.start()
        self.endpoint.start()
        self.start_compile(self.manifest, self._boot_components)
        try:
            while True:
                self.wait_for_events()
                self.handle_signals()
                self.reaper.reap()
                self.pool.tick()
                self.compile_step()
                self.endpoint.tick()
                self.queries.tick()
                self.spawn_residents()
                self.residents.tick()
                self.announce_ready()
                self.control.sweep(time.monotonic())
                self.ping_watchdog()
                if self.state is DaemonState.DRAINING and self.pool.idle:
                    break
        finally:
            self.cleanup()
        return self.exit_code

    def install_signal_handlers(self) -> None:
        """Handlers only enqueue; the wakeup fd wakes the loop."""
        signal.set_wakeup_fd(self._wakeup_w, warn_on_full_buffer=False)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(signum, self._enqueue_signal)
        self.selector.register(self._wakeup_r, selectors.EVENT_READ, self._drain_wakeup)

    def wait_for_events(self) -> None:
        """Block until a socket, channel or signal needs attention, or a tick passes."""
        for key, events in self.selector.select(LOOP_TICK_S):
            callback: Callable[[int], None] = key.data
            callback(events)

    def handle_signals(self) -> None:
        """Act on the queued signals, in arrival order."""
        while self.signals:
            signum = self.signals.popleft()
            if signum in (signal.SIGTERM, signal.SIGINT):
                self.begin_drain(f"signal {signal.Signals(signum).name}")
            elif signum == signal.SIGHUP:
                self.reload()

    def announce_ready(self) -> None:
        """READY=1 once every initial worker reported ready."""
        if self.state is not DaemonState.STARTING or self.pool is None:
            return
        if self.pool.images is None:
            return  # components still compiling
        if len(self.pool.workers) == self.pool.target and all(
            h.state is WorkerState.READY and h.loaded for h in self.pool.workers.values()
        ):
            self.state = DaemonState.RUNNING
            line = f"rusmd {__version__} ready: {self.status_line()}"
            if self.notifier.address is not None:
                # systemd shows STATUS= in `systemctl status`; the journal
                # gets the line at the configured level like any other.
                self.notifier.ready(line)
                self.log.info(line)
            else:
                # Past the level threshold: at level off (the default) a
                # silent daemon looks hung. Through emit, the one writer.
                self.emit(LogRecord(time.time(), RUNTIME_SOURCE, LogLevel.INFO.value, line))
            # At the level threshold: at level off the ready line stays the
            # only line (it names the listeners); `rusmd new` apps log info.
            for url_line in self.url_lines():
                self.log.info(url_line)

    def url_lines(self) -> list[str]:
        """``serving <url>`` for each listener: what to open or ``curl`` once ready."""
        lines = []
        for entry in self.manifest.serve:
            scheme = "ws" if entry.protocol is Protocol.WS else "http"
            lines.append(f"serving {entry.protocol} at {scheme}://{entry.listen}/")
        return lines

    def ping_watchdog(self) -> None:
        """WATCHDOG=1 from the loop itself: a stuck loop stops the pings."""
        interval_s = self.notifier.watchdog_interval_s
        now = time.monotonic()
        if interval_s is not None and now - self._last_watchdog >= interval_s:
            self._last_watchdog = now
            self.notifier.watchdog()

    # ── operations ──────────────────────────────────────────────────────

    def begin_drain(self, why: str) -> None:
        """Stop accepting, let workers finish, then exit 0; twice → kill now.

        The second time, every worker and the compile child (if one runs)
        get SIGKILL at once; the loop exits as after a drain once the
        workers are reaped.
        """
        assert self.pool is not None
        if self.state is DaemonState.DRAINING:
            self.log.warn(f"stop: {why} again; killing workers now")
            self.pool.kill_all(f"{why} during the drain")
            if self.compiling is not None:
                self.compiling.run.cancel()
                # Hands the cancelled outcome on: a reload waiting on it is answered.
                self.compile_step()
            return
        self.state = DaemonState.DRAINING
        self.endpoint.stop()
        self.residents.stop()
        self.notifier.stopping()
        self.log.info(f"stop: {why}; draining {len(self.pool.workers)} worker(s)")
        close_listeners(self.listeners)
        self.listeners = []
        self.pool.stop(DRAIN_TIMEOUT_S)

    def reload(self, reply: ReloadReply | None = None) -> None:
        """Re-read the manifest; compile it; roll the workers if it holds up.

        ``reply`` gets (ok, message) when the outcome is known: at once for
        an invalid manifest, after compiling otherwise. A reload whose
        compile would break a component that runs now is rejected.
        """
        answer = reply or (lambda _ok, _message: None)
        assert self.pool is not None
        if self.state is DaemonState.DRAINING:
            answer(False, "the daemon is stopping")
            return
        self.notifier.reloading()
        try:
            environment = load_environment(Path(self.config_path).absolute().parent)
            manifest = load_manifest(self.config_path, self.overrides, environment)
        except ConfigError as exc:
            for problem in exc.problems:
                self.log.error(f"reload rejected: {problem}")
            self.notifier.ready(self.status_line())
            answer(False, f"reload rejected; the running app is unchanged:\n{exc}")
            return

        def compiled(images: list[ComponentImage], results: dict[str, CompileResult]) -> None:
            self._finish_reload(manifest, images, results, answer)

        self.start_compile(manifest, compiled)

    def _finish_reload(
        self,
        manifest: Manifest,
        images: list[ComponentImage],
        results: dict[str, CompileResult],
        answer: ReloadReply,
    ) -> None:
        assert self.pool is not None
        if self.state is DaemonState.DRAINING:
            answer(False, "the daemon is stopping")
            return
        broken = [
            result
            for name, result in sorted(results.items())
            if not result.ok and name in self.compile_results and self.compile_results[name].ok
        ]
        problem = "; ".join(result.error for result in broken)
        if not problem:
            try:
                listeners = self._listeners_for(manifest)
            except RusmError as exc:
                problem = str(exc)
        if problem:
            self.log.error(f"reload rejected: {problem}")
            self.notifier.ready(self.status_line())
            answer(False, f"reload rejected; the running app is unchanged: {problem}")
            return
        self.reloads += 1
        self.manifest = manifest
        self.compile_results = results
        self.log.threshold = manifest.log.level
        self.listeners = listeners
        self.pool.listeners = [listener.sock for listener in listeners]
        self._fit_limits(manifest)
        if manifest.node.profile != self.profile and self.overrides.profile is None:
            self.set_profile(manifest.node.profile)
        self.pool.roll(manifest, images)
        self.endpoint.configure(manifest)
        self.notifier.ready(self.status_line())
        self.log.info(
            f"reload: {self.config_path} accepted; rolling {len(self.pool.workers)} worker(s)"
        )
        answer(True, f"reloaded {self.config_path}; rolling the workers one at a time")

    def upgrade(self, reply: UpgradeReply) -> None:
        """Recompile the running manifest's components; load the changed ones in place.

        No worker is replaced and the manifest is not re-read: listeners,
        connections, worker pids and running processes stay; a process
        spawned afterwards (a handler's next request) runs the new code. A
        component that no longer compiles keeps its running version and is
        named in ``failed``. ``reply`` gets (ok, result) with ``changed``,
        the components whose code differs, and ``failed`` (name → error).
        """
        if self.state is DaemonState.DRAINING or self.pool is None:
            reply(False, {"error": "the daemon is stopping or still starting"})
            return
        if self.compiling is not None:
            reply(False, {"error": "a compile is already running (start-up or reload); retry"})
            return

        def compiled(_images: list[ComponentImage], results: dict[str, CompileResult]) -> None:
            self._finish_upgrade(results, reply)

        self.start_compile(self.manifest, compiled)

    def _finish_upgrade(self, results: dict[str, CompileResult], reply: UpgradeReply) -> None:
        if self.state is DaemonState.DRAINING or self.pool is None:
            reply(False, {"error": "the daemon is stopping"})
            return
        old = self.compile_results
        failed = {name: result.reason for name, result in results.items() if not result.ok}
        merged = {
            name: old[name] if not result.ok and name in old and old[name].ok else result
            for name, result in results.items()
        }
        changed = sorted(
            name
            for name, result in merged.items()
            if result.ok and (name not in old or old[name].digest != result.digest)
        )
        if changed:
            self.compile_results = merged
            self.pool.set_components([result.image() for result in merged.values()])
            self.log.info(f"upgrade: loaded {', '.join(changed)} into the running workers")
        reply(True, {"changed": changed, "failed": failed})

    # ── components ──────────────────────────────────────────────────────

    def start_compile(self, manifest: Manifest, done: CompileDone) -> None:
        """Compile ``manifest``'s components in a child; ``done`` gets the images."""
        jobs, failed = jobs_for(manifest)
        self._start_run(manifest, jobs, failed, done)

    def compile_module(self, job: CompileJob, done: CompileDone) -> bool:
        """Compile one ad-hoc module (``rusmctl spawn --module``) with the manifest's limits.

        False when another compile runs (start-up, a reload, an upgrade):
        the caller says to retry. A reload started meanwhile cancels this
        one, and ``done`` then gets its failed result.
        """
        if self.compiling is not None:
            return False
        self._start_run(self.manifest, [job], {}, done)
        assert self.compiling is not None
        self.compiling.cancellable_by_reload = True
        return True

    def _start_run(
        self,
        manifest: Manifest,
        jobs: list[CompileJob],
        failed: dict[str, CompileResult],
        done: CompileDone,
    ) -> None:
        previous = self.compiling
        if previous is not None:
            previous.run.cancel()
            self.compiling = None
            if previous.cancellable_by_reload:  # its caller waits: tell it
                previous.done([], previous.run.results)
        run = CompileRun(
            jobs,
            default_cache_dir(Path(manifest.app_dir), os.environ),
            timeout_s=manifest.node.compile_timeout_s,
            memory_mb=manifest.node.compile_memory_mb,
            log=self.log,
            layout=manifest_layout(manifest),
            reaper=self.reaper,
        )
        self.compiling = _Compiling(run, failed, done)
        run.on_fd_change = self._follow_compile_fd
        if jobs:
            run.start()
        self.compile_step()

    def compile_step(self) -> None:
        """Enforce the compile child's limits; hand over the images when done."""
        compiling = self.compiling
        if compiling is None:
            return
        compiling.run.tick()
        if not compiling.run.done:
            return
        self.compiling = None
        results = {**compiling.failed, **compiling.run.results}
        for result in compiling.failed.values():
            self.log.error(result.error)
        compiling.done([result.image() for result in results.values()], results)

    def _boot_components(
        self, images: list[ComponentImage], results: dict[str, CompileResult]
    ) -> None:
        assert self.pool is not None
        self.compile_results = results
        self.pool.set_components(images)

    def spawn_residents(self) -> None:
        """Boot-spawn each resident component once, when workers and images are ready."""
        pool = self.pool
        if self.residents_spawned or pool is None or pool.images is None:
            return
        if self.state is DaemonState.DRAINING or self.pick_worker() is None:
            return
        self.residents_spawned = True
        runnable = {name for name, result in self.compile_results.items() if result.ok}
        self.residents.start(runnable)

    def pick_worker(self) -> int | None:
        """The next ready worker, round robin; None if none is ready."""
        if self.pool is None:
            return None
        ready = sorted(s for s, h in self.pool.workers.items() if h.state is WorkerState.READY)
        if not ready:
            return None
        self._next_worker += 1
        return ready[self._next_worker % len(ready)]

    def component_states(self) -> list[dict[str, Any]]:
        """Each component's compile state, for ``rusmctl status``."""
        current = self.compiling.run.current if self.compiling else None
        rows = []
        for name in self.manifest.components:
            result = self.compile_results.get(name)
            if current is not None and current[0] == name:
                rows.append({"name": name, "state": "compiling", "detail": f"{current[1]:.1f}s"})
            elif result is None:
                rows.append({"name": name, "state": "pending", "detail": ""})
            elif result.ok:
                detail = "cached" if result.cached else f"compiled in {result.seconds:.2f}s"
                rows.append({"name": name, "state": "ready", "detail": detail})
            else:
                rows.append({"name": name, "state": "failed", "detail": result.error})
        return rows

    def _follow_compile_fd(self, old: int | None, new: int | None) -> None:
        """The compile child's stdout pipe changed (a child started, ended, was replaced)."""
        if old is not None:
            try:
                self.selector.unregister(old)
            except (KeyError, ValueError, OSError):
                pass
        compiling = self.compiling
        if new is not None and compiling is not None:
            run = compiling.run
            self.selector.register(new, selectors.EVENT_READ, lambda _ev: run.on_readable())

    def _follow_endpoint_fd(self, old: int | None, new: int | None) -> None:
        """The node endpoint child's stderr pipe opened or is about to close."""
        if old is not None:
            try:
                self.selector.unregister(old)
            except (KeyError, ValueError, OSError):
                pass
        if new is not None:
            self.selector.register(new, selectors.EVENT_READ, self._endpoint_readable)

    def _endpoint_readable(self, _events: int) -> None:
        self.endpoint.on_readable()

    # ── the pool's events ───────────────────────────────────────────────

    def worker_gone(self, slot: int, reason: str) -> None:
        """A worker exited: answers, names and residents it held, and its peers' links."""
        self.queries.worker_gone(slot)
        self.registry.worker_gone(slot)
        self.residents.worker_gone(slot, reason)
        self._broadcast(WorkerDown(slot=slot, reason=reason))

    def worker_ready(self, slot: int) -> None:
        """A worker became ready: it gets the whole name table."""
        self._send_to_slot(slot, self.registry.snapshot())

    def worker_stopping(self, slot: int) -> None:
        """A worker is being replaced: its residents' coming exits are moves."""
        self.residents.worker_stopping(slot)

    def worker_answer(self, slot: int, answer: Answer) -> None:
        """A worker answered a control query."""
        self.queries.on_answer(slot, answer)

    def worker_log(self, record: LogRecord) -> None:
        """A worker's log record: through ``emit``, the one writer."""
        self.emit(record)

    def actor_message(self, slot: int, message: NameClaim | NameDrop | ProcessExit) -> None:
        """Names claimed and dropped, and residents' exits, from worker ``slot``."""
        if isinstance(message, NameClaim):
            self.registry.claim(slot, message)
        elif isinstance(message, NameDrop):
            self.registry.drop(message)
        elif isinstance(message, ProcessExit):
            self.residents.on_exit(message)

    def _broadcast(self, message: Any) -> None:
        if self.pool is None:
            return
        for slot in list(self.pool.workers):
            self.pool.send_to(slot, message)

    def _send_to_slot(self, slot: int, message: Any) -> None:
        if self.pool is not None:
            self.pool.send_to(slot, message)

    def _send_query(self, slot: int, message: Any) -> bool:
        return self.pool is not None and self.pool.send_to(slot, message)

    def want_write(self, channel: Channel) -> None:
        """Watch a worker channel for writability while output is queued on it."""
        try:
            self.selector.modify(
                channel.sock,
                selectors.EVENT_READ | selectors.EVENT_WRITE,
                self._channel_callback(channel),
            )
        except (KeyError, ValueError):
            pass

    def set_profile(self, profile: Profile) -> int:
        """Change the profile live: the pool grows or drains. Returns the new count."""
        assert self.pool is not None
        self.profile = profile
        count = worker_count(profile, self.cores)
        self.pool.resize(count)
        self.log.info(f"profile {profile}: {count} worker(s)")
        return count

    def status_line(self) -> str:
        """One line for systemd's STATUS= (after a reload too): workers, listeners, socket."""
        workers = len(self.pool.workers) if self.pool else 0
        serve = ", ".join(f"{entry.protocol} {entry.listen}" for entry in self.manifest.serve)
        return (
            f"{workers} worker(s), profile {self.profile}; "
            f"serving {serve or 'nothing (no [[serve]])'}; control {self.socket_path}"
        )

    # ── plumbing ────────────────────────────────────────────────────────

    def emit(self, record: LogRecord) -> None:
        """The single writer of log output: stderr plus the ring for ``rusmctl logs``.

        Never blocks: a stderr that is not read fast enough holds a bounded
        backlog, flushed from the loop, and drops (and counts) the rest.
        """
        self.ring.append(record)
        self.log_output.write_line(self.formatter.format(record))
        self._watch_log_output()

    def _watch_log_output(self) -> None:
        """Watch stderr for writability exactly while lines wait for it."""
        fd = self.log_output.fileno
        wanted = self.log_output.pending and fd is not None
        if fd is None or wanted == self._log_output_watched:
            return
        try:
            if wanted:
                self.selector.register(fd, selectors.EVENT_WRITE, self._flush_log_output)
            else:
                self.selector.unregister(fd)
        except (KeyError, ValueError, OSError):
            return
        self._log_output_watched = wanted

    def _flush_log_output(self, _events: int) -> None:
        self.log_output.flush()
        self._watch_log_output()

    def _log_dropped(self, count: int) -> None:
        """Stderr caught up after losing ``count`` lines: say so, whatever the level."""
        text = f"log: dropped {count} lines: stderr was not read fast enough"
        self.emit(LogRecord(time.time(), RUNTIME_SOURCE, LogLevel.WARN.value, text))

    def watch_channel(self, channel: Channel, watch: bool) -> None:
        """Register (or unregister) a worker channel with the loop."""
        if watch:
            self.selector.register(
                channel.sock, selectors.EVENT_READ, self._channel_callback(channel)
            )
        else:
            try:
                self.selector.unregister(channel.sock)
            except (KeyError, ValueError):
                pass

    def _channel_callback(self, channel: Channel) -> Callable[[int], None]:
        def on_events(events: int) -> None:
            assert self.pool is not None
            if events & selectors.EVENT_WRITE:
                channel.write_ready()
            if events & selectors.EVENT_READ:
                self.pool.on_channel_ready(channel)
            if not channel.closed:
                wanted = selectors.EVENT_READ | (
                    selectors.EVENT_WRITE if channel.wants_write else 0
                )
                self.selector.modify(channel.sock, wanted, on_events)

        return on_events

    def _listeners_for(self, manifest: Manifest) -> list[Listener]:
        current = {listener.address: listener for listener in self.listeners}
        wanted = [entry.listen for entry in manifest.serve]
        fresh = open_listeners(
            tuple(entry for entry in manifest.serve if entry.listen not in current), {}
        )
        by_address = {listener.address: listener for listener in fresh}
        result = [current.get(address) or by_address[address] for address in wanted]
        close_listeners([old for address, old in current.items() if address not in wanted])
        return result

    def _fit_limits(self, manifest: Manifest) -> None:
        """Before workers fork: the open-files limit their connections need, and the backlog."""
        raised = fit_open_files(manifest.serve)
        if raised:
            self.log.info(raised)
        serve = manifest.serve
        for warning in open_files_warnings(serve) + backlog_warnings(serve, read_somaxconn()):
            self.log.warn(warning)

    def _enqueue_signal(self, signum: int, _frame: object) -> None:
        self.signals.append(signum)

    def _drain_wakeup(self, _events: int) -> None:
        try:
            while os.read(self._wakeup_r, 512):
                pass
        except BlockingIOError:
            pass

    def _dispatch(self, request: dict[str, Any], connection: Any) -> dict[str, Any] | None:
        return dispatch(self, request, connection)

    def cleanup(self) -> None:
        """Release what the main process holds; workers are gone by now."""
        if self.compiling is not None:
            self.compiling.run.cancel()
            self.compiling = None
        self.endpoint.close()
        self.control.close()
        close_listeners(self.listeners)
        signal.set_wakeup_fd(-1)
        self.log.info("stop: done")
        self.log_output.close()
