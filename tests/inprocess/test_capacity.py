"""A worker's process pool on real wasmtime: full pools, compact layouts, too few maps.

Runs in: any (the test process drives a real ``WasmHost``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from rusmd.wasm import host as host_module
from rusmd.wasm.capacity import (
    COMPACT_GUARD_BYTES,
    MAP_HEADROOM,
    MAPS_PER_PROCESS,
    MAPS_PER_SLOT,
    KernelFigures,
)
from rusmd.wasm.settings import MemoryLayout
from tests.inprocess.conftest import Host

GUESTS = Path(__file__).resolve().parent.parent / "guests"
SLEEPER = (GUESTS / "sleeper.wat").read_text()
# Past the memory's one page (inside the reservation) and past any
# reservation: both must trap, whichever layout compiled them.
OUT_OF_BOUNDS = """
(module
  (import "rusm" "log" (func $log (param i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "in bounds")
  (func (export "run")
    (drop (call $log (i32.const 2) (i32.const 16) (i32.load8_u (i32.const 65535))))
    (drop (i32.load (i32.const {address})))))
"""
BEYOND_COMPACT_LAYOUT = """[node]
max-processes = 100000
[components.probe]
[components.sleeper]
"""


def test_a_spawn_past_the_pools_slots_exits_naming_the_full_pool_and_the_worker_goes_on(
    tmp_path: Path,
) -> None:
    host = Host(tmp_path, "[components.sleeper]\n", pool_slots=2, max_processes=3)
    host.load({"sleeper": SLEEPER})
    try:
        first, _second, third = (host.host.spawn("sleeper") for _ in range(3))

        line = host.wait_exit(third, "sleeper")
        assert line.startswith(
            f"exit sleeper#{third} crashed (cannot instantiate: the worker's process pool is full"
            " (maximum concurrent limit of 2 for"
        )
        assert line.endswith("; [node].max-processes sizes it))")
        assert host.host.kill(first)
        host.wait_exit(first, "sleeper")
        again = host.host.spawn("sleeper")
        assert host.host.info(again) is not None
    finally:
        host.host.shutdown(5.0)


@pytest.mark.parametrize("address", [0x10000, 0x7FFF0000, 0xFFFFFFF0])
def test_a_compact_layout_still_traps_every_out_of_bounds_access(
    tmp_path: Path, address: int
) -> None:
    host = Host(tmp_path, BEYOND_COMPACT_LAYOUT, pool_slots=4)
    host.load({"probe": OUT_OF_BOUNDS.replace("{address}", str(address))})
    try:
        assert host.host.capacity.layout == MemoryLayout(64 << 20, COMPACT_GUARD_BYTES)

        pid = host.host.spawn("probe")

        line = host.wait_exit(pid, "probe")
        assert line.startswith(f"exit probe#{pid} crashed (trap: out of bounds memory access")
    finally:
        host.host.shutdown(5.0)


def test_a_worker_the_map_limit_cannot_back_holds_fewer_and_warns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stock = KernelFigures(max_map_count=65530, maps_in_use=1000)
    monkeypatch.setattr(host_module, "read_kernel", lambda: stock)

    host = Host(tmp_path, BEYOND_COMPACT_LAYOUT, pool_slots=None)
    host.load({"sleeper": SLEEPER})
    try:
        backed = (65530 - 1000 - MAP_HEADROOM) // (MAPS_PER_SLOT + MAPS_PER_PROCESS)
        assert host.host.max_processes == host.host.engine_info.pool_slots == backed
        warnings = [r.text for r in host.records if r.level == "warn"]
        assert warnings == [
            f"limits: worker 7: [node].max-processes = 100000 needs about "
            f"{1000 + MAP_HEADROOM + 600_000:,} memory maps but vm.max_map_count is 65,530: "
            f"this worker holds {backed:,} processes; raise it (sysctl -w "
            'vm.max_map_count=1048576, or the sysctl.d drop-in; docs/operations.md, "Capacity")'
        ]
        pid = host.host.spawn("sleeper")
        assert host.host.info(pid) is not None
    finally:
        host.host.shutdown(5.0)
