"""``python -m bench capacity``: what a parked process costs, and what bounds checks cost.

Runs in: a benchmark process of its own (and, for ``bounds``, children
under callgrind).

Two measurements behind ``[node].max-processes`` (docs/operations.md,
"Capacity"; figures in docs/benchmarks.md, "Capacity"):

- *parked*: one in-process ``WasmHost`` with its fiber scheduler on a
  uvloop loop parks N processes in ``rusm.recv`` (a guest with one page of
  memory and no table) and reports, per process, the kernel mappings it
  adds and its resident memory, split by where it lives: the fiber stacks
  (2 MiB mappings), the rest of the anonymous mappings (linear memories,
  wasmtime's allocations), and the malloc heap (the ``wasmtime.Store``,
  its instance and the Python objects), then the time to stop them all.
  Past ``vm.max_map_count`` the host holds fewer and says so (its
  ``limits:`` warning is printed).
- *bounds*: instructions (callgrind, deterministic on a shared machine)
  per call of ``bench/guests/compute.c``'s ``work`` compiled for the full
  layout (4 GiB reservation, no bounds checks) and for the compact one
  (the reservation of a pool past about 16,000 processes).

Options: ``--parked N`` (default 10,000), ``--max-processes N`` (default:
N), ``--calls N`` (default 20), ``--skip-bounds``, ``--skip-parked``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import uvloop
import wasmtime

from rusmd.abi import ExitReason
from rusmd.channel import ComponentImage
from rusmd.config import Overrides, load_environment, load_manifest
from rusmd.config.model import LogLevel
from rusmd.log import Logger, LogRecord
from rusmd.wasm.cache import CompileCache
from rusmd.wasm.capacity import COMPACT_GUARD_BYTES, layout_for, manifest_layout
from rusmd.wasm.engine import compile_engine
from rusmd.wasm.host import WasmHost
from rusmd.wasm.settings import FULL_LAYOUT, MemoryLayout
from tests.guests.build import build_c_guest

IDLE_GUEST = """(module
  (import "rusm" "recv" (func $recv (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "run")
    (drop (call $recv (i32.const 0) (i32.const 64) (i32.const 64) (i32.const -1)))))"""
COMPUTE_SOURCE = Path(__file__).resolve().parent / "guests" / "compute.c"
# Spawns between two turns of the loop, so the fibers start as they come.
SPAWN_BATCH = 1000
# Bounds, so the run always ends by itself.
STOP_TIMEOUT_S = 120.0
CALLGRIND_TIMEOUT_S = 600.0
_FIBER_STACK_MAPPING = 2 << 20
_COLLECTED = re.compile(r"Collected : (\d+)")


def _maps() -> int:
    with open("/proc/self/maps", "rb") as maps:
        return sum(1 for _ in maps)


def _rss_by_kind() -> dict[str, int]:
    """Resident KiB of this process: fiber stacks, other anonymous, heap, files."""
    kinds: dict[str, int] = {}
    kind = "files"
    with open("/proc/self/smaps", encoding="utf-8") as smaps:
        for line in smaps:
            head = line.split()
            if re.match(r"^[0-9a-f]+-[0-9a-f]+$", head[0]):
                low, high = (int(part, 16) for part in head[0].split("-"))
                name = head[5] if len(head) > 5 else ""
                if name == "[heap]":
                    kind = "malloc heap"
                elif name:
                    kind = "files"
                elif high - low == _FIBER_STACK_MAPPING:
                    kind = "fiber stacks"
                else:
                    kind = "other anonymous (memories, wasmtime)"
            elif head[0] == "Rss:":
                kinds[kind] = kinds.get(kind, 0) + int(head[1])
    return kinds


def parked(count: int, max_processes: int) -> dict[str, Any]:
    """Park ``count`` processes on one host; its per-process figures."""
    with tempfile.TemporaryDirectory(prefix="rusm-bench-") as directory:
        app = Path(directory)
        (app / "rusm.toml").write_text(
            f"[node]\nmax-processes = {max_processes}\n"
            '[capabilities.idle]\nmax-memory-mb = 16\n[components.idle]\ncapability = "idle"\n'
        )
        environment = load_environment(app)
        manifest = load_manifest(str(app / "rusm.toml"), Overrides(), environment)
        loop = uvloop.new_event_loop()
        asyncio.set_event_loop(loop)
        records: list[LogRecord] = []
        host = WasmHost(
            manifest, 0, Logger(LogLevel.WARN, records.append), environment,
            request_lease=lambda: None, loop=loop,
        )  # fmt: skip
        host.add_lease(1, 100_000_000)
        layout = manifest_layout(manifest)
        cache = CompileCache(app / "cache", layout)
        wasm = wasmtime.wat2wasm(IDLE_GUEST)
        compiled = wasmtime.Module(compile_engine(layout), wasm).serialize()
        entry = cache.store(cache.key(wasm), compiled, "idle")
        host.load([ComponentImage(name="idle", cwasm=str(entry.path), digest=entry.digest)])
        count = min(count, host.max_processes)
        # The first process pays for what all share (module code, first pages).
        host.spawn("idle", quiet=True)
        loop.run_until_complete(asyncio.sleep(0.05))
        gc.collect()
        maps_before, rss_before = _maps(), _rss_by_kind()
        started = time.perf_counter()
        for index in range(1, count):
            host.spawn("idle", quiet=True)
            if index % SPAWN_BATCH == 0:
                loop.run_until_complete(asyncio.sleep(0))
        loop.run_until_complete(asyncio.sleep(0.2))
        spawn_s = time.perf_counter() - started
        gc.collect()
        maps_after, rss_after = _maps(), _rss_by_kind()
        waiting = sum(1 for p in host.processes.values() if str(p.state) == "waiting")
        started = time.perf_counter()
        for pid in list(host.processes):
            host.kill(pid, ExitReason.SHUTDOWN)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while host.processes and time.monotonic() < deadline:
            loop.run_until_complete(asyncio.sleep(0.001))
        stop_s = time.perf_counter() - started
        loop.run_until_complete(asyncio.sleep(0.2))
        gc.collect()
        rss_stopped = _rss_by_kind()
        added = count - 1
        return {
            "count": count,
            "waiting": waiting,
            "layout": layout,
            "warnings": [r.text for r in records if r.text.startswith("limits:")],
            "maps_before": maps_before,
            "maps_per_process": (maps_after - maps_before) / added,
            "rss_kib_per_process": {
                kind: (rss_after.get(kind, 0) - rss_before.get(kind, 0)) / added
                for kind in sorted(set(rss_before) | set(rss_after))
            },
            "rss_kib_kept_per_process": {
                kind: (rss_stopped.get(kind, 0) - rss_before.get(kind, 0)) / added
                for kind in sorted(set(rss_before) | set(rss_stopped))
            },
            "spawn_s": spawn_s,
            "stop_s": stop_s,
            "left": len(host.processes),
        }


def run_guest(layout: MemoryLayout, cwasm: str, calls: int) -> None:
    """Call ``work`` ``calls`` times in a store of an engine with ``layout``."""
    engine = compile_engine(layout)
    store = wasmtime.Store(engine)
    store.set_epoch_deadline(1 << 40)
    linker = wasmtime.Linker(engine)
    linker.define_wasi()
    store.set_wasi(wasmtime.WasiConfig())
    instance = linker.instantiate(store, wasmtime.Module.deserialize_file(engine, cwasm))
    exports = instance.exports(store)
    initialize = exports.get("_initialize")
    if isinstance(initialize, wasmtime.Func):
        initialize(store)
    work = exports["work"]
    assert isinstance(work, wasmtime.Func)
    for seed in range(calls):
        work(store, seed)


def _instructions(layout: MemoryLayout, cwasm: Path, calls: int) -> int:
    command = [
        "valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
        sys.executable, "-m", "bench.capacity", "--run-guest",
        str(layout.reservation_bytes), str(layout.guard_bytes), str(cwasm), str(calls),
    ]  # fmt: skip
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=CALLGRIND_TIMEOUT_S, check=True
    )
    return int(_COLLECTED.findall(done.stderr)[-1])


def bounds(calls: int) -> dict[str, int] | str:
    """Instructions per ``work`` call for each layout, or why not measured."""
    if shutil.which("valgrind") is None:
        return "valgrind is not installed (apt-get install valgrind)"
    compact = layout_for(1 << 20, 16 << 20)
    assert compact.guard_bytes == COMPACT_GUARD_BYTES
    per_call: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="rusm-bench-") as directory:
        build = Path(directory)
        wasm = build_c_guest(COMPUTE_SOURCE, build / "compute.wasm", reactor=True)
        for name, layout in (("full", FULL_LAYOUT), ("compact", compact)):
            cwasm = build / f"compute.{name}.cwasm"
            cwasm.write_bytes(
                wasmtime.Module.from_file(compile_engine(layout), str(wasm)).serialize()
            )
            base = _instructions(layout, cwasm, 0)
            per_call[name] = (_instructions(layout, cwasm, calls) - base) // calls
    return per_call


def _report(result: dict[str, Any]) -> None:
    layout = result["layout"]
    print(
        f"parked: {result['waiting']:,} of {result['count']:,} processes waiting in recv on one "
        f"host (memory reservation {layout.reservation_bytes >> 20} MiB + "
        f"{layout.guard_bytes >> 20} MiB guard) in {result['spawn_s']:.1f} s"
    )
    for warning in result["warnings"]:
        print(f"  {warning}")
    print(
        f"  maps: {result['maps_per_process']:.2f} per process "
        f"(the pool had made {result['maps_before']:,} at start)"
    )
    total = sum(result["rss_kib_per_process"].values())
    print(f"  resident: {total:.1f} KiB per process")
    for kind, kib in result["rss_kib_per_process"].items():
        print(f"    {kind:40} {kib:6.1f} KiB")
    print(f"  stopping them all: {result['stop_s']:.2f} s ({result['left']} left)")
    kept = result["rss_kib_kept_per_process"]
    print(
        f"  still resident once they are gone: {sum(kept.values()):.1f} KiB per process stopped ("
        + ", ".join(f"{kind} {kib:.1f}" for kind, kib in kept.items() if abs(kib) >= 0.05)
        + ")"
    )


def main(argv: list[str] | None = None) -> int:
    """Run the measurements; print them."""
    parser = argparse.ArgumentParser(prog="python -m bench capacity")
    parser.add_argument("--parked", type=int, default=10_000)
    parser.add_argument("--max-processes", type=int, default=0)
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--skip-bounds", action="store_true")
    parser.add_argument("--skip-parked", action="store_true")
    parser.add_argument("--run-guest", nargs=4, help=argparse.SUPPRESS)
    options = parser.parse_args(argv or [])
    if options.run_guest:
        reservation, guard, cwasm, calls = options.run_guest
        run_guest(MemoryLayout(int(reservation), int(guard)), cwasm, int(calls))
        return 0
    if not options.skip_parked:
        _report(parked(options.parked, options.max_processes or options.parked))
    if not options.skip_bounds:
        per_call = bounds(options.calls)
        if isinstance(per_call, str):
            print(f"bounds: not measured: {per_call}")
        else:
            full, compact = per_call["full"], per_call["compact"]
            print(
                f"bounds: compute.c work() {full:,} instructions a call with the full layout, "
                f"{compact:,} with the compact one ({compact / full - 1:+.0%}; callgrind)"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
