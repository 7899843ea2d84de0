"""A harness that runs the real ``rusmd`` as a subprocess and talks to it.

Runs in: any (the test process; the daemon is ``python -m rusmd`` in its
own session, so its whole process tree is one process group).

``Daemon`` starts the daemon on free loopback ports, waits until its
control socket answers, speaks the control protocol directly for fast
polling, runs the real ``rusmctl`` where a test is about it, and kills the
whole process group at teardown. When a test fails, the daemon's log is
added to the failure report.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import psutil
import pytest

from rusmd.config.model import Profile
from rusmd.control.protocol import MAX_REPLY_BYTES, FrameReader, encode_frame

T = TypeVar("T")

# How often a condition is polled: fast enough to catch a 1 s quarantine.
POLL_INTERVAL_S = 0.05
# Start-up forks every worker and imports uvloop in each; a loaded machine
# with two cores can take a while.
READY_TIMEOUT_S = 30.0
# One control request; the daemon answers every command at once.
REQUEST_TIMEOUT_S = 10.0
# SIGTERM drains workers that do nothing yet, so the exit is quick.
STOP_TIMEOUT_S = 30.0

# Variables of the test's own environment that would change the daemon's
# behaviour (systemd's, rusmctl's socket search, colour).
SCRUBBED_VARIABLES = (
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "LISTEN_PID",
    "LISTEN_FDS",
    "LISTEN_FDNAMES",
    "RUNTIME_DIRECTORY",
    "RUSMD_SOCKET",
)

DAEMONS_KEY = pytest.StashKey[list["Daemon"]]()


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def manifest_text(node_port: int, serve_port: int, extra: str = "") -> str:
    """The test app: one HTTP listener, one component, debug logging."""
    return (
        f'[node]\nlisten = "127.0.0.1:{node_port}"\n'
        '[log]\nlevel = "debug"\n'
        f'[[serve]]\nprotocol = "http"\nlisten = "127.0.0.1:{serve_port}"\n'
        f'[serve.routes]\n"GET /" = "api#home"\n{extra}'
        "[components.api]\n"
    )


def wait_for(
    predicate: Callable[[], T], timeout_s: float, description: str, *, on_timeout: str = ""
) -> T:
    """Poll ``predicate`` until it returns something truthy; return that.

    Raises:
        AssertionError: ``timeout_s`` passed first (names ``description``).
    """
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            detail = f"; {on_timeout}" if on_timeout else ""
            raise AssertionError(
                f"timed out after {timeout_s:g}s waiting for {description}{detail}"
            )
        time.sleep(POLL_INTERVAL_S)


def process_gone(pid: int, parent_pid: int) -> bool:
    """True once ``pid`` has exited: no such process, or a zombie nobody we know holds.

    Orphans are reparented to pid 1, which may not reap them; an orphan
    zombie has exited all the same. A zombie whose parent is still
    ``parent_pid`` means the daemon has not reaped it, which is not gone.
    """
    try:
        process = psutil.Process(pid)
        return process.status() == psutil.STATUS_ZOMBIE and process.ppid() != parent_pid
    except psutil.NoSuchProcess:
        return True


def request_socket(path: Path, document: dict[str, Any]) -> dict[str, Any]:
    """One request, one reply frame, over a fresh connection to ``path``."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(REQUEST_TIMEOUT_S)
        conn.connect(str(path))
        conn.sendall(encode_frame(document))
        return read_frame(conn)


def read_frame(conn: socket.socket) -> dict[str, Any]:
    """The next frame on ``conn``; EOFError when the daemon hangs up first."""
    reader = FrameReader(MAX_REPLY_BYTES)
    while True:
        data = conn.recv(65536)
        if not data:
            raise EOFError("the daemon closed the connection")
        frames = reader.feed(data)
        if frames:
            return frames[0]


@dataclass
class App:
    """An app directory with its manifest and ports."""

    directory: Path
    node_port: int
    serve_port: int

    @property
    def manifest(self) -> Path:
        return self.directory / "rusm.toml"

    @property
    def socket_path(self) -> Path:
        return self.directory / ".rusm" / "rusmd.sock"

    def write(self, extra: str = "") -> None:
        self.manifest.write_text(manifest_text(self.node_port, self.serve_port, extra))


class Daemon:
    """One ``rusmd`` subprocess and the ways a test drives it.

    Args:
        app: The app directory (its manifest is written already).
        log_path: Where the daemon's stdout and stderr go.
        profile: ``--profile``.
        cpus: ``--cpus``: the core count profiles are sized by.
        env: Extra environment for the daemon.
        program: The command that starts ``rusmd``. Optional; defaults to
            this interpreter's ``python -m rusmd``.
        unset: Variables of the test's environment the daemon must not see.
    """

    def __init__(
        self,
        app: App,
        log_path: Path,
        *,
        profile: Profile = Profile.LIGHT,
        cpus: int = 8,
        env: dict[str, str] | None = None,
        program: list[str] | None = None,
        unset: tuple[str, ...] = (),
    ) -> None:
        self.app = app
        self.log_path = log_path
        self.profile = profile
        self.cpus = cpus
        self.env = env or {}
        self.program = program or [sys.executable, "-m", "rusmd"]
        self.unset = unset
        self.proc: subprocess.Popen[bytes] | None = None

    # ── life ────────────────────────────────────────────────────────────

    def start(self) -> Daemon:
        dropped = {*SCRUBBED_VARIABLES, *self.unset}
        environment = {k: v for k, v in os.environ.items() if k not in dropped}
        environment.update(NO_COLOR="1", PYTHONUNBUFFERED="1", **self.env)
        command = [
            *self.program,
            "--config",
            str(self.app.manifest),
            "--cpus",
            str(self.cpus),
            "--profile",
            str(self.profile),
        ]
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                command,
                cwd=self.app.directory,
                env=environment,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None, "the daemon was not started"
        return self.proc.pid

    @property
    def socket_path(self) -> Path:
        return self.app.socket_path

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_ready(self, deadline: float | None = None) -> dict[str, Any]:
        """Wait until the daemon runs with every target worker ready; return status."""
        if deadline is None:
            deadline = time.monotonic() + READY_TIMEOUT_S
        return wait_for(
            self._ready_status,
            max(0.0, deadline - time.monotonic()),
            "the daemon and all its workers to be ready",
            on_timeout=f"last status: {self._try_status()}",
        )

    def _ready_status(self) -> dict[str, Any] | None:
        if not self.alive():
            raise AssertionError(f"rusmd exited with {self.exit_code()} before it was ready")
        status = self._try_status()
        if status is None or status["daemon"]["state"] != "running":
            return None
        return status if all_ready(status) else None

    def _try_status(self) -> dict[str, Any] | None:
        try:
            return self.status()
        except (OSError, EOFError):
            return None

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM the main process and wait for it; return its exit code."""
        self.signal(signal.SIGTERM)
        return self.wait_exit(timeout_s)

    def wait_exit(self, timeout_s: float = STOP_TIMEOUT_S) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout_s)

    def exit_code(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def signal(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def kill_group(self) -> None:
        """SIGKILL everything left in the daemon's process group, and reap the main process."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass  # the group is empty
        try:
            self.proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pass

    # ── control ─────────────────────────────────────────────────────────

    def request(self, command: str, **args: Any) -> dict[str, Any]:
        """One control request over the raw protocol; the reply document."""
        return request_socket(self.socket_path, {"command": command, "args": args})

    def status(self) -> dict[str, Any]:
        """The ``status`` result; fails the test if the daemon refuses."""
        reply = self.request("status")
        assert reply["ok"], reply
        result: dict[str, Any] = reply["result"]
        return result

    def workers(self) -> dict[int, dict[str, Any]]:
        """Status rows by slot."""
        return {row["slot"]: row for row in self.status()["workers"]}

    def wait_for(self, predicate: Callable[[], T], timeout_s: float, description: str) -> T:
        """``wait_for``, failing at once if the daemon has exited meanwhile."""

        def checked() -> T:
            if not self.alive():
                raise AssertionError(
                    f"rusmd exited with {self.exit_code()} while waiting for {description}"
                )
            return predicate()

        return wait_for(checked, timeout_s, description)

    def ctl(self, *args: str, timeout_s: float = 60.0) -> subprocess.CompletedProcess[str]:
        """Run the real ``rusmctl`` with ``args`` and this daemon's socket."""
        return run_rusmctl(
            *args, "--socket", str(self.socket_path), cwd=self.app.directory, timeout_s=timeout_s
        )

    def log_records(self) -> list[dict[str, Any]]:
        """Every record the daemon kept, oldest first (``rusmctl logs --json``)."""
        result = self.ctl("logs", "--json", "-n", "1000")
        assert result.returncode == 0, result.stderr
        records: list[dict[str, Any]] = json.loads(result.stdout)["records"]
        return records

    def read_log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log file)"


def all_ready(status: dict[str, Any]) -> bool:
    """Every target slot has a ready worker, and no other slot has a worker."""
    workers = status["workers"]
    target = status["daemon"]["workers_target"]
    return [w["slot"] for w in workers] == list(range(target)) and all(
        w["state"] == "ready" for w in workers
    )


def run_rusmctl(*args: str, cwd: Path, timeout_s: float = 60.0) -> subprocess.CompletedProcess[str]:
    """``python -m rusmctl ARGS`` with systemd's and rusmctl's variables removed."""
    environment = {k: v for k, v in os.environ.items() if k not in SCRUBBED_VARIABLES}
    return subprocess.run(
        [sys.executable, "-m", "rusmctl", *args],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


# ── fixtures ────────────────────────────────────────────────────────────


@pytest.fixture
def app(tmp_path_factory: pytest.TempPathFactory) -> App:
    """A fresh app dir with the test manifest on free ports.

    The directory comes from ``mktemp`` with a short name rather than
    ``tmp_path``: a unix socket path must fit in 108 bytes, and a test's
    ``tmp_path`` carries its (long) name.
    """
    application = App(tmp_path_factory.mktemp("app"), free_port(), free_port())
    application.write()
    return application


@pytest.fixture
def start_daemon(
    request: pytest.FixtureRequest, app: App, tmp_path: Path
) -> Iterator[Callable[..., Daemon]]:
    """Start ``rusmd`` for ``app`` (keyword args as ``Daemon``); ready unless ``wait=False``."""
    daemons = request.node.stash.setdefault(DAEMONS_KEY, [])

    def start(*, wait: bool = True, **options: Any) -> Daemon:
        daemon = Daemon(app, tmp_path / f"rusmd-{len(daemons)}.log", **options)
        daemons.append(daemon)
        daemon.start()
        if wait:
            daemon.wait_ready()
        return daemon

    yield start
    for daemon in daemons:
        daemon.kill_group()


@pytest.fixture
def daemon(start_daemon: Callable[..., Daemon]) -> Daemon:
    """A running daemon: profile light on 8 cores, every worker ready."""
    return start_daemon()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Attach each daemon's log to the report of a failed phase."""
    outcome = yield
    report = outcome.get_result()
    if not report.failed:
        return
    for daemon in item.stash.get(DAEMONS_KEY, []):
        report.sections.append((f"rusmd log {daemon.log_path}", daemon.read_log()))
