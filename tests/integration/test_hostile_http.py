"""Hostile HTTP clients against the real daemon: floods, bad versions, huge heads.

Runs in: any (the test process; ``rusmd`` runs as a subprocess with two
workers and every request goes over a real loopback socket).

Each case shows the clear outcome a client gets (its responses in order,
a 400/414/431/505 instead of a reset) and that the daemon is unharmed:
no worker exits, and a well-behaved client on another connection is
served the whole time.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from tests.integration.conftest import Daemon
from tests.integration.httpkit import (
    ROUTES,
    SOCKET_TIMEOUT_S,
    Served,
    Wire,
    attach,
    fetch,
    shared_daemon,
)

# What ``api#show`` answers for /users/N: N, so a response names its request.
BODY = re.compile(rb"\r\n\r\n(\d+)")
# A request a pipelining client repeats; small, so a flood is many of them.
TEMPLATE = "GET /users/{} HTTP/1.1\r\nHost: t\r\n\r\n"
# Oversized request parts: far past any limit, as an attacker sends them.
HUGE_BYTES = 2 << 20
# How long the shared listener waits for a client that reads none of its
# responses (its body-timeout-s) before it drops the connection.
BODY_TIMEOUT_S = 2


@dataclass
class Bystander:
    """A keep-alive client requesting ``/`` on its own connection until stopped."""

    port: int
    stop: threading.Event = field(default_factory=threading.Event)
    served: int = 0
    failures: list[str] = field(default_factory=list)
    thread: threading.Thread | None = None

    def __enter__(self) -> Bystander:
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop.set()
        assert self.thread is not None
        self.thread.join(SOCKET_TIMEOUT_S)

    def _run(self) -> None:
        try:
            with Wire(self.port) as wire:
                while not self.stop.is_set():
                    wire.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
                    response = wire.read_response()
                    if response.status != 200:
                        self.failures.append(f"status {response.status}")
                    self.served += 1
                    self.stop.wait(0.01)
        except Exception as exc:  # the test reports it
            self.failures.append(repr(exc))


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    yield from shared_daemon(
        tmp_path_factory,
        log_level="warn",
        routes={**ROUTES, "GET /gone": "api#nosuch"},
        limits={"body-timeout-s": BODY_TIMEOUT_S},
    )


@pytest.fixture
def served(request: pytest.FixtureRequest, shared: Served) -> Served:
    return attach(request, shared)


def worker_pids(daemon: Daemon) -> set[int]:
    return {row["pid"] for row in daemon.status()["workers"]}


def pipeline(port: int, count: int) -> list[bytes]:
    """Send ``count`` requests in one write; the body of every response, in order."""
    data = "".join(TEMPLATE.format(i) for i in range(count)).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=SOCKET_TIMEOUT_S) as sock:
        # The sender is its own thread: a client that writes everything before
        # reading anything would deadlock against any server's back-pressure.
        sender = threading.Thread(target=sock.sendall, args=(data,), daemon=True)
        sender.start()
        received = bytearray()
        while len(BODY.findall(received)) < count:
            chunk = sock.recv(1 << 20)
            if not chunk:
                break
            received += chunk
        sender.join(SOCKET_TIMEOUT_S)
    return BODY.findall(received)


def test_ten_thousand_pipelined_requests_in_one_write_are_answered_in_order(
    served: Served,
) -> None:
    before = worker_pids(served.daemon)
    with Bystander(served.port) as bystander:
        bodies = pipeline(served.port, 10_000)

    assert bodies == [str(i).encode() for i in range(10_000)]
    assert not bystander.failures, bystander.failures
    assert bystander.served > 0
    assert worker_pids(served.daemon) == before


def test_twenty_connections_of_a_thousand_pipelined_requests_kill_no_worker(
    served: Served,
) -> None:
    before = worker_pids(served.daemon)
    results: list[list[bytes]] = []
    with Bystander(served.port) as bystander:
        floods = [
            threading.Thread(target=lambda: results.append(pipeline(served.port, 1000)))
            for _ in range(20)
        ]
        for flood in floods:
            flood.start()
        for flood in floods:
            flood.join(120)

    assert len(results) == 20
    assert all(bodies == [str(i).encode() for i in range(1000)] for bodies in results)
    assert not bystander.failures, bystander.failures
    assert worker_pids(served.daemon) == before
    assert all(row["restarts"] == 0 for row in served.daemon.status()["workers"])


def test_pipelining_client_that_never_reads_is_cut_off_while_others_are_served(
    served: Served,
) -> None:
    before = worker_pids(served.daemon)
    flood = "".join(TEMPLATE.format(i) for i in range(50_000)).encode()
    with (
        Bystander(served.port) as bystander,
        socket.create_connection(("127.0.0.1", served.port), timeout=SOCKET_TIMEOUT_S) as sock,
    ):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        dropped = False
        deadline = time.monotonic() + SOCKET_TIMEOUT_S * 2
        while not dropped and time.monotonic() < deadline:
            try:
                sock.sendall(flood)  # blocks once the worker stops reading; never reads back
            except TimeoutError:
                continue  # still stalled
            except (BrokenPipeError, ConnectionResetError):
                dropped = True  # the worker cut the connection off
        served_during = bystander.served

    assert dropped
    assert served_during > 0 and not bystander.failures, bystander.failures
    assert worker_pids(served.daemon) == before


def test_http_1_0_request_without_host_is_served(served: Served) -> None:
    with Wire(served.port) as wire:
        wire.send(b"GET / HTTP/1.0\r\n\r\n")
        assert wire.read_response().status == 200


HUGE = {
    "two_mib_url": (b"GET /" + b"u" * HUGE_BYTES + b" HTTP/1.1\r\nHost: t\r\n\r\n", 414),
    "two_mib_header_block": (
        b"GET / HTTP/1.1\r\nHost: t\r\n"
        + b"".join(b"X-Pad-%d: %s\r\n" % (i, b"p" * 1000) for i in range(HUGE_BYTES // 1000))
        + b"\r\n",
        431,
    ),
    "two_mib_header_value": (b"GET / HTTP/1.1\r\nHost: t\r\nX-Big: " + b"b" * HUGE_BYTES, 431),
}


@pytest.mark.parametrize(("data", "status"), HUGE.values(), ids=HUGE.keys())
def test_huge_request_head_gets_its_status_not_a_reset(
    served: Served, data: bytes, status: int
) -> None:
    with Wire(served.port) as wire:
        wire.send(data)  # all of it goes out: the server reads and drops the rest
        response = wire.read_response()

        assert response.status == status
        assert wire.closed_by_peer(SOCKET_TIMEOUT_S)
    assert fetch(served.port, "GET", "/").status == 200


def test_route_to_an_action_the_component_lacks_gets_502_and_one_error_naming_it(
    served: Served,
) -> None:
    statuses = [fetch(served.port, "GET", "/gone").status for _ in range(3)]

    assert statuses == [502] * 3
    lines = [
        record["text"]
        for record in served.daemon.log_records()
        if record["level"] == "error" and "exports no function 'nosuch'" in record["text"]
    ]
    assert len(lines) <= 2  # once per worker that got one
    assert lines and all(line.startswith("http GET /gone → 502") for line in lines)
