"""Sizing a worker's process pool: layout, address space, memory maps, the warning."""

from __future__ import annotations

from pathlib import Path

from rusmd.config import Overrides, load_environment, load_manifest
from rusmd.wasm.cache import CompileCache
from rusmd.wasm.capacity import (
    ADDRESS_BUDGET_BYTES,
    COMPACT_GUARD_BYTES,
    COMPACT_MIN_RESERVATION_BYTES,
    MAP_HEADROOM,
    MAPS_PER_PROCESS,
    MAPS_PER_SLOT,
    KernelFigures,
    layout_for,
    manifest_layout,
    plan,
    slot_bytes,
)
from rusmd.wasm.settings import FULL_LAYOUT, MemoryLayout, engine_fingerprint

MIB = 1 << 20
ROOMY = KernelFigures(max_map_count=1 << 30, maps_in_use=500)
STOCK = KernelFigures(max_map_count=65530, maps_in_use=500)


def test_a_default_sized_worker_keeps_the_full_layout_and_fits_a_stock_kernel() -> None:
    capacity = plan(0, 8000, layout_for(8000, 64 * MIB), 64 * MIB, STOCK)

    assert capacity.layout == FULL_LAYOUT
    assert capacity.slots == 8000
    assert capacity.warning == ""


def test_past_the_address_budget_of_full_slots_the_layout_turns_compact() -> None:
    fitting = ADDRESS_BUDGET_BYTES // slot_bytes(FULL_LAYOUT, 64 * MIB)

    assert layout_for(fitting, 64 * MIB) == FULL_LAYOUT
    assert layout_for(fitting + 1, 64 * MIB) == MemoryLayout(
        COMPACT_MIN_RESERVATION_BYTES, COMPACT_GUARD_BYTES
    )


def test_a_compact_reservation_is_the_largest_heap_rounded_up_to_a_power_of_two() -> None:
    assert layout_for(100_000, 1 * MIB).reservation_bytes == COMPACT_MIN_RESERVATION_BYTES
    assert layout_for(100_000, 65 * MIB).reservation_bytes == 128 * MIB
    assert layout_for(100_000, 1024 * MIB).reservation_bytes == 1024 * MIB
    assert layout_for(100_000, 4096 * MIB).reservation_bytes == 4096 * MIB


def test_100k_processes_with_64_mib_heaps_fit_one_worker_given_the_maps() -> None:
    layout = layout_for(100_000, 64 * MIB)

    capacity = plan(0, 100_000, layout, 64 * MIB, ROOMY)

    assert capacity.slots == 100_000
    assert capacity.warning == ""
    assert 100_000 * slot_bytes(layout, 64 * MIB) < 8 << 40


def test_too_few_maps_shrinks_the_pool_and_the_warning_names_setting_figure_and_sysctl() -> None:
    layout = layout_for(100_000, 64 * MIB)

    capacity = plan(3, 100_000, layout, 64 * MIB, STOCK)

    per_process = MAPS_PER_SLOT + MAPS_PER_PROCESS
    assert capacity.slots == (65530 - 500 - MAP_HEADROOM) // per_process
    assert capacity.warning.startswith("worker 3: [node].max-processes = 100000 needs about ")
    assert "vm.max_map_count is 65,530" in capacity.warning
    assert f"this worker holds {capacity.slots:,} processes" in capacity.warning
    assert "sysctl -w vm.max_map_count=1048576" in capacity.warning


def test_the_suggested_map_count_covers_the_asked_for_processes() -> None:
    capacity = plan(0, 500_000, layout_for(500_000, 64 * MIB), 64 * MIB, STOCK)

    suggested = int(capacity.warning.split("vm.max_map_count=")[1].split(",")[0])
    assert suggested >= 500_000 * (MAPS_PER_SLOT + MAPS_PER_PROCESS) + MAP_HEADROOM


def test_heaps_too_large_for_the_address_space_shrink_the_pool_with_a_warning() -> None:
    heap = 4096 * MIB
    layout = layout_for(100_000, heap)

    capacity = plan(0, 100_000, layout, heap, ROOMY)

    assert capacity.slots == ADDRESS_BUDGET_BYTES // slot_bytes(layout, heap)
    assert capacity.slots < 100_000
    assert "TiB of address space" in capacity.warning
    assert "lower max-memory-mb or max-processes" in capacity.warning


def test_a_kernel_with_no_maps_to_spare_still_leaves_one_slot() -> None:
    starved = KernelFigures(max_map_count=1000, maps_in_use=900)

    capacity = plan(0, 10, FULL_LAYOUT, 64 * MIB, starved)

    assert capacity.slots == 1
    assert "vm.max_map_count is 1,000" in capacity.warning


def test_the_manifest_layout_follows_max_processes_and_the_largest_profile(
    tmp_path: Path,
) -> None:
    def layout_of(text: str) -> MemoryLayout:
        (tmp_path / "rusm.toml").write_text(text)
        environment = load_environment(tmp_path)
        return manifest_layout(load_manifest(str(tmp_path / "rusm.toml"), Overrides(), environment))

    assert layout_of("[components.a]\n") == FULL_LAYOUT
    big = '[node]\nmax-processes = 100000\n[components.a]\ncapability = "trusted"\n'
    assert layout_of(big) == MemoryLayout(1024 * MIB, COMPACT_GUARD_BYTES)


def test_the_cache_key_changes_with_the_memory_layout(tmp_path: Path) -> None:
    compact = MemoryLayout(COMPACT_MIN_RESERVATION_BYTES, COMPACT_GUARD_BYTES)
    full = CompileCache(tmp_path / "cache")
    small = CompileCache(tmp_path / "cache", compact)

    assert engine_fingerprint(compact) != engine_fingerprint(FULL_LAYOUT)
    assert full.key(b"\0asm") != small.key(b"\0asm")
    assert full.key(b"\0asm") == CompileCache(tmp_path / "cache", FULL_LAYOUT).key(b"\0asm")
