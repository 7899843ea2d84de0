"""How many processes a worker can hold: address space, memory maps, layout.

Runs in: any. The main process calls ``manifest_layout`` for the compile
child's job (pure arithmetic; it never loads wasmtime); a worker calls
``plan`` once, on its loop thread, before it builds its engines.

``[node].max-processes`` sizes each worker's process pool: one instance,
one linear memory, one table and one fiber stack per process, all
reserved when the worker starts (``engine.worker_engine``). Two things
bound it besides memory:

- *Address space.* A memory slot reserves ``MemoryLayout.reservation_bytes``
  plus a guard. wasmtime's default layout (4 GiB + 32 MiB) lets compiled
  code leave every access unchecked, but x86-64 gives a process 128 TiB,
  and the largest free hole is about 85 TiB (below the executable). So the
  full layout is kept while ``max-processes`` of its slots fit in
  ``ADDRESS_BUDGET_BYTES`` (about 16,000); above that each memory reserves
  only the largest heap of the manifest's profiles (a power of two, at
  least ``COMPACT_MIN_RESERVATION_BYTES``) plus a ``COMPACT_GUARD_BYTES``
  guard, and compiled code checks each access against that reservation
  (measured: about a quarter more instructions in a memory-bound C guest; see
  docs/benchmarks.md, "Capacity"). More processes than the budget holds
  even then are refused with a warning.
- *Memory maps.* The kernel caps the mappings of one process at
  ``vm.max_map_count`` (65530 by default), and wasmtime splits its pool
  into many: ``MAPS_PER_SLOT`` per slot when the pool is made and
  ``MAPS_PER_PROCESS`` more per live process. Past the cap, making the pool
  aborts the worker (wasmtime's C API unwraps the error) and a live
  process's mprotect fails, so a worker sizes its pool to what the cap
  backs and warns, naming the sysctl to raise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from rusmd.wasm.settings import ENGINE_SETTINGS, FULL_LAYOUT, MemoryLayout

if TYPE_CHECKING:
    from rusmd.config.model import Manifest

# The address space one worker's process pool may reserve. The largest
# hole in a worker's address space is about 85 TiB (below the executable,
# which ASLR places near 0x55..); a bigger reservation fails, and the
# inline pool, the heap, the libraries and the thread stacks need room.
ADDRESS_BUDGET_BYTES = 64 << 40
# Bytes of a pool slot besides its memory: the table slot (wasmtime's
# default 20,000 elements of 8 bytes, rounded up) and the fiber stack
# with its guard page.
_TABLE_SLOT_BYTES = 160 << 10
_STACK_SLOT_BYTES = int(str(ENGINE_SETTINGS["async_stack_size"])) + (4 << 10)
# Compact layout: a guard this large still lets a single check on the
# index cover every static offset under it (measured: no cost over a
# 64 KiB guard), for 200 GiB of address space at 100,000 slots.
COMPACT_GUARD_BYTES = 2 << 20
# The compact reservation never goes below this, so profile edits under
# it keep the cache key (and the cache) as they are.
COMPACT_MIN_RESERVATION_BYTES = 64 << 20
# What wasmtime's pool costs in kernel mappings, measured on Linux x86-64
# (docs/operations.md, "Capacity"): each fiber stack's guard page splits
# the stack pool at creation; a live process's memory and table each
# become an accessible region inside an inaccessible one.
MAPS_PER_SLOT = 2
MAPS_PER_PROCESS = 4
# Mappings a worker needs besides its process pool: the interpreter and
# its libraries, malloc arenas, thread stacks, the inline pool, LMDB,
# compiled code. A worker that runs out mid-way fails any mmap at all.
MAP_HEADROOM = 8192
# What the operations guide and the sysctl drop-in set: room for 100,000+
# processes per worker at MAPS_PER_SLOT + MAPS_PER_PROCESS each.
SUGGESTED_MAX_MAP_COUNT = 1_048_576
_TIB = 1 << 40


@dataclass(frozen=True)
class KernelFigures:
    """What the kernel allows this process, read once at worker start.

    Attributes:
        max_map_count: ``vm.max_map_count``: mappings one process may hold.
        maps_in_use: Mappings this process holds now.
    """

    max_map_count: int
    maps_in_use: int


@dataclass(frozen=True)
class CapacityPlan:
    """What a worker's process pool will hold.

    Attributes:
        slots: Processes the worker holds at once (its pool's slots).
        layout: The memory layout its engines use.
        warning: Why ``slots`` is below ``[node].max-processes`` ("" if it is not).
    """

    slots: int
    layout: MemoryLayout
    warning: str = ""


def largest_heap_bytes(manifest: Manifest) -> int:
    """The largest ``max-memory-mb`` of the manifest's components (64 MiB if none)."""
    return max([c.profile.max_memory_mb for c in manifest.components.values()] or [64]) << 20


def slot_bytes(layout: MemoryLayout, heap_bytes: int) -> int:
    """Address space one pool slot reserves: memory, guard, table and fiber stack."""
    return (
        max(layout.reservation_bytes, heap_bytes)
        + layout.guard_bytes
        + _TABLE_SLOT_BYTES
        + _STACK_SLOT_BYTES
    )


def layout_for(max_processes: int, heap_bytes: int) -> MemoryLayout:
    """The full layout while ``max_processes`` of its slots fit the budget, else compact."""
    if max_processes * slot_bytes(FULL_LAYOUT, heap_bytes) <= ADDRESS_BUDGET_BYTES:
        return FULL_LAYOUT
    reservation = COMPACT_MIN_RESERVATION_BYTES
    while reservation < heap_bytes:
        reservation <<= 1
    return MemoryLayout(reservation_bytes=reservation, guard_bytes=COMPACT_GUARD_BYTES)


def manifest_layout(manifest: Manifest) -> MemoryLayout:
    """The layout the compile child and every worker use for ``manifest``."""
    return layout_for(manifest.node.max_processes, largest_heap_bytes(manifest))


def read_kernel() -> KernelFigures:
    """``vm.max_map_count`` and this process's mappings, from /proc."""
    try:
        with open("/proc/sys/vm/max_map_count", encoding="ascii") as file:
            max_map_count = int(file.read())
        with open("/proc/self/maps", "rb") as maps:
            in_use = sum(1 for _ in maps)
    except (OSError, ValueError):
        # Not Linux, or /proc hidden: nothing to size against.
        return KernelFigures(max_map_count=1 << 62, maps_in_use=0)
    return KernelFigures(max_map_count=max_map_count, maps_in_use=in_use)


def plan(
    slot: int,
    max_processes: int,
    layout: MemoryLayout,
    heap_bytes: int,
    kernel: KernelFigures,
) -> CapacityPlan:
    """Size worker ``slot``'s pool: ``max_processes`` or what the kernel can back.

    Args:
        slot: The worker, for the warning.
        max_processes: ``[node].max-processes``.
        layout: The manifest's layout (``manifest_layout``).
        heap_bytes: The largest heap of the manifest's profiles.
        kernel: The map limit and the mappings already in use.
    """
    per_slot = slot_bytes(layout, heap_bytes)
    by_address = ADDRESS_BUDGET_BYTES // per_slot
    spare_maps = kernel.max_map_count - kernel.maps_in_use - MAP_HEADROOM
    by_maps = max(0, spare_maps) // (MAPS_PER_SLOT + MAPS_PER_PROCESS)
    slots = max(1, min(max_processes, by_address, by_maps))
    if slots == max_processes:
        return CapacityPlan(slots, layout)
    head = f"worker {slot}: [node].max-processes = {max_processes} "
    if by_maps < by_address:
        needed = (
            kernel.maps_in_use + MAP_HEADROOM + max_processes * (MAPS_PER_SLOT + MAPS_PER_PROCESS)
        )
        suggested = max(SUGGESTED_MAX_MAP_COUNT, 1 << (needed - 1).bit_length())
        warning = (
            f"{head}needs about {needed:,} memory maps but vm.max_map_count is "
            f"{kernel.max_map_count:,}: this worker holds {slots:,} processes; raise it "
            f"(sysctl -w vm.max_map_count={suggested}, or the sysctl.d drop-in; "
            'docs/operations.md, "Capacity")'
        )
    else:
        warning = (
            f"{head}needs {max_processes * per_slot / _TIB:.0f} TiB of address space "
            f"({per_slot >> 20} MiB a process for the largest max-memory-mb, "
            f"{heap_bytes >> 20}) but a worker reserves at most "
            f"{ADDRESS_BUDGET_BYTES // _TIB} TiB: this worker holds {slots:,} processes; "
            "lower max-memory-mb or max-processes"
        )
    return CapacityPlan(slots, layout, warning)
