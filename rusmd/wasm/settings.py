"""Engine settings and version facts shared by the compile child and workers.

Runs in: any (pure data; the main process reads it without loading wasmtime).

The AOT cache key is built from the module bytes plus everything that
changes the machine code wasmtime emits or the host it links against:
the wasmtime version, ``ENGINE_SETTINGS``, the ``MemoryLayout`` and
``abi.ABI_VERSION``. The compile child and the workers build their
engines from the same table and the same layout (derived from the
manifest by ``capacity.manifest_layout``), so a cached ``.cwasm`` always
matches the engine that loads it; wasmtime itself refuses a module
compiled for another memory reservation or guard.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from importlib import metadata

from rusmd.wasm.abi import ABI_VERSION

# Every engine rusm builds uses exactly these settings. Changing one
# changes ENGINE_FINGERPRINT, so stale cache entries are never loaded.
ENGINE_SETTINGS: dict[str, object] = {
    # Runaway guests are stopped by the per-worker epoch ticker.
    "epoch_interruption": True,
    # A rayon pool does not survive fork: compile on the calling thread.
    "parallel_compilation": False,
    # Wasm frames may use this much stack; guest threads get 16x more.
    "max_wasm_stack": 512 << 10,
    # One memory per module and no shared memories: the store limiter's
    # per-memory cap is then the process's whole heap.
    "wasm_multi_memory": False,
    "wasm_threads": False,
    "wasm_memory64": False,
    "cranelift_opt_level": "speed",
    # A fiber's stack: wasm frames (``max_wasm_stack``, which it must exceed)
    # plus the host callbacks, which run Python on it. wasmtime's default;
    # only the pages a process touches are resident.
    "async_stack_size": 2 << 20,
}


@dataclass(frozen=True)
class MemoryLayout:
    """The address space each linear memory reserves; compiled into the code.

    wasmtime leaves a memory access unchecked only when reservation plus
    guard covers every address a wasm32 access can form (4 GiB plus its
    offset); with less, each access is checked against the reservation.
    A module compiled for one layout does not load into an engine of
    another.

    Attributes:
        reservation_bytes: Address space reserved per linear memory; no
            memory grows past it.
        guard_bytes: Inaccessible bytes after each reservation.
    """

    reservation_bytes: int
    guard_bytes: int


# wasmtime's own x86-64 defaults: every access unchecked.
FULL_LAYOUT = MemoryLayout(reservation_bytes=4 << 30, guard_bytes=32 << 20)

# Ticks of the per-worker epoch clock; CPU budgets are counted in these.
EPOCH_TICK_MS = 10


def wasmtime_version() -> str:
    """The installed wasmtime-py version, read without importing it."""
    return metadata.version("wasmtime")


def engine_fingerprint(layout: MemoryLayout = FULL_LAYOUT) -> str:
    """A short digest of the engine settings and layout, the wasmtime and ABI versions."""
    document = json.dumps(
        {
            "settings": ENGINE_SETTINGS,
            "memory": [layout.reservation_bytes, layout.guard_bytes],
            "wasmtime": wasmtime_version(),
            "abi": ABI_VERSION,
        },
        sort_keys=True,
    )
    return hashlib.sha256(document.encode()).hexdigest()[:16]
