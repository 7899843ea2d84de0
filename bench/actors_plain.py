"""The plain baselines of the actors benchmark: Python threads and processes passing messages.

Runs in: a benchmark process of its own (``python -m bench actors``);
``PipePeer`` forks one more process, before the benchmark starts a thread.

Beside rusm's processes on one worker: two threads of one process over
``queue.SimpleQueue``. Beside rusm's processes on two workers: two OS
processes over a ``multiprocessing`` pipe. Round trips are timed one by
one (``Trips``), as the guest times its own; one-way messages as a
whole.
"""

from __future__ import annotations

import multiprocessing
import queue
import threading
import time
from multiprocessing.connection import Connection

from bench.actors_table import Trips


def thread_round_trip(count: int) -> Trips:
    """Round trips between two threads over two SimpleQueues."""
    out: queue.SimpleQueue[bytes] = queue.SimpleQueue()
    back: queue.SimpleQueue[bytes] = queue.SimpleQueue()

    def echo() -> None:
        for _ in range(count):
            out.get()
            back.put(b"P")

    peer = threading.Thread(target=echo)
    peer.start()
    times = []
    for _ in range(count):
        sent = time.perf_counter_ns()
        out.put(b"p")
        back.get()
        times.append(time.perf_counter_ns() - sent)
    peer.join()
    return Trips.of(times)


def thread_call(count: int) -> Trips:
    """Calls: a request carrying its own reply queue, answered by another thread."""
    requests: queue.SimpleQueue[tuple[bytes, queue.SimpleQueue[bytes]]] = queue.SimpleQueue()

    def callee() -> None:
        for _ in range(count):
            _data, reply = requests.get()
            reply.put(b"C")

    peer = threading.Thread(target=callee)
    peer.start()
    times = []
    for _ in range(count):
        called = time.perf_counter_ns()
        reply: queue.SimpleQueue[bytes] = queue.SimpleQueue()
        requests.put((b"c", reply))
        reply.get()
        times.append(time.perf_counter_ns() - called)
    peer.join()
    return Trips.of(times)


def thread_flood(count: int) -> float:
    """ns per message: one thread puts ``count`` messages, the other takes them all."""
    box: queue.SimpleQueue[bytes] = queue.SimpleQueue()

    def sink() -> None:
        for _ in range(count):
            box.get()

    peer = threading.Thread(target=sink)
    peer.start()
    start = time.perf_counter_ns()
    for _ in range(count):
        box.put(b"f")
    peer.join()
    return (time.perf_counter_ns() - start) / count


def _pipe_peer(conn: Connection) -> None:
    """The other process: echo ``p``, count ``f`` and ack the last, until ``q``."""
    floods = 0
    while True:
        data = conn.recv_bytes()
        if data == b"p":
            conn.send_bytes(b"P")
        elif data == b"f":
            floods += 1
        elif data[:1] == b"n":
            floods = 0
            wanted = int(data[1:])
            while floods < wanted:
                conn.recv_bytes()
                floods += 1
            conn.send_bytes(b"a")
        elif data == b"q":
            return


class PipePeer:
    """Another OS process at the end of a ``multiprocessing`` pipe (the baseline across processes).

    Forked before this process starts any thread (fork-safe by construction),
    and kept until ``close`` so its trials can take turns with rusm's.
    """

    def __init__(self) -> None:
        context = multiprocessing.get_context("fork")
        self.conn, there = context.Pipe()
        self.peer = context.Process(target=_pipe_peer, args=(there,), daemon=True)
        self.peer.start()
        there.close()

    def round_trip(self, count: int) -> Trips:
        """``count`` round trips."""
        times = []
        for _ in range(count):
            sent = time.perf_counter_ns()
            self.conn.send_bytes(b"p")
            self.conn.recv_bytes()
            times.append(time.perf_counter_ns() - sent)
        return Trips.of(times)

    def flood(self, count: int) -> float:
        """ns per one-way message, until the peer has taken them all."""
        start = time.perf_counter_ns()
        self.conn.send_bytes(f"n{count}".encode())
        for _ in range(count):
            self.conn.send_bytes(b"f")
        self.conn.recv_bytes()
        return (time.perf_counter_ns() - start) / count

    def close(self) -> None:
        self.conn.send_bytes(b"q")
        self.peer.join(10)
        if self.peer.is_alive():
            self.peer.kill()
            self.peer.join(10)
