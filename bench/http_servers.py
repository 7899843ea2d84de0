"""The servers ``bench/http.py`` measures: the real rusmd, uvicorn, a websockets echo.

Runs in: the benchmark process. Each server is a subprocess in a session
of its own, started by a context manager that returns once the server
answers and, on the way out, SIGTERMs it and waits (SIGKILL to its
process group only if it is still there after ``SHUTDOWN_TIMEOUT_S``).

The rusm app (``write_app``) has three listeners and three ``sandboxed``
components, each a WAT guest compiled with ``wasmtime.wat2wasm``:

- ``http``, ``"GET /" = "api#home"``: ``home`` answers ``hello world``
  with ``rusm.respond`` from a fresh instance per request. It imports
  nothing but ``respond``, so it runs on the worker's I/O thread.
- ``sse``, ``"GET /events" = "feed#events"``: ``events`` sends
  ``rusm.sse_event`` as fast as it can, ``events`` times, then returns.
  It is its own component (not ``api#events``) because a module that
  imports ``sse_event`` runs every action as a full process, which would
  slow ``home`` down.
- ``ws``, component ``echo``: ``run`` loops on ``rusm.recv`` and sends
  each ``FRAME`` back with ``rusm.ws_send`` (same type), until ``CLOSED``.

With the HTTP workloads' guests (``write_app(..., guests=...)``, built by
``bench/http_workloads.py``), the ``http`` listener also routes:

- ``"GET /users/:id" = "rest#user"`` and ``"POST /items" =
  "rest#create_item"``: ``rest`` is ``bench/guests/http_rest.c``,
  ``sandboxed``; it imports only ``request`` and ``respond``, so it runs
  inline like ``home``.
- ``"GET /kv/:key" = "kv#get"``: ``kv`` is ``rusmd/node/guests/kv_get.c``
  (the kv-storm scenario's guest; make builds it as ``bench/guests/http_kv.wasm``)
  under a profile that grants ``allow-storage``, reading the node store
  ``data/bench.lmdb`` (``[node] store``); the kv reads are inline calls,
  so it runs inline too.

The ``http`` listener allows ``MAX_CONNECTIONS`` connections per worker
instead of the default 1,000: uvicorn sets no limit, and the workloads
open 1,024 connections to one worker.

Worker counts: ``[node] profile = "max"`` and ``--cpus 2N``. ``max`` is
half the cores, rounded half up, so 2N cores give N workers on any
machine. On a 2-core machine every profile sizes 1 worker and none 2:
the ``--cpus`` override is what gives the second.
"""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil
import wasmtime

from bench.http_baseline import KV_STORE_VARIABLE, SSE_DATA
from bench.worker_restart import _free_port, wait_all_ready

# Bounds, so a server that never comes up or never goes away ends the run.
READY_TIMEOUT_S = 60.0
SHUTDOWN_TIMEOUT_S = 30.0
REPO = Path(__file__).resolve().parent.parent
# Open connections per worker on the http listener (the default is 1,000):
# room for the 1,024 a run opens by default, since uvicorn has no such limit.
MAX_CONNECTIONS = 4096

HOME = """(module
  (import "rusm" "respond" (func $respond (param i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "hello world")
  (func (export "home")
    (drop (call $respond (i32.const 200) (i32.const 0) (i32.const 0)
                         (i32.const 16) (i32.const 11)))))"""
FEED = """(module
  (import "rusm" "sse_event" (func $event (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "{data}")
  (func (export "events") (local $sent i32)
    (loop $next
      (if (i32.lt_s (call $event (i32.const 0) (i32.const 0) (i32.const 16) (i32.const {size}))
                    (i32.const 0))
        (then (return)))
      (local.set $sent (i32.add (local.get $sent) (i32.const 1)))
      (br_if $next (i32.lt_u (local.get $sent) (i32.const {count}))))))"""
# Header at 0 (32 bytes: kind i32, reason i32, from i64, ref i64, size i32,
# reserved i32), payload at 64; kind 5 is FRAME (reason 1 text, 2 binary),
# kind 6 CLOSED. A negative size (TOOBIG: a message over the buffer) ends it.
ECHO = """(module
  (import "rusm" "recv" (func $recv (param i32 i32 i32 i32) (result i32)))
  (import "rusm" "ws_send" (func $ws_send (param i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (func (export "run") (local $size i32)
    (loop $next
      (local.set $size (call $recv (i32.const 0) (i32.const 64) (i32.const 65536) (i32.const -1)))
      (if (i32.lt_s (local.get $size) (i32.const 0)) (then (return)))
      (if (i32.eq (i32.load (i32.const 0)) (i32.const 6)) (then (return)))
      (if (i32.eq (i32.load (i32.const 0)) (i32.const 5))
        (then
          (if (i32.lt_s (call $ws_send (i32.load (i32.const 4)) (i32.const 64) (local.get $size))
                        (i32.const 0))
            (then (return)))))
      (br $next))))"""


@dataclass(frozen=True)
class RusmApp:
    """A rusm app dir written by ``write_app``, with its listeners' ports."""

    directory: Path
    http_port: int
    sse_port: int
    ws_port: int


@dataclass(frozen=True)
class Server:
    """A running server: the root of its process tree and the file its output goes to."""

    process: psutil.Process
    log: Path

    def cpu(self) -> dict[int, float]:
        """User + system CPU seconds of each process in the tree, by pid."""
        used: dict[int, float] = {}
        for process in [self.process, *self.process.children(recursive=True)]:
            try:
                times = process.cpu_times()
            except psutil.NoSuchProcess:
                continue
            used[process.pid] = times.user + times.system
        return used

    def minor_faults(self) -> dict[int, int]:
        """Minor page faults of each process in the tree so far, by pid."""
        counted: dict[int, int] = {}
        for process in [self.process, *self.process.children(recursive=True)]:
            try:
                fields = Path(f"/proc/{process.pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            # After "pid (comm)": state is field 3 and minflt field 10 (proc(5)).
            counted[process.pid] = int(fields[7])
        return counted


def cpu_used_s(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds the tree used between two ``Server.cpu`` snapshots."""
    return sum(seconds - before.get(pid, 0.0) for pid, seconds in after.items())


def write_app(directory: Path, events: int, guests: dict[str, bytes] | None = None) -> RusmApp:
    """The rusm app dir: ``rusm.toml`` and ``wasm/{api,feed,echo}.wasm``.

    Args:
        directory: Where the app goes (created).
        events: The events of one SSE stream.
        guests: The HTTP workloads' modules by component (``rest``, ``kv``),
            which add their routes, the store and the ``reader`` profile.
            Optional; defaults to None (``GET /`` alone).
    """
    app = RusmApp(directory, _free_port(), _free_port(), _free_port())
    (directory / "wasm").mkdir(parents=True)
    feed = FEED.format(data=SSE_DATA.decode(), size=len(SSE_DATA), count=events)
    for name, wat in {"api": HOME, "feed": feed, "echo": ECHO}.items():
        (directory / "wasm" / f"{name}.wasm").write_bytes(bytes(wasmtime.wat2wasm(wat)))
    for name, module in (guests or {}).items():
        (directory / "wasm" / f"{name}.wasm").write_bytes(module)
    node, routes, components = "", "", ""
    if guests:
        node = 'store = "data/bench.lmdb"\n'
        routes = (
            '"GET /users/:id" = "rest#user"\n"POST /items" = "rest#create_item"\n'
            '"GET /kv/:key" = "kv#get"\n'
        )
        components = (
            "[capabilities.reader]\nallow-storage = true\n"
            '[components.rest]\ncapability = "sandboxed"\n'
            '[components.kv]\ncapability = "reader"\n'
        )
    (directory / "rusm.toml").write_text(
        f'[node]\nlisten = "127.0.0.1:{_free_port()}"\nprofile = "max"\n{node}'
        '[log]\nlevel = "off"\n'
        f'[[serve]]\nprotocol = "http"\nlisten = "127.0.0.1:{app.http_port}"\n'
        f"max-connections = {MAX_CONNECTIONS}\n"
        f'[serve.routes]\n"GET /" = "api#home"\n{routes}'
        f'[[serve]]\nprotocol = "sse"\nlisten = "127.0.0.1:{app.sse_port}"\n'
        '[serve.routes]\n"GET /events" = "feed#events"\n'
        f'[[serve]]\nprotocol = "ws"\nlisten = "127.0.0.1:{app.ws_port}"\nname = "echo"\n'
        '[components.api]\ncapability = "sandboxed"\n'
        '[components.feed]\ncapability = "sandboxed"\n'
        '[components.echo]\ncapability = "sandboxed"\n'
        f"{components}"
    )
    return app


@contextmanager
def rusmd(app: RusmApp, workers: int) -> Iterator[Server]:
    """The real daemon with ``workers`` workers, once GET / answers 200 and all are ready."""
    argv = [sys.executable, "-m", "rusmd", "--config", "rusm.toml", "--cpus", str(2 * workers)]
    log = app.directory / f"rusmd-{workers}.log"
    with _running("rusmd", argv, app.directory, log, lambda: _answers(app.http_port)) as server:
        sock_path = app.directory / ".rusm" / "rusmd.sock"
        ready = wait_all_ready(sock_path, time.monotonic() + READY_TIMEOUT_S)
        if len(ready) != workers:
            print(f"  (rusmd started {len(ready)} workers, not {workers})")
        yield server


@contextmanager
def uvicorn(
    port: int, workers: int, log_dir: Path, kv_store: Path | None = None
) -> Iterator[Server]:
    """uvicorn serving ``bench.http_baseline:app``, uvloop + httptools, no access log;
    ``GET /kv/KEY`` reads the LMDB file ``kv_store`` (optional)."""
    argv = [
        *(sys.executable, "-m", "uvicorn", "bench.http_baseline:app"),
        *("--host", "127.0.0.1", "--port", str(port), "--loop", "uvloop"),
        *("--http", "httptools", "--no-access-log", "--log-level", "warning"),
        *("--lifespan", "off"),
        *(("--workers", str(workers)) if workers > 1 else ()),
    ]
    log = log_dir / f"uvicorn-{workers}.log"
    env = {KV_STORE_VARIABLE: str(kv_store)} if kv_store is not None else {}
    with _running("uvicorn", argv, REPO, log, lambda: _answers(port), env=env) as server:
        yield server


@contextmanager
def ws_echo(port: int, log_dir: Path) -> Iterator[Server]:
    """The websockets echo server of ``bench.http_baseline``."""
    argv = [sys.executable, "-m", "bench.http_baseline", "ws-echo", str(port)]
    log = log_dir / "ws-echo.log"
    with _running("websockets echo", argv, REPO, log, lambda: _accepts(port)) as server:
        yield server


@contextmanager
def _running(
    name: str,
    argv: list[str],
    cwd: Path,
    log: Path,
    ready: Callable[[], bool],
    *,
    env: dict[str, str] | None = None,
) -> Iterator[Server]:
    with log.open("ab") as out:
        child = subprocess.Popen(
            argv,
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **env} if env else None,
        )
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not ready():
            if child.poll() is not None or time.monotonic() > deadline:
                state = f"exited {child.returncode}" if child.returncode is not None else "hung"
                raise RuntimeError(f"{name} {state} before answering ({log}):\n{_tail(log)}")
            time.sleep(0.05)
        yield Server(psutil.Process(child.pid), log)
    finally:
        _stop(child)


def _stop(child: subprocess.Popen[bytes]) -> None:
    if child.poll() is None:
        child.send_signal(signal.SIGTERM)
    try:
        child.wait(SHUTDOWN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        print(f"  (pid {child.pid} ignored SIGTERM for {SHUTDOWN_TIMEOUT_S:.0f} s: SIGKILL)")
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()


def _answers(port: int) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1.0)
    try:
        conn.request("GET", "/")
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1.0).close()
    except OSError:
        return False
    return True


def _tail(log: Path, lines: int = 40) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
