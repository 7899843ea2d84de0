"""The eight benchmark scenarios: what each drives on a live node, and what it counts.

Runs in: node endpoint, on its event loop, or the ``rusmd bench``
command's process, on its own loop.

A scenario drives the node as a client would: over the control socket
(``spawn``, ``kill``, ``info``, ``stats``, as ``rusmctl`` does) and over
the manifest's own listeners (HTTP, SSE, WebSocket), against the
components of the scenario app (``rusmd.node.scenario_app``), found on
the node by ``rusmd.node.scenario_target.Target``; a scenario whose
components or routes the node does not have is refused with what is
missing.

The actor scenarios measure inside the node, as ``python -m bench
actors`` does: spawn-storm and fault-recovery start a guest on every
worker that spawns (or supervises) there and count the workers' own
exit counters; ping-pong's round trips are timed by the guest that makes
them. The HTTP and stream scenarios' figures include the client's side
(the driver is Python on one asyncio loop). ``rusmd bench`` drives http-throughput and
kv-storm with wrk instead when it is installed
(``rusmd.node.scenario_wrk``), as ``python -m bench http`` does;
docs/operations.md says what still differs between each scenario and
its ``python -m bench`` counterpart.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from rusmd.abi import slot_of
from rusmd.node.control import ControlClient
from rusmd.node.scenario_actors import FaultRecovery, OnEveryWorker, SpawnStorm
from rusmd.node.scenario_app import (
    BURST_EVENTS,
    KV_KEY,
    KV_VALUE,
    KV_VALUE_BYTES,
    PING_TRIPS,
    SPAWN_WINDOW,
    SSE_DATA,
    ping_answer,
)
from rusmd.node.scenario_target import HttpClient, Target
from rusmd.node.scenario_wrk import wrk_driver
from rusmd.node.scenarios import Driver, Lane, Outcome, Scenario, ScenarioError

# One read of an SSE stream: a few thousand events of the scenario app.
SSE_READ_BYTES = 1 << 16
# How sse-fanout finds an event of sc_sse#burst in the raw stream.
SSE_EVENT_MARK = b"data: " + SSE_DATA
# As python -m bench http's WebSocket section: 16 connections, each
# sending "hello world" and awaiting its echo, one at a time.
WS_MESSAGE = "hello world"
WS_CONNECTIONS = 16
# ping-pong opens at most this many connections looking for handlers on
# sc_pong's worker and on another; the few it keeps are its lanes.
PROBE_CONNECTIONS = 32


async def _expect_ok(client: HttpClient, path: str, *, timed: bool = True) -> bytes:
    """The body of ``GET path`` answered 200; ScenarioError with the answer else.

    ``timed=False`` in a lane: the run's watchdog bounds it.
    """
    status, body = await client.get(path, timed=timed)
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
            await _expect_ok(client, self.path, timed=False)
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
    """GET /sc/kv/KEY: each request one kv_get by sc_kv's C guest of the value stored first."""

    def __init__(self, target: Target) -> None:
        super().__init__(target, "sc_kv", "get")
        self.target = target

    async def start(self) -> list[Lane]:
        await self.target.write_kv_value()
        return await super().start()

    def _lane(self, client: HttpClient) -> Lane:
        async def one() -> Outcome:
            body = await _expect_ok(client, self.path, timed=False)
            if body != KV_VALUE:
                raise ScenarioError(f"GET {self.path} answered {body[:40]!r}, not the value")
            return 1, None, ""

        return one


class Fairness(_Http):
    """HTTP on 4 connections while a spinning process runs on every worker."""

    lanes = 4

    def __init__(self, target: Target) -> None:
        super().__init__(target, "sc_http", "hello")
        target.need("sc_spin")
        self.spinners = OnEveryWorker(target.control, "sc_spin", target.workers)

    async def start(self) -> list[Lane]:
        await self.spinners.spawn()
        return await super().start()

    async def finish(self) -> dict[str, Any]:
        extra = await super().finish()
        await self.spinners.kill_all()
        return {**extra, "workers_spinning": self.spinners.covered}


class PingPong(_Http):
    """GET /sc/ping: the handler times ``PING_TRIPS`` calls to the resident sc_pong.

    One lane, alternating between a connection whose handler runs on
    sc_pong's worker and one whose handler runs on another, so one round
    trip is in flight at a time, as in ``python -m bench actors``.
    """

    def __init__(self, target: Target) -> None:
        super().__init__(target, "sc_ping", "ping")
        target.need("sc_pong")
        self.control = target.control
        self.workers = target.workers
        self.pong_slot = -1
        self.turn = 0

    async def start(self) -> list[Lane]:
        info = await self.control.request("info", pid="sc_pong")
        self.pong_slot = int(info["process"]["worker"])
        # The kernel spreads connections over the workers: probe new ones
        # and keep one for each part, so both parts are measured.
        wanted = {"same_worker"} | ({"across_workers"} if self.workers > 1 else set())
        for _ in range(PROBE_CONNECTIONS):
            if not wanted:
                break
            client = HttpClient(self.host, self.port)
            part = self._part(await _expect_ok(client, self.path))
            if part in wanted:
                wanted.discard(part)
                self.clients.append(client)
            else:
                client.close()
        if not self.clients:
            raise ScenarioError(f"no connection's GET {self.path} ran on sc_pong's worker")
        return [self._alternate]

    def _part(self, body: bytes) -> str:
        return self._answer(body)[0]

    def _answer(self, body: bytes) -> tuple[str, list[int]]:
        try:
            pid, trips = ping_answer(body)
        except ValueError as exc:
            raise ScenarioError(f"GET {self.path}: {exc}") from None
        return "same_worker" if slot_of(pid) == self.pong_slot else "across_workers", trips

    async def _alternate(self) -> Outcome:
        client = self.clients[self.turn % len(self.clients)]
        self.turn += 1
        part, trips = self._answer(await _expect_ok(client, self.path, timed=False))
        return len(trips), trips, part


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
            # No timeout here: the run's watchdog bounds the trip.
            await connection.send(WS_MESSAGE)
            answer = await connection.recv()
            if answer != WS_MESSAGE:
                raise ValueError(f"sc_echo answered {str(answer)[:40]!r}")
            return 1, None, ""

        return trip

    async def finish(self) -> dict[str, Any]:
        for connection in self.connections:
            await connection.close()
        return {"lanes": len(self.connections)}


class SseFanout(Driver):
    """One client at a time opening /sc/burst and reading its ``BURST_EVENTS`` events."""

    def __init__(self, target: Target) -> None:
        target.need("sc_sse")
        self.host, self.port, self.path = target.route("sse", "sc_sse", "burst")

    async def start(self) -> list[Lane]:
        return [self._read]

    async def _read(self) -> Outcome:
        reader, writer = await asyncio.open_connection(self.host, self.port)
        try:
            writer.write(f"GET {self.path} HTTP/1.1\r\nHost: {self.host}\r\n\r\n".encode())
            # A mark may straddle two reads: the last bytes of one, too
            # few to hold a whole mark, are looked at again with the next.
            events, tail = 0, b""
            while events < BURST_EVENTS:
                data = await reader.read(SSE_READ_BYTES)
                if not data:
                    break
                events += (tail + data).count(SSE_EVENT_MARK)
                tail = data[1 - len(SSE_EVENT_MARK) :]
            if events < BURST_EVENTS:
                raise ScenarioError(f"{self.path} ended after {events} of {BURST_EVENTS} events")
            return BURST_EVENTS, None, ""
        finally:
            writer.close()


SCENARIOS = {
    scenario.name: scenario
    for scenario in (
        Scenario(
            "spawn-storm",
            "processes spawned, run and exited in the worker: sc_spawner (one on every worker) "
            f"spawns sc_quick, {SPAWN_WINDOW} alive at a time, another as each one exits; "
            "counted by the workers' exits `normal`, read every 0.1 s; "
            "latency: each read's window divided by the spawns counted in it",
            "spawns",
            "components sc_spawner and sc_quick",
            SpawnStorm,
        ),
        Scenario(
            "ping-pong",
            "call/reply round trips between two processes in the node: the handler of GET "
            f"/sc/ping calls the resident sc_pong {PING_TRIPS} times, timing each call on the "
            "WASI monotonic clock; one request at a time, alternating between a handler on "
            "sc_pong's worker (same_worker) and one on another (across_workers); "
            "latency: each round trip as the guest timed it",
            "round trips",
            "components sc_ping and sc_pong, GET /sc/ping on an HTTP listener",
            PingPong,
        ),
        Scenario(
            "fault-recovery",
            "restarts under a guest's supervisor: sc_sup (one on every worker) supervises "
            "sc_crasher (one_for_one, permanent), which exits crashed at once; counted by the "
            "workers' exits `crashed`, read every 0.1 s; "
            "latency: each read's window divided by the restarts counted in it",
            "restarts",
            "components sc_sup and sc_crasher",
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
            f"SSE events of one stream at a time of sc_sse#burst ({BURST_EVENTS:,} events, "
            "as `python -m bench http`'s SSE stream), each read to its end on a connection "
            "of its own; latency: one stream from connect to its last event",
            "events",
            "component sc_sse, GET /sc/burst on an SSE listener",
            SseFanout,
        ),
        Scenario(
            "kv-storm",
            f"store reads: GET /sc/kv/{KV_KEY} answers a {KV_VALUE_BYTES}-byte JSON value "
            "from one kv_get by sc_kv, the C guest of `python -m bench http`'s kv workload "
            "(kv_get.c: libc, the route parameter, a JSON answer); from `rusmd bench` with wrk "
            "on PATH, wrk -t1 -c64, else 8 connections of the Python client; "
            "latency: each request's round trip",
            "reads",
            "component sc_kv with storage, GET /sc/kv/:key on an HTTP listener, [node] store",
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
