"""The floor under a round trip between two workers: two processes, nothing else.

Runs in: a benchmark process of its own, which forks one child.

``python -m bench.loop_floor [N]`` bounces a 40-byte frame N times
(default 10,000) over a socketpair between this process and a forked
child, two ways:

- blocking: each side sleeps in ``recv`` (the ``multiprocessing`` pipe
  baseline of ``bench actors`` waits the same way);
- loops: each side is a uvloop loop woken by ``add_reader``, as a
  worker's mesh is (an ``epoll_wait`` per wake-up, and one more before
  the loop sleeps again);
- spinning: each side polls its socket without blocking for up to
  ``SPIN_S`` before it sleeps in ``recv``, as an Erlang scheduler
  busy-waits before it sleeps (``+sbwt``): what a wake-up costs when the
  CPU never halts, paid for in CPU while waiting.

It prints the round trip and this side's CPU per hop, user and system.
Two workers cannot exchange a message faster than the second line: it is
what the kernel, the machine's wake-ups and the loop cost with no Python
work at all on either side. On a virtual machine whose idle CPUs halt, a
wake-up costs far more when the machine is idle than when it is busy, so
the line moves between runs; run it beside the figure it explains.
"""

from __future__ import annotations

import os
import socket
import sys
import time

import uvloop

FRAME = b"x" * 40
# How long the spinning variant polls before it blocks.
SPIN_S = 200e-6


def _blocking(count: int) -> tuple[float, float, float]:
    ours, theirs = socket.socketpair()
    pid = os.fork()
    if pid == 0:
        for _ in range(count):
            theirs.recv(65536)
            theirs.send(FRAME)
        os._exit(0)
    before, started = os.times(), time.perf_counter()
    for _ in range(count):
        ours.send(FRAME)
        ours.recv(65536)
    return _report(count, before, started, pid)


def _spinning(count: int) -> tuple[float, float, float]:
    ours, theirs = socket.socketpair()
    pid = os.fork()
    if pid == 0:
        for _ in range(count):
            _spin_recv(theirs)
            theirs.send(FRAME)
        os._exit(0)
    before, started = os.times(), time.perf_counter()
    for _ in range(count):
        ours.send(FRAME)
        _spin_recv(ours)
    return _report(count, before, started, pid)


def _spin_recv(sock: socket.socket) -> None:
    deadline = time.perf_counter() + SPIN_S
    while time.perf_counter() < deadline:
        try:
            sock.recv(65536, socket.MSG_DONTWAIT)
            return
        except BlockingIOError:
            continue
    sock.recv(65536)


def _loops(count: int) -> tuple[float, float, float]:
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    theirs.setblocking(False)
    pid = os.fork()
    if pid == 0:
        _bounce(theirs, count, first=False)
        os._exit(0)
    before, started = os.times(), time.perf_counter()
    _bounce(ours, count, first=True)
    return _report(count, before, started, pid)


def _bounce(sock: socket.socket, count: int, *, first: bool) -> None:
    loop = uvloop.new_event_loop()
    seen = 0

    def on_readable() -> None:
        nonlocal seen
        sock.recv(65536)
        seen += 1
        if seen >= count:
            loop.stop()
            if first:
                return
        sock.send(FRAME)

    loop.add_reader(sock.fileno(), on_readable)
    if first:
        sock.send(FRAME)
    loop.run_forever()
    loop.close()


def _report(
    count: int, before: os.times_result, started: float, child: int
) -> tuple[float, float, float]:
    elapsed = time.perf_counter() - started
    after = os.times()
    os.waitpid(child, 0)
    return (
        elapsed / count * 1e6,
        (after.user - before.user) / count * 1e6,
        (after.system - before.system) / count * 1e6,
    )


def main(argv: list[str]) -> int:
    if len(argv) > 1 or (argv and not argv[0].isdigit()):
        print("usage: python -m bench.loop_floor [N]", file=sys.stderr)
        return 2
    count = int(argv[0]) if argv else 10_000
    runs = (
        ("blocking recv", _blocking),
        ("uvloop add_reader", _loops),
        ("spin, then recv", _spinning),
    )
    for name, run in runs:
        rtt, user, system = run(count)
        print(
            f"{name:<18} round trip {rtt:7.1f} µs; CPU per hop on one side: "
            f"user {user:.1f} µs, system {system:.1f} µs"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
