"""Hostile control clients: deep frames, idle connections, dribblers (issue #17).

Runs in: any (the test process; ``rusmd`` runs as a subprocess and the
test talks to its control socket over real unix sockets).

Each case shows the clear outcome for the hostile connection and that
the daemon, its workers and a well-behaved client are untouched.
"""

from __future__ import annotations

import json
import resource
import socket
import struct
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import psutil
import pytest

from rusmd.control.protocol import MAX_NESTING_DEPTH, encode_frame
from rusmd.control.server import ACCEPT_RETRY_S, FIRST_FRAME_TIMEOUT_S, MAX_CLIENTS
from rusmd.errors import EX_OK, EX_REFUSED
from tests.integration.conftest import Daemon, all_ready, read_frame

# A generous bound on one socket wait on a loaded two-core machine.
SOCKET_TIMEOUT_S = 30.0
# More idle connections than the daemon admits at once (MAX_CLIENTS).
IDLE_CONNECTIONS = 100

NESTED_FRAMES = {
    "arrays": b"[" * 100_000 + b"]" * 100_000,
    "objects": b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
    "inside-args": b'{"command":"status","args":{"x":' + b"[" * 10_000 + b"]" * 10_000 + b"}}",
    "unbalanced": b"[" * 1_000_000,
}


def connect(path: Path) -> socket.socket:
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.settimeout(SOCKET_TIMEOUT_S)
    conn.connect(str(path))
    return conn


@contextmanager
def held_connections(path: Path, count: int) -> Iterator[list[socket.socket]]:
    """``count`` connections that say nothing, closed at the end."""
    with ExitStack() as stack:
        yield [stack.enter_context(connect(path)) for _ in range(count)]


def worker_pids(daemon: Daemon) -> list[int]:
    return [row["pid"] for row in daemon.status()["workers"]]


def status_over(conn: socket.socket) -> dict[str, object]:
    conn.sendall(encode_frame({"command": "status", "args": {}}))
    return read_frame(conn)


@pytest.mark.parametrize("payload", list(NESTED_FRAMES.values()), ids=list(NESTED_FRAMES))
def test_control_frame_nested_deep_is_refused_and_the_daemon_keeps_serving(
    daemon: Daemon, payload: bytes
) -> None:
    workers_before = worker_pids(daemon)

    with connect(daemon.socket_path) as bystander, connect(daemon.socket_path) as hostile:
        hostile.sendall(struct.pack(">I", len(payload)) + payload)
        reply = read_frame(hostile)
        closed = hostile.recv(1) == b""
        answered = status_over(bystander)

    assert reply["ok"] is False
    assert reply["code"] == EX_REFUSED
    assert f"deeper than {MAX_NESTING_DEPTH} levels" in str(reply["error"])
    assert closed, "the daemon kept the hostile connection open"
    assert answered["ok"] is True
    assert daemon.alive()
    result = daemon.ctl("status")
    assert result.returncode == EX_OK, result.stderr
    assert all_ready(daemon.status())
    assert worker_pids(daemon) == workers_before


def test_control_frame_nested_at_the_limit_is_served(daemon: Daemon) -> None:
    depth = MAX_NESTING_DEPTH - 2  # the frame and its args take two levels

    reply = daemon.request("status", x=json.loads("[" * depth + "]" * depth))

    assert reply["ok"] is True, reply


def test_control_100_idle_connections_leave_rusmctl_status_answering(daemon: Daemon) -> None:
    workers_before = worker_pids(daemon)

    with held_connections(daemon.socket_path, IDLE_CONNECTIONS) as idle:
        result = daemon.ctl("status", "--json")
        with connect(daemon.socket_path) as bystander:
            answered = status_over(bystander)
        held = len(idle)

    assert held == IDLE_CONNECTIONS > MAX_CLIENTS
    assert result.returncode == EX_OK, result.stderr
    assert json.loads(result.stdout)["workers"]
    assert answered["ok"] is True
    assert worker_pids(daemon) == workers_before


def test_control_at_the_connection_cap_the_oldest_silent_connection_makes_room(
    daemon: Daemon,
) -> None:
    with held_connections(daemon.socket_path, MAX_CLIENTS) as idle:
        # A client that sent a request and got its answer is no longer silent.
        answered_before = status_over(idle[-1])
        result = daemon.ctl("status")
        idle[0].settimeout(SOCKET_TIMEOUT_S)
        oldest_closed = idle[0].recv(1) == b""
        still_served = status_over(idle[-1])

    assert answered_before["ok"] is True
    assert result.returncode == EX_OK, result.stderr
    assert oldest_closed, "the oldest silent connection was not the one to make room"
    assert still_served["ok"] is True


@pytest.mark.parametrize(
    "sent",
    [b"", struct.pack(">I", 64) + b'{"command":'],
    ids=["nothing", "part-of-a-frame"],
)
def test_control_connection_without_a_whole_frame_is_closed_after_the_first_frame_timeout(
    daemon: Daemon, sent: bytes
) -> None:
    with connect(daemon.socket_path) as silent:
        silent.sendall(sent)
        silent.settimeout(FIRST_FRAME_TIMEOUT_S + SOCKET_TIMEOUT_S)
        closed = silent.recv(1) == b""

    assert closed
    assert daemon.ctl("status").returncode == EX_OK


def test_control_socket_out_of_descriptors_waits_warns_once_and_recovers(daemon: Daemon) -> None:
    main = psutil.Process(daemon.pid)
    soft, hard = resource.prlimit(daemon.pid, resource.RLIMIT_NOFILE)
    # Room for two more descriptors: the third client finds the daemon out of them.
    resource.prlimit(daemon.pid, resource.RLIMIT_NOFILE, (main.num_fds() + 2, hard))
    try:
        with held_connections(daemon.socket_path, 10):
            cpu_before = sum(main.cpu_times()[:2])
            time.sleep(2 * ACCEPT_RETRY_S * 2)
            cpu_used_s = sum(main.cpu_times()[:2]) - cpu_before
    finally:
        resource.prlimit(daemon.pid, resource.RLIMIT_NOFILE, (soft, hard))

    # The queued clients left; the socket takes new ones again.
    assert daemon.ctl("status").returncode == EX_OK
    warnings = [r["text"] for r in daemon.log_records() if "cannot accept" in r["text"]]
    assert len(warnings) == 1, warnings
    assert str(daemon.socket_path) in warnings[0]
    # A loop spinning on the unacceptable socket would burn the whole interval.
    assert cpu_used_s < ACCEPT_RETRY_S * 2
