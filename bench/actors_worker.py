"""An in-process worker for the actors benchmark: a real ``WasmHost`` and its actor table.

Runs in: a benchmark process of its own (``python -m bench actors``) and
the idle census's child processes (``python -m bench.actors_idle``).

``Worker`` plays one worker: a real ``WasmHost`` (its actor table,
processes, epoch ticker and modules from the real AOT cache) on the loop
the host starts on a thread of its own (``rusm-loop``), where its fibers
and its actor table's jobs run, as on a worker's event loop. Its log records are kept, so the
benchmark waits for a guest's ``ready`` or result line.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import wasmtime

from rusmd.channel import ComponentImage
from rusmd.config import Overrides, load_environment, load_manifest
from rusmd.config.model import LogLevel
from rusmd.log import Logger, LogRecord
from rusmd.node.scenario_app import CRASHER_WAT, QUICK_WAT, SPAWNER_WAT, SUP_WAT
from rusmd.wasm.cache import CompileCache
from rusmd.wasm.capacity import manifest_layout
from rusmd.wasm.engine import compile_engine
from rusmd.wasm.host import WasmHost
from tests.guests.build import build_c_guest

# Bounds, so the run always ends by itself.
LINE_TIMEOUT_S = 60.0
SHUTDOWN_TIMEOUT_S = 60.0

GUEST_SOURCE = Path(__file__).resolve().parent / "guests" / "actors.c"
EMPTY = QUICK_WAT
IDLE_GUEST = """(module
  (import "rusm" "recv" (func $recv (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "run")
    (drop (call $recv (i32.const 0) (i32.const 64) (i32.const 64) (i32.const -1)))))"""
MANIFEST = """
[capabilities.bench]
max-memory-mb = 16
max-cpu-ms = 60000
[capabilities.boss]
allow-spawn = true
max-memory-mb = 16
max-cpu-ms = 60000
[components.bench]
capability = "bench"
[components.sc_crasher]
capability = "bench"
[components.empty]
capability = "bench"
[components.idle]
capability = "bench"
[components.sc_sup]
capability = "boss"
[components.sc_quick]
capability = "bench"
[components.sc_spawner]
capability = "boss"
"""


class Worker:
    """A real ``WasmHost`` in this process (fibers and actors on the loop it starts), its log."""

    def __init__(
        self,
        app: Path,
        wasm: dict[str, bytes],
        *,
        pool_slots: int | None = None,
        max_processes: int | None = None,
        level: LogLevel = LogLevel.INFO,
    ) -> None:
        # The manifest's process limit chooses the memory layout (``capacity``).
        node = "" if max_processes is None else f"[node]\nmax-processes = {max_processes}\n"
        (app / "rusm.toml").write_text(node + MANIFEST)
        environment = load_environment(app)
        manifest = load_manifest(str(app / "rusm.toml"), Overrides(), environment)
        self.records: list[LogRecord] = []
        self.changed = threading.Condition()
        # Set by a crasher's on_exit (the bare restart loop waits for it).
        self.exited = threading.Event()
        extra: dict[str, Any] = {} if pool_slots is None else {"pool_slots": pool_slots}
        self.host = WasmHost(
            manifest,
            0,
            Logger(level, self._sink),
            environment,
            request_lease=lambda: None,
            max_processes=max_processes,
            **extra,
        )
        self.host.add_lease(1, 100_000_000)
        layout = manifest_layout(manifest)
        cache = CompileCache(app / "cache", layout)
        engine = compile_engine(layout)
        images = []
        for name, module in wasm.items():
            compiled = bytes(wasmtime.Module(engine, module).serialize())
            entry = cache.store(cache.key(module), compiled, name)
            images.append(ComponentImage(name=name, cwasm=str(entry.path), digest=entry.digest))
        self.host.load(images)

    def _sink(self, record: LogRecord) -> None:
        if record.text.startswith("exit sc_crasher#"):
            return  # up to its component's burst of exit lines; nothing waits for them
        with self.changed:
            self.records.append(record)
            self.changed.notify_all()

    def line(self, source: str, prefix: str, after: int = 0) -> str:
        """Wait for a record of ``source`` starting with ``prefix`` (from index ``after``)."""
        deadline = time.monotonic() + LINE_TIMEOUT_S
        with self.changed:
            while True:
                for record in self.records[after:]:
                    if record.source == source and record.text.startswith(prefix):
                        return record.text
                    if record.source == source and record.text.startswith("failed"):
                        raise RuntimeError(f"{source}: {record.text}")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"{source} did not log {prefix!r}")
                self.changed.wait(remaining)

    def spawn_ready(self, name: str) -> int:
        pid = self.host.spawn(name)
        self.line(f"{name}#{pid}", f"ready {pid}")
        return pid

    def measure(self, driver: int, op: str, peer: int, count: int) -> dict[str, int]:
        """The fields of the line ``driver`` logs after running ``op`` ``count`` times."""
        after = len(self.records)
        self.host.actors.send(0, driver, f"{op} {peer} {count}".encode())
        return fields(self.line(f"bench#{driver}", f"{op} n=", after))

    def wait_empty(self, timeout_s: float = LINE_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while self.host.processes and time.monotonic() < deadline:
            time.sleep(0.001)

    def close(self) -> None:
        self.host.shutdown(SHUTDOWN_TIMEOUT_S)


def fields(line: str) -> dict[str, int]:
    """``op n=N ns=T ...`` as ``{"n": N, "ns": T, ...}``."""
    return {key: int(value) for key, value in (w.split("=", 1) for w in line.split()[1:])}


def ns_per(line_fields: dict[str, int]) -> float:
    """ns per operation of a guest's result line."""
    return line_fields["ns"] / line_fields["n"]


def wat(text: str) -> bytes:
    return bytes(wasmtime.wat2wasm(text))


def modules(build: Path) -> dict[str, bytes]:
    guest = build_c_guest(GUEST_SOURCE, build / "actors.wasm")
    return {
        "bench": guest.read_bytes(),
        "empty": wat(EMPTY),
        # The restart trial's supervisor and child: the fault-recovery
        # scenario's own (the same spec, intensity and crashing child).
        "sc_crasher": wat(CRASHER_WAT),
        "idle": wat(IDLE_GUEST),
        "sc_sup": wat(SUP_WAT),
        # The spawn trial's guest, as the spawn-storm scenario's: it keeps
        # SPAWN_WINDOW children of sc_quick alive, another as each exits.
        "sc_quick": wat(QUICK_WAT),
        "sc_spawner": wat(SPAWNER_WAT),
    }
