"""Soak: WebSocket bursts and HTTP load on one worker; does its memory come back?

Runs in: a benchmark process of its own. It starts the real daemon as a
subprocess (``bench/http_servers.py``'s app, one worker, log off) and
drives it with clients of its own, and ``wrk`` when it is on the PATH.

``python -m bench soak [--rounds N] [--sockets N] [--http-s S]
[--tolerance F]``. Each round opens ``--sockets`` (1,000) WebSockets to
the ``echo`` listener (a process per connection, run as a fiber), has
each echo one message, closes them all and waits until the worker counts
no process; then it puts ``GET /`` (an inline handler: a fresh instance
per request) under keep-alive load for its share of ``--http-s`` (60 s
over all rounds): ``wrk -t1 -c64`` if present (``make bench-deps``), else
64 keep-alive connections of a Python client. The worker's RSS, as
``rusmctl status`` reports it, is printed before the first round, after
each round and at the end (once the worker is idle again). The soak
passes when the end is within ``--tolerance`` (10 %) of the figure after
the first round, on the same worker (a restart would hide a leak): the
first round sets the allocators' high-water marks, and a leak shows as
growth after it. Exit status 1 when it does not pass.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvloop

from bench.http import parse_wrk, wrk
from bench.http_servers import RusmApp, rusmd, write_app
from rusmd.control.protocol import MAX_REPLY_BYTES, FrameReader, encode_frame

ROUNDS = 10
SOCKETS = 1000
HTTP_S = 60.0
TOLERANCE = 0.10
# WebSocket handshakes in flight while a round opens its sockets.
HANDSHAKES_IN_FLIGHT = 64
# Keep-alive connections of the HTTP load (as ``wrk -c64``).
HTTP_CONNECTIONS = 64
# Bounds on one wait, so a daemon that stops answering ends the run.
WAIT_S = 120.0
# The worker's process count comes with its heartbeat (1 s), and a burst's
# heap is trimmed at a heartbeat: two of them after it is idle.
SETTLE_S = 2.5
REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
_MIB = float(1 << 20)


@dataclass(frozen=True)
class Load:
    """What one slice of HTTP load did."""

    requests: int
    errors: int


def control(app: RusmApp, command: str) -> dict[str, Any]:
    """One control request to the daemon; its result."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(WAIT_S)
        conn.connect(str(app.directory / ".rusm" / "rusmd.sock"))
        conn.sendall(encode_frame({"command": command, "args": {}}))
        reader = FrameReader(MAX_REPLY_BYTES)
        while True:
            data = conn.recv(65536)
            if not data:
                raise RuntimeError(f"rusmd closed the control connection during {command}")
            frames = reader.feed(data)
            if frames:
                reply: dict[str, Any] = frames[0]
                if not reply.get("ok"):
                    raise RuntimeError(f"{command}: {reply}")
                result: dict[str, Any] = reply["result"]
                return result


def worker(app: RusmApp) -> dict[str, Any]:
    """The worker's row in ``status`` (the app runs one)."""
    rows: list[dict[str, Any]] = control(app, "status")["workers"]
    return rows[0]


def settled(app: RusmApp) -> dict[str, Any]:
    """The worker's row once it counts no process and a heap trim has had its chance."""
    deadline = time.monotonic() + WAIT_S
    while worker(app)["processes"]:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the worker still counts processes after {WAIT_S:g} s")
        time.sleep(0.1)
    time.sleep(SETTLE_S)
    return worker(app)


async def burst(port: int, count: int) -> tuple[int, int]:
    """Open ``count`` WebSockets at once, echo a message on each, close them; (opened, failed)."""
    from websockets.asyncio.client import ClientConnection, connect

    gate = asyncio.Semaphore(HANDSHAKES_IN_FLIGHT)

    async def open_one() -> ClientConnection:
        async with gate:
            return await connect(
                f"ws://127.0.0.1:{port}/", open_timeout=WAIT_S, close_timeout=WAIT_S
            )

    opened = await asyncio.gather(*(open_one() for _ in range(count)), return_exceptions=True)
    sockets = [ws for ws in opened if isinstance(ws, ClientConnection)]
    try:
        await asyncio.gather(*(ws.send("soak") for ws in sockets))
        await asyncio.gather(*(asyncio.wait_for(ws.recv(), WAIT_S) for ws in sockets))
    finally:
        await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
    return len(sockets), count - len(sockets)


async def keepalive_load(port: int, duration_s: float) -> Load:
    """``GET /`` on ``HTTP_CONNECTIONS`` keep-alive connections for ``duration_s``."""
    deadline = time.monotonic() + duration_s
    done = [0, 0]  # requests answered 200, errors

    async def client() -> None:
        while time.monotonic() < deadline:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                done[1] += 1
                continue
            try:
                while time.monotonic() < deadline:
                    writer.write(REQUEST)
                    head = await reader.readuntil(b"\r\n\r\n")
                    length = 0
                    for line in head.split(b"\r\n"):
                        name, _, value = line.partition(b":")
                        if name.lower() == b"content-length":
                            length = int(value)
                    await reader.readexactly(length)
                    done[0 if head.startswith(b"HTTP/1.1 200 ") else 1] += 1
            except (OSError, asyncio.IncompleteReadError, ValueError):
                done[1] += 1
            finally:
                writer.close()

    await asyncio.gather(*(client() for _ in range(HTTP_CONNECTIONS)))
    return Load(done[0], done[1])


def http_load(app: RusmApp, duration_s: float) -> Load:
    """A slice of HTTP load: wrk when it is on the PATH, else the Python client."""
    if shutil.which("wrk") is not None:
        result = parse_wrk(wrk(f"http://127.0.0.1:{app.http_port}/", duration_s))
        return Load(result.requests, result.socket_errors + result.non_2xx)
    return uvloop.run(keepalive_load(app.http_port, duration_s))


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench soak", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--rounds", type=int, default=ROUNDS, help=f"rounds ({ROUNDS})")
    parser.add_argument("--sockets", type=int, default=SOCKETS, help=f"sockets a round ({SOCKETS})")
    parser.add_argument(
        "--http-s", type=float, default=HTTP_S, help=f"HTTP load over all rounds ({HTTP_S:g} s)"
    )
    parser.add_argument(
        "--tolerance",
        type=float,
        default=TOLERANCE,
        help=f"end vs round 1, a share ({TOLERANCE:g})",
    )
    return parser.parse_args(list(argv))


def soak(app: RusmApp, args: argparse.Namespace) -> bool:
    """Run the rounds against the running daemon; True when the end is within tolerance."""
    client = "wrk -t1 -c64" if shutil.which("wrk") else f"Python, {HTTP_CONNECTIONS} connections"
    slice_s = args.http_s / args.rounds
    start = settled(app)
    pid = start["pid"]
    print(f"worker pid {pid}; HTTP load: {client}, {slice_s:g} s a round")
    print(f"before      worker RSS {start['rss_bytes'] / _MIB:7.1f} MiB")
    after: list[float] = []
    rates: list[float] = []
    for number in range(1, args.rounds + 1):
        began = time.monotonic()
        opened, failed = uvloop.run(burst(app.ws_port, args.sockets))
        settled(app)
        load = http_load(app, slice_s)
        rss = worker(app)["rss_bytes"] / _MIB
        after.append(rss)
        rates.append(load.requests / slice_s)
        print(
            f"round {number:>2}    worker RSS {rss:7.1f} MiB   {opened} sockets opened and "
            f"closed ({failed} failed), {load.requests:,} HTTP requests ({load.errors} errors), "
            f"{time.monotonic() - began:.1f} s"
        )
    end = settled(app)
    end_rss = end["rss_bytes"] / _MIB
    growth = end_rss / after[0] - 1
    same_worker = end["pid"] == pid
    within = bool(abs(growth) <= args.tolerance and same_worker)
    print(f"end         worker RSS {end_rss:7.1f} MiB (idle)")
    print(
        f"end vs round 1: {growth:+.1%} ({after[0]:.1f} -> {end_rss:.1f} MiB); "
        f"before -> round 1: {after[0] - start['rss_bytes'] / _MIB:+.1f} MiB; "
        f"HTTP median {statistics.median(rates):,.0f} req/s"
    )
    if not same_worker:
        print(f"the worker was restarted (pid {pid} -> {end['pid']}): its figures do not compare")
    print(f"within {args.tolerance:.0%} of round 1: {'yes' if within else 'NO'}")
    return within


def main(argv: Sequence[str] = ()) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="rusm-soak-") as directory:
        app = write_app(Path(directory) / "app", events=1)
        with rusmd(app, workers=1):
            return 0 if soak(app, args) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
