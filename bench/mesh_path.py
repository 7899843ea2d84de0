"""The mesh path alone: one worker's actor table to another's, over a socketpair.

Runs in: a benchmark process of its own (no daemon, no wasm, no threads).

``python -m bench.mesh_path N PER_FRAME`` sends N messages from a pid of
worker 0 to one of worker 1 the way a worker does (``ActorTable.send`` →
the mesh's outbox → one flush per PER_FRAME messages, as one loop turn
would → one read and one ``deliver_batch`` on the other side) and prints
the time per message. Its purpose is the count of instructions, which
the machine's load does not change: run it under callgrind with N and
with 0 and divide the difference by N::

    valgrind --tool=callgrind python -m bench.mesh_path 4000 50
    valgrind --tool=callgrind python -m bench.mesh_path 0 50

The loop's turns are played by hand (a list of jobs), so only the mesh
and the table are measured: no event loop, no thread hand-off.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

from rusmd.actors.table import ActorTable
from rusmd.channel import Channel
from rusmd.worker.mesh import Mesh, _Peer


class _Turns:
    """The loop as the mesh sees it: jobs run when the benchmark says a turn ends."""

    def __init__(self) -> None:
        self.jobs: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []

    def call_soon(self, job: Callable[..., Any], *args: Any) -> None:
        self.jobs.append((job, args))

    def run(self) -> None:
        jobs, self.jobs = self.jobs, []
        for job, args in jobs:
            job(*args)

    def add_reader(self, *_args: Any) -> None:
        """The benchmark reads by hand."""

    def add_writer(self, *_args: Any) -> None:
        raise RuntimeError("the socket filled up: raise its buffer or lower PER_FRAME")

    def remove_reader(self, *_args: Any) -> None:
        """Nothing to remove."""

    def remove_writer(self, *_args: Any) -> None:
        """Nothing to remove."""


def run(count: int, per_frame: int) -> float:
    """ns per message for ``count`` messages, a flush every ``per_frame``."""
    turns = _Turns()
    loop: Any = turns  # the parts of an event loop the mesh uses
    ours, theirs = socket.socketpair()
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    receiver = ActorTable(
        1,
        remote=lambda _slot, _sig: False,
        to_main=lambda _message: None,
        call_soon=turns.call_soon,
        call_later=lambda _delay, _job: None,
        mailbox_limit=1 << 40,
    )
    actor = receiver.add(1001, "sink#1001", lambda _reason, _detail: None)
    sender_mesh = Mesh(
        0,
        loop,
        schedule_flush=turns.call_soon,
        deliver=receiver.deliver_batch,
        undeliverable=lambda _sig: None,
        lost=print,
    )
    sender_mesh.add_peer(1, ours, os.getpid())
    receiver_mesh = Mesh(
        1,
        loop,
        schedule_flush=turns.call_soon,
        deliver=receiver.deliver_batch,
        undeliverable=lambda _sig: None,
        lost=print,
    )
    inbound = _Peer(Channel(theirs))
    sender = ActorTable(
        0,
        remote=sender_mesh.queue,
        remote_backlogged=sender_mesh.backlogged,
        to_main=lambda _message: None,
        call_soon=turns.call_soon,
        call_later=lambda _delay, _job: None,
    )
    sent = 0
    start = time.perf_counter_ns()
    while sent < count:
        for _ in range(min(per_frame, count - sent)):
            sender.send(2000, 1001, b"f")
            sent += 1
        turns.run()  # the sender's loop turn ends: one flush
        receiver_mesh._on_readable(0, inbound)  # the receiver's loop: one read
        actor.mailbox.clear()
        actor.user_messages = 0
    elapsed = time.perf_counter_ns() - start
    if receiver.delivered != count:
        raise RuntimeError(f"delivered {receiver.delivered} of {count}")
    return elapsed / max(count, 1)


def main() -> int:
    if len(sys.argv) != 3 or not all(a.isdigit() for a in sys.argv[1:]):
        print("usage: python -m bench.mesh_path N PER_FRAME", file=sys.stderr)
        return 2
    count, per_frame = int(sys.argv[1]), max(1, int(sys.argv[2]))
    ns = run(count, per_frame)
    print(f"mesh path: {count:,} messages, {per_frame} per frame: {ns / 1000:.2f} µs each")
    return 0


if __name__ == "__main__":
    sys.exit(main())
