"""A listener's dispatch when a handler cannot start: the client gets 503, the connection lives.

Runs in: any (``ListenerRuntime`` with a fake host, log and connection;
no loop is run, no sockets, no daemon).

An inline request takes a pid from the worker's lease; when the lease
is used up before the next one arrives (a worker with thousands of
connections can use one up within a turn of its loop), the request is
answered 503 with ``Retry-After`` and the connection goes on. Before,
the error escaped to the loop, which dropped the connection: its client
saw a reset or an empty reply.
"""

from __future__ import annotations

from typing import Any

import uvloop

from rusmd.abi import ErrorCode
from rusmd.config.model import Protocol, Serve
from rusmd.errors import SpawnError
from rusmd.serving.server import ListenerRuntime
from rusmd.wasm.exchange import Request

CONFIG = Serve(protocol=Protocol.HTTP, listen="127.0.0.1:8080", name="api", retry_after_s=3)


class NoPids:
    """The inline path with its pid lease used up."""

    def serve(self, component: Any, action: str, exchange: Any) -> Any:
        raise SpawnError("worker 0 has no pids left (a lease is on its way)", ErrorCode.LIMIT)


class Component:
    error = ""
    inline = True


class FakeHost:
    def __init__(self) -> None:
        self.inline = NoPids()
        self.components = {"api": Component()}
        self.loaded = True


class FakeLog:
    info_on = False

    def __init__(self) -> None:
        self.warnings: list[str] = []

    def warn(self, text: str) -> None:
        self.warnings.append(text)


class FakeConnection:
    def __init__(self) -> None:
        self.closing = False
        self.current: Any = None
        self.sent = b""
        self.answered_count = 0

    def send(self, data: bytes) -> None:
        self.sent += data

    def answered(self) -> None:
        self.answered_count += 1


def test_inline_request_without_a_pid_gets_503_with_retry_after_and_keeps_its_connection() -> None:
    loop = uvloop.new_event_loop()
    try:
        log = FakeLog()
        listener = ListenerRuntime(CONFIG, 0, FakeHost(), log, loop)  # type: ignore[arg-type]
        conn = FakeConnection()

        listener.dispatch(conn, Request("GET", "/", "", [], b"", True))  # type: ignore[arg-type]

        head = conn.sent.partition(b"\r\n\r\n")[0].split(b"\r\n")
        assert head[0].startswith(b"HTTP/1.1 503 ")
        assert b"retry-after: 3" in head
        assert b"connection: close" not in head
        assert conn.answered_count == 1
        assert conn.current is None
        assert len(log.warnings) == 1
        assert log.warnings[0].endswith("no pids left (a lease is on its way)")
    finally:
        loop.close()
