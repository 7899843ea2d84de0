"""The bundled example app (``make run``) on the real daemon.

Runs in: any (the test process; ``rusmd`` runs as a subprocess).

``examples/hello`` has three C components: ``hello``, a resident greeter
(rusmd boot-spawns it, registers it as ``hello`` and restarts it with
fresh state when its worker dies); ``web``, a handler component (a WASI
reactor) whose actions answer the HTTP routes and the SSE stream, one of
them asking the greeter; and ``echo``, a WebSocket echo. The test runs
the example's own manifest with every listen port moved to a free one,
and builds each component the way ``make guests`` does.
"""

from __future__ import annotations

import http.client
import os
import re
import signal
from collections.abc import Callable
from typing import Any

from websockets.sync.client import connect

from rusmd.errors import EX_OK
from tests.guests.build import ROOT, build_c_guest
from tests.integration.conftest import App, Daemon, free_port, wait_for

EXAMPLE = ROOT / "examples" / "hello"
SETTLE_S = 20.0


# The Makefile's rule: a source defining neither main nor run (at the start
# of a line) is built as a WASI reactor.
ENTRY = re.compile(r"^[A-Za-z_].*\b(main|run) *[(]", re.MULTILINE)
LISTEN = re.compile(r'^listen = "127\.0\.0\.1:(\d+)"', re.MULTILINE)


def example_app(app: App) -> dict[int, int]:
    """The example's manifest on free ports, its guests built fresh; the example's
    port → this test's port (the node's port is ``app.node_port``)."""
    text = (EXAMPLE / "rusm.toml").read_text()
    moved = {int(port): free_port() for port in LISTEN.findall(text)}
    moved[4000] = app.node_port
    text = LISTEN.sub(lambda found: f'listen = "127.0.0.1:{moved[int(found[1])]}"', text)
    app.manifest.write_text(text)
    (app.directory / "wasm").mkdir(exist_ok=True)
    for source in sorted((EXAMPLE / "components").glob("*.c")):
        reactor = ENTRY.search(source.read_text()) is None
        out = app.directory / "wasm" / f"{source.stem}.wasm"
        build_c_guest(source, out, reactor=reactor)
    return moved


def greetings(daemon: Daemon) -> list[str]:
    return [r["text"] for r in daemon.log_records() if r["source"].startswith("hello#")]


def test_the_example_greets_and_comes_back_fresh_after_its_worker_dies(
    app: App, start_daemon: Callable[..., Daemon]
) -> None:
    example_app(app)
    daemon = start_daemon()
    wait_for(
        lambda: "hello from a rusm guest" in greetings(daemon) or None,
        SETTLE_S,
        "the greeting",
    )
    assert daemon.ctl("send", "hello", "world").returncode == EX_OK
    wait_for(
        lambda: "hello, world! (greeting #1)" in greetings(daemon) or None,
        SETTLE_S,
        "the greeter to greet",
    )
    resident = next(r for r in daemon.status()["residents"] if r["name"] == "hello")
    os.kill(daemon.workers()[resident["worker"]]["pid"], signal.SIGKILL)
    wait_for(
        lambda: next(
            (
                r
                for r in daemon.status()["residents"]
                if r["state"] == "running" and r["pid"] != resident["pid"]
            ),
            None,
        ),
        SETTLE_S,
        "the greeter to be back",
    )
    assert daemon.ctl("send", "hello", "again").returncode == EX_OK
    wait_for(
        lambda: "hello, again! (greeting #1)" in greetings(daemon) or None,
        SETTLE_S,
        "a fresh greeter to greet",
    )
    status = daemon.ctl("status").stdout
    assert re.search(r"hello\s+hello#\d+\s+\d+\s+running\s+1\s", status), status


def fetch(port: int, method: str, path: str, **kwargs: Any) -> tuple[int, str, bytes]:
    """One request: status, content-type, body."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=SETTLE_S)
    try:
        conn.request(method, path, **kwargs)
        response = conn.getresponse()
        return response.status, response.getheader("content-type", ""), response.read()
    finally:
        conn.close()


def test_the_example_serves_its_routes_its_sse_stream_and_its_websocket(
    app: App, start_daemon: Callable[..., Daemon]
) -> None:
    ports = example_app(app)
    http_port, sse_port, ws_port = ports[8080], ports[8081], ports[8082]
    daemon = start_daemon()
    wait_for(
        lambda: "hello from a rusm guest" in greetings(daemon) or None,
        SETTLE_S,
        "the greeter to start",
    )

    status, _, body = fetch(http_port, "GET", "/")
    assert status == 200
    assert body.startswith(b"rusm example app\n")
    assert fetch(http_port, "GET", "/hello/world") == (
        200,
        "text/plain; charset=utf-8",
        b"hello, world!\n",
    )
    assert fetch(http_port, "GET", "/count")[::2] == (200, b"1\n")
    assert fetch(http_port, "GET", "/count")[::2] == (200, b"1\n")
    posted = b'{"a": 1}'
    assert fetch(
        http_port, "POST", "/echo", body=posted, headers={"Content-Type": "application/json"}
    ) == (200, "application/json", posted)

    status, content_type, body = fetch(sse_port, "GET", "/ticks?n=2")
    assert (status, content_type) == (200, "text/event-stream")
    assert body == b"event: tick\ndata: 1\n\nevent: tick\ndata: 2\n\n"

    with connect(f"ws://127.0.0.1:{ws_port}/", open_timeout=SETTLE_S) as ws:
        ws.send("hi")
        assert ws.recv(timeout=SETTLE_S) == "hi"
        ws.send(b"\x00\xff")
        assert ws.recv(timeout=SETTLE_S) == b"\x00\xff"
