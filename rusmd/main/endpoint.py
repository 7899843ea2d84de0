"""Start the node endpoint child and keep it running.

Runs in: main; it starts ``python -m rusmd.node`` and never imports it.

The node endpoint (``[node] listen``: the dashboard, the attach stream,
the JSON API and ``/metrics``) is a child of the main process, a sibling
of the workers in the supervision tree. Why a child and not the main
process or a worker: the main process has no event loop and no threads
and never imports ``websockets`` (it forks), and a worker serves the
app's traffic: a dashboard there would share its loop with the requests
it measures, and a killed worker would take the page showing its restart
down with it. The child is started fresh (``subprocess``, not a fork), so
it holds nothing of the main process but the environment, and it talks
to the main process the way ``rusmctl`` does, over the control socket.

The child binds ``[node] listen`` itself. When it exits (it cannot bind,
it crashed, it was killed) it is started again after a backoff that
doubles from ``RESTART_MIN_S`` to ``RESTART_MAX_S`` and resets once a
child has run ``STABLE_AFTER_S``; the daemon never stops for it. Its
stderr comes back through a pipe and each line is logged as
``node endpoint: …`` (a leading ``error``/``warn``/``info``/``debug``
word sets the level). A reload that changes ``listen``,
``ticks_per_second`` or the token restarts it.

The token (``[node] auth-token-env``) is resolved here, from the
environment and the app's ``.env``, and handed to the child in
``TOKEN_VARIABLE``, never on its command line (``ps`` shows that). A
token named but unset (only allowed on loopback; ``rusmd check`` warns)
fails closed: the child gets a random one nobody knows.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from rusmd.config import load_environment
from rusmd.config.model import LogLevel, Manifest
from rusmd.log import Logger
from rusmd.main.compile import SCRUBBED_VARIABLES
from rusmd.main.reaper import Reaper, describe_exit
from rusmd.node.auth import TOKEN_VARIABLE

ENDPOINT_MODULE = "rusmd.node"
# Restart backoff: a child that cannot bind (the port is taken) must not
# spin the main loop, and should come back soon once the port is free.
RESTART_MIN_S = 1.0
RESTART_MAX_S = 30.0
STABLE_AFTER_S = 30.0
# cleanup waits this long for the child after SIGTERM, then SIGKILLs it.
STOP_GRACE_S = 2.0
# One stderr read; a chatty child cannot hold the loop.
MAX_READ_BYTES = 64 * 1024
# A longer line is cut: a broken child must not grow the main process.
MAX_LINE_BYTES = 4096
_LEVELS = {level.value: level for level in LogLevel}

FdChange = Callable[[int | None, int | None], None]


class NodeEndpoint:
    """The node endpoint child: started, watched, restarted, stopped.

    Args:
        manifest: Where ``[node]`` comes from.
        socket_path: The control socket the child talks to.
        log: Where ``node endpoint: …`` lines go.
        reaper: The main process's reaper; claims the child.
        on_fd_change: Called ``(old_fd, None)`` before the child's stderr
            pipe is closed and ``(None, new_fd)`` after a new one opens.
        clock: Monotonic seconds; injected by tests.
    """

    def __init__(
        self,
        manifest: Manifest,
        socket_path: Path,
        log: Logger,
        reaper: Reaper,
        *,
        on_fd_change: FdChange,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.manifest = manifest
        self.socket_path = socket_path
        self.log = log
        self.reaper = reaper
        self.on_fd_change = on_fd_change
        self.clock = clock
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self.restart_at: float | None = None
        self.backoff_s = RESTART_MIN_S
        self.restarts = 0
        self.stopped = False
        self._buffer = bytearray()
        self._unknowable = secrets.token_urlsafe(32)
        self._key = self._settings(manifest)

    # ── life ────────────────────────────────────────────────────────────

    def start(self) -> None:
        """Start the child now."""
        self.restart_at = None
        node = self.manifest.node
        environment = {k: v for k, v in os.environ.items() if k not in SCRUBBED_VARIABLES}
        environment.pop(TOKEN_VARIABLE, None)
        token = self._key[2]
        if token:
            environment[TOKEN_VARIABLE] = token
        command = [
            sys.executable,
            "-m",
            ENDPOINT_MODULE,
            "--listen",
            node.listen,
            "--socket",
            str(self.socket_path),
            "--ticks",
            str(node.ticks_per_second),
            "--parent",
            str(os.getpid()),
        ]
        try:
            proc = subprocess.Popen(
                command,
                env=environment,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                close_fds=True,
            )
        except OSError as exc:
            self.log.error(f"node endpoint: cannot start: {exc}")
            self._schedule_restart()
            return
        self.reaper.claim(proc.pid, self._exited)
        assert proc.stderr is not None
        os.set_blocking(proc.stderr.fileno(), False)
        self.proc = proc
        self.started_at = self.clock()
        self.on_fd_change(None, proc.stderr.fileno())
        self.log.info(f"node endpoint: pid {proc.pid} starting on {node.listen}")

    def tick(self) -> None:
        """Start the child again once its backoff has passed."""
        if self.stopped or self.proc is not None or self.restart_at is None:
            return
        if self.clock() >= self.restart_at:
            self.restarts += 1
            self.start()

    def configure(self, manifest: Manifest) -> None:
        """A reload: restart the child if its listen, rate or token changed."""
        key = self._settings(manifest)
        self.manifest = manifest
        if key == self._key:
            return
        self._key = key
        self.backoff_s = RESTART_MIN_S
        if self.proc is not None:
            self.log.info("node endpoint: settings changed; restarting it")
            self._signal(signal.SIGTERM)  # its exit schedules the start
        elif not self.stopped:
            self.start()

    def stop(self) -> None:
        """SIGTERM the child and start no other (the drain; never waits)."""
        self.stopped = True
        self.restart_at = None
        self._signal(signal.SIGTERM)

    def close(self) -> None:
        """At exit: stop the child, wait for it up to ``STOP_GRACE_S``, then SIGKILL it."""
        self.stop()
        proc = self.proc
        if proc is None:
            return
        self.reaper.release(proc.pid)  # collected here, not by the reaper's waitpid(-1)
        try:
            proc.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            self._signal(signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=STOP_GRACE_S)
        self._close_pipe()
        self.proc = None

    @property
    def pid(self) -> int | None:
        """The running child's pid, or None."""
        return self.proc.pid if self.proc is not None else None

    # ── the child's output and exit ─────────────────────────────────────

    def on_readable(self) -> None:
        """Log the child's complete stderr lines."""
        proc = self.proc
        if proc is None or proc.stderr is None or proc.stderr.closed:
            return
        try:
            data = os.read(proc.stderr.fileno(), MAX_READ_BYTES)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._flush_lines(final=True)
            self._close_pipe()
            return
        self._buffer += data
        self._flush_lines(final=False)

    def _flush_lines(self, *, final: bool) -> None:
        while True:
            end = self._buffer.find(b"\n")
            if end < 0:
                if final or len(self._buffer) > MAX_LINE_BYTES:
                    end = len(self._buffer)
                else:
                    return
            line = bytes(self._buffer[:end][:MAX_LINE_BYTES]).decode("utf-8", "replace").rstrip()
            del self._buffer[: end + 1]
            if line:
                self._log_line(line)
            if not self._buffer:
                return

    def _log_line(self, line: str) -> None:
        word, _, rest = line.partition(" ")
        level = _LEVELS.get(word)
        if level is None:
            self.log.error(f"node endpoint: {line}")
        elif level is LogLevel.ERROR:
            self.log.error(f"node endpoint: {rest}")
        elif level is LogLevel.WARN:
            self.log.warn(f"node endpoint: {rest}")
        elif level is LogLevel.INFO:
            self.log.info(f"node endpoint: {rest}")
        else:
            self.log.debug(f"node endpoint: {rest}")

    def _exited(self, pid: int, status: int) -> None:
        proc = self.proc
        if proc is None or proc.pid != pid:
            return
        proc.returncode = os.waitstatus_to_exitcode(status)
        self.on_readable()  # its last words, if the pipe still holds them
        self._flush_lines(final=True)
        self._close_pipe()
        self.proc = None
        if self.stopped:
            return
        if self.clock() - self.started_at >= STABLE_AFTER_S:
            self.backoff_s = RESTART_MIN_S
        self.log.warn(
            f"node endpoint: pid {pid} exited ({describe_exit(status)}); "
            f"restarting in {self.backoff_s:g}s"
        )
        self._schedule_restart()

    def _schedule_restart(self) -> None:
        self.restart_at = self.clock() + self.backoff_s
        self.backoff_s = min(RESTART_MAX_S, self.backoff_s * 2)

    def _close_pipe(self) -> None:
        proc = self.proc
        if proc is None or proc.stderr is None or proc.stderr.closed:
            return
        self.on_fd_change(proc.stderr.fileno(), None)
        proc.stderr.close()

    def _signal(self, signum: int) -> None:
        proc = self.proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signum)

    def _settings(self, manifest: Manifest) -> tuple[str, int, str]:
        """(listen, ticks, token): what the running child was started with."""
        node = manifest.node
        token = ""
        if node.auth_token_env:
            environment = load_environment(Path(manifest.app_dir))
            # A token named but unset fails closed: one nobody knows, so every request is 401.
            token = environment.get(node.auth_token_env) or self._unknowable
        return node.listen, node.ticks_per_second, token
