"""The scheduler in the real daemon: fair turns, kills of parked fibers, drain, CPU shown.

Runs in: the test process, driving ``rusmd`` subprocesses.

Every process runs as a fiber on its worker's loop (``rusmd/wasm/fibers.py``):
a guest spinning forever must not starve the sockets or the other
processes of its worker, a kill must end a fiber parked in any waiting
call at once, a SIGTERM must stop every parked fiber within the drain,
and ``rusmctl list`` shows what each process used of the CPU.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import wasmtime
from websockets.sync.client import connect

from rusmd.errors import EX_OK
from tests.guests.build import GUESTS
from tests.integration.actorkit import SETTLE_S, Actors, actor_wasm
from tests.integration.conftest import App, Daemon, free_port
from tests.integration.httpkit import api_wat, fetch
from tests.integration.test_sse_ws import ECHO_WAT

__all__ = ["actor_wasm"]  # a fixture, used by name

# The spinner's CPU budget: long enough that the requests below are served
# while it spins on any machine, short enough for a test.
SPINNER_CPU_MS = 8000
# Parked processes the drain test stops: what one worker's default pool
# (``[node].max-processes``, 8,000: what a stock ``vm.max_map_count``
# backs) holds with room to spare. 10,000 on one host: the in-process
# scheduler test.
PARKED = 7_900
# Processes parked in recv: they wait until told otherwise.
IDLE_WAT = """(module
  (import "rusm" "recv" (func $recv (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "run")
    (drop (call $recv (i32.const 0) (i32.const 64) (i32.const 64) (i32.const -1)))))"""
# Spawns PARKED idle processes, then waits in recv itself.
SPAWNER_WAT = f"""(module
  (import "rusm" "spawn" (func $spawn (param i32 i32) (result i64)))
  (import "rusm" "log" (func $log (param i32 i32 i32) (result i32)))
  (import "rusm" "recv" (func $recv (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 512) "idle")
  (data (i32.const 600) "spawned all")
  (func (export "run")
    (local $n i32)
    (loop $more
      (drop (call $spawn (i32.const 512) (i32.const 4)))
      (local.set $n (i32.add (local.get $n) (i32.const 1)))
      (br_if $more (i32.lt_u (local.get $n) (i32.const {PARKED}))))
    (drop (call $log (i32.const 2) (i32.const 600) (i32.const 11)))
    (drop (call $recv (i32.const 0) (i32.const 64) (i32.const 64) (i32.const -1)))))"""


class Ports:
    """The app's listeners."""

    def __init__(self, http: int) -> None:
        self.http = http
        self.ws = free_port()


def write_app(app: App, actor_wasm: Path) -> Ports:
    """HTTP (inline and not), a WebSocket echo, the spinner, actors, idlers."""
    ports = Ports(app.serve_port)
    wasm = app.directory / "wasm"
    wasm.mkdir(exist_ok=True)
    (wasm / "api.wasm").write_bytes(wasmtime.wat2wasm(api_wat()))
    (wasm / "echo.wasm").write_bytes(wasmtime.wat2wasm(ECHO_WAT))
    (wasm / "spin.wasm").write_bytes(wasmtime.wat2wasm((GUESTS / "spin.wat").read_text()))
    (wasm / "idle.wasm").write_bytes(wasmtime.wat2wasm(IDLE_WAT))
    (wasm / "spawner.wasm").write_bytes(wasmtime.wat2wasm(SPAWNER_WAT))
    (wasm / "actor.wasm").write_bytes(actor_wasm.read_bytes())
    app.manifest.write_text(
        f'[node]\nlisten = "127.0.0.1:{app.node_port}"\n[log]\nlevel = "info"\n'
        f'[[serve]]\nprotocol = "http"\nlisten = "127.0.0.1:{ports.http}"\n'
        '[serve.routes]\n"GET /" = "api#home"\n'
        f'[[serve]]\nprotocol = "ws"\nlisten = "127.0.0.1:{ports.ws}"\nname = "echo"\n'
        f"[capabilities.spinning]\nmax-cpu-ms = {SPINNER_CPU_MS}\n"
        "[capabilities.boss]\nallow-spawn = true\nallow-process-control = true\n"
        "[components.api]\n[components.echo]\n[components.idle]\n"
        '[components.spin]\ncapability = "spinning"\n'
        '[components.spawner]\ncapability = "boss"\n'
        '[components.actor]\ncapability = "trusted"\n'
    )
    return ports


@pytest.fixture
def ports(app: App, actor_wasm: Path) -> Ports:
    return write_app(app, actor_wasm)


@pytest.fixture
def one_worker(ports: Ports, start_daemon: Callable[..., Daemon]) -> Daemon:
    """The daemon with one worker: every process and socket on one loop."""
    daemon = start_daemon(cpus=2)
    assert len(daemon.workers()) == 1
    return daemon


def listed(daemon: Daemon) -> dict[int, dict[str, Any]]:
    result = daemon.ctl("list", "--json")
    assert result.returncode == EX_OK, result.stderr
    return {row["pid"]: row for row in json.loads(result.stdout)["processes"]}


def spawn(daemon: Daemon, component: str) -> int:
    result = daemon.ctl("spawn", component, "--json")
    assert result.returncode == EX_OK, result.stderr
    return int(json.loads(result.stdout)["pid"])


def exit_lines(daemon: Daemon, component: str) -> list[str]:
    return [
        r["text"]
        for r in daemon.log_records()
        if r["source"] == "rusm" and r["text"].startswith(f"exit {component}#")
    ]


# ── fairness ────────────────────────────────────────────────────────────


def test_spinning_guest_leaves_http_and_websocket_served_and_its_budget_stops_it(
    ports: Ports, one_worker: Daemon
) -> None:
    spinner = spawn(one_worker, "spin")
    one_worker.wait_for(
        lambda: listed(one_worker)[spinner]["cpu_ms"] > 50, SETTLE_S, "the spinner to spin"
    )
    with connect(f"ws://127.0.0.1:{ports.ws}/", open_timeout=SETTLE_S) as ws:
        for n in range(5):
            assert fetch(ports.http, "GET", "/").status == 200
            ws.send(f"while it spins {n}")
            assert ws.recv(timeout=SETTLE_S) == f"while it spins {n}"
    # All of that was answered while the spinner still ran on the same loop.
    row = listed(one_worker)[spinner]
    assert row["runs"] == "fiber" and row["state"] == "running"
    assert row["polls"] > 1, "it yielded the loop and was polled again"
    [line] = one_worker.wait_for(
        lambda: exit_lines(one_worker, "spin"), SPINNER_CPU_MS / 1000 + SETTLE_S, "the budget"
    )
    assert line == (
        f"exit spin#{spinner} crashed (cpu limit: ran over its {SPINNER_CPU_MS} ms budget)"
    )


# ── kills of parked fibers ──────────────────────────────────────────────


def _kill_and_gone(actors: Actors, pid: int, watcher: int) -> None:
    """Kill ``pid``: it is gone from the very next list, and ``watcher``'s monitor says killed."""
    ref = actors.result(watcher, "actor", "monitor", f"monitor {pid}")
    assert actors.daemon.ctl("kill", f"#{pid}").returncode == EX_OK
    assert pid not in listed(actors.daemon)
    assert actors.exit_line(pid, "actor") == f"exit actor#{pid} killed (killed by the operator)"
    actors.line(watcher, "actor", f"got down ref={ref} from={pid} reason=killed")


def test_kill_frees_a_fiber_parked_in_recv_at_once(one_worker: Daemon) -> None:
    actors = Actors(one_worker)
    watcher, idle = actors.spawn("actor"), actors.spawn("actor")
    assert listed(one_worker)[idle]["state"] == "waiting"
    _kill_and_gone(actors, idle, watcher)


def test_kill_frees_fibers_parked_in_call_and_in_sleep_at_once(one_worker: Daemon) -> None:
    actors = Actors(one_worker)
    watcher, caller, callee = (actors.spawn("actor") for _ in range(3))
    actors.send(caller, f"call {callee} 600000 sleep 600000")
    actors.line(callee, "actor", f"got call from={caller}")
    one_worker.wait_for(
        lambda: listed(one_worker)[callee]["state"] == "sleeping", SETTLE_S, "the callee to sleep"
    )
    assert listed(one_worker)[caller]["state"] == "waiting"
    assert caller in listed(one_worker)[callee]["monitored_by"]
    _kill_and_gone(actors, caller, watcher)
    # Its call's monitor went with it; the callee sleeps on.
    assert caller not in listed(one_worker)[callee]["monitored_by"]
    assert listed(one_worker)[callee]["state"] == "sleeping"
    _kill_and_gone(actors, callee, watcher)
    assert not [t for t in actors.lines(f"actor#{callee}") if t.startswith("result sleep")]


# ── drain ───────────────────────────────────────────────────────────────


def test_sigterm_stops_every_parked_fiber_within_the_drain(one_worker: Daemon) -> None:
    spawner = spawn(one_worker, "spawner")
    one_worker.wait_for(
        lambda: any(
            r["source"] == f"spawner#{spawner}" and r["text"] == "spawned all"
            for r in one_worker.log_records()
        ),
        SETTLE_S * 3,
        "the spawner to spawn every idle process",
    )

    # Spawned is not yet parked: each runs to its recv on a later loop turn.
    def all_parked() -> bool:
        rows = listed(one_worker)
        idle = [row for row in rows.values() if row["component"] == "idle"]
        return len(idle) == PARKED and {row["state"] for row in idle} == {"waiting"}

    one_worker.wait_for(all_parked, SETTLE_S * 3, f"{PARKED} idle processes to park in recv")
    one_worker.signal(signal.SIGTERM)
    assert one_worker.wait_exit() == 0
    log = one_worker.read_log().splitlines()
    lines = [line for line in log if " exit idle#" in line]
    assert all(line.endswith(" shutdown") for line in lines), lines[:3]
    # Past its burst, the component's exit lines are counted into a summary
    # written as the worker stops: shown and counted add up to every one.
    held = [
        int(line.split("log: suppressed ")[1].split()[0])
        for line in log
        if "log: suppressed " in line and " exit lines of idle " in line
    ]
    assert len(lines) + sum(held) == PARKED, (len(lines), held)


# ── CPU shown ───────────────────────────────────────────────────────────


def test_list_shows_each_process_cpu_and_polls(one_worker: Daemon) -> None:
    actors = Actors(one_worker)
    busy, idle = actors.spawn("actor"), actors.spawn("actor")
    before = listed(one_worker)
    for n in range(20):
        actors.result(busy, "actor", "self", f"self {n}")
    rows = listed(one_worker)
    assert rows[busy]["polls"] >= before[busy]["polls"] + 20
    assert rows[busy]["cpu_ms"] > before[busy]["cpu_ms"] > 0
    # The other one waited in recv all along: no turn, no CPU.
    assert (rows[idle]["polls"], rows[idle]["cpu_ms"]) == (
        before[idle]["polls"],
        before[idle]["cpu_ms"],
    )
    assert rows[busy]["runs"] == "fiber"
    text = one_worker.ctl("list").stdout
    assert "CPU" in text.splitlines()[0]
    info = actors.info(busy)
    assert info["polls"] >= rows[busy]["polls"] and info["cpu_ms"] >= rows[busy]["cpu_ms"]
