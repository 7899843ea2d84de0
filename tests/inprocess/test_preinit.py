"""Pre-initialisation in the real compile child, with the real Wizer: snapshots, refusals, limits.

Runs in: any (the test process drives ``rusmd.main.compile``, which runs
the compile child, which runs Wizer; the test loads the compiled modules
with wasmtime to see what requests would instantiate).

Wizer comes from ``make tools`` (``tools/node_modules``), as for the
daemon; a test that needs another runs it through ``$RUSM_WIZER``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import psutil
import pytest
import wasmtime

from rusmd.config.model import LogLevel
from rusmd.log import Logger, LogRecord
from rusmd.main.compile import CompileJob, CompileResult, compile_blocking
from rusmd.wasm.engine import compile_engine
from rusmd.wasm.preinit import WizerMissing, find_wizer

# _initialize writes 7 at address 16 and 5 into a global; show answers
# what it finds there, as a request would see it.
REACTOR_WAT = """
(module
  (memory (export "memory") 1)
  (global $g (mut i32) (i32.const 0))
  (func (export "_initialize")
    (i32.store (i32.const 16) (i32.const 7))
    (global.set $g (i32.const 5)))
  (func (export "show") (result i32)
    (i32.add (i32.load (i32.const 16)) (global.get $g))))
"""
# A start-up that asks the host for something: it logs.
LOGGING_START_UP_WAT = """
(module
  (import "rusm" "log" (func $log (param i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "_initialize") (drop (call $log (i32.const 2) (i32.const 0) (i32.const 0))))
  (func (export "show") (result i32) (i32.const 0)))
"""
ENDLESS_START_UP_WAT = """
(module
  (memory (export "memory") 1)
  (func (export "_initialize") (loop br 0))
  (func (export "show") (result i32) (i32.const 0)))
"""
# Grows memory to 400 MiB and touches every page of it.
GREEDY_START_UP_WAT = """
(module
  (memory (export "memory") 1)
  (func (export "_initialize") (local $at i32)
    (drop (memory.grow (i32.const 6400)))
    (loop $touch
      (i32.store (local.get $at) (i32.const 1))
      (local.set $at (i32.add (local.get $at) (i32.const 4096)))
      (br_if $touch (i32.lt_u (local.get $at) (i32.const 419430400)))))
  (func (export "show") (result i32) (i32.const 0)))
"""
COMMAND_WAT = '(module (func (export "_start")) (func (export "_initialize")))'


class Records:
    """A Logger sink that keeps every record."""

    def __init__(self) -> None:
        self.records: list[LogRecord] = []

    def __call__(self, record: LogRecord) -> None:
        self.records.append(record)

    def texts(self, level: str | None = None) -> list[str]:
        return [r.text for r in self.records if level is None or r.level == level]


@pytest.fixture(autouse=True)
def wizer_installed() -> None:
    """These tests need Wizer where the daemon finds it."""
    try:
        find_wizer(os.environ)
    except WizerMissing as exc:
        pytest.fail(f"{exc}: run `make tools`")


@pytest.fixture
def app_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("app")
    (directory / "wasm").mkdir()
    return directory


@pytest.fixture
def records() -> Records:
    return Records()


def job(app_dir: Path, name: str, wat: str, *, pre_initialize: bool = True) -> CompileJob:
    path = app_dir / "wasm" / f"{name}.wasm"
    path.write_bytes(wasmtime.wat2wasm(wat))
    return CompileJob(name=name, path=str(path), pre_initialize=pre_initialize)


def compile_one(
    app_dir: Path,
    records: Records,
    job: CompileJob,
    *,
    timeout_s: float = 60,
    memory_mb: int = 2048,
) -> CompileResult:
    log = Logger(LogLevel.DEBUG, records)
    results = compile_blocking(
        [job], app_dir / "cache", timeout_s=timeout_s, memory_mb=memory_mb, log=log
    )
    return results[job.name]


def instantiate(result: CompileResult) -> tuple[wasmtime.Store, wasmtime.Instance]:
    """A fresh instance of the compiled module, as a worker would make one (no imports)."""
    engine = compile_engine()
    module = wasmtime.Module.deserialize_file(engine, result.cwasm)
    store = wasmtime.Store(engine)
    store.set_epoch_deadline(1)
    return store, wasmtime.Instance(store, module, [])


def export_names(result: CompileResult) -> set[str]:
    module = wasmtime.Module.deserialize_file(compile_engine(), result.cwasm)
    return {export.name for export in module.exports}


def no_children_left() -> bool:
    return psutil.Process().children(recursive=True) == []


def test_reactor_compiles_to_a_module_whose_fresh_instances_start_initialised(
    app_dir: Path, records: Records
) -> None:
    result = compile_one(app_dir, records, job(app_dir, "api", REACTOR_WAT))

    assert result.ok and result.preinit == "pre-initialized"
    assert export_names(result) == {"memory", "show"}  # so the worker never calls _initialize
    for _ in range(2):
        store, instance = instantiate(result)
        show = instance.exports(store)["show"]
        assert isinstance(show, wasmtime.Func)
        assert show(store) == 12
    assert records.texts("info")[0].endswith(", pre-initialized")
    assert no_children_left()


def test_pre_initialize_false_compiles_the_reactor_as_it_is(
    app_dir: Path, records: Records
) -> None:
    result = compile_one(app_dir, records, job(app_dir, "api", REACTOR_WAT, pre_initialize=False))

    assert result.ok and result.preinit == "off"
    assert "_initialize" in export_names(result)
    store, instance = instantiate(result)
    show = instance.exports(store)["show"]
    assert isinstance(show, wasmtime.Func)
    assert show(store) == 0  # until the worker calls _initialize, as it does per request


def test_cache_key_changes_with_the_setting_and_with_wizers_version(
    app_dir: Path, records: Records, monkeypatch: pytest.MonkeyPatch
) -> None:
    on = compile_one(app_dir, records, job(app_dir, "api", REACTOR_WAT))
    off = compile_one(app_dir, records, job(app_dir, "api", REACTOR_WAT, pre_initialize=False))
    on_again = compile_one(app_dir, records, job(app_dir, "api", REACTOR_WAT))
    command = compile_one(app_dir, records, job(app_dir, "cmd", COMMAND_WAT))
    # Another Wizer version: the real one, reporting a version of its own.
    real = find_wizer(os.environ).path
    other = app_dir / "other-wizer"
    other.write_text(
        f'#!/bin/sh\n[ "$1" = --version ] && {{ echo "wizer 10.0.1"; exit 0; }}\nexec {real} "$@"\n'
    )
    other.chmod(0o755)
    monkeypatch.setenv("RUSM_WIZER", str(other))
    upgraded = compile_one(app_dir, records, job(app_dir, "api", REACTOR_WAT))
    command_again = compile_one(app_dir, records, job(app_dir, "cmd", COMMAND_WAT))

    assert not on.cached and not off.cached and on.cwasm != off.cwasm
    assert on_again.cached and on_again.cwasm == on.cwasm
    assert not upgraded.cached and upgraded.cwasm not in (on.cwasm, off.cwasm)
    assert upgraded.preinit == "pre-initialized"
    # A module without a start-up keeps its key whatever Wizer is.
    assert command_again.cached and command_again.cwasm == command.cwasm
    assert command.preinit == ""


def test_start_up_that_calls_an_import_is_compiled_as_it_is_and_says_why(
    app_dir: Path, records: Records
) -> None:
    first = compile_one(app_dir, records, job(app_dir, "api", LOGGING_START_UP_WAT))
    again = compile_one(app_dir, records, job(app_dir, "api", LOGGING_START_UP_WAT))

    reason = "its _initialize calls the import rusm.log, which a snapshot cannot hold"
    assert first.ok and first.preinit == f"skipped: {reason}"
    assert "_initialize" in export_names(first)
    assert again.cached and again.preinit == first.preinit
    assert records.texts("info").count(f"compile api: not pre-initialized: {reason}") == 2
    assert no_children_left()


def test_start_up_that_never_ends_is_killed_compiled_as_it_is_and_tried_again_next_time(
    app_dir: Path, records: Records
) -> None:
    endless = job(app_dir, "api", ENDLESS_START_UP_WAT)

    first = compile_one(app_dir, records, endless, timeout_s=2)
    assert no_children_left()
    second = compile_one(app_dir, records, endless, timeout_s=2)

    reason = "skipped: its _initialize ran longer than 1 s (half of compile-timeout-s); killed"
    assert first.ok and first.preinit == reason
    assert "_initialize" in export_names(first)
    # A kill depends on the machine's load, so the outcome is not cached.
    assert second.ok and second.preinit == reason
    assert no_children_left()


def test_start_up_past_the_compile_memory_limit_is_killed_and_compiled_as_it_is(
    app_dir: Path, records: Records
) -> None:
    result = compile_one(app_dir, records, job(app_dir, "api", GREEDY_START_UP_WAT), memory_mb=200)

    assert result.ok
    # Killed at a check, or done between two and refused by its size.
    assert re.fullmatch(
        r"skipped: (Wizer used more than 200 MiB of memory; killed"
        r"|the snapshot is \d+ bytes, over the compile memory limit)",
        result.preinit,
    ), result.preinit
    assert "_initialize" in export_names(result)
    assert no_children_left()


def test_missing_wizer_is_warned_of_once_and_reactors_still_compile(
    app_dir: Path, records: Records, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RUSM_WIZER", str(app_dir / "no-wizer"))
    jobs = [job(app_dir, "api", REACTOR_WAT), job(app_dir, "web", LOGGING_START_UP_WAT)]
    warnings: list[str] = []

    results = compile_blocking(
        jobs,
        app_dir / "cache",
        timeout_s=60,
        memory_mb=2048,
        log=Logger(LogLevel.DEBUG, records),
        warnings=warnings,
    )

    assert [(r.ok, r.preinit) for r in results.values()] == [(True, "skipped: Wizer not found")] * 2
    expected = (
        f"Wizer not found: RUSM_WIZER={app_dir}/no-wizer is not an executable file; "
        "install it with `make tools` (npm ci in tools/: @bytecodealliance/wizer 10.0.0) "
        "or set RUSM_WIZER to a wizer executable"
    )
    assert warnings == [expected]
    assert records.texts("warn") == [f"compile: {expected}"]
