"""Actors: messages, calls, restarts under a supervisor, idle processes.

Runs in: a benchmark process of its own. It plays one worker (a real
``WasmHost`` with its actor table, guest threads, epoch ticker and
modules from the real AOT cache) for the one-worker figures, starts the
real daemon with two workers for the figures across workers, and runs
the idle-process census in child processes of its own (``python -m
bench.actors idle-rss|thread-rss N``) so their memory is measured from a
clean start and freed when they end.

Side by side in one run, each rusm figure beside a plain-Python baseline:

1. spawn+run+exit per second on one worker (each spawn also enters the
   actor table), against wasmtime-py's plain instantiate-and-call loop;
2. round trips (``rusm.send`` out, ``rusm.recv`` back), ``rusm.call`` round
   trips, and one-way message throughput, between two processes of the
   guest ``bench/guests/actors.c``, timed by the guest on the WASI
   monotonic clock: on one worker (in this process, and again in the
   daemon) against two threads over ``queue.SimpleQueue``; across two
   workers (the daemon, pids on worker 0 and worker 1) against two OS
   processes over a ``multiprocessing`` pipe;
3. restarts per second of a child that exits crashed at once, under a
   guest's ``rusm.supervise`` supervisor (one_for_one, permanent, an
   intensity it never reaches), against the same chain without a
   supervisor: spawn the child, wait for its exit, spawn it again;
4. memory per idle process: ``IDLE`` processes parked in ``rusm.recv`` on a
   host with ``IDLE`` pool slots, against as many Python threads parked
   on a ``threading.Event`` with the same 16 MiB stack size.

Timed figures are the median of ``TRIALS`` trials, rusm's and the
baseline's taken in turn (the machine's load drifts). Ratios are
rusm/baseline: above 1 means rusm's figure is the larger one (better for
a rate, worse for a time or a size).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import queue
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from functools import partial
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import psutil
import wasmtime

from bench.wasm_host import plain_spawn_trial
from bench.worker_restart import _free_port, request, wait_all_ready
from rusmd.channel import ComponentImage
from rusmd.config import Overrides, load_environment, load_manifest
from rusmd.config.model import LogLevel
from rusmd.log import Logger, LogRecord
from rusmd.wasm.cache import CompileCache
from rusmd.wasm.engine import POOL_SLOTS, compile_engine
from rusmd.wasm.host import WasmHost
from rusmd.wasm.process import ProcessState
from tests.guests.build import build_c_guest

TRIALS = 3
SPAWNS = 3000
ROUND_TRIPS = 2000
CALLS = 2000
FLOOD = 20_000
RESTART_WINDOW_S = 2.0
IDLE = 10_000
# Bounds, so the run always ends by itself.
LINE_TIMEOUT_S = 60.0
CHILD_TIMEOUT_S = 150.0
SHUTDOWN_TIMEOUT_S = 60.0
# Two workers (a quarter of 8 cores), whatever the machine has.
DAEMON_PROFILE = ("--cpus", "8", "--profile", "light")
GIB = 1 << 30
MACHINE_BYTES = 24 * GIB

GUEST_SOURCE = Path(__file__).resolve().parent / "guests" / "actors.c"
EMPTY = '(module (memory (export "memory") 1) (func (export "run")))'
CRASHER = """(module
  (import "rusm" "exit" (func $exit (param i32)))
  (func (export "run") (call $exit (i32.const 1))))"""
IDLE_GUEST = """(module
  (import "rusm" "recv" (func $recv (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "run")
    (drop (call $recv (i32.const 0) (i32.const 64) (i32.const 64) (i32.const -1)))))"""
SPEC = (
    '{"strategy":"one_for_one","intensity":1000000,"period_s":1,'
    '"children":[{"component":"crasher","restart":"permanent","shutdown_ms":"brutal_kill"}]}'
)
_SPEC_WAT = SPEC.replace('"', '\\"')
SUPERVISING = f"""(module
  (import "rusm" "supervise" (func $supervise (param i32 i32) (result i64)))
  (import "rusm" "recv" (func $recv (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 1024) "{_SPEC_WAT}")
  (func (export "run")
    (drop (call $supervise (i32.const 1024) (i32.const {len(SPEC)})))
    (drop (call $recv (i32.const 0) (i32.const 64) (i32.const 64) (i32.const -1)))))"""
MANIFEST = """
[capabilities.bench]
max-memory-mb = 16
max-cpu-ms = 60000
[capabilities.boss]
allow-spawn = true
max-memory-mb = 16
[components.bench]
capability = "bench"
[components.crasher]
capability = "bench"
[components.empty]
capability = "bench"
[components.idle]
capability = "bench"
[components.sup]
capability = "boss"
"""


# ── printing ────────────────────────────────────────────────────────────


def _row(what: str, rusm: float, base: float, unit: str, base_what: str) -> None:
    figures = f"rusm {rusm:>11,.1f} {unit:<6} base {base:>11,.1f} {unit:<6}"
    print(f"{what:<42} {figures} rusm/base {rusm / base:<7.3g} ({base_what})")


def _paired(rusm: Callable[[], float], base: Callable[[], float]) -> tuple[float, float]:
    """Medians of ``TRIALS`` trials of each, taken in turn so load drift hits both."""
    pairs = [(rusm(), base()) for _ in range(TRIALS)]
    return statistics.median(p[0] for p in pairs), statistics.median(p[1] for p in pairs)


# ── an in-process worker ────────────────────────────────────────────────


class Worker:
    """A real ``WasmHost`` in this process (fibers and actors on the loop it starts), its log."""

    def __init__(
        self,
        app: Path,
        wasm: dict[str, bytes],
        *,
        pool_slots: int | None = None,
        max_processes: int | None = None,
        level: LogLevel = LogLevel.INFO,
    ) -> None:
        (app / "rusm.toml").write_text(MANIFEST)
        environment = load_environment(app)
        manifest = load_manifest(str(app / "rusm.toml"), Overrides(), environment)
        self.records: list[LogRecord] = []
        self.changed = threading.Condition()
        self.exited = threading.Event()
        extra: dict[str, Any] = {} if pool_slots is None else {"pool_slots": pool_slots}
        self.host = WasmHost(
            manifest,
            0,
            Logger(level, self._sink),
            environment,
            request_lease=lambda: None,
            max_processes=max_processes,
            **extra,
        )
        self.host.add_lease(1, 100_000_000)
        cache = CompileCache(app / "cache")
        engine = compile_engine()
        images = []
        for name, module in wasm.items():
            compiled = bytes(wasmtime.Module(engine, module).serialize())
            entry = cache.store(cache.key(module), compiled, name)
            images.append(ComponentImage(name=name, cwasm=str(entry.path), digest=entry.digest))
        self.host.load(images)

    def _sink(self, record: LogRecord) -> None:
        if record.text.startswith("exit crasher#"):
            self.exited.set()
            return  # thousands of them; only the event matters
        with self.changed:
            self.records.append(record)
            self.changed.notify_all()

    def line(self, source: str, prefix: str, after: int = 0) -> str:
        """Wait for a record of ``source`` starting with ``prefix`` (from index ``after``)."""
        deadline = time.monotonic() + LINE_TIMEOUT_S
        with self.changed:
            while True:
                for record in self.records[after:]:
                    if record.source == source and record.text.startswith(prefix):
                        return record.text
                    if record.source == source and record.text.startswith("failed"):
                        raise RuntimeError(f"{source}: {record.text}")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"{source} did not log {prefix!r}")
                self.changed.wait(remaining)

    def spawn_ready(self, name: str) -> int:
        pid = self.host.spawn(name)
        self.line(f"{name}#{pid}", f"ready {pid}")
        return pid

    def measure(self, driver: int, op: str, peer: int, count: int) -> float:
        """ns per operation: ``op`` run ``count`` times by ``driver`` against ``peer``."""
        after = len(self.records)
        self.host.actors.send(0, driver, f"{op} {peer} {count}".encode())
        return _ns_per(self.line(f"bench#{driver}", f"{op} n=", after))

    def wait_empty(self, timeout_s: float = LINE_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while self.host.processes and time.monotonic() < deadline:
            time.sleep(0.001)

    def close(self) -> None:
        self.host.shutdown(SHUTDOWN_TIMEOUT_S)


def _ns_per(line: str) -> float:
    fields = dict(word.split("=", 1) for word in line.split()[1:])
    return int(fields["ns"]) / int(fields["n"])


def _wat(text: str) -> bytes:
    return bytes(wasmtime.wat2wasm(text))


def _modules(build: Path) -> dict[str, bytes]:
    guest = build_c_guest(GUEST_SOURCE, build / "actors.wasm")
    return {
        "bench": guest.read_bytes(),
        "empty": _wat(EMPTY),
        "crasher": _wat(CRASHER),
        "idle": _wat(IDLE_GUEST),
        "sup": _wat(SUPERVISING),
    }


# ── 1. spawn rate ───────────────────────────────────────────────────────


def spawn_rate(worker: Worker) -> None:
    host = worker.host

    def rusm_trial() -> float:
        start = time.perf_counter()
        for _ in range(SPAWNS):
            while len(host.processes) >= host.max_processes - 1:
                time.sleep(0.0001)
            host.spawn("empty")
        worker.wait_empty()
        return SPAWNS / (time.perf_counter() - start)

    plain_trial = plain_spawn_trial(SPAWNS)

    rusm, plain = _paired(rusm_trial, plain_trial)
    _row("spawn+run+exit, one worker", rusm, plain, "/s", "wasmtime-py instantiate+run loop")


# ── 2. messages: baselines ──────────────────────────────────────────────


def thread_round_trip(count: int) -> float:
    """ns per round trip between two threads over two SimpleQueues."""
    out: queue.SimpleQueue[bytes] = queue.SimpleQueue()
    back: queue.SimpleQueue[bytes] = queue.SimpleQueue()

    def echo() -> None:
        for _ in range(count):
            out.get()
            back.put(b"P")

    peer = threading.Thread(target=echo)
    peer.start()
    start = time.perf_counter_ns()
    for _ in range(count):
        out.put(b"p")
        back.get()
    elapsed = time.perf_counter_ns() - start
    peer.join()
    return elapsed / count


def thread_call(count: int) -> float:
    """ns per call: a request carrying its own reply queue, answered by another thread."""
    requests: queue.SimpleQueue[tuple[bytes, queue.SimpleQueue[bytes]]] = queue.SimpleQueue()

    def callee() -> None:
        for _ in range(count):
            _data, reply = requests.get()
            reply.put(b"C")

    peer = threading.Thread(target=callee)
    peer.start()
    start = time.perf_counter_ns()
    for _ in range(count):
        reply: queue.SimpleQueue[bytes] = queue.SimpleQueue()
        requests.put((b"c", reply))
        reply.get()
    elapsed = time.perf_counter_ns() - start
    peer.join()
    return elapsed / count


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

    def round_trip(self, count: int) -> float:
        """ns per round trip."""
        start = time.perf_counter_ns()
        for _ in range(count):
            self.conn.send_bytes(b"p")
            self.conn.recv_bytes()
        return (time.perf_counter_ns() - start) / count

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


# ── 2. messages: rusm on one worker ─────────────────────────────────────


def one_worker(worker: Worker) -> None:
    driver = worker.spawn_ready("bench")
    peer = worker.spawn_ready("bench")
    try:
        rtt = _paired(
            partial(worker.measure, driver, "pingpong", peer, ROUND_TRIPS),
            partial(thread_round_trip, ROUND_TRIPS),
        )
        call = _paired(
            partial(worker.measure, driver, "calls", peer, CALLS), partial(thread_call, CALLS)
        )
        flood = _paired(
            partial(worker.measure, driver, "flood", peer, FLOOD), partial(thread_flood, FLOOD)
        )
    finally:
        worker.host.kill(driver)
        worker.host.kill(peer)
    what = "2 threads, queue.SimpleQueue"
    _row("send/recv round trip, one worker", rtt[0] / 1000, rtt[1] / 1000, "µs", what)
    _row("call/reply round trip, one worker", call[0] / 1000, call[1] / 1000, "µs", what)
    _row("messages one way, one worker", 1e9 / flood[0], 1e9 / flood[1], "msg/s", what)


# ── 2. messages: rusm across two workers (the daemon) ───────────────────


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

    def measure(self, driver: int, op: str, peer: int, count: int) -> float:
        """ns per operation: ``op`` run ``count`` times by ``driver`` against ``peer``."""
        seen = len(self._hits(f"bench#{driver}", f"{op} n="))
        self.ask("send", pid=f"#{driver}", text=f"{op} {peer} {count}")
        return _ns_per(self.line(f"bench#{driver}", f"{op} n=", seen))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)


def across_workers(guest: bytes, pipe: PipePeer) -> None:
    with tempfile.TemporaryDirectory(prefix="rusm-bench-") as directory:
        daemon = Daemon(Path(directory), guest)
        try:
            workers = wait_all_ready(daemon.socket, time.monotonic() + 60)
            if sorted(workers) != [0, 1]:
                raise RuntimeError(f"expected workers 0 and 1, got {sorted(workers)}")
            driver, near, far = daemon.spawn_on(0), daemon.spawn_on(0), daemon.spawn_on(1)
            figures: dict[tuple[str, int], tuple[float, float]] = {}
            # Two threads of one process beside the same worker; two processes beside two.
            baselines: dict[tuple[str, int], Callable[[], float]] = {
                ("pingpong", near): partial(thread_round_trip, ROUND_TRIPS),
                ("calls", near): partial(thread_call, CALLS),
                ("flood", near): partial(thread_flood, FLOOD),
                ("pingpong", far): partial(pipe.round_trip, ROUND_TRIPS),
                ("calls", far): partial(pipe.round_trip, CALLS),
                ("flood", far): partial(pipe.flood, FLOOD),
            }
            for op, count in (("pingpong", ROUND_TRIPS), ("calls", CALLS), ("flood", FLOOD)):
                for peer in (near, far):
                    figures[op, peer] = _paired(
                        partial(daemon.measure, driver, op, peer, count), baselines[op, peer]
                    )
            # CPU the two workers burn per round trip, against the time one takes.
            busy = {}
            for peer in (near, far):
                before = _cpu_s(workers.values())
                elapsed = daemon.measure(driver, "pingpong", peer, ROUND_TRIPS)
                busy[peer] = ((_cpu_s(workers.values()) - before) / ROUND_TRIPS * 1e6, elapsed)
        finally:
            daemon.stop()
    for peer, where, what in (
        (near, "same worker, daemon", "2 threads, queue.SimpleQueue"),
        (far, "across workers", "2 processes, multiprocessing Pipe"),
    ):
        rtt, call, flood = figures["pingpong", peer], figures["calls", peer], figures["flood", peer]
        _row(f"send/recv round trip, {where}", rtt[0] / 1000, rtt[1] / 1000, "µs", what)
        _row(f"call/reply round trip, {where}", call[0] / 1000, call[1] / 1000, "µs", what)
        _row(f"messages one way, {where}", 1e9 / flood[0], 1e9 / flood[1], "msg/s", what)
        cpu_us, elapsed_ns = busy[peer]
        print(
            f"{'':<42} (one more {ROUND_TRIPS:,} round trips, {where}: {elapsed_ns / 1000:.1f} µs "
            f"each, of which both workers together used {cpu_us:.1f} µs of CPU)"
        )


def _cpu_s(pids: Iterable[int]) -> float:
    """CPU seconds (user + system, all threads) used so far by processes ``pids``."""
    total = 0.0
    for pid in pids:
        times = psutil.Process(pid).cpu_times()
        total += times.user + times.system
    return total


# ── 3. restarts under a supervisor ──────────────────────────────────────


def restarts(worker: Worker) -> None:
    host = worker.host
    in_window: list[int] = []

    def supervised() -> float:
        before = host.exits.get("crashed", 0)
        parent = host.spawn("sup")
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
            host.spawn("crasher")
            if not worker.exited.wait(LINE_TIMEOUT_S):
                raise TimeoutError("crasher did not exit")
            count += 1
        rate = count / (time.perf_counter() - start)
        worker.wait_empty()
        return rate

    rate, base = _paired(supervised, bare)
    _row("restarts under a supervisor", rate, base, "/s", "spawn, wait for the exit, spawn again")
    counts = ", ".join(f"{n:,}" for n in in_window)
    print(f"{'':<42} (the supervisor's own restarts in its last 1 s, each trial: {counts})")


# ── 4. idle processes ───────────────────────────────────────────────────


def _rss() -> int:
    rss: int = psutil.Process().memory_info().rss
    return rss


def idle_rss(count: int) -> dict[str, Any]:
    """In a child: park ``count`` processes in recv; RSS and threads before and after."""
    result: dict[str, Any] = {"wanted": count}
    with tempfile.TemporaryDirectory(prefix="rusm-bench-") as directory:
        worker = Worker(
            Path(directory),
            {"idle": _wat(IDLE_GUEST)},
            pool_slots=count,
            max_processes=count,
            level=LogLevel.WARN,
        )
        host = worker.host
        result["pooling"] = host.engine_info.pooling
        result["pool_slots"] = host.engine_info.pool_slots
        result["fallback"] = host.engine_info.fallback_reason
        # One process first: module code, runner, first store pages are not per-process.
        host.spawn("idle")
        _wait_parked(host, 1)
        rss_before, threads_before = _rss(), threading.active_count()
        result["maps_before"] = _count_lines("/proc/self/maps")
        started = time.perf_counter()
        error = ""
        try:
            for _ in range(count - 1):
                host.spawn("idle")
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
        parked = _wait_parked(host, len(host.processes))
        result["spawn_s"] = time.perf_counter() - started
        result["parked"] = parked
        result["error"] = error
        result["rss_before"] = rss_before
        result["rss_after"] = _rss()
        result["threads_before"] = threads_before
        result["threads_after"] = threading.active_count()
        result["os_threads_after"] = psutil.Process().num_threads()
        result["maps"] = _count_lines("/proc/self/maps")
        result["crashed"] = host.exits.get("crashed", 0)
        result["records"] = [r.text for r in worker.records[:5]]
        started = time.perf_counter()
        worker.close()
        result["shutdown_s"] = time.perf_counter() - started
        result["left"] = len(host.processes)
        deadline = time.monotonic() + 10
        while threading.active_count() > 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        result["threads_left"] = threading.active_count()
    return result


def _wait_parked(host: WasmHost, count: int) -> int:
    """Wait until ``count`` processes wait in recv (or nothing changes for 5 s)."""
    last, last_change = -1, time.monotonic()
    while True:
        parked = sum(1 for p in list(host.processes.values()) if p.state == ProcessState.WAITING)
        if parked >= count:
            return parked
        if parked != last:
            last, last_change = parked, time.monotonic()
        elif time.monotonic() - last_change > 5:
            return parked
        time.sleep(0.01)


def thread_rss(count: int) -> dict[str, Any]:
    """In a child: ``count`` Python threads parked on an Event, same stack size as guests."""
    from rusmd.wasm.host import GUEST_THREAD_STACK_BYTES

    threading.stack_size(GUEST_THREAD_STACK_BYTES)
    gate = threading.Event()
    started = threading.Semaphore(0)

    def park() -> None:
        started.release()
        gate.wait()

    first = threading.Thread(target=park, daemon=True)
    first.start()
    started.acquire()
    rss_before, threads_before = _rss(), threading.active_count()
    maps_before = _count_lines("/proc/self/maps")
    threads = [threading.Thread(target=park, daemon=True) for _ in range(count - 1)]
    error = ""
    began = time.perf_counter()
    try:
        for thread in threads:
            thread.start()
            started.acquire()
    except RuntimeError as exc:
        error = str(exc)
    result = {
        "wanted": count,
        "spawn_s": time.perf_counter() - began,
        "parked": threading.active_count() - 1,
        "error": error,
        "rss_before": rss_before,
        "rss_after": _rss(),
        "threads_before": threads_before,
        "threads_after": threading.active_count(),
        "maps_before": maps_before,
        "maps": _count_lines("/proc/self/maps"),
    }
    gate.set()
    for thread in [first, *threads]:
        if thread.ident is not None:
            thread.join(10)
    return result


def _count_lines(path: str) -> int:
    with open(path, encoding="ascii", errors="replace") as file:
        return sum(1 for _ in file)


def _child(mode: str, count: int) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "bench.actors", mode, str(count)],
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT_S,
        check=False,
    )
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"{mode} {count} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def idle_processes() -> None:
    rusm = _child("idle-rss", IDLE)
    base = _child("thread-rss", IDLE)
    added, base_added = max(1, rusm["parked"] - 1), max(1, base["parked"] - 1)
    per = (rusm["rss_after"] - rusm["rss_before"]) / added
    base_per = (base["rss_after"] - base["rss_before"]) / base_added
    _row(
        f"RSS per idle process ({rusm['parked']:,} parked)",
        per / 1024,
        base_per / 1024,
        "KiB",
        f"{base['parked']:,} threads on an Event",
    )
    pad = " " * 42
    pool = f"{rusm['pool_slots']:,} pool slots" if rusm["pooling"] else "on-demand allocation"
    print(
        f"{pad} rusm: {rusm['threads_after']:,} threads ({rusm['os_threads_after']:,} in the "
        f"kernel's count), {pool}; spawned in {rusm['spawn_s']:.1f} s, shut down in "
        f"{rusm['shutdown_s']:.1f} s ({rusm['left']} processes and "
        f"{rusm['threads_left'] - 1} threads besides the main one left)"
    )
    if rusm["error"] or rusm["crashed"] or rusm["parked"] < rusm["wanted"]:
        print(f"{pad} rusm stopped short: {rusm['error']} crashed={rusm['crashed']}")
        for text in rusm["records"]:
            print(f"{pad}   {text}")
    if base["error"]:
        print(f"{pad} threads stopped short: {base['error']}")
    maps = (rusm["maps"] - rusm["maps_before"]) / added
    base_maps = (base["maps"] - base["maps_before"]) / base_added
    max_maps = int(_read("/proc/sys/vm/max_map_count") or 0)
    pid_max = int(_read("/proc/sys/kernel/pid_max") or 0)
    nproc = resource.getrlimit(resource.RLIMIT_NPROC)[0]
    print(f"{pad} how far the count goes:")
    print(f"{pad}   memory, 24 GiB / RSS each: {MACHINE_BYTES / per:,.0f} processes")
    if max_maps:
        print(
            f"{pad}   vm.max_map_count {max_maps:,} per OS process, {maps:.1f} maps each "
            f"(threads: {base_maps:.1f}): {(max_maps - rusm['maps_before']) / maps:,.0f} "
            "processes per worker"
        )
    print(
        f"{pad}   one thread each: kernel.pid_max {pid_max:,} and kernel.threads-max "
        f"{int(_read('/proc/sys/kernel/threads-max') or 0):,} (all OS processes together), "
        f"ulimit -u {'unlimited' if nproc == resource.RLIM_INFINITY else f'{nproc:,}'}"
    )
    print(f"{pad}   pool slots: {POOL_SLOTS:,} per worker in the daemon (here: {IDLE:,})")


def _read(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""


# ── entry ───────────────────────────────────────────────────────────────


def main() -> int:
    # Forked first, while this process has no thread but its own.
    pipe = PipePeer()
    try:
        with tempfile.TemporaryDirectory(prefix="rusm-bench-") as directory:
            build = Path(directory)
            modules = _modules(build)
            (build / "app").mkdir()
            worker = Worker(build / "app", modules)
            try:
                spawn_rate(worker)
                one_worker(worker)
                restarts(worker)
            finally:
                worker.close()
            across_workers(modules["bench"], pipe)
    finally:
        pipe.close()
    idle_processes()
    return 0


CENSUS = {"idle-rss": idle_rss, "thread-rss": thread_rss}
"""The child modes ``idle_processes`` runs: ``python -m bench.actors MODE COUNT``."""

if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in CENSUS or not sys.argv[2].isdigit():
        print(f"usage: python -m bench.actors {{{'|'.join(CENSUS)}}} COUNT", file=sys.stderr)
        sys.exit(2)
    print(json.dumps(CENSUS[sys.argv[1]](int(sys.argv[2]))))
