"""A daemon's first seconds: requests that arrive while its components compile.

Runs in: any (the test process; ``rusmd`` runs as a subprocess).

The listen socket is bound before the workers fork, so a client can
connect while the components are still compiling. Its request waits for
them (up to the listener's ``timeout-s``) and is answered by the handler,
never with "still loading"; systemd's READY=1 (and ``status``'s
``running``) comes only once every worker has loaded them.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import wasmtime
from websockets.sync.client import connect

from tests.integration.conftest import App, Daemon, free_port
from tests.integration.httpkit import SOCKET_TIMEOUT_S, api_wat, write_http_app
from tests.integration.test_sse_ws import ECHO_WAT

# Functions that make the handler module slow to compile (about a second
# or more of the compile step on a two-core machine), so requests surely
# arrive while it runs.
FILLER_FUNCTIONS = 20_000
# How long the test keeps the early clients trying.
EARLY_WINDOW_S = 60.0


def slow_to_compile_api() -> bytes:
    """The inline ``api`` module with many unused functions added."""
    filler = "\n".join(
        f"  (func $f{i} (param i32) (result i32)\n"
        f"    (local.get 0) (i32.const {i}) (i32.mul) (i32.const 7) (i32.add)\n"
        f"    (if (result i32) (i32.gt_s (local.get 0) (i32.const {i}))\n"
        f"      (then (i32.const 1)) (else (i32.const 2))) (i32.add))"
        for i in range(FILLER_FUNCTIONS)
    )
    wat = api_wat().rstrip()
    assert wat.endswith(")")
    return wasmtime.wat2wasm(wat[:-1] + filler + "\n)")


def first_answer(port: int, statuses: list[int], stop: threading.Event) -> None:
    """Connect as soon as the port takes connections; record the status of ``GET /``."""
    deadline = time.monotonic() + EARLY_WINDOW_S
    while not stop.is_set() and time.monotonic() < deadline:
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=SOCKET_TIMEOUT_S * 4)
        except OSError:
            time.sleep(0.01)
            continue
        with sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        statuses.append(int(data.split(b" ", 2)[1]))
        return


def start_with_early_clients(
    start_daemon: Callable[..., Daemon],
    client: Callable[[int, list[Any], threading.Event], None],
    port: int,
    results: list[Any],
    count: int,
) -> Daemon:
    """Start ``count`` clients trying ``port``, then the daemon; wait for both."""
    stop = threading.Event()
    threads = [threading.Thread(target=client, args=(port, results, stop)) for _ in range(count)]
    for thread in threads:
        thread.start()
    daemon = start_daemon(wait=False)
    try:
        for thread in threads:
            thread.join(EARLY_WINDOW_S + SOCKET_TIMEOUT_S * 4)
    finally:
        stop.set()
    daemon.wait_ready()
    return daemon


def test_request_arriving_while_components_compile_is_answered_200(
    app: App, start_daemon: Callable[..., Daemon]
) -> None:
    write_http_app(app)
    (app.directory / "wasm" / "api.wasm").write_bytes(slow_to_compile_api())
    statuses: list[int] = []

    daemon = start_with_early_clients(start_daemon, first_answer, app.serve_port, statuses, 4)

    assert statuses == [200] * 4, daemon.read_log()
    assert "still loading" not in daemon.read_log()
    assert "still compiling" not in daemon.read_log()


def first_echo(port: int, echoes: list[str], stop: threading.Event) -> None:
    """Open a WebSocket as soon as the port takes connections; record the echo of ``hi``."""
    deadline = time.monotonic() + EARLY_WINDOW_S
    while not stop.is_set() and time.monotonic() < deadline:
        try:
            with connect(f"ws://127.0.0.1:{port}/", open_timeout=SOCKET_TIMEOUT_S * 4) as ws:
                ws.send("hi")
                echoes.append(str(ws.recv(timeout=SOCKET_TIMEOUT_S)))
                return
        except OSError:
            time.sleep(0.01)


def test_websocket_opened_while_components_compile_is_accepted_and_echoed(
    app: App, start_daemon: Callable[..., Daemon]
) -> None:
    write_http_app(app)
    (app.directory / "wasm" / "api.wasm").write_bytes(slow_to_compile_api())
    (app.directory / "wasm" / "echo.wasm").write_bytes(wasmtime.wat2wasm(ECHO_WAT))
    ws_port = free_port()
    with app.manifest.open("a") as manifest:
        manifest.write(
            f'[[serve]]\nprotocol = "ws"\nlisten = "127.0.0.1:{ws_port}"\nname = "echo"\n'
            "[components.echo]\n"
        )
    echoes: list[str] = []

    daemon = start_with_early_clients(start_daemon, first_echo, ws_port, echoes, 2)

    assert echoes == ["hi", "hi"], daemon.read_log()
    assert "still compiling" not in daemon.read_log()
