"""Build wasmtime engines from ``settings.ENGINE_SETTINGS``.

Runs in: worker, and the compile child (never the main process).

Workers build pooling-allocator engines: instance, memory and table
slots are reserved up front, so instantiating is a slot handout rather
than an mmap (about 2x faster; see docs/benchmarks.md). Two per worker:
one for processes, whose freed slots give their pages back to the
kernel, and a small one for the inline handlers' instances, whose freed
slots stay resident for the next request (``inline_keep_resident``). If
the address space cannot be reserved (a tight ``ulimit -v``, an exotic
kernel) the worker falls back to the on-demand allocator and says so in
a warning. The compile child uses the on-demand allocator: compiled code
does not depend on the allocator, only on the ``MemoryLayout``, which the
compile child and both of a worker's engines share (``capacity``), so its
``.cwasm`` loads in either.
"""

from __future__ import annotations

import ctypes
import fcntl
import mmap
import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass

import wasmtime
from wasmtime import _ffi as ffi

from rusmd.wasm.capacity import slot_bytes
from rusmd.wasm.settings import ENGINE_SETTINGS, FULL_LAYOUT, MemoryLayout

# The inline pool's freed slots are reset in place, not handed back to
# the kernel: a released page costs a page fault on the next instance's
# first touch, a kept one a copy or a memset. How many bytes a slot keeps
# (its "keep resident") is sized by ``inline_keep_resident``:
#
# - On Linux 6.7 and later wasmtime asks the kernel which pages the
#   instance wrote (the ``PAGEMAP_SCAN`` ioctl) and resets only those, up
#   to the keep-resident bytes; the rest of the slot is untouched. What a
#   request touches is then measured at every reset, and a generous cap
#   costs nothing for a handler that writes less: the cap only bounds the
#   memory each slot may pin (``inline.INLINE_STORE_INSTANCES`` slots).
# - Without it, wasmtime zeroes the first keep-resident bytes of every
#   freed slot, written or not, so the pool keeps what its handlers start
#   with: the largest inline module's initial memory (for a pre-initialised
#   C handler, its stack, data and the heap its start-up made), measured
#   when the components load (``WasmHost.load``).
#
# 64 KiB (one wasm page) at least; 1 MiB at most: past it, zeroing a
# slot a handler barely touched costs more than the page faults it saves
# (a 4 KiB page fault is about 0.5 µs, zeroing 1 MiB about 20 µs).
INLINE_KEEP_RESIDENT_MIN_BYTES = 64 << 10
INLINE_KEEP_RESIDENT_MAX_BYTES = 1 << 20
_HOST_PAGE = mmap.PAGESIZE
# The same for the processes' pool: none. A slot stays resident until it
# is reused, and wasmtime reuses the slots a module used last, so every
# slot a burst of processes touched (1,000 WebSockets at once, say) would
# keep its pages for the worker's life: 128 KiB each, 125 MiB in all
# (docs/benchmarks.md, "Soak"). A process lives long enough that the page
# faults of its first touches do not matter.
PROCESS_KEEP_RESIDENT_BYTES = 0
# Per-table element cap of every store (a process's, the inline path's);
# a module declaring more fails to instantiate.
MAX_TABLE_ELEMENTS = 100_000
# The probe asks for this much more than the slots add up to: wasmtime's
# pools add guard regions before and after each slab and align them. Kept
# small: the largest hole a worker has is about 85 TiB (``capacity``).
_PROBE_MARGIN = 1.1
# Linux values; the stdlib mmap module does not export these two.
_PROT_NONE = 0
_MAP_NORESERVE = 0x4000
_OPT_LEVELS = {"none": "none", "speed": "speed", "speed_and_size": "speed_and_size"}


@dataclass(frozen=True)
class EngineInfo:
    """An engine and how it allocates.

    Attributes:
        engine: The wasmtime engine.
        pooling: True when the pooling allocator is in use.
        pool_slots: Instance slots reserved (0 without pooling).
        fallback_reason: Why pooling was not used, when it was wanted.
    """

    engine: wasmtime.Engine
    pooling: bool
    pool_slots: int
    fallback_reason: str = ""


def make_config(layout: MemoryLayout = FULL_LAYOUT) -> wasmtime.Config:
    """A Config with exactly ``ENGINE_SETTINGS`` and ``layout``."""
    config = wasmtime.Config()
    ffi.wasmtime_config_memory_reservation_set(config.ptr(), layout.reservation_bytes)
    ffi.wasmtime_config_memory_guard_size_set(config.ptr(), layout.guard_bytes)
    async_stack = ENGINE_SETTINGS["async_stack_size"]
    assert isinstance(async_stack, int)
    ffi.wasmtime_config_async_stack_size_set(config.ptr(), async_stack)
    config.epoch_interruption = bool(ENGINE_SETTINGS["epoch_interruption"])
    config.parallel_compilation = bool(ENGINE_SETTINGS["parallel_compilation"])
    stack = ENGINE_SETTINGS["max_wasm_stack"]
    assert isinstance(stack, int)
    ffi.wasmtime_config_max_wasm_stack_set(config.ptr(), stack)
    config.wasm_multi_memory = bool(ENGINE_SETTINGS["wasm_multi_memory"])
    config.wasm_threads = bool(ENGINE_SETTINGS["wasm_threads"])
    config.wasm_memory64 = bool(ENGINE_SETTINGS["wasm_memory64"])
    config.cranelift_opt_level = _OPT_LEVELS[str(ENGINE_SETTINGS["cranelift_opt_level"])]
    return config


def compile_engine(layout: MemoryLayout = FULL_LAYOUT) -> wasmtime.Engine:
    """The compile child's engine (on-demand allocator)."""
    return wasmtime.Engine(make_config(layout))


def worker_engine(
    max_memory_bytes: int,
    slots: int,
    keep_resident_bytes: int = 0,
    layout: MemoryLayout = FULL_LAYOUT,
) -> EngineInfo:
    """A pooling engine sized for ``slots`` instances of up to ``max_memory_bytes``.

    A freed slot keeps ``keep_resident_bytes`` of its memory and table
    resident (zeroed in place) and hands the rest back to the kernel.
    ``slots`` must already fit ``vm.max_map_count`` (``capacity.plan``):
    wasmtime aborts the process when making the pool runs out of maps.

    Falls back to the on-demand allocator when the pool cannot be reserved:
    wasmtime's C API aborts the process if its pool mapping fails, so the
    address space is probed first with a PROT_NONE reservation of the
    same size.
    """
    needed = int(slots * slot_bytes(layout, max_memory_bytes) * _PROBE_MARGIN)
    problem = _probe_reservation(needed)
    if problem:
        return EngineInfo(
            wasmtime.Engine(make_config(layout)),
            pooling=False,
            pool_slots=0,
            fallback_reason=f"cannot reserve {needed >> 30} GiB of address space ({problem})",
        )
    config = make_config(layout)
    pool = ffi.wasmtime_pooling_allocation_config_new()
    try:
        ffi.wasmtime_pooling_allocation_config_total_core_instances_set(pool, slots)
        ffi.wasmtime_pooling_allocation_config_total_memories_set(pool, slots)
        ffi.wasmtime_pooling_allocation_config_total_tables_set(pool, slots)
        ffi.wasmtime_pooling_allocation_config_total_stacks_set(pool, slots)
        ffi.wasmtime_pooling_allocation_config_max_memories_per_module_set(pool, 1)
        ffi.wasmtime_pooling_allocation_config_max_tables_per_module_set(pool, 1)
        ffi.wasmtime_pooling_allocation_config_max_memory_size_set(pool, max_memory_bytes)
        ffi.wasmtime_pooling_allocation_config_linear_memory_keep_resident_set(
            pool, keep_resident_bytes
        )
        ffi.wasmtime_pooling_allocation_config_table_keep_resident_set(pool, keep_resident_bytes)
        # No async_stack_keep_resident: wasmtime applies it only with
        # async_stack_zeroing, which the C API does not expose, so a freed
        # fiber stack keeps the pages its process touched (8 KiB for one
        # parked in recv) until a new fiber takes the slot.
        ffi.wasmtime_pooling_allocation_strategy_set(config.ptr(), pool)
    finally:
        ffi.wasmtime_pooling_allocation_config_delete(pool)
    return EngineInfo(wasmtime.Engine(config), pooling=True, pool_slots=slots)


def inline_keep_resident(initial_memory_bytes: Iterable[int], *, scan: bool) -> int:
    """Bytes each freed slot of the inline pool keeps resident (see above).

    Args:
        initial_memory_bytes: The inline modules' initial memory sizes.
        scan: The kernel reports which pages an instance wrote
            (``dirty_page_scan``): only those are reset.
    """
    if scan:
        return INLINE_KEEP_RESIDENT_MAX_BYTES
    largest = max(initial_memory_bytes, default=INLINE_KEEP_RESIDENT_MIN_BYTES)
    pages = -(-largest // _HOST_PAGE)
    kept = max(pages * _HOST_PAGE, INLINE_KEEP_RESIDENT_MIN_BYTES)
    return min(kept, INLINE_KEEP_RESIDENT_MAX_BYTES)


# ``PAGEMAP_SCAN`` (Linux 6.7): ``_IOWR('f', 16, struct pm_scan_arg)``, whose
# twelve u64 fields make 96 bytes. Probed as wasmtime probes it: one scan
# of an empty range, every category, one page at most.
_PM_SCAN_ARG = struct.Struct("<12Q")
_PAGEMAP_SCAN = (3 << 30) | (_PM_SCAN_ARG.size << 16) | (ord("f") << 8) | 16
_ALL_CATEGORIES = 0xFF


def dirty_page_scan() -> bool:
    """Whether the kernel tells which pages were written (wasmtime then resets only those)."""
    # size, flags, start, end, walk_end, vec, vec_len, max_pages, then the masks.
    fields = (_PM_SCAN_ARG.size, 0, 0, 0, 0, 0, 0, 1, 0, _ALL_CATEGORIES, 0, 0)
    arg = bytearray(_PM_SCAN_ARG.pack(*fields))
    try:
        fd = os.open("/proc/self/pagemap", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.ioctl(fd, _PAGEMAP_SCAN, arg)
    except OSError:
        return False
    finally:
        os.close(fd)
    return True


def _probe_reservation(size: int) -> str:
    """Reserve and release ``size`` bytes of address space; '' or why it failed."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_long,
    ]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _MAP_NORESERVE
    address = libc.mmap(None, size, _PROT_NONE, flags, -1, 0)
    if address in (None, ctypes.c_void_p(-1).value):
        return os.strerror(ctypes.get_errno())
    libc.munmap(address, size)
    return ""
