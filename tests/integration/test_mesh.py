"""Signals between workers under stress: large payloads, a peer killed or stopped mid-flood.

Runs in: any (the test process; ``rusmd`` runs as a subprocess with two
workers).

A process of ``tests/guests/actor.c`` on worker 0 streams messages
(``stream PID N BIG EVERY``) to one on worker 1, which takes them
``quiet`` and checks them itself: each ``pong <i>`` must come after the
one before it, and a padded one must arrive whole. The sender logs how
many sends returned 0, ``LIMIT`` and ``NOPROC``.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from rusmd.worker.mesh import MAX_PEER_BACKLOG_BYTES, SHM_THRESHOLD_BYTES
from tests.integration.actorkit import SETTLE_S, Actors, actor_wasm, write_actor_app
from tests.integration.conftest import App, Daemon, all_ready, wait_for

__all__ = ["actor_wasm"]  # a fixture, used by name

# How long a stream of sends may take on a loaded two-core machine.
STREAM_S = 120.0
# How long the flood that sees its peer killed lasts.
FLOOD_MS = 8000
STREAMER = """
[capabilities.streamer]
allow-spawn = true
max-cpu-ms = 600000
"""


@pytest.fixture
def actors(app: App, actor_wasm: Path, start_daemon: Callable[..., Daemon]) -> Iterator[Actors]:
    write_actor_app(app, actor_wasm, {"actor": 'capability = "streamer"'})
    # A stream of sends is one message's work: it needs more than the
    # default CPU budget of one.
    app.manifest.write_text(app.manifest.read_text() + STREAMER)
    yield Actors(start_daemon())


def counts(text: str) -> dict[str, int]:
    """``12 limit=3 noproc=0`` (a result's value) as {"": 12, "limit": 3, "noproc": 0}."""
    first, *rest = text.split()
    fields = {"": int(first)}
    for pair in rest:
        key, _, value = pair.partition("=")
        fields[key] = int(value)
    return fields


def stream(actors: Actors, sender: int, command: str) -> dict[str, int]:
    """Run ``stream …`` in ``sender`` and wait (long) for its counts."""
    actors.send(sender, command)
    return stream_result(actors, sender)


def stream_result(actors: Actors, sender: int) -> dict[str, int]:
    """The counts of ``sender``'s first stream, once it ended (each test streams once)."""

    def done() -> str | None:
        lines = actors.lines(f"actor#{sender}")
        return next((t for t in lines if t.startswith("result stream=")), None)

    return counts(wait_for(done, STREAM_S, "the stream to end").removeprefix("result stream="))


def received(actors: Actors, pid: int) -> dict[str, int]:
    return counts(actors.result(pid, "actor", "received", "received"))


def wait_received(actors: Actors, pid: int, count: int) -> dict[str, int]:
    """Wait until ``pid`` has taken ``count`` streamed messages; its counts then."""
    return wait_for(
        lambda: ((got := received(actors, pid))[""] >= count and got) or None,
        SETTLE_S,
        f"#{pid} to take {count} streamed messages",
    )


def test_large_and_small_messages_across_workers_arrive_in_order_and_whole(
    actors: Actors,
) -> None:
    a = actors.spawn("actor", slot=0)
    b = actors.spawn("actor", slot=1)
    assert actors.result(b, "actor", "quiet", "quiet 1") == "0"
    # Every 7th goes by shared memory: dozens of payload files in a burst,
    # more than one read on the receiving side takes.
    big = 2 * SHM_THRESHOLD_BYTES
    sent = stream(actors, a, f"stream {b} 400 {big} 7")
    assert sent == {"": 400, "limit": 0, "noproc": 0, "other": 0}
    got = wait_received(actors, b, 400)
    assert got == {"": 400, "disorder": 0, "big": 58, "bad": 0}
    assert not [t for t in actors.lines("rusm") if "lost a large message" in t]


def test_a_flood_to_a_worker_killed_mid_way_answers_noproc_and_the_sender_stays_up(
    actors: Actors,
) -> None:
    daemon = actors.daemon
    a = actors.spawn("actor", slot=0)
    b = actors.spawn("actor", slot=1)
    actors.result(b, "actor", "quiet", "quiet 1")
    workers = daemon.workers()
    sender_worker, peer_worker = workers[0]["pid"], workers[1]["pid"]
    # It floods for a fixed time, long enough to be under way when the
    # peer dies and to go on after (when its worker has not noticed yet,
    # or has a new peer for slot 1 already, sends are OK and dropped there).
    actors.send(a, f"stream_for {b} {FLOOD_MS}")
    # The flood is under way (asked with info: b's mailbox may be full).
    wait_for(lambda: actors.info(b)["received"] > 100 or None, SETTLE_S, "the flood to start")
    os.kill(peer_worker, signal.SIGKILL)
    sent = stream_result(actors, a)
    print(f"while worker 1 was killed: {sent}")
    assert sent[""] > 0 and sent["other"] == 0, sent
    # The sender's worker never went down, and its process still answers.
    assert daemon.workers()[0]["pid"] == sender_worker
    assert actors.result(a, "actor", "self", "self") == str(a)
    # Once slot 1 has a worker again, the mesh to it carries messages.
    wait_for(
        lambda: (all_ready(daemon.status()) and daemon.workers()[1]["pid"] != peer_worker) or None,
        SETTLE_S,
        "worker 1 to be replaced",
    )
    c = actors.spawn("actor", slot=1)
    assert actors.result(a, "actor", "pingpong", f"pingpong {c} 20") == "20"


@pytest.mark.parametrize(
    ("size", "what"),
    [(60_000, "in frames"), (3 * SHM_THRESHOLD_BYTES, "by shared memory")],
)
def test_a_peer_that_stops_reading_gets_limit_and_the_sender_stays_bounded(
    actors: Actors, size: int, what: str
) -> None:
    daemon = actors.daemon
    a = actors.spawn("actor", slot=0)
    b = actors.spawn("actor", slot=1)
    actors.result(b, "actor", "quiet", "quiet 1")
    workers = daemon.workers()
    sender = psutil.Process(workers[0]["pid"])
    count = 16 * MAX_PEER_BACKLOG_BYTES // size  # unbounded, 16 times the bound
    rss_before = sender.memory_info().rss
    os.kill(workers[1]["pid"], signal.SIGSTOP)
    try:
        sent = stream(actors, a, f"stream {b} {count} {size} 1")
        grown = sender.memory_info().rss - rss_before
    finally:
        os.kill(workers[1]["pid"], signal.SIGCONT)
    print(f"{what}: {sent} of {count}, sender's worker grew {grown >> 20} MiB")
    assert sent["limit"] > 0 and sent["noproc"] == sent["other"] == 0
    assert sent["limit"] + sent[""] == count
    # What was accepted is about the bound (plus what the socket holds).
    assert sent[""] * size <= 2 * MAX_PEER_BACKLOG_BYTES
    # Encoding makes transient copies, and freed memory need not leave the
    # RSS; unbounded, the stream alone would add 16 times the bound.
    assert grown <= 4 * MAX_PEER_BACKLOG_BYTES
    # Once it reads again, every accepted message arrives, in order and whole.
    got = wait_received(actors, b, sent[""])
    assert got == {"": sent[""], "disorder": 0, "big": sent[""], "bad": 0}
