"""The main process never imports what only workers may run."""

from __future__ import annotations

import subprocess
import sys

# What a forking parent must not load: wasmtime (guest code, rayon/tokio
# threads), lmdb (an env must never cross fork), and the worker's I/O stack.
FORBIDDEN = ("wasmtime", "lmdb", "uvloop", "httptools", "websockets")

MAIN_PROCESS_MODULES = (
    "rusmd.cli",
    "rusmd.main.loop",
    "rusmd.main.pool",
    "rusmd.main.reaper",
    "rusmd.main.compile",
    "rusmd.main.listeners",
    "rusmd.main.systemd",
    "rusmd.control.server",
    "rusmd.main.commands",
    "rusmd.config",
    "rusmd.supervision",
)


def imported_after(modules: tuple[str, ...]) -> set[str]:
    probe = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "print('\\n'.join(sorted(sys.modules)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    return {line.split(".")[0] for line in result.stdout.split()}


def test_main_process_modules_import_nothing_forbidden() -> None:
    loaded = imported_after(MAIN_PROCESS_MODULES)
    assert not loaded & set(FORBIDDEN), sorted(loaded & set(FORBIDDEN))


def test_worker_runtime_does_import_uvloop_so_the_probe_can_fail() -> None:
    assert "uvloop" in imported_after(("rusmd.worker.runtime",))
