"""The eight benchmark scenarios: what each drives on a live node, and what it counts.

Runs in: node endpoint, on its event loop, or the ``rusmd bench``
command's process, on its own loop.

A scenario drives the node as a client would: over the control socket
(``spawn``, ``kill``, ``info``, as ``rusmctl`` does) and over the
manifest's own listeners (HTTP, SSE, WebSocket), against the components
of the scenario app (``rusmd.node.scenario_app``), found on the node by
``rusmd.node.scenario_target.Target``; a scenario whose components or
routes the node does not have is refused with what is missing.

Every figure includes the client's side (the driver is Python on one
asyncio loop): these scenarios show the node under a load and compare
runs with each other. ``rusmd bench`` drives http-throughput and
kv-storm with wrk instead when it is installed
(``rusmd.node.scenario_wrk``), as ``python -m bench http`` does;
docs/operations.md says what still differs between each scenario and
its ``python -m bench`` counterpart.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from rusmd.abi import slot_of
from rusmd.node.control import ControlClient, ControlRefused, ControlUnavailable
from rusmd.node.scenario_app import BURST_EVENTS, PING_TRIPS
from rusmd.node.scenario_target import (
    MAX_RESPONSE_BYTES,
    OPERATION_TIMEOUT_S,
    HttpClient,
    Target,
)
from rusmd.node.scenario_wrk import wrk_driver
from rusmd.node.scenarios import Driver, Lane, Outcome, Scenario, ScenarioError

# How long fault-recovery waits for the resident to come back.
RECOVERY_TIMEOUT_S = 10.0
# As python -m bench http's WebSocket section: 16 connections, each
# sending "hello world" and awaiting its echo, one at a time.
WS_MESSAGE = "hello world"
WS_CONNECTIONS = 16
# fairness spawns until every worker has a spinner; the daemon places
# spawns itself, so it may take a few tries, but never more than this.
SPAWN_ATTEMPTS_PER_WORKER = 8
# ping-pong opens at most this many connections looking for handlers on
# sc_pong's worker and on another; the few it keeps are its lanes.
PROBE_CONNECTIONS = 32


async def _expect_ok(client: HttpClient, path: str) -> bytes:
    status, body = await client.get(path)
    if status != 200:
        raise ScenarioError(f"GET {path} answered {status}: {body[:200].decode(errors='replace')}")
    return body


class _Http(Driver):
    """``lanes`` keep-alive connections, each GETting ``path`` back to back."""

    lanes = 8

    def __init__(self, target: Target, component: str, action: str) -> None:
        target.need(component)
        self.host, self.port, self.path = target.route("http", component, action)
        self.clients: list[HttpClient] = []

    async def start(self) -> list[Lane]:
        self.clients = [HttpClient(self.host, self.port) for _ in range(self.lanes)]
        await _expect_ok(self.clients[0], self.path)  # fails early, with why
        return [self._lane(client) for client in self.clients]

    def _lane(self, client: HttpClient) -> Lane:
        async def one() -> Outcome:
            await _expect_ok(client, self.path)
            return 1, None, ""

        return one

    async def finish(self) -> dict[str, Any]:
        for client in self.clients:
            client.close()
        return {"lanes": len(self.clients)}


class HttpThroughput(_Http):
    """GET /sc/hello on 8 keep-alive connections."""

    def __init__(self, target: Target) -> None:
        super().__init__(target, "sc_http", "hello")


class KvStorm(_Http):
    """GET /sc/kv: each request one kv_set that returns after its commit."""

    def __init__(self, target: Target) -> None:
        super().__init__(target, "sc_kv", "kv")


class Fairness(_Http):
    """HTTP on 4 connections while a spinning process runs on every worker."""

    lanes = 4

    def __init__(self, target: Target) -> None:
        super().__init__(target, "sc_http", "hello")
        target.need("sc_spin")
        self.control = target.control
        self.spinners = max(1, target.workers)
        self.pids: list[int] = []
        self.workers_spinning = 0

    async def start(self) -> list[Lane]:
        # The daemon picks the worker of a spawn: spawn until every worker
        # has one, killing a spinner that lands where one already spins.
        spinning: set[int] = set()
        for _ in range(SPAWN_ATTEMPTS_PER_WORKER * self.spinners):
            if len(spinning) == self.spinners:
                break
            reply = await self.control.request("spawn", name="sc_spin")
            pid = int(reply["pid"])
            self.pids.append(pid)
            if slot_of(pid) in spinning:
                await self._kill(pid)
            spinning.add(slot_of(pid))
        self.workers_spinning = len(spinning)
        return await super().start()

    async def _kill(self, pid: int) -> None:
        try:
            await self.control.request("kill", pid=f"#{pid}")
        except ControlRefused:
            pass  # gone already (its CPU budget ended it)
        self.pids.remove(pid)

    async def finish(self) -> dict[str, Any]:
        extra = await super().finish()
        for pid in list(self.pids):
            await self._kill(pid)
        return {**extra, "workers_spinning": self.workers_spinning}


class PingPong(_Http):
    """GET /sc/ping: the handler makes 100 calls to the resident sc_pong."""

    lanes = 2  # a part: 2 connections whose handler runs beside sc_pong, 2 elsewhere

    def __init__(self, target: Target) -> None:
        super().__init__(target, "sc_ping", "ping")
        target.need("sc_pong")
        self.control = target.control
        self.workers = target.workers
        self.pong_slot = -1

    async def start(self) -> list[Lane]:
        info = await self.control.request("info", pid="sc_pong")
        self.pong_slot = int(info["process"]["worker"])
        # The kernel spreads connections over the workers: probe new ones
        # and keep those that fill a part, so both parts are measured.
        wanted = {"same_worker": self.lanes, "across_workers": self.lanes}
        if self.workers < 2:
            wanted["across_workers"] = 0
        for _ in range(PROBE_CONNECTIONS):
            if not any(wanted.values()):
                break
            client = HttpClient(self.host, self.port)
            part = self._part(await _expect_ok(client, self.path))
            if wanted[part]:
                wanted[part] -= 1
                self.clients.append(client)
            else:
                client.close()
        return [self._lane(client) for client in self.clients]

    def _part(self, body: bytes) -> str:
        return "same_worker" if slot_of(int(body)) == self.pong_slot else "across_workers"

    def _lane(self, client: HttpClient) -> Lane:
        async def batch() -> Outcome:
            began = time.monotonic_ns()
            body = await _expect_ok(client, self.path)
            per_trip = (time.monotonic_ns() - began) // PING_TRIPS
            return PING_TRIPS, per_trip, self._part(body)

        return batch


class SpawnStorm(Driver):
    """``spawn sc_quick`` over the control socket, 4 requests at a time."""

    def __init__(self, target: Target) -> None:
        target.need("sc_quick")
        self.control = target.control

    async def start(self) -> list[Lane]:
        return [self._spawn] * 4

    async def _spawn(self) -> Outcome:
        try:
            await self.control.request("spawn", name="sc_quick")
        except (ControlRefused, ControlUnavailable) as exc:
            raise ScenarioError(f"spawn sc_quick: {exc}") from None
        return 1, None, ""


class FaultRecovery(Driver):
    """Kill the resident sc_victim; time until its supervisor has a new one registered."""

    def __init__(self, target: Target) -> None:
        target.need("sc_victim")
        self.control = target.control

    async def start(self) -> list[Lane]:
        await self._pid()
        return [self._once]

    async def _pid(self) -> int:
        try:
            info = await self.control.request("info", pid="sc_victim")
        except ControlRefused:
            return 0  # not registered: between its exit and its restart
        return int(info["process"]["pid"])

    async def _once(self) -> Outcome:
        before = await self._pid()
        if not before:
            raise ScenarioError("sc_victim is not running (quarantined?)")
        began = time.monotonic_ns()
        await self.control.request("kill", pid=f"#{before}")
        deadline = time.monotonic() + RECOVERY_TIMEOUT_S
        while time.monotonic() < deadline:
            now = await self._pid()
            if now and now != before:
                return 1, time.monotonic_ns() - began, ""
        raise ScenarioError(f"sc_victim did not come back within {RECOVERY_TIMEOUT_S:g} s")


class WsEcho(Driver):
    """A text message to sc_echo and its echo, on ``WS_CONNECTIONS`` connections."""

    def __init__(self, target: Target) -> None:
        target.need("sc_echo")
        if "sc_echo" not in target.ws:
            raise ScenarioError("this node has no WebSocket listener for sc_echo")
        self.host, self.port = target.ws["sc_echo"]
        self.connections: list[ClientConnection] = []

    async def start(self) -> list[Lane]:
        for _ in range(WS_CONNECTIONS):
            uri = f"ws://{self.host}:{self.port}/"
            self.connections.append(await connect(uri, compression=None, open_timeout=10))
        return [self._lane(connection) for connection in self.connections]

    def _lane(self, connection: ClientConnection) -> Lane:
        async def trip() -> Outcome:
            await connection.send(WS_MESSAGE)
            answer = await asyncio.wait_for(connection.recv(), OPERATION_TIMEOUT_S)
            if answer != WS_MESSAGE:
                raise ValueError(f"sc_echo answered {str(answer)[:40]!r}")
            return 1, None, ""

        return trip

    async def finish(self) -> dict[str, Any]:
        for connection in self.connections:
            await connection.close()
        return {"lanes": len(self.connections)}


class SseFanout(Driver):
    """8 clients at once, each opening /sc/burst and reading its 100 events."""

    def __init__(self, target: Target) -> None:
        target.need("sc_sse")
        self.host, self.port, self.path = target.route("sse", "sc_sse", "burst")

    async def start(self) -> list[Lane]:
        return [self._stream] * 8

    async def _stream(self) -> Outcome:
        return await asyncio.wait_for(self._read(), OPERATION_TIMEOUT_S)

    async def _read(self) -> Outcome:
        reader, writer = await asyncio.open_connection(self.host, self.port)
        try:
            writer.write(f"GET {self.path} HTTP/1.1\r\nHost: {self.host}\r\n\r\n".encode())
            seen = b""
            while seen.count(b"data: tick") < BURST_EVENTS:
                data = await reader.read(MAX_RESPONSE_BYTES)
                if not data:
                    break
                seen += data
                if len(seen) > MAX_RESPONSE_BYTES:
                    raise ValueError(f"{self.path} sent more than its {BURST_EVENTS} events")
            events = seen.count(b"data: tick")
            if events < BURST_EVENTS:
                raise ScenarioError(f"{self.path} ended after {events} of {BURST_EVENTS} events")
            return events, None, ""
        finally:
            writer.close()


SCENARIOS = {
    scenario.name: scenario
    for scenario in (
        Scenario(
            "spawn-storm",
            "processes spawned by `spawn sc_quick` over the control socket (4 at a time); "
            "latency: the spawn request's round trip",
            "spawns",
            "component sc_quick",
            SpawnStorm,
        ),
        Scenario(
            "ping-pong",
            "call/reply round trips from an HTTP handler to the resident sc_pong, "
            f"{PING_TRIPS} a request on 2 connections a part, split by whether the handler ran on "
            "sc_pong's worker (same_worker) or another (across_workers); "
            "latency: the mean round trip of each batch, HTTP included",
            "round trips",
            "components sc_ping and sc_pong, GET /sc/ping on an HTTP listener",
            PingPong,
        ),
        Scenario(
            "fault-recovery",
            "kills of the resident sc_victim, each waited out until its supervisor has "
            "registered a new one; latency: from the kill to the new pid answering `info`",
            "recoveries",
            "resident component sc_victim",
            FaultRecovery,
        ),
        Scenario(
            "fairness",
            "HTTP requests (GET /sc/hello, 4 connections) served while one sc_spin process "
            "spins forever on every worker; latency: each request's round trip",
            "requests",
            "components sc_spin and sc_http, GET /sc/hello on an HTTP listener",
            Fairness,
        ),
        Scenario(
            "http-throughput",
            "HTTP requests GET /sc/hello (`hello world`): from `rusmd bench` with wrk on "
            "PATH, wrk -t1 -c64 as `python -m bench http`; else 8 keep-alive connections of "
            "the Python client; latency: each request's round trip",
            "requests",
            "component sc_http, GET /sc/hello on an HTTP listener",
            HttpThroughput,
        ),
        Scenario(
            "ws-echo",
            f"WebSocket round trips of a text message ({WS_MESSAGE!r}) to sc_echo on "
            f"{WS_CONNECTIONS} connections, as `python -m bench http`'s WebSocket section; "
            "latency: each round trip",
            "round trips",
            "component sc_echo on a WebSocket listener",
            WsEcho,
        ),
        Scenario(
            "sse-fanout",
            f"SSE events received by 8 concurrent clients, each stream {BURST_EVENTS} events "
            "of sc_sse#burst; latency: one stream from connect to its last event",
            "events",
            "component sc_sse, GET /sc/burst on an SSE listener",
            SseFanout,
        ),
        Scenario(
            "kv-storm",
            "store writes: GET /sc/kv runs one kv_set that returns after its commit; "
            "from `rusmd bench` with wrk on PATH, wrk -t1 -c64, else 8 connections of the "
            "Python client; latency: each request's round trip",
            "writes",
            "component sc_kv with storage, GET /sc/kv on an HTTP listener, [node] store",
            KvStorm,
        ),
    )
}
"""Every scenario by name, in the order the dashboard lists them."""


def describe() -> list[dict[str, str]]:
    """Name, what it counts and what it needs, for ``hello`` and ``--help``."""
    return [
        {"name": s.name, "counts": s.counts, "unit": s.unit, "needs": s.needs}
        for s in SCENARIOS.values()
    ]


async def prepare(name: str, socket_path: Path, *, wrk: bool = False) -> tuple[Scenario, Driver]:
    """The scenario ``name`` and its driver for the node at ``socket_path``.

    Args:
        name: The scenario.
        socket_path: The node's control socket.
        wrk: Drive the HTTP scenarios that have a wrk driver with wrk
            (``rusmd.node.scenario_wrk``) instead of the Python client.

    Raises:
        ScenarioError: No such scenario, or the node cannot run it (and why).
    """
    scenario = SCENARIOS.get(name)
    if scenario is None:
        raise ScenarioError(f"unknown scenario {name!r} (valid: {', '.join(SCENARIOS)})")
    try:
        target = await Target.discover(ControlClient(socket_path))
        outside = wrk_driver(name, target) if wrk else None
        return scenario, outside or scenario.driver(target)
    except ScenarioError as exc:
        raise ScenarioError(
            f"scenario {name!r} not available on this node: {exc} "
            f"(it needs {scenario.needs}; `rusmd bench {name}` runs it on an app that has them)"
        ) from None
