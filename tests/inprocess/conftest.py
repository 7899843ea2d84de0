"""What the in-process tests share: a real ``WasmHost`` the test process runs as a worker would.

Runs in: any (the test process; no daemon is started).

Between ``tests/unit`` (one module, its outside world faked) and
``tests/integration`` (the real ``rusmd`` as a subprocess), the tests in
this folder drive real parts directly: a ``WasmHost`` with real wasmtime,
the pooling engine, guest threads and the epoch ticker; the store on a
real LMDB file; the compile child under its supervisor. A test here may
import wasmtime and lmdb, which the daemon's main process never does.

``Host`` compiles WAT guests through the real AOT cache and keeps every
record the host logs, so a test reads a process's exit line as an
operator would.
"""

from __future__ import annotations

import time
from pathlib import Path

import wasmtime

from rusmd.channel import ComponentImage
from rusmd.config import Overrides, load_environment, load_manifest
from rusmd.config.model import LogLevel
from rusmd.log import Logger, LogRecord
from rusmd.wasm.cache import CompileCache
from rusmd.wasm.capacity import manifest_layout
from rusmd.wasm.engine import compile_engine
from rusmd.wasm.host import WasmHost

# Pool slots of a test host: a worker's size before the pool followed
# [node].max-processes, so a test's host reserves what it always did.
POOL_SLOTS = 1000
# How long a process may take to exit: a guest thread on a loaded
# two-core machine; only a process that never exits reaches it.
EXIT_TIMEOUT_S = 20.0


class Host:
    """A ``WasmHost`` in this process, plus what it logged and the leases it asked for.

    Args:
        app: The app directory; the manifest is written to its ``rusm.toml``.
        manifest_text: The manifest.
        slot: The worker slot the host plays (the last three digits of its
            pids). Optional; defaults to 7.
        lease_end: The host starts with the pid serials ``[1, lease_end)``.
            Optional; defaults to 1,000,000.
        pool_slots: Instances the pooling allocator holds (None: as the
            manifest's ``max-processes`` says). Optional; defaults to
            ``POOL_SLOTS``.
        max_processes: The host's process limit. Optional; defaults to
            the pool's slots.
    """

    def __init__(
        self,
        app: Path,
        manifest_text: str,
        *,
        slot: int = 7,
        lease_end: int = 1_000_000,
        pool_slots: int | None = POOL_SLOTS,
        max_processes: int | None = None,
    ) -> None:
        (app / "rusm.toml").write_text(manifest_text)
        self.app = app
        self.manifest = load_manifest(str(app / "rusm.toml"), Overrides(), load_environment(app))
        self.records: list[LogRecord] = []
        # When the host asked for another pid lease (monotonic times).
        self.lease_requests: list[float] = []
        layout = manifest_layout(self.manifest)
        self.cache = CompileCache(app / ".rusm" / "cache", layout)
        self.engine = compile_engine(layout)
        self.host = WasmHost(
            self.manifest,
            slot,
            Logger(LogLevel.DEBUG, self.records.append),
            load_environment(app),
            request_lease=lambda: self.lease_requests.append(time.monotonic()),
            pool_slots=pool_slots,
            max_processes=max_processes,
        )
        self.host.add_lease(1, lease_end)

    def load(self, sources: dict[str, str]) -> None:
        """Compile each WAT source into the AOT cache and load them as components."""
        images = []
        for name, wat in sources.items():
            wasm = wasmtime.wat2wasm(wat)
            entry = self.cache.store(
                self.cache.key(wasm), wasmtime.Module(self.engine, wasm).serialize(), name
            )
            images.append(ComponentImage(name=name, cwasm=str(entry.path), digest=entry.digest))
        self.host.load(images)

    def exits(self) -> dict[str, str]:
        """Each exited process's exit line, by ``component#pid``."""
        return {
            r.text.split()[1]: r.text
            for r in list(self.records)
            if r.source == "rusm" and r.text.startswith("exit ")
        }

    def wait_exit(self, pid: int, name: str) -> str:
        """The exit line of ``name#pid``, once it is logged."""
        label = f"{name}#{pid}"
        deadline = time.monotonic() + EXIT_TIMEOUT_S
        while time.monotonic() < deadline:
            line = self.exits().get(label)
            if line is not None:
                return line
            time.sleep(0.01)
        raise AssertionError(f"{label} did not exit; records: {self.records[-5:]}")
