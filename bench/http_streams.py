"""The stream figures of ``bench/http.py``: WebSocket echo round trips, SSE events.

Runs in: the benchmark process (the clients; the servers are subprocesses
started through ``bench/http_servers.py``, one at a time, 1 worker each).

- WebSocket: ``--clients`` connections, opened and warmed up with
  ``WARMUP_TRIPS`` round trips each before the clock starts, then each
  sends a message and awaits its echo, again and again, for
  ``--duration`` seconds. rusmd's ``echo`` (a process per connection)
  against ``websockets.asyncio.server.serve`` on uvloop; the client runs
  on uvloop too, without compression.
- SSE: ``GET /events`` (``Connection: close``) read to the end of the
  stream on a raw socket, 64 KiB at a time, counting the blank lines
  that end events, and timed from the request to the last event; the
  median of ``STREAMS`` streams, after ``WARMUP_STREAMS`` not counted
  (a daemon's first few streams after its start ran at half the rate).
  rusmd's ``feed#events`` against the ASGI app under uvicorn, both
  sending ``--events`` events. Not
  ``http.client``: it hands back one chunk of the chunked body a call,
  an event each here, so its own parsing bounded both servers' figures;
  the ``sse-fanout`` scenario reads the same way.

Each figure comes with the server's CPU time per round trip or per event
(its whole process tree), which holds when the client is the limit.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import time
from collections.abc import Callable
from contextlib import AbstractContextManager

import uvloop

from bench.http_baseline import HELLO
from bench.http_servers import RusmApp, Server, cpu_used_s, rusmd, uvicorn, ws_echo
from bench.worker_restart import _free_port

WARMUP_TRIPS = 20
WARMUP_STREAMS = 2
STREAMS = 3
MESSAGE = HELLO.decode()
# A stream that stalls ends the run instead of hanging it.
READ_TIMEOUT_S = 60.0
READ_BYTES = 1 << 16


def _print(what: str, unit: str, rusm: tuple[float, float], base: tuple[float, float]) -> None:
    rate, cpu = rusm
    base_rate, base_cpu = base
    print(
        f"{what:<34} rusmd {rate:>10,.0f} {unit}  baseline {base_rate:>10,.0f} {unit}  "
        f"ratio {rate / base_rate:.2f}   server CPU µs each: rusmd {cpu:.1f}, "
        f"baseline {base_cpu:.1f}, ratio {cpu / base_cpu:.2f}"
    )


def _paired(
    rusm: Callable[[], tuple[float, float]], base: Callable[[], tuple[float, float]], reps: int
) -> tuple[tuple[float, float], tuple[float, float]]:
    """Medians of rate and CPU over ``reps`` runs of each, taken in turn."""
    pairs = [(rusm(), base()) for _ in range(reps)]

    def median(side: int, field: int) -> float:
        return statistics.median(pair[side][field] for pair in pairs)

    return (median(0, 0), median(0, 1)), (median(1, 0), median(1, 1))


# ── WebSocket ───────────────────────────────────────────────────────────


async def _round_trips(
    url: str, clients: int, duration_s: float, server: Server
) -> tuple[float, float]:
    from websockets.asyncio.client import ClientConnection, connect

    async def trips(connection: ClientConnection, count: int, deadline: float) -> int:
        done = 0
        while done < count and time.monotonic() < deadline:
            await connection.send(MESSAGE)
            await connection.recv()
            done += 1
        return done

    connections = [await connect(url, compression=None) for _ in range(clients)]
    try:
        never = time.monotonic() + 3600
        await asyncio.gather(*(trips(c, WARMUP_TRIPS, never) for c in connections))
        before, started = server.cpu(), time.perf_counter()
        deadline = time.monotonic() + duration_s
        counts = await asyncio.gather(*(trips(c, 1 << 62, deadline) for c in connections))
        elapsed, used_s = time.perf_counter() - started, cpu_used_s(before, server.cpu())
    finally:
        await asyncio.gather(*(c.close() for c in connections))
    total = sum(counts)
    return total / elapsed, used_s * 1e6 / max(total, 1)


def ws_round_trips(
    server: AbstractContextManager[Server], port: int, args: argparse.Namespace
) -> tuple[float, float]:
    """Round trips/s over ``--clients`` connections and server CPU µs per round trip."""
    with server as running:
        url = f"ws://127.0.0.1:{port}/"
        return uvloop.run(_round_trips(url, args.clients, args.duration, running))


def ws_section(app: RusmApp, args: argparse.Namespace) -> None:
    port = _free_port()
    rusm, base = _paired(
        lambda: ws_round_trips(rusmd(app, 1), app.ws_port, args),
        lambda: ws_round_trips(ws_echo(port, app.directory), port, args),
        args.reps,
    )
    _print(f"WebSocket echo, {args.clients} clients", "trips/s", rusm, base)


# ── SSE ─────────────────────────────────────────────────────────────────


def sse_stream(port: int, path: str, expected: int, server: Server) -> tuple[float, float]:
    """Events/s of one stream read to its end, and server CPU µs per event."""
    with socket.create_connection(("127.0.0.1", port), timeout=READ_TIMEOUT_S) as sock:
        before, started = server.cpu(), time.perf_counter()
        request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
        sock.sendall(request.encode())
        head = b""
        while b"\r\n\r\n" not in head:
            if not (data := sock.recv(READ_BYTES)):
                raise RuntimeError(f"GET {path} on port {port}: closed before its head")
            head += data
        head, _, body = head.partition(b"\r\n\r\n")
        status = head.split(b" ", 2)[1]
        if status != b"200":
            raise RuntimeError(f"GET {path} on port {port}: {status.decode(errors='replace')}")
        # An event ends with a blank line; its "\n\n" may straddle two reads.
        # The chunked framing ("\r\n18\r\n") has none of its own.
        events, last = body.count(b"\n\n"), body[-1:]
        while events < expected and (data := sock.recv(READ_BYTES)):
            events += (last + data).count(b"\n\n")
            last = data[-1:]
        elapsed, used_s = time.perf_counter() - started, cpu_used_s(before, server.cpu())
    if events != expected:
        print(f"  (GET {path} on port {port} ended after {events:,} of {expected:,} events)")
    return events / elapsed, used_s * 1e6 / max(events, 1)


def sse_events(
    server: AbstractContextManager[Server], port: int, path: str, expected: int
) -> tuple[float, float]:
    """The median stream of ``STREAMS`` (events/s, server CPU µs per event)."""
    with server as running:
        for _ in range(WARMUP_STREAMS):
            sse_stream(port, path, expected, running)
        streams = [sse_stream(port, path, expected, running) for _ in range(STREAMS)]
    rates = sorted(streams)
    return rates[len(rates) // 2]


def sse_section(app: RusmApp, args: argparse.Namespace) -> None:
    port = _free_port()
    rusm, base = _paired(
        lambda: sse_events(rusmd(app, 1), app.sse_port, "/events", args.events),
        lambda: sse_events(
            uvicorn(port, 1, app.directory), port, f"/events?n={args.events}", args.events
        ),
        args.reps,
    )
    _print(f"SSE, {args.events:,} events a stream", "events/s", rusm, base)
