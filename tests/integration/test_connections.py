"""Many connections on one worker: every one admitted is served, one too many gets 503.

Runs in: any (the test process; ``rusmd`` runs as a subprocess with one
worker, and every request goes over a real loopback socket).

A thousand clients connecting at once must each get their response on
a keep-alive connection, with no reset and no connection error: the
worker takes a burst of connections off the listen socket in a few
turns of its loop, and the daemon raises its own open-files limit to
hold them. A connection past ``max-connections`` gets 503 with
``Retry-After`` at once and a clean close, while the admitted ones stay
served.
"""

from __future__ import annotations

import asyncio
import resource
import socket
from collections.abc import Callable, Iterator

import pytest

from tests.integration.conftest import App, Daemon
from tests.integration.httpkit import SOCKET_TIMEOUT_S, Wire, request_bytes, write_http_app

# Concurrent keep-alive clients of the burst test, all on one worker.
CLIENTS = 1024
# The soft open-files limit the daemon is started under: the usual
# default, too small for CLIENTS connections unless the daemon raises it.
USUAL_SOFT_LIMIT = 1024
# Descriptors the test process needs besides its client sockets.
TEST_FILES = 512
# The whole burst (connect, two requests each) on a loaded two-core machine.
BURST_TIMEOUT_S = 90.0
# The admission test's listener: small, so its limit is crossed cheaply.
MAX_CONNECTIONS = 8
RETRY_AFTER_S = 7


@pytest.fixture
def usual_soft_limit() -> Iterator[None]:
    """Run the daemon under a soft open-files limit of 1024; the test's own sockets get more.

    Yields once the limit is lowered (start the daemon then); the caller
    raises it back with ``client_room`` for its sockets.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < CLIENTS + TEST_FILES:
        pytest.skip(f"the hard open-files limit {hard} cannot hold {CLIENTS} client sockets")
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(USUAL_SOFT_LIMIT, soft), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def client_room() -> None:
    """Let the test process hold CLIENTS sockets (within the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = CLIENTS + TEST_FILES
    if hard != resource.RLIM_INFINITY:
        wanted = min(wanted, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One response with a Content-Length: status, headers (lower-case names), body."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers["content-length"]))
    return int(lines[0].split(" ", 2)[1]), headers, body


async def keep_alive_client(
    port: int, number: int, connected: asyncio.Event, all_connected: Callable[[], None]
) -> list[str]:
    """Connect, wait until every client has, then two requests; each outcome as text."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    all_connected()
    await connected.wait()
    outcomes = []
    try:
        for _ in range(2):
            writer.write(request_bytes("GET", f"/users/{number}"))
            status, _headers, body = await read_response(reader)
            outcomes.append(f"{status} {body.decode()}")
    finally:
        writer.close()
    return outcomes


async def burst(port: int) -> list[list[str] | BaseException]:
    """CLIENTS connections at once, each then sending two requests at the same moment."""
    connected = asyncio.Event()
    remaining = [CLIENTS]

    def one_connected() -> None:
        remaining[0] -= 1
        if not remaining[0]:
            connected.set()

    clients = [keep_alive_client(port, n, connected, one_connected) for n in range(CLIENTS)]
    return await asyncio.wait_for(asyncio.gather(*clients, return_exceptions=True), BURST_TIMEOUT_S)


@pytest.mark.usefixtures("usual_soft_limit")
def test_thousand_concurrent_keep_alive_connections_on_one_worker_are_all_answered(
    app: App, start_daemon: Callable[..., Daemon]
) -> None:
    write_http_app(app, log_level="warn")  # the default max-connections
    daemon = start_daemon(cpus=2)  # profile light on 2 cores: one worker holds every connection
    client_room()

    results = asyncio.run(burst(app.serve_port))

    failures = [repr(result) for result in results if isinstance(result, BaseException)]
    assert failures == []
    assert results == [[f"200 {n}", f"200 {n}"] for n in range(CLIENTS)]
    assert [row["restarts"] for row in daemon.status()["workers"]] == [0]


@pytest.mark.usefixtures("usual_soft_limit")
def test_daemon_raises_its_open_files_limit_for_max_connections(
    app: App, start_daemon: Callable[..., Daemon]
) -> None:
    write_http_app(app, log_level="info")
    daemon = start_daemon(cpus=2)

    raised = [
        record["text"]
        for record in daemon.log_records()
        if record["text"].startswith("limits: open-files soft limit raised from")
    ]
    assert len(raised) == 1
    assert raised[0].startswith(f"limits: open-files soft limit raised from {USUAL_SOFT_LIMIT} ")


def refused_cleanly(port: int) -> tuple[int, str | None, bool]:
    """A client that sends its request at once: status, Retry-After, and a clean end.

    The clean end is a FIN after the response; a reset (the request left
    unread when the socket closed) is what the client must not see.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=SOCKET_TIMEOUT_S) as sock:
        sock.sendall(request_bytes("GET", "/"))
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except ConnectionResetError:
            reset = True
        else:
            reset = False
    head = received.partition(b"\r\n\r\n")[0].decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in head[1:] if ": " in line)
    return int(head[0].split(" ")[1]), headers.get("retry-after"), not reset


def test_connection_past_max_connections_gets_503_at_once_and_closes_without_reset(
    app: App, start_daemon: Callable[..., Daemon]
) -> None:
    write_http_app(app, limits={"max-connections": MAX_CONNECTIONS, "retry-after-s": RETRY_AFTER_S})
    start_daemon(cpus=2)  # one worker
    admitted = [Wire(app.serve_port) for _ in range(MAX_CONNECTIONS)]
    try:
        for number, wire in enumerate(admitted):
            assert wire.request("GET", f"/users/{number}").body == str(number).encode()

        with Wire(app.serve_port) as silent:  # it sends nothing: the answer comes at once
            refused = silent.read_response()
            assert (refused.status, refused.header("retry-after")) == (503, str(RETRY_AFTER_S))
            assert refused.closes
        assert refused_cleanly(app.serve_port) == (503, str(RETRY_AFTER_S), True)

        again = [wire.request("GET", f"/users/{n}").body for n, wire in enumerate(admitted)]
        assert again == [str(n).encode() for n in range(MAX_CONNECTIONS)]
    finally:
        for wire in admitted:
            wire.close()
