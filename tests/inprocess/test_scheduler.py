"""The scheduler at scale on a real in-process host: 10,000 parked fibers, then a drain.

Runs in: the test process, which plays one worker (a ``WasmHost`` made
without a loop starts its own, as the benchmarks' hosts do).

A worker's pool holds 1,000 processes in the daemon today; this host is
made with room for ``PARKED`` so that one worker's scheduler holds them
all, each parked in ``rusm.recv`` with no thread of its own, and
``shutdown`` (what a worker's drain runs on SIGTERM) must end every one
with reason ``shutdown`` within the drain's default time.
"""

from __future__ import annotations

import time
from pathlib import Path

from rusmd.wasm.process import ProcessState
from rusmd.worker.runtime import DEFAULT_DRAIN_S
from tests.inprocess.conftest import EXIT_TIMEOUT_S, Host

# What a worker holds by default ([node].max-processes): a stock
# vm.max_map_count (65,530) backs about 9,500 processes, less the maps the
# test process has already; 100,000 with the limit raised is in
# `python -m bench capacity` (docs/benchmarks.md, "Capacity").
PARKED = 8_000
IDLE = """(module
  (import "rusm" "recv" (func $recv (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "run")
    (drop (call $recv (i32.const 0) (i32.const 64) (i32.const 64) (i32.const -1)))))"""
WASI_SLEEPER = """(module
  (import "wasi_snapshot_preview1" "poll_oneoff"
    (func $poll (param i32 i32 i32 i32) (result i32)))
  (import "rusm" "recv" (func $recv (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "run")
    (drop (call $recv (i32.const 0) (i32.const 64) (i32.const 64) (i32.const -1)))))"""


def _wait_parked(host: Host, count: int) -> None:
    deadline = time.monotonic() + EXIT_TIMEOUT_S * 3
    while time.monotonic() < deadline:
        rows = host.host.list()
        if sum(row["state"] == ProcessState.WAITING for row in rows) >= count:
            return
        time.sleep(0.05)
    raise AssertionError(f"{count} processes did not park; {len(host.host.processes)} alive")


def test_thousands_of_parked_fibers_on_one_worker_all_stop_within_the_drain(tmp_path: Path) -> None:
    host = Host(tmp_path, "[components.idle]\n", pool_slots=PARKED + 8, lease_end=PARKED * 2)
    # The pool is sized within vm.max_map_count less the maps this process
    # already has (earlier tests' pools): alone, it holds all of PARKED.
    parked = min(PARKED, host.host.max_processes - 8)
    assert parked >= 1000, host.host.capacity
    host.load({"idle": IDLE})
    for _ in range(parked):
        host.host.spawn("idle", quiet=False)
    _wait_parked(host, parked)
    assert {row["runs"] for row in host.host.list()} == {"fiber"}
    assert host.host.runners.threads == 0, "no process of them took a guest thread"
    host.host.shutdown(DEFAULT_DRAIN_S)
    assert not host.host.processes
    assert host.host.stats()["exits"].get("shutdown") == parked
    # The log: the component's burst of exit lines, and a summary line
    # that counts the rest (its exit-line budget), adding up to every one.
    exits = host.exits()
    assert {line.split()[-1] for line in exits.values()} == {"shutdown"}
    held = [
        int(r.text.split()[2])
        for r in list(host.records)
        if r.text.startswith("log: suppressed ") and " exit lines of idle " in r.text
    ]
    assert len(exits) + sum(held) == parked, (len(exits), held)


def test_module_importing_a_blocking_wasi_call_keeps_a_guest_thread(tmp_path: Path) -> None:
    host = Host(tmp_path, "[components.idle]\n[components.napper]\n")
    try:
        host.load({"idle": IDLE, "napper": WASI_SLEEPER})
        fiber, threaded = host.host.spawn("idle"), host.host.spawn("napper")
        _wait_parked(host, 2)
        runs = {row["pid"]: row["runs"] for row in host.host.list()}
        assert runs == {fiber: "fiber", threaded: "thread"}
        assert host.host.runners.threads >= 1
    finally:
        host.host.shutdown(5.0)
    assert host.wait_exit(threaded, "napper").endswith("shutdown")
    assert host.wait_exit(fiber, "idle").endswith("shutdown")
