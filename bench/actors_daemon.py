"""The actors benchmark across workers: the real daemon with two workers.

Runs in: a benchmark process of its own (``python -m bench actors``); it
starts ``python -m rusmd`` as a child in a session of its own and stops
it with SIGTERM (SIGKILL to the group if it does not stop).

Two processes of the benchmark guest on worker 0 (the same worker, in
the daemon) and a third on worker 1 (across workers), driven through the
control socket; each figure beside the plain baseline (two threads, or
two OS processes over a pipe) and beside Erlang with one scheduler (same
worker) and two (across).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import psutil

from bench import actors_erlang
from bench.actors_erlang import Erlang
from bench.actors_plain import PipePeer, thread_call, thread_flood, thread_round_trip
from bench.actors_table import (
    CALLS,
    FLOOD,
    ROUND_TRIPS,
    Trips,
    note,
    paired,
    row,
    trips_row,
)
from bench.actors_worker import LINE_TIMEOUT_S, fields, ns_per
from bench.worker_restart import _free_port, request, wait_all_ready

# Two workers (a quarter of 8 cores), whatever the machine has.
DAEMON_PROFILE = ("--cpus", "8", "--profile", "light")
# Bounds, so the run always ends by itself.
STARTUP_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0


class Daemon:
    """``python -m rusmd`` with two workers on an app of the benchmark guest."""

    def __init__(self, app: Path, guest: bytes) -> None:
        (app / "wasm").mkdir()
        (app / "wasm" / "bench.wasm").write_bytes(guest)
        (app / "rusm.toml").write_text(
            f'[node]\nlisten = "127.0.0.1:{_free_port()}"\n[log]\nlevel = "info"\n'
            "[capabilities.bench]\nmax-memory-mb = 16\nmax-cpu-ms = 60000\n"
            '[components.bench]\ncapability = "bench"\n'
        )
        self.socket = app / ".rusm" / "rusmd.sock"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "rusmd", "--config", "rusm.toml", *DAEMON_PROFILE],
            cwd=app,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    def ask(self, command: str, **args: Any) -> dict[str, Any]:
        reply = request(self.socket, command, **args)
        if not reply.get("ok"):
            raise RuntimeError(f"{command}: {reply}")
        result: dict[str, Any] = reply["result"]
        return result

    def records(self) -> list[dict[str, Any]]:
        records: list[dict[str, Any]] = self.ask("logs", lines=1000)["records"]
        return records

    def _hits(self, source: str, prefix: str) -> list[str]:
        return [
            str(r["text"])
            for r in self.records()
            if r["source"] == source and r["text"].startswith((prefix, "failed"))
        ]

    def line(self, source: str, prefix: str, seen: int = 0) -> str:
        """Wait for a record of ``source`` starting with ``prefix``, after ``seen`` such."""
        deadline = time.monotonic() + LINE_TIMEOUT_S
        while time.monotonic() < deadline:
            hits = self._hits(source, prefix)
            if len(hits) > seen:
                if hits[seen].startswith("failed"):
                    raise RuntimeError(f"{source}: {hits[seen]}")
                return hits[seen]
            time.sleep(0.05)
        raise TimeoutError(f"{source} did not log {prefix!r}")

    def spawn_on(self, slot: int) -> int:
        deadline = time.monotonic() + LINE_TIMEOUT_S
        for _ in range(8):
            reply = request(self.socket, "spawn", name="bench")
            while not reply.get("ok") and "compiling" in str(reply.get("error")):
                if time.monotonic() > deadline:
                    break
                time.sleep(0.1)  # the daemon compiles the guest after it starts
                reply = request(self.socket, "spawn", name="bench")
            if not reply.get("ok"):
                raise RuntimeError(f"spawn: {reply}")
            pid = int(reply["result"]["pid"])
            if pid % 1000 == slot:
                self.line(f"bench#{pid}", f"ready {pid}")
                return pid
            self.ask("kill", pid=f"#{pid}")
        raise RuntimeError(f"no spawn landed on worker {slot}")

    def measure(self, driver: int, op: str, peer: int, count: int) -> dict[str, int]:
        """The fields of the line ``driver`` logs after running ``op`` ``count`` times."""
        seen = len(self._hits(f"bench#{driver}", f"{op} n="))
        self.ask("send", pid=f"#{driver}", text=f"{op} {peer} {count}")
        return fields(self.line(f"bench#{driver}", f"{op} n=", seen))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)


def across_workers(guest: bytes, pipe: PipePeer, erlang: Erlang) -> None:
    """Round trips, calls and one-way messages, same worker and across, in the daemon."""
    with tempfile.TemporaryDirectory(prefix="rusm-bench-") as directory:
        daemon = Daemon(Path(directory), guest)
        try:
            workers = wait_all_ready(daemon.socket, time.monotonic() + STARTUP_TIMEOUT_S)
            if sorted(workers) != [0, 1]:
                raise RuntimeError(f"expected workers 0 and 1, got {sorted(workers)}")
            driver, near, far = daemon.spawn_on(0), daemon.spawn_on(0), daemon.spawn_on(1)
            # Two threads of one process beside the same worker; two processes beside two.
            bases: dict[int, tuple[Callable[[], Trips], Callable[[], Trips], Callable[[], float]]]
            bases = {
                near: (
                    lambda: thread_round_trip(ROUND_TRIPS),
                    lambda: thread_call(CALLS),
                    lambda: thread_flood(FLOOD),
                ),
                far: (
                    lambda: pipe.round_trip(ROUND_TRIPS),
                    lambda: pipe.round_trip(CALLS),
                    lambda: pipe.flood(FLOOD),
                ),
            }
            figures = {}
            for peer, (rtt, call, flood) in bases.items():
                figures[peer] = _measure(
                    daemon, driver, peer, rtt_base=rtt, call_base=call, flood_base=flood
                )
            busy = {peer: _busy(daemon, workers.values(), driver, peer) for peer in (near, far)}
        finally:
            daemon.stop()
    for peer, where, what, schedulers in (
        (near, "same worker, daemon", "2 threads, queue.SimpleQueue", 1),
        (far, "across workers", "2 processes, multiprocessing Pipe", 2),
    ):
        rtt, call, flood = figures[peer]
        erl_rtt = erlang.trips("pingpong", actors_erlang.ROUND_TRIPS, schedulers)
        erl_call = erlang.trips("calls", actors_erlang.CALLS, schedulers)
        erl_flood = erlang.rate("flood", actors_erlang.FLOOD, schedulers)
        notes = f"{what}; {erlang.label(schedulers)}"
        trips_row(f"send/recv round trip p50, {where}", rtt, erl_rtt, notes)
        trips_row(f"call/reply round trip p50, {where}", call, erl_call, notes + ", gen_server")
        row(
            f"messages one way, {where}",
            "msg/s",
            1e9 / flood[0],
            1e9 / flood[1],
            erl_flood,
            notes=notes,
        )
        cpu_us, elapsed_ns = busy[peer]
        note(
            f"(one more {ROUND_TRIPS:,} round trips, {where}: {elapsed_ns / 1000:.1f} µs "
            f"each, of which both workers together used {cpu_us:.1f} µs of CPU)"
        )


def _measure(
    daemon: Daemon,
    driver: int,
    peer: int,
    *,
    rtt_base: Callable[[], Trips],
    call_base: Callable[[], Trips],
    flood_base: Callable[[], float],
) -> tuple[tuple[Trips, Trips], tuple[Trips, Trips], tuple[float, float]]:
    """Round trips, calls and one-way ns of ``driver`` against ``peer``, each beside its base."""

    def trips(op: str, count: int) -> Callable[[], Trips]:
        return lambda: Trips.from_fields(daemon.measure(driver, op, peer, count))

    def by_p50(trips: Trips) -> float:
        return float(trips.p50_ns)

    rtt = paired(trips("pingpong", ROUND_TRIPS), rtt_base, by_p50)
    call = paired(trips("calls", CALLS), call_base, by_p50)
    flood = paired(lambda: ns_per(daemon.measure(driver, "flood", peer, FLOOD)), flood_base, float)
    return rtt, call, flood


def _busy(daemon: Daemon, workers: Iterable[int], driver: int, peer: int) -> tuple[float, float]:
    """CPU µs the workers burn per round trip, and the ns one takes."""
    before = _cpu_s(workers)
    elapsed = ns_per(daemon.measure(driver, "pingpong", peer, ROUND_TRIPS))
    return (_cpu_s(workers) - before) / ROUND_TRIPS * 1e6, elapsed


def _cpu_s(pids: Iterable[int]) -> float:
    """CPU seconds (user + system, all threads) used so far by processes ``pids``."""
    total = 0.0
    for pid in pids:
        times = psutil.Process(pid).cpu_times()
        total += times.user + times.system
    return total
