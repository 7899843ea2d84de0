"""Engine settings and version facts shared by the compile child and workers.

Runs in: any (pure data; the main process reads it without loading wasmtime).

The AOT cache key is built from the module bytes plus everything that
changes the machine code wasmtime emits or the host it links against:
the wasmtime version, ``ENGINE_SETTINGS`` and ``abi.ABI_VERSION``. The
compile child and the workers build their engines from the same table,
so a cached ``.cwasm`` always matches the engine that loads it.
"""

from __future__ import annotations

import hashlib
import json
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
}

# Ticks of the per-worker epoch clock; CPU budgets are counted in these.
EPOCH_TICK_MS = 10


def wasmtime_version() -> str:
    """The installed wasmtime-py version, read without importing it."""
    return metadata.version("wasmtime")


def engine_fingerprint() -> str:
    """A short digest of the engine settings, the wasmtime version and the ABI version."""
    document = json.dumps(
        {"settings": ENGINE_SETTINGS, "wasmtime": wasmtime_version(), "abi": ABI_VERSION},
        sort_keys=True,
    )
    return hashlib.sha256(document.encode()).hexdigest()[:16]
