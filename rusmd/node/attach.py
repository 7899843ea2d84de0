"""The attach stream: ``hello``, then a ``snapshot`` every 1/ticks_per_second s, per client.

Runs in: node endpoint, on its event loop.

One ``Ticker`` keeps the cadence with absolute deadlines (a late tick
does not push the next ones back; a tick more than one interval late is
skipped, not made up in a burst) and builds each tick's frame once, as
text, for all clients (twice when some have detail on). It never waits
for a client: ``AttachClient.offer`` replaces the frame the client has
not taken yet, and each client's own sender task writes the newest
frame when its socket drains. A client that reads slowly therefore
skips frames (counted in ``skipped``) and one that never reads holds
only its one pending frame; neither slows the ticker or the other
clients.

What a client may send (JSON text frames), and the answers:

- ``{"type": "set_profile", "profile": "max"}``: changes the pool live
  through the ``profile`` control command; answered with a ``result``.
- ``{"type": "set_detail", "on": true}``: adds the process table
  (capped, with the total) to this client's snapshots.
- ``{"type": "run", "scenario": "ping-pong", "seconds": 5}``: starts a
  benchmark scenario against this node (``rusmd.node.runs``); answered
  with a ``result`` at once, or an ``error`` saying why it cannot run.
  While it runs every client gets a ``scenario`` frame a tick, and a
  last one with the ``result``.
- ``{"type": "stop"}``: ends the running scenario early.

A ``result``/``error`` answer is queued apart from snapshots and never
skipped (up to ``MAX_QUEUED_REPLIES``; past that the oldest goes).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from rusmd.config.model import Profile
from rusmd.node.runs import Runs
from rusmd.node.scenarios import ScenarioError

# Replies waiting for a client that does not read; a client sending many
# commands and reading none cannot grow the endpoint past this.
MAX_QUEUED_REPLIES = 16
# What a client may send in one frame: commands are a few dozen bytes.
MAX_CLIENT_FRAME_BYTES = 4096

Command = Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]


class AttachClient:
    """One attached WebSocket client: its pending frame, its replies, its sender task."""

    def __init__(self, connection: ServerConnection) -> None:
        self.connection = connection
        self.detail = False
        self.pending: str | None = None
        self.replies: deque[str] = deque(maxlen=MAX_QUEUED_REPLIES)
        self.wake = asyncio.Event()
        self.sent = 0
        self.skipped = 0

    def offer(self, frame: str) -> None:
        """The newest snapshot; one not yet sent is dropped for it (never waits)."""
        if self.pending is not None:
            self.skipped += 1
        self.pending = frame
        self.wake.set()

    def reply(self, document: dict[str, Any]) -> None:
        """Queue an answer to a command (sent before the next snapshot)."""
        self.replies.append(json.dumps(document, separators=(",", ":")))
        self.wake.set()

    async def send_loop(self) -> None:
        """Write replies and the newest snapshot as the socket takes them."""
        connection = self.connection
        while True:
            await self.wake.wait()
            self.wake.clear()
            while self.replies:
                await connection.send(self.replies.popleft())
            frame, self.pending = self.pending, None
            if frame is not None:
                await connection.send(frame)
                self.sent += 1


class Ticker:
    """Sends a snapshot to every attached client every ``1/ticks`` seconds.

    Args:
        ticks: Snapshots a second (``[node] ticks_per_second``).
        build: ``(seq, detail)`` → the frame document.
    """

    def __init__(self, ticks: int, build: Callable[[int, bool], dict[str, Any]]) -> None:
        self.interval_s = 1.0 / ticks
        self.build = build
        self.clients: set[AttachClient] = set()
        self.seq = 0
        self.attached = asyncio.Event()  # set while a client is attached

    def add(self, client: AttachClient) -> None:
        """A client attached: it gets the next tick's frame."""
        self.clients.add(client)
        self.attached.set()

    def discard(self, client: AttachClient) -> None:
        """A client left."""
        self.clients.discard(client)
        if not self.clients:
            self.attached.clear()

    async def run(self) -> None:
        """Tick until cancelled; with nobody attached, wait without waking."""
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            if not self.clients:
                await self.attached.wait()
                next_at = loop.time()
            next_at += self.interval_s
            delay = next_at - loop.time()
            if delay < -self.interval_s:
                next_at = loop.time()  # far behind (a stalled loop): skip, do not burst
                delay = 0.0
            await asyncio.sleep(max(0.0, delay))
            if self.clients:
                self.tick()

    def tick(self) -> None:
        """Build this tick's frames once and offer them to every client."""
        self.seq += 1
        frames: dict[bool, str] = {}
        for client in self.clients:
            frame = frames.get(client.detail)
            if frame is None:
                document = self.build(self.seq, client.detail)
                frame = frames[client.detail] = json.dumps(document, separators=(",", ":"))
            client.offer(frame)

    def describe(self) -> list[dict[str, Any]]:
        """Each attached client: its peer, detail, frames sent and skipped."""
        rows = []
        for client in self.clients:
            peer = client.connection.remote_address
            rows.append(
                {
                    "peer": f"{peer[0]}:{peer[1]}" if peer else "",
                    "detail": client.detail,
                    "sent": client.sent,
                    "skipped": client.skipped,
                }
            )
        return sorted(rows, key=lambda row: str(row["peer"]))

    @property
    def want_detail(self) -> bool:
        """Whether some client asked for the process table."""
        return any(client.detail for client in self.clients)


async def serve_client(
    client: AttachClient, ticker: Ticker, hello: dict[str, Any], command: Command, runs: Runs
) -> None:
    """Run one attached client until it leaves: hello, snapshots, its commands."""
    client.reply(hello)
    sender = asyncio.ensure_future(client.send_loop())
    ticker.add(client)
    try:
        async for message in client.connection:
            if isinstance(message, bytes) or len(message) > MAX_CLIENT_FRAME_BYTES:
                client.reply(_error("", "send JSON text frames of at most 4096 bytes"))
                continue
            await handle_message(client, message, command, runs)
    except ConnectionClosed:
        pass
    finally:
        ticker.discard(client)
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
            await sender


async def handle_message(client: AttachClient, message: str, command: Command, runs: Runs) -> None:
    """One client command: see the module docstring."""
    try:
        document = json.loads(message)
    except ValueError:
        client.reply(_error("", "not JSON"))
        return
    if not isinstance(document, dict):
        client.reply(_error("", "a command is a JSON object with a 'type'"))
        return
    kind = document.get("type")
    if kind == "set_detail":
        client.detail = bool(document.get("on", True))
        client.reply({"type": "result", "op": "set_detail", "ok": True, "on": client.detail})
    elif kind == "set_profile":
        profile = document.get("profile")
        valid = [p.value for p in Profile]
        if profile not in valid:
            client.reply(_error(kind, f"unknown profile {profile!r} (valid: {', '.join(valid)})"))
            return
        try:
            result = await command("profile", {"profile": profile})
        except Exception as exc:  # the daemon refused or is unreachable: tell the client
            client.reply(_error(kind, str(exc)))
            return
        client.reply({"type": "result", "op": kind, "ok": True, **result})
    elif kind in ("run", "stop"):
        try:
            if kind == "run":
                result = await runs.start(document.get("scenario"), document.get("seconds"))
            else:
                result = runs.stop()
        except ScenarioError as exc:
            client.reply(_error(kind, str(exc)))
            return
        client.reply({"type": "result", "op": kind, "ok": True, **result})
    else:
        client.reply(
            _error(
                str(kind or ""),
                f"unknown command type {kind!r} (valid: set_profile, set_detail, run, stop)",
            )
        )


def _error(op: str, text: str) -> dict[str, Any]:
    return {"type": "error", "op": op, "ok": False, "error": text}
