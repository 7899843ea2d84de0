"""The attach stream's ticker and clients: frames built once, skipped for a slow client."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from rusmd.node.attach import AttachClient, Ticker, handle_message
from rusmd.node.runs import Runs


class FakeConnection:
    """A connection whose send blocks until ``release`` (a client that does not read)."""

    remote_address = ("127.0.0.1", 5000)

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.gate = asyncio.Event()

    async def send(self, frame: str) -> None:
        await self.gate.wait()
        self.sent.append(frame)


def test_ticker_builds_one_frame_per_detail_setting_per_tick() -> None:
    built: list[tuple[int, bool]] = []

    def build(seq: int, detail: bool) -> dict[str, Any]:
        built.append((seq, detail))
        return {"type": "snapshot", "seq": seq}

    async def run() -> None:
        ticker = Ticker(20, build)
        clients = [AttachClient(FakeConnection()) for _ in range(3)]  # type: ignore[arg-type]
        clients[2].detail = True
        ticker.clients.update(clients)
        ticker.tick()
        assert sorted(built) == [(1, False), (1, True)]
        assert all(client.pending is not None for client in clients)

    asyncio.run(run())


def test_a_client_that_does_not_read_skips_frames_and_keeps_only_the_newest() -> None:
    async def run() -> None:
        ticker = Ticker(60, lambda seq, detail: {"seq": seq})
        connection = FakeConnection()
        client = AttachClient(connection)  # type: ignore[arg-type]
        ticker.clients.add(client)
        sender = asyncio.ensure_future(client.send_loop())
        for _ in range(10):
            ticker.tick()
            await asyncio.sleep(0)
        # The first frame is stuck in send; of the nine after it only the newest waits.
        assert client.skipped == 8
        connection.gate.set()
        for _ in range(5):
            await asyncio.sleep(0)
        assert [json.loads(frame)["seq"] for frame in connection.sent] == [1, 10]
        sender.cancel()

    asyncio.run(run())


def test_replies_are_never_skipped_and_go_before_the_snapshot() -> None:
    async def run() -> None:
        connection = FakeConnection()
        connection.gate.set()
        client = AttachClient(connection)  # type: ignore[arg-type]
        client.offer('{"type":"snapshot"}')
        client.reply({"type": "result", "op": "set_detail"})
        sender = asyncio.ensure_future(client.send_loop())
        for _ in range(5):
            await asyncio.sleep(0)
        assert [json.loads(f)["type"] for f in connection.sent] == ["result", "snapshot"]
        sender.cancel()

    asyncio.run(run())


def test_commands_answer_clearly() -> None:
    async def refuse(command: str, args: dict[str, Any]) -> dict[str, Any]:
        raise AssertionError("no daemon call expected")

    async def run() -> list[dict[str, Any]]:
        client = AttachClient(FakeConnection())  # type: ignore[arg-type]
        runs = Runs(Path("/nonexistent/rusmd.sock"), 20, client.reply)
        for message in (
            '{"type": "set_profile", "profile": "huge"}',
            '{"type": "run", "scenario": "ping-pong"}',
            '{"type": "stop"}',
            '{"type": "set_detail", "on": true}',
            "[1, 2]",
            "nonsense",
            '{"kind": "no type"}',
        ):
            await handle_message(client, message, refuse, runs)
        return [json.loads(frame) for frame in client.replies]

    replies = asyncio.run(run())
    assert "unknown profile 'huge' (valid: light, balanced, max)" in replies[0]["error"]
    assert "scenario 'ping-pong' not available" in replies[1]["error"]
    assert "no such file" in replies[1]["error"].lower()  # says why: the node did not answer
    assert replies[2]["error"] == "nothing to stop: no scenario is running"
    assert replies[3] == {"type": "result", "op": "set_detail", "ok": True, "on": True}
    assert replies[4]["error"] == "a command is a JSON object with a 'type'"
    assert replies[5]["error"] == "not JSON"
    assert "unknown command type None" in replies[6]["error"]
