"""Helpers for the node endpoint tests: HTTP to the endpoint, the attach stream, the child.

Runs in: any (the test process).

``get`` fetches one endpoint page with ``urllib`` (it returns the status
and body for 4xx/5xx too); ``Attached`` is a WebSocket client of
``/attach`` on a thread of its own that timestamps every frame it gets,
so a test reads cadence from arrival times. ``endpoint_pid`` finds the
endpoint child among the daemon's children. ``scenario_app`` writes the
benchmark scenarios' app (``rusmd.node.scenario_app``) over a test app,
its C guest built as ``rusmd bench`` builds it (the module cache: the
real compiler once, then the kept module), and ``wait_components`` waits
until its guests are compiled and its residents run.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from typing import Any

import psutil
from websockets.sync.client import ClientConnection, connect

from rusmd.guest.module_cache import build_all
from rusmd.node.scenario_app import C_GUESTS, write_app
from tests.integration.conftest import App, Daemon, free_port

# One endpoint request: the endpoint answers from the main process within a second.
HTTP_TIMEOUT_S = 10.0
# The endpoint child starts within a second of the daemon; a loaded
# two-core machine can make it a few.
ENDPOINT_TIMEOUT_S = 20.0
# A daemon start, a compile of eleven small guests and a run, on a loaded
# two-core machine.
SETUP_TIMEOUT_S = 60.0


def url(daemon: Daemon, path: str) -> str:
    return f"http://127.0.0.1:{daemon.app.node_port}{path}"


def get(daemon: Daemon, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """GET ``path`` from the endpoint: (status, body), whatever the status."""
    request = urllib.request.Request(url(daemon, path), headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def get_json(daemon: Daemon, path: str, headers: dict[str, str] | None = None) -> Any:
    status, body = get(daemon, path, headers)
    assert status == 200, (path, status, body[:500])
    return json.loads(body)


def endpoint_up(daemon: Daemon) -> bool:
    try:
        return get(daemon, "/api/status")[0] in (200, 401)
    except OSError:
        return False


def wait_endpoint(daemon: Daemon) -> None:
    daemon.wait_for(lambda: endpoint_up(daemon), ENDPOINT_TIMEOUT_S, "the node endpoint to answer")


def endpoint_pid(daemon: Daemon) -> int | None:
    """The pid of the daemon's ``python -m rusmd.node`` child, or None."""
    for child in psutil.Process(daemon.pid).children():
        try:
            if "rusmd.node" in child.cmdline():
                return child.pid
        except psutil.Error:
            continue
    return None


class Attached:
    """A client of ``/attach`` that reads every frame on its own thread, with arrival times.

    Args:
        daemon: The daemon whose endpoint to attach to.
        query: Appended to ``/attach`` (``?token=…``).
    """

    def __init__(self, daemon: Daemon, query: str = "") -> None:
        address = f"ws://127.0.0.1:{daemon.app.node_port}/attach{query}"
        # Entered as a context manager (newer websockets warns otherwise); left in close().
        self.connection: ClientConnection = connect(
            address, open_timeout=HTTP_TIMEOUT_S
        ).__enter__()
        self.frames: list[tuple[float, dict[str, Any]]] = []
        self.lock = threading.Lock()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        try:
            for message in self.connection:
                with self.lock:
                    self.frames.append((time.monotonic(), json.loads(message)))
        except Exception:  # the connection closed: the test sees no more frames
            return

    def send(self, document: dict[str, Any]) -> None:
        self.connection.send(json.dumps(document))

    def of_type(self, kind: str) -> list[tuple[float, dict[str, Any]]]:
        with self.lock:
            return [(at, frame) for at, frame in self.frames if frame.get("type") == kind]

    def latest(self, kind: str = "snapshot") -> dict[str, Any] | None:
        frames = self.of_type(kind)
        return frames[-1][1] if frames else None

    def reply(self, op: str, since: int = 0) -> dict[str, Any] | None:
        """The first result or error for ``op`` after the first ``since`` frames."""
        with self.lock:
            for _at, frame in self.frames[since:]:
                if frame.get("type") in ("result", "error") and frame.get("op") == op:
                    return frame
        return None

    def close(self) -> None:
        self.connection.close()
        self.reader.join(timeout=HTTP_TIMEOUT_S)


def scenario_app(app: App) -> None:
    """Write the scenario app over ``app``'s manifest, on its ports."""
    modules = {name: result.output for name, result in build_all(C_GUESTS).items()}
    write_app(app.directory, (app.node_port, app.serve_port, free_port(), free_port()), modules)


def wait_components(daemon: Daemon) -> None:
    """Until every component is compiled and every resident runs."""

    def ready() -> bool:
        status = daemon.status()
        return all(c["state"] == "ready" for c in status["components"]) and all(
            r["state"] == "running" for r in status["residents"]
        )

    daemon.wait_for(ready, SETUP_TIMEOUT_S, "the scenario app's components and residents")
