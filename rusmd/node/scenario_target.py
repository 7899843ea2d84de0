"""Where a node serves the scenarios' routes, and the HTTP client that drives them.

Runs in: node endpoint, on its event loop, or the ``rusmd bench``
command's process, on its own loop.

``Target.discover`` asks the node for its status and reads its manifest
(the path ``status`` names) to find on which listener each scenario
route is served and which components the node has. ``HttpClient`` is
one keep-alive HTTP/1.1 connection, just enough for the scenario app's
answers (a length or chunks, at most ``MAX_RESPONSE_BYTES``).
"""

from __future__ import annotations

import asyncio
import base64
from dataclasses import dataclass, field

from rusmd.config import load_manifest
from rusmd.config.model import Protocol
from rusmd.errors import RusmError
from rusmd.node.control import ControlClient, ControlRefused, ControlUnavailable
from rusmd.node.scenario_app import KV_BUCKET, KV_KEY, KV_VALUE, ROUTES, request_path
from rusmd.node.scenarios import OPERATION_TIMEOUT_S, ScenarioError

# A response or an SSE stream larger than this is not the scenario app's;
# the client stops reading rather than buffer it.
MAX_RESPONSE_BYTES = 1 << 16


@dataclass
class Target:
    """A running node as the scenarios see it: its control socket and its routes."""

    control: ControlClient
    routes: dict[str, tuple[str, int]] = field(default_factory=dict)  # path → (host, port)
    ws: dict[str, tuple[str, int]] = field(default_factory=dict)  # component → (host, port)
    components: set[str] = field(default_factory=set)
    workers: int = 1

    @classmethod
    async def discover(cls, control: ControlClient) -> Target:
        """Ask the node for its status and read its manifest's listeners."""
        try:
            status = await control.request("status")
        except (ControlUnavailable, ControlRefused) as exc:
            raise ScenarioError(f"the node does not answer: {exc}") from None
        daemon = status.get("daemon", {})
        try:
            # A few KB read once per run: not worth a thread.
            manifest = load_manifest(str(daemon.get("config", "")))
        except (RusmError, OSError) as exc:
            raise ScenarioError(f"cannot read the node's manifest: {exc}") from None
        target = cls(control, components=set(manifest.components))
        target.workers = sum(1 for row in status.get("workers", []) if row.get("pid"))
        for serve in manifest.serve:
            host, _, port = serve.listen.rpartition(":")
            address = (_connectable(host.strip("[]")), int(port))
            if serve.protocol is Protocol.WS and serve.name:
                target.ws[serve.name] = address
            for route in serve.routes:
                key = (str(serve.protocol), route.component, route.action)
                if ROUTES.get(key) == route.path:
                    target.routes[route.path] = address
        return target

    def route(self, protocol: str, component: str, action: str) -> tuple[str, int, str]:
        """(host, port, path to request) of a scenario route, or ScenarioError naming it.

        The path is the route's, its parameter filled in (``request_path``).
        """
        path = ROUTES[(protocol, component, action)]
        if path not in self.routes:
            raise ScenarioError(
                f"this node does not serve {protocol.upper()} GET {path} -> {component}#{action}"
            )
        return (*self.routes[path], request_path(path))

    async def write_kv_value(self) -> None:
        """Store the value sc_kv reads (``KV_VALUE``), as ``rusmctl kv set`` would.

        Raises:
            ScenarioError: The node refused it (no store, say), with why.
        """
        try:
            await self.control.request(
                "kv",
                action="set",
                bucket=KV_BUCKET,
                key_b64=base64.b64encode(KV_KEY.encode()).decode(),
                value_b64=base64.b64encode(KV_VALUE).decode(),
            )
        except (ControlUnavailable, ControlRefused) as exc:
            raise ScenarioError(f"kv set {KV_BUCKET} {KV_KEY}: {exc}") from None

    def need(self, *components: str) -> None:
        """ScenarioError naming the components this node does not have."""
        missing = [name for name in components if name not in self.components]
        if missing:
            raise ScenarioError(f"this node has no component {', '.join(missing)}")


def _connectable(host: str) -> str:
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)


class HttpClient:
    """One keep-alive HTTP/1.1 connection that GETs a path and reads the whole answer."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def get(self, path: str, *, timed: bool = True) -> tuple[int, bytes]:
        """``GET path``: (status, body); reconnects after a close.

        Args:
            path: What to GET.
            timed: Fail with TimeoutError past ``OPERATION_TIMEOUT_S``. A
                scenario's lanes pass False: the run's watchdog bounds
                them (``rusmd.node.scenarios``) without a timer a request.
        """
        try:
            if not timed:
                return await self._get(path)
            async with asyncio.timeout(OPERATION_TIMEOUT_S):
                return await self._get(path)
        except BaseException:
            self.close()
            raise

    async def _get(self, path: str) -> tuple[int, bytes]:
        if self.writer is None or self.reader is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        reader, writer = self.reader, self.writer
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n\r\n".encode())
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if "content-length" in headers:
            body = await reader.readexactly(int(headers["content-length"]))
        else:
            body = await self._chunked(reader)
        if headers.get("connection", "").lower() == "close":
            self.close()
        return status, body

    async def _chunked(self, reader: asyncio.StreamReader) -> bytes:
        body = b""
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                return body
            body += (await reader.readexactly(size + 2))[:-2]
            if len(body) > MAX_RESPONSE_BYTES:
                raise ValueError(f"a response of {self.host}:{self.port} is over 64 KiB")

    def close(self) -> None:
        """Drop the connection (the next ``get`` opens another)."""
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None
