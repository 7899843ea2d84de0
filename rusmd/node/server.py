"""The node endpoint's one port: the page, the JSON API, ``/metrics`` and the attach stream.

Runs in: node endpoint (``python -m rusmd.node``), one asyncio loop, no threads.

Routes (all ``GET``; every one answers 401 without the token when one
is configured, see ``rusmd.node.auth``):

==================  =====================================================
``/``               the dashboard (``static/index.html``)
``/static/<file>``  its vendored chart library and stylesheet
``/api/status``     the ``status`` control command's document, as ``rusmctl status --json``
``/api/processes``  the ``list`` document (every process)
``/api/logs``       recent log records (``?lines=N``, at most ``MAX_LOG_LINES``)
``/api/attached``   the attached clients: frames sent and skipped, detail on or off
``/metrics``        Prometheus text (``rusmd.node.metrics``)
``/attach``         the WebSocket attach stream (``rusmd.node.attach``)
==================  =====================================================

Everything comes from the main process over the control socket
(``rusmd.node.control``). While a client is attached a poller asks for
``stats`` at most every ``MIN_POLL_INTERVAL_S`` (and at the tick rate
when that is slower), and for the process table every
``DETAIL_POLL_INTERVAL_S`` while some client wants it; the ticker sends
the latest figures every tick, with their age. ``/metrics`` asks for
fresh ``stats`` itself. With nobody attached and nobody scraping, the
endpoint asks the daemon nothing.

The endpoint exits when its parent (the main process) is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import signal
import socket
import sys
from email.utils import formatdate
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from rusmd import __version__
from rusmd.config.model import Profile
from rusmd.config.sizing import worker_count
from rusmd.node.attach import AttachClient, Ticker, serve_client
from rusmd.node.auth import authorized
from rusmd.node.control import ControlClient, ControlRefused, ControlUnavailable
from rusmd.node.metrics import NodeCollector
from rusmd.node.runs import Runs
from rusmd.node.scenario_drivers import describe
from rusmd.node.snapshot import Tracker

# `/api/logs` returns at most this many records (the main process keeps a
# bounded ring anyway; this bounds one response).
MAX_LOG_LINES = 1000
DEFAULT_LOG_LINES = 100
# The fastest the poller asks the main process for counters: each poll
# asks every worker, and 20 a second is plenty for a chart a person reads
# (a 60 Hz stream repeats figures at most 50 ms old, with their age).
MIN_POLL_INTERVAL_S = 0.05
# How often the process table is fetched while some client wants it: it
# asks every worker for every process, the most expensive query there is.
DETAIL_POLL_INTERVAL_S = 1.0
# How often the endpoint checks that the main process is still its parent.
PARENT_CHECK_S = 1.0
# A WebSocket frame a client may send; commands are tiny.
MAX_FRAME_BYTES = 4096
# Kernel send buffer of one attached client (Linux doubles it): what a
# client that never reads can make the endpoint hold, with websockets'
# own write limit on top; past it its frames are skipped.
ATTACH_SEND_BUFFER_BYTES = 16 * 1024
STATIC_FILES = {
    "uPlot.iife.min.js": "text/javascript; charset=utf-8",
    "uPlot.min.css": "text/css; charset=utf-8",
    "LICENSE.uplot": "text/plain; charset=utf-8",
}


def _response(status: int, reason: str, body: bytes, content_type: str) -> Response:
    headers = Headers(
        [
            ("Date", formatdate(usegmt=True)),
            ("Content-Type", content_type),
            ("Content-Length", str(len(body))),
            ("Cache-Control", "no-store"),
            ("Connection", "close"),
        ]
    )
    return Response(status, reason, headers, body)


def _json(status: int, reason: str, document: Any) -> Response:
    body = json.dumps(document, indent=2).encode() + b"\n"
    return _response(status, reason, body, "application/json")


def _text(status: int, reason: str, text: str) -> Response:
    return _response(status, reason, text.encode() + b"\n", "text/plain; charset=utf-8")


class Endpoint:
    """The endpoint: routes, the poller, the ticker.

    Args:
        host: Address to bind.
        port: Port to bind.
        socket_path: The main process's control socket.
        ticks: Snapshots a second.
        token: The token requests must carry ("" for none).
        listen: ``[node] listen`` as written, for messages and ``hello``.
    """

    def __init__(
        self, host: str, port: int, socket_path: str, *, ticks: int, token: str, listen: str
    ) -> None:
        self.host = host
        self.port = port
        self.listen = listen
        self.ticks = ticks
        self.token = token
        self.control = ControlClient(Path(socket_path))
        self.tracker = Tracker()
        self.ticker = Ticker(ticks, self._snapshot)
        self.runs = Runs(Path(socket_path), ticks, self._broadcast)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(NodeCollector(self.tracker))
        self._poll_wake = asyncio.Event()
        self._last_detail = 0.0
        self._metrics_lock = asyncio.Lock()

    # ── HTTP ────────────────────────────────────────────────────────────

    async def route(self, connection: ServerConnection, request: Request) -> Response | None:
        """Answer one HTTP request, or None to go on with a WebSocket handshake."""
        authorization = request.headers.get("Authorization")
        if not authorized(self.token, request.path, authorization):
            response = _text(401, "Unauthorized", "401 unauthorized: this node needs its token")
            response.headers["WWW-Authenticate"] = 'Bearer realm="rusm node"'
            return response
        path = urlsplit(request.path).path
        upgrade = "websocket" in request.headers.get("Upgrade", "").lower()
        refusal = self._foreign(request, upgrade)
        if refusal:
            return _text(403, "Forbidden", refusal)
        if path == "/attach":
            if upgrade:
                return None
            return _text(426, "Upgrade Required", "/attach is a WebSocket endpoint")
        if upgrade:
            return _text(404, "Not Found", f"no WebSocket endpoint at {path} (try /attach)")
        try:
            return await self._get(path, request.path)
        except ControlUnavailable as exc:
            return _json(503, "Service Unavailable", {"error": str(exc)})
        except ControlRefused as exc:
            return _json(503, "Service Unavailable", {"error": str(exc), "code": exc.code})

    def _foreign(self, request: Request, upgrade: bool) -> str:
        """Why a request from a web page elsewhere is refused ("" when it is not).

        A browser lets any site open a WebSocket to 127.0.0.1, and a DNS
        name rebound to 127.0.0.1 makes even plain GETs readable to it:
        without a token, only requests addressed to a loopback host pass;
        and an attach whose ``Origin`` is another host is refused always
        (it could switch the profile).
        """
        host = request.headers.get("Host", "")
        if not self.token and not loopback_host(host):
            return (
                f"this node answers only requests addressed to a loopback host, not {host!r} "
                "(set [node] auth-token-env to serve others)"
            )
        origin = request.headers.get("Origin")
        if upgrade and origin is not None and urlsplit(origin).netloc != host:
            return f"an attach from a page of {origin} is refused (not this node's page)"
        return ""

    async def _get(self, path: str, target: str) -> Response:
        if path in ("/", "/index.html"):
            return _response(200, "OK", _static("index.html"), "text/html; charset=utf-8")
        if path.startswith("/static/"):
            name = path.removeprefix("/static/")
            if name not in STATIC_FILES:
                return _text(404, "Not Found", f"no static file {name!r}")
            return _response(200, "OK", _static(name), STATIC_FILES[name])
        if path == "/api/status":
            return _json(200, "OK", await self.control.request("status"))
        if path == "/api/processes":
            return _json(200, "OK", await self.control.request("list"))
        if path == "/api/logs":
            lines = _lines(target)
            if lines is None:
                return _json(400, "Bad Request", {"error": "lines must be a whole number"})
            return _json(200, "OK", await self.control.request("logs", lines=lines))
        if path == "/metrics":
            return await self._metrics()
        if path == "/api/attached":
            return _json(200, "OK", {"clients": self.ticker.describe()})
        return _text(404, "Not Found", f"no such page {path!r}")

    async def _metrics(self) -> Response:
        async with self._metrics_lock:  # one scrape's poll at a time
            await self._poll_stats()
            body = generate_latest(self.registry)
        return _response(200, "OK", body, CONTENT_TYPE_LATEST)

    # ── the attach stream ───────────────────────────────────────────────

    async def attach(self, connection: ServerConnection) -> None:
        """One WebSocket client on ``/attach``."""
        sock = connection.transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, ATTACH_SEND_BUFFER_BYTES)
        client = AttachClient(connection)
        self._poll_wake.set()
        hello = await self._hello()
        await serve_client(client, self.ticker, hello, self._command, self.runs)

    def _broadcast(self, frame: dict[str, Any]) -> None:
        """A scenario frame to every attached client, beside its snapshots."""
        for client in self.ticker.clients:
            client.reply(frame)

    async def _command(self, command: str, args: dict[str, Any]) -> dict[str, Any]:
        result = await self.control.request(command, **args)
        self._poll_wake.set()  # show the new pool at once
        return result

    async def _hello(self) -> dict[str, Any]:
        try:
            status = await self.control.request("status")
        except (ControlUnavailable, ControlRefused):
            status = {}
        daemon = status.get("daemon", {})
        cores = int(daemon.get("usable_cores") or 1)
        return {
            "type": "hello",
            "node": {
                "version": __version__,
                "pid": daemon.get("pid"),
                "listen": self.listen,
                "ticks_per_second": self.ticks,
                "config": daemon.get("config"),
                "listeners": daemon.get("listeners", []),
            },
            "profile": daemon.get("profile"),
            "profiles": [
                {"name": profile.value, "workers": worker_count(profile, cores)}
                for profile in Profile
            ],
            "scenarios": describe(),
            "capacity": {
                "usable_cores": cores,
                "workers_target": daemon.get("workers_target"),
                "max_workers": worker_count(Profile.MAX, cores),
            },
        }

    def _snapshot(self, seq: int, detail: bool) -> dict[str, Any]:
        return self.tracker.snapshot(seq, asyncio.get_running_loop().time(), detail)

    async def _poll_stats(self) -> None:
        result = await self.control.request("stats")
        self.tracker.update(result, asyncio.get_running_loop().time())

    async def poller(self) -> None:
        """Keep the tracker fresh while clients are attached."""
        loop = asyncio.get_running_loop()
        interval_s = max(MIN_POLL_INTERVAL_S, 1.0 / self.ticks)
        while True:
            if not self.ticker.clients:
                self._poll_wake.clear()
                await self._poll_wake.wait()
            started = loop.time()
            with contextlib.suppress(ControlUnavailable, ControlRefused):
                await self._poll_stats()
                if self.ticker.want_detail and started - self._last_detail >= (
                    DETAIL_POLL_INTERVAL_S
                ):
                    self._last_detail = started
                    await self._poll_processes()
            self._poll_wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._poll_wake.wait(), max(0.0, interval_s - (loop.time() - started))
                )

    async def _poll_processes(self) -> None:
        try:
            listing = await self.control.request("list")
        except ControlRefused as exc:
            self.tracker.set_processes([], error=str(exc))
            return
        self.tracker.set_processes(listing.get("processes", []))

    # ── life ────────────────────────────────────────────────────────────

    async def run(self, parent_pid: int) -> None:
        """Serve until SIGTERM or until the parent is gone."""
        loop = asyncio.get_running_loop()
        stop = loop.create_future()

        def finish() -> None:
            if not stop.done():
                stop.set_result(None)

        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, finish)
        async with serve(
            self.attach,
            self.host,
            self.port,
            process_request=self.route,
            compression=None,
            max_size=MAX_FRAME_BYTES,
            server_header=f"rusmd/{__version__}",
        ):
            print(f"debug listening on {self.listen}", flush=True, file=sys.stderr)
            tasks = [
                asyncio.ensure_future(self.ticker.run()),
                asyncio.ensure_future(self.poller()),
                asyncio.ensure_future(_watch_parent(parent_pid, stop)),
            ]
            try:
                await stop
            finally:
                await self.runs.close()  # a running scenario kills its spinners
                for task in tasks:
                    task.cancel()


async def _watch_parent(parent_pid: int, stop: asyncio.Future[None]) -> None:
    while os.getppid() == parent_pid:
        await asyncio.sleep(PARENT_CHECK_S)
    if not stop.done():
        stop.set_result(None)


def loopback_host(host: str) -> bool:
    """Whether a ``Host`` header names a loopback address (``localhost``, 127/8, ``[::1]``)."""
    name = urlsplit(f"//{host}").hostname or ""
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _lines(target: str) -> int | None:
    values = parse_qs(urlsplit(target).query).get("lines")
    if not values:
        return DEFAULT_LOG_LINES
    if not values[0].isdigit():
        return None
    return min(int(values[0]), MAX_LOG_LINES)


def _static(name: str) -> bytes:
    return resources.files("rusmd.node").joinpath("static", name).read_bytes()
