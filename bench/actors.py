"""Actors: spawns, messages, calls, restarts, idle processes, beside a baseline and Erlang.

Runs in: a benchmark process of its own (``python -m bench actors``). It
plays one worker (``bench.actors_worker``: a real ``WasmHost`` with its
actor table and modules from the real AOT cache) for the one-worker
figures, starts the real daemon with two workers for the figures across
workers (``bench.actors_daemon``), and runs the idle-process census in
child processes of its own (``bench.actors_idle``).

Side by side in one run, each rusm figure beside a plain baseline and
beside Erlang/OTP on the same machine (``bench.actors_erlang``: ``erl
+S 1`` for the figures on one worker, ``+S 2`` across workers), in
sections (``--sections``, all by default):

``spawn``
    spawn+run+exit per second on one worker: a guest (the spawn-storm
    scenario's ``sc_spawner``) keeps ``SPAWN_WINDOW`` linked children that
    return at once alive, spawning another as each one's exit comes,
    counted by the worker's exits over ``SPAWN_WINDOW_S``; against
    wasmtime-py's plain instantiate-and-call loop; Erlang:
    ``spawn_monitor`` of a process that returns at once.
``one-worker``
    round trips (``rusm.send`` out, ``rusm.recv`` back; the p50 and the
    distribution), ``rusm.call`` round trips, and one-way messages per
    second, between two processes of the guest ``bench/guests/actors.c``,
    timed by the guest on the WASI monotonic clock, against two threads
    over ``queue.SimpleQueue``; Erlang: the same exchanges, a
    ``gen_server:call`` for the calls.
``restarts``
    restarts per second of a child that exits crashed at once, under a
    guest's ``rusm.supervise`` supervisor (one_for_one, permanent, an
    intensity it never reaches), against the same chain without a
    supervisor (spawn, wait for the exit, spawn again); Erlang: the same
    tree under ``supervisor``.
``daemon``
    the ``one-worker`` exchanges again in the daemon, both processes on
    worker 0 and then across workers 0 and 1, against two threads and
    two OS processes over a ``multiprocessing`` pipe; Erlang: one
    scheduler, then two with the processes bound to different ones.
``idle``
    ``--idle`` processes (100,000 by default) parked in ``rusm.recv`` on
    one worker, as many as the host allows: RSS and memory maps per
    process, the time to stop them all, how far it got and why it
    stopped; against parked Python threads and Erlang processes parked in
    ``receive``.

Timed figures are the median of ``TRIALS`` trials, rusm's and the
baseline's taken in turn (the machine's load drifts); Erlang's are the
median of as many trials after one warm-up trial. Ratios are rusm/baseline
and rusm/Erlang: above 1 means rusm's figure is the larger one (better
for a rate, worse for a time or a size).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from bench import actors_erlang
from bench.actors_daemon import across_workers
from bench.actors_erlang import Erlang
from bench.actors_idle import census_main
from bench.actors_idle_report import IDLE, idle_processes
from bench.actors_plain import PipePeer, thread_call, thread_flood, thread_round_trip
from bench.actors_table import (
    CALLS,
    FLOOD,
    ROUND_TRIPS,
    SPAWNS,
    Trips,
    header,
    note,
    paired,
    row,
    trips_row,
)
from bench.actors_worker import LINE_TIMEOUT_S, Worker, modules, ns_per
from bench.wasm_host import plain_spawn_trial
from rusmd.node.scenario_app import SPAWN_WINDOW

# How long each restart trial counts restarts (Erlang's too), and each
# spawn trial its guest's spawns.
RESTART_WINDOW_S = 2.0
SPAWN_WINDOW_S = 2.0
SECTIONS = ("spawn", "one-worker", "restarts", "daemon", "idle")
"""Every section, in the order a run takes them."""


def spawn_rate(worker: Worker, erlang: Erlang) -> None:
    host = worker.host

    def rusm_trial() -> float:
        # The spawner is a guest, as Erlang's is a process: spawns, runs
        # and exits all happen on the worker's loop, none waits for this
        # thread (host.spawn from here would contend with the loop for
        # the GIL and wake it for every spawn).
        before = host.exits.get("normal", 0)
        spawner = host.spawn("sc_spawner")
        start = time.perf_counter()
        time.sleep(SPAWN_WINDOW_S)
        rate = (host.exits.get("normal", 0) - before) / (time.perf_counter() - start)
        host.kill(spawner)
        worker.wait_empty()
        return rate

    rusm, plain = paired(rusm_trial, plain_spawn_trial(SPAWNS), float)
    erl = erlang.rate("spawn", actors_erlang.SPAWNS, 1)
    notes = (
        f"a guest keeps {SPAWN_WINDOW} linked children alive, counted over "
        f"{SPAWN_WINDOW_S:g} s; baseline: wasmtime-py instantiate+run loop; "
        f"{erlang.label(1)}, spawn_monitor"
    )
    row("spawn+run+exit, one worker", "/s", rusm, plain, erl, notes=notes)


def one_worker(worker: Worker, erlang: Erlang) -> None:
    driver = worker.spawn_ready("bench")
    peer = worker.spawn_ready("bench")

    def trips(op: str, count: int) -> Trips:
        return Trips.from_fields(worker.measure(driver, op, peer, count))

    def by_p50(trips: Trips) -> float:
        return float(trips.p50_ns)

    try:
        rtt = paired(
            lambda: trips("pingpong", ROUND_TRIPS), lambda: thread_round_trip(ROUND_TRIPS), by_p50
        )
        call = paired(lambda: trips("calls", CALLS), lambda: thread_call(CALLS), by_p50)
        flood = paired(
            lambda: ns_per(worker.measure(driver, "flood", peer, FLOOD)),
            lambda: thread_flood(FLOOD),
            float,
        )
    finally:
        worker.host.kill(driver)
        worker.host.kill(peer)
    erl_rtt = erlang.trips("pingpong", actors_erlang.ROUND_TRIPS, 1)
    erl_call = erlang.trips("calls", actors_erlang.CALLS, 1)
    notes = f"2 threads, queue.SimpleQueue; {erlang.label(1)}"
    trips_row("send/recv round trip p50, one worker", rtt, erl_rtt, notes)
    trips_row("call/reply round trip p50, one worker", call, erl_call, notes + ", gen_server")
    erl_flood = erlang.rate("flood", actors_erlang.FLOOD, 1)
    rate, base = 1e9 / flood[0], 1e9 / flood[1]
    row("messages one way, one worker", "msg/s", rate, base, erl_flood, notes=notes)


def restarts(worker: Worker, erlang: Erlang) -> None:
    host = worker.host
    in_window: list[int] = []

    def supervised() -> float:
        before = host.exits.get("crashed", 0)
        parent = host.spawn("sc_sup")
        start = time.perf_counter()
        time.sleep(RESTART_WINDOW_S)
        rate = (host.exits.get("crashed", 0) - before) / (time.perf_counter() - start)
        supervisors = [p for p in host.processes.values() if p.component.name == "supervisor"]
        if len(supervisors) != 1:
            raise RuntimeError(f"expected one supervisor, found {len(supervisors)}")
        info = host.local_info(supervisors[0].pid) or {}
        in_window.append(info.get("children", [{}])[0].get("restarts_in_window", 0))
        host.kill(parent)
        worker.wait_empty()
        return rate

    def bare() -> float:
        count = 0
        start = time.perf_counter()
        while time.perf_counter() - start < RESTART_WINDOW_S:
            worker.exited.clear()
            host.spawn("sc_crasher", on_exit=lambda _report: worker.exited.set())
            if not worker.exited.wait(LINE_TIMEOUT_S):
                raise TimeoutError("sc_crasher did not exit")
            count += 1
        rate = count / (time.perf_counter() - start)
        worker.wait_empty()
        return rate

    rate, base = paired(supervised, bare, float)
    erl = erlang.rate("restarts", int(RESTART_WINDOW_S * 1000), 1)
    notes = f"spawn, wait for the exit, spawn again; {erlang.label(1)}, supervisor"
    row("restarts under a supervisor", "/s", rate, base, erl, notes=notes)
    counts = ", ".join(f"{n:,}" for n in in_window)
    note(f"(the supervisor's own restarts in its last 1 s, each trial: {counts})")


def _sections(text: str) -> list[str]:
    wanted = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in wanted if name not in SECTIONS]
    if unknown or not wanted:
        raise argparse.ArgumentTypeError(
            f"unknown section {', '.join(unknown) or '(none given)'} (valid: {', '.join(SECTIONS)})"
        )
    return wanted


def main(argv: list[str] | None = None) -> int:
    """Run the chosen sections and print their rows."""
    parser = argparse.ArgumentParser(
        prog="python -m bench actors", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--sections",
        type=_sections,
        default=list(SECTIONS),
        help=f"comma-separated, of {', '.join(SECTIONS)} (default: all)",
    )
    parser.add_argument(
        "--idle", type=int, default=IDLE, help=f"processes the idle section parks ({IDLE:,})"
    )
    args = parser.parse_args(argv or [])
    if args.idle < 2:
        parser.error(f"--idle {args.idle}: the census needs at least 2 processes")
    chosen = set(args.sections)
    # Forked first, while this process has no thread but its own.
    pipe = PipePeer() if "daemon" in chosen else None
    started = time.monotonic()
    try:
        with tempfile.TemporaryDirectory(prefix="rusm-bench-") as directory:
            build = Path(directory)
            erlang = Erlang(build)
            header()
            _run(build, chosen, erlang, pipe, args.idle)
    finally:
        if pipe is not None:
            pipe.close()
    print(
        f"(sections {', '.join(s for s in SECTIONS if s in chosen)}: "
        f"{time.monotonic() - started:.0f} s)"
    )
    return 0


def _run(build: Path, chosen: set[str], erlang: Erlang, pipe: PipePeer | None, idle: int) -> None:
    guests = modules(build)
    in_process = [
        (name, section)
        for name, section in (
            ("spawn", spawn_rate),
            ("one-worker", one_worker),
            ("restarts", restarts),
        )
        if name in chosen
    ]
    if in_process:
        (build / "app").mkdir()
        worker = Worker(build / "app", guests)
        try:
            for _name, section in in_process:
                section(worker, erlang)
        finally:
            worker.close()
    if pipe is not None:
        across_workers(guests["bench"], pipe, erlang)
    if "idle" in chosen:
        idle_processes(idle, erlang)


if __name__ == "__main__":
    # ``python -m bench.actors idle-rss|thread-rss COUNT``, the census
    # commands the older figures in docs/benchmarks.md name.
    census_main(sys.argv[1:])
