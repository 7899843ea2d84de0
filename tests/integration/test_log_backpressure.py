"""Logging never wedges the daemon nor floods its log (issue #17).

Runs in: any (the test process; ``rusmd`` runs as a subprocess).

Two threats: a stderr nobody reads (a paused pager, a slow journald, a
full pipe), which must not stop the main loop; and a guest that logs or
fails to spawn in a tight loop, whose lines are held to a per-process
budget and summarised. Also: a guest line of 1 MiB, cut, names how many
bytes it lost.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import wasmtime

from rusmd.errors import EX_OK
from rusmd.log import GUEST_LOG_BURST_LINES, GUEST_LOG_LINES_PER_S
from tests.integration.conftest import (
    SCRUBBED_VARIABLES,
    STOP_TIMEOUT_S,
    App,
    Daemon,
    all_ready,
)
from tests.integration.httpkit import Wire, write_http_app

GUESTS = Path(__file__).resolve().parent.parent / "guests"
# Long enough for a loaded two-core machine to spawn, run and log.
SETTLE_S = 30.0
# HTTP load at level debug: each request logs an access line (~50 bytes),
# so this writes well over a pipe's 64 KiB plus the main process's backlog.
LOAD_CLIENTS = 4
LOAD_REQUESTS_PER_CLIENT = 2500
# The token bucket's promise, with room for lines logged at the same
# millisecond as the window's edges.
BUDGET_SLACK_LINES = 3
# Lines of other processes that may land between a process's last summary
# and its exit line (the test's neighbour is done by then).
EXIT_WINDOW_LINES = 5

LINE = re.compile(r"^(\d\d):(\d\d):(\d\d)\.(\d{3}) (\S+)\s+(\w+)\s+(.*)$")


# ── a daemon whose stderr is a pipe the test reads only when it chooses ──


class PipedDaemon(Daemon):
    """``Daemon`` with stdout and stderr on one pipe, which nobody reads until ``read_pipe``."""

    def start(self) -> PipedDaemon:
        environment = {k: v for k, v in os.environ.items() if k not in SCRUBBED_VARIABLES}
        environment.update(NO_COLOR="1", PYTHONUNBUFFERED="1", **self.env)
        command = [sys.executable, "-m", "rusmd", "--config", str(self.app.manifest)]
        command += ["--cpus", str(self.cpus), "--profile", str(self.profile)]
        self.proc = subprocess.Popen(
            command,
            cwd=self.app.directory,
            env=environment,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.received = bytearray()
        self.reader: threading.Thread | None = None
        return self

    def read_pipe(self) -> None:
        """From now on, read everything the daemon writes (in a thread)."""
        assert self.proc is not None and self.proc.stdout is not None
        stream = self.proc.stdout

        def pump() -> None:
            while chunk := stream.read1(65536):
                self.received += chunk

        self.reader = threading.Thread(target=pump, daemon=True)
        self.reader.start()

    def lines(self) -> list[str]:
        return bytes(self.received).decode(errors="replace").splitlines()

    def read_log(self) -> str:
        return "\n".join(self.lines()) or "(stderr is a pipe; the test had not read it)"


@pytest.fixture
def piped(app: App, tmp_path: Path) -> Iterator[Callable[[], PipedDaemon]]:
    daemons: list[PipedDaemon] = []

    def start() -> PipedDaemon:
        write_http_app(app, log_level="debug")
        daemon = PipedDaemon(app, tmp_path / "unused.log")
        daemons.append(daemon)
        daemon.start()
        daemon.wait_ready()
        return daemon

    yield start
    for daemon in daemons:
        daemon.kill_group()
        if daemon.reader is not None:
            daemon.reader.join(timeout=STOP_TIMEOUT_S)  # the pipe ends with the daemon
        if daemon.proc is not None and daemon.proc.stdout is not None:
            daemon.proc.stdout.close()


def http_load(port: int) -> list[int]:
    """``LOAD_CLIENTS`` keep-alive clients, each sending its requests in turn; the statuses."""
    statuses: list[int] = []

    def client() -> None:
        with Wire(port) as wire:
            for _ in range(LOAD_REQUESTS_PER_CLIENT):
                statuses.append(wire.request("GET", "/").status)

    threads = [threading.Thread(target=client) for _ in range(LOAD_CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return statuses


def test_stderr_never_read_under_http_load_status_answers_and_sigterm_exits_0(
    piped: Callable[[], PipedDaemon], app: App
) -> None:
    daemon = piped()

    statuses = http_load(app.serve_port)
    raw_status = daemon.status()
    rusmctl_status = daemon.ctl("status", timeout_s=STOP_TIMEOUT_S)
    code = daemon.stop()

    assert statuses == [200] * LOAD_CLIENTS * LOAD_REQUESTS_PER_CLIENT
    assert all_ready(raw_status)
    assert rusmctl_status.returncode == EX_OK, rusmctl_status.stderr
    assert code == EX_OK


def test_stderr_read_late_gets_the_kept_lines_then_a_dropped_count(
    piped: Callable[[], PipedDaemon], app: App
) -> None:
    daemon = piped()
    http_load(app.serve_port)

    daemon.read_pipe()
    dropped = daemon.wait_for(
        lambda: [line for line in daemon.lines() if "log: dropped" in line],
        SETTLE_S,
        "the dropped-lines count once the reader caught up",
    )
    with Wire(app.serve_port) as wire:
        assert wire.request("GET", "/counter").status == 200
    after = daemon.wait_for(
        lambda: [line for line in daemon.lines() if "GET /counter" in line],
        SETTLE_S,
        "a request's access line after the catch-up",
    )
    lines = daemon.lines()

    assert len(dropped) == 1
    match = re.search(r"log: dropped (\d+) lines: stderr was not read fast enough", dropped[0])
    assert match is not None, dropped[0]
    assert int(match.group(1)) > 0
    assert lines.index(dropped[0]) < lines.index(after[0])
    assert daemon.stop() == EX_OK


# ── guests that log or spawn in a tight loop ────────────────────────────


def write_guest_app(app: App) -> None:
    wasm = app.directory / "wasm"
    wasm.mkdir(exist_ok=True)
    for name in ("flood", "spawnloop", "hello", "biglog"):
        wat = (GUESTS / f"{name}.wat").read_text()
        (wasm / f"{name}.wasm").write_bytes(wasmtime.wat2wasm(wat))
    app.manifest.write_text(
        f'[node]\nlisten = "127.0.0.1:{app.node_port}"\n[log]\nlevel = "debug"\n'
        # The loops run until the test kills them, not until a CPU budget.
        "[capabilities.looper]\nallow-spawn = true\nmax-cpu-ms = 600000\n"
        '[components.flood]\ncapability = "looper"\n'
        '[components.spawnloop]\ncapability = "looper"\n'
        "[components.hello]\n[components.biglog]\n"
    )


def spawn(daemon: Daemon, name: str) -> str:
    result = daemon.ctl("spawn", name, "--json")
    assert result.returncode == EX_OK, result.stderr
    label: str = json.loads(result.stdout)["label"]
    return label


def alive(daemon: Daemon, label: str) -> bool:
    reply = daemon.request("list")
    assert reply["ok"], reply
    return any(f"{row['component']}#{row['pid']}" == label for row in reply["result"]["processes"])


def log_lines(daemon: Daemon) -> list[tuple[float, str, str, str]]:
    """(seconds of the day, source, level, text) of every line in the daemon's log."""
    rows = []
    for line in daemon.read_log().splitlines():
        match = LINE.match(line)
        if match:
            hours, minutes, seconds, millis = (int(match.group(i)) for i in range(1, 5))
            at = hours * 3600 + minutes * 60 + seconds + millis / 1000
            rows.append((at, match.group(5), match.group(6), match.group(7)))
    return rows


def suppressed_counts(daemon: Daemon, label: str) -> list[int]:
    pattern = re.compile(rf"^log: suppressed (\d+) lines from {re.escape(label)} ")
    return [
        int(match.group(1))
        for _at, _source, _level, text in log_lines(daemon)
        if (match := pattern.match(text))
    ]


def within_budget(times: list[float]) -> bool:
    """Whether lines at ``times`` fit the token bucket: burst plus rate over their span."""
    if not times:
        return True
    span_s = (max(times) - min(times)) % 86400
    return len(times) <= GUEST_LOG_BURST_LINES + GUEST_LOG_LINES_PER_S * span_s + BUDGET_SLACK_LINES


@pytest.mark.parametrize(
    ("component", "needle"),
    [("flood", "flood line"), ("spawnloop", "failed")],
    ids=["logging", "spawning"],
)
def test_guest_in_a_tight_loop_logs_within_its_budget_with_a_suppressed_summary(
    app: App, start_daemon: Callable[..., Daemon], component: str, needle: str
) -> None:
    write_guest_app(app)
    daemon = start_daemon(cpus=2)  # one worker: the loop and the neighbours share it

    looping = spawn(daemon, component)
    daemon.wait_for(lambda: suppressed_counts(daemon, looping), SETTLE_S, "a suppressed summary")
    status = daemon.ctl("status")
    neighbour = spawn(daemon, "hello")
    daemon.wait_for(
        lambda: any(source == neighbour for _, source, _, _ in log_lines(daemon)),
        SETTLE_S,
        "the neighbour's line",
    )
    still_looping = alive(daemon, looping)
    assert daemon.ctl("kill", looping).returncode == EX_OK
    daemon.wait_for(
        lambda: any(f"exit {looping} killed" in text for *_, text in log_lines(daemon)),
        SETTLE_S,
        "the loop's exit",
    )

    lines = log_lines(daemon)
    shown = [
        at
        for at, source, _level, text in lines
        if needle in text and (source == looping or looping in text)
    ]
    summaries = suppressed_counts(daemon, looping)
    exit_at = next(i for i, (*_, text) in enumerate(lines) if f"exit {looping} killed" in text)
    assert status.returncode == EX_OK, status.stderr
    assert still_looping, f"{looping} ended before the neighbours were served"
    assert shown and within_budget(shown), f"{len(shown)} lines shown"
    assert sum(summaries) > len(shown)
    # What was held back since the last summary is reported as the process ends.
    assert any(
        text.startswith("log: suppressed ") and looping in text
        for *_, text in lines[max(exit_at - EXIT_WINDOW_LINES, 0) : exit_at]
    )


def test_guest_log_line_of_1_mib_is_cut_naming_every_byte_left_out(
    app: App, start_daemon: Callable[..., Daemon]
) -> None:
    write_guest_app(app)
    daemon = start_daemon(cpus=2)

    label = spawn(daemon, "biglog")
    daemon.wait_for(
        lambda: any(f"exit {label} normal" in text for *_, text in log_lines(daemon)),
        SETTLE_S,
        "the exit",
    )
    records: list[dict[str, Any]] = [r for r in daemon.log_records() if r["source"] == label]
    stderr_lines = [text for _, source, _, text in log_lines(daemon) if source == label]

    assert len(records) == len(stderr_lines) == 1
    for text in (records[0]["text"], stderr_lines[0]):
        match = re.fullmatch(r"(a+)…\[truncated (\d+) bytes\]", text)
        assert match is not None, text[-80:]
        assert len(match.group(1)) + int(match.group(2)) == 1 << 20
