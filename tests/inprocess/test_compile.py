"""The real compile child under its supervisor: cache hits, rebuilds, bad modules, limits.

Runs in: any (the test process drives ``rusmd.main.compile``, which runs
``python -m rusmd.wasm.compiler`` as a real child; the test itself may
import wasmtime to build modules, the daemon's main process may not).
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import wasmtime

from rusmd.config import load_manifest
from rusmd.config.model import LogLevel
from rusmd.log import Logger, LogRecord
from rusmd.main.compile import CompileJob, CompileRun, compile_blocking, jobs_for
from rusmd.wasm.cache import verify
from tests.guests.pathological import pathological_module

HELLO_WAT = '(module (func (export "run") (result i32) i32.const 42))'
OTHER_WAT = '(module (func (export "run") (result i32) i32.const 7))'
SELECT_TIMEOUT_S = 0.05


class Records:
    """A Logger sink that keeps every record."""

    def __init__(self) -> None:
        self.records: list[LogRecord] = []

    def __call__(self, record: LogRecord) -> None:
        self.records.append(record)

    def texts(self, level: str | None = None) -> list[str]:
        return [r.text for r in self.records if level is None or r.level == level]


@pytest.fixture
def app_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("app")
    (directory / "wasm").mkdir()
    return directory


@pytest.fixture
def records() -> Records:
    return Records()


def write_wasm(app_dir: Path, name: str, data: bytes) -> CompileJob:
    path = app_dir / "wasm" / f"{name}.wasm"
    path.write_bytes(data)
    return CompileJob(name=name, path=str(path))


def no_children_left() -> bool:
    return psutil.Process().children(recursive=True) == []


def test_first_run_compiles_and_second_run_is_a_cache_hit(app_dir: Path, records: Records) -> None:
    job = write_wasm(app_dir, "api", wasmtime.wat2wasm(HELLO_WAT))

    first = compile_blocking(
        [job], app_dir / "cache", timeout_s=60, memory_mb=2048, log=Logger(LogLevel.DEBUG, records)
    )["api"]
    second = compile_blocking(
        [job], app_dir / "cache", timeout_s=60, memory_mb=2048, log=Logger(LogLevel.DEBUG, records)
    )["api"]

    assert first.ok and not first.cached
    assert second.ok and second.cached
    assert (second.cwasm, second.digest) == (first.cwasm, first.digest)
    assert verify(second.cwasm, second.digest)
    first_line, second_line = records.texts()
    assert first_line.startswith("compile api: compiled in ")
    assert second_line == "compile api: cache hit"
    assert no_children_left()


def test_cached_module_loads_in_a_wasmtime_engine_built_from_the_same_settings(
    app_dir: Path, records: Records
) -> None:
    from rusmd.wasm.engine import compile_engine

    job = write_wasm(app_dir, "api", wasmtime.wat2wasm(HELLO_WAT))
    result = compile_blocking(
        [job], app_dir / "cache", timeout_s=60, memory_mb=2048, log=Logger(LogLevel.DEBUG, records)
    )["api"]

    engine = compile_engine()
    module = wasmtime.Module.deserialize_file(engine, result.cwasm)
    store = wasmtime.Store(engine)
    store.set_epoch_deadline(1)
    run = wasmtime.Instance(store, module, []).exports(store)["run"]
    assert isinstance(run, wasmtime.Func)
    assert run(store) == 42


def test_a_compact_layout_reaches_the_compile_child_and_its_module_loads_only_there(
    app_dir: Path, records: Records
) -> None:
    from rusmd.wasm.capacity import layout_for
    from rusmd.wasm.engine import compile_engine

    compact = layout_for(100_000, 64 << 20)
    job = write_wasm(app_dir, "api", wasmtime.wat2wasm(HELLO_WAT))
    log = Logger(LogLevel.DEBUG, records)
    result = compile_blocking(
        [job], app_dir / "cache", timeout_s=60, memory_mb=2048, log=log, layout=compact
    )["api"]

    engine = compile_engine(compact)
    store = wasmtime.Store(engine)
    store.set_epoch_deadline(1)
    module = wasmtime.Module.deserialize_file(engine, result.cwasm)
    run = wasmtime.Instance(store, module, []).exports(store)["run"]
    assert isinstance(run, wasmtime.Func)
    assert run(store) == 42
    with pytest.raises(wasmtime.WasmtimeError, match="memory reservation"):
        wasmtime.Module.deserialize_file(compile_engine(), result.cwasm)
    full = compile_blocking([job], app_dir / "cache", timeout_s=60, memory_mb=2048, log=log)["api"]
    assert full.cwasm != result.cwasm


def test_truncated_cache_entry_is_rebuilt_with_a_warning(app_dir: Path, records: Records) -> None:
    job = write_wasm(app_dir, "api", wasmtime.wat2wasm(HELLO_WAT))
    cache = app_dir / "cache"
    first = compile_blocking(
        [job], cache, timeout_s=60, memory_mb=2048, log=Logger(LogLevel.DEBUG, records)
    )["api"]
    size = Path(first.cwasm).stat().st_size
    with open(first.cwasm, "r+b") as file:
        file.truncate(size // 2)

    again = compile_blocking(
        [job], cache, timeout_s=60, memory_mb=2048, log=Logger(LogLevel.DEBUG, records)
    )["api"]

    assert again.ok and not again.cached
    assert verify(again.cwasm, again.digest)
    [warning] = records.texts("warn")
    assert warning == (
        f"compile api: cache entry is corrupt (size {size // 2}, expected {size}); rebuilt"
    )
    assert sum("compiled in" in t for t in records.texts("info")) == 2


def test_invalid_wasm_fails_naming_the_file_and_the_next_component_still_compiles(
    app_dir: Path, records: Records
) -> None:
    # A valid header, then a type section that claims more bytes than follow.
    bad = write_wasm(app_dir, "bad", b"\x00asm\x01\x00\x00\x00\x01\x05\x01\x60")
    good = write_wasm(app_dir, "api", wasmtime.wat2wasm(HELLO_WAT))

    results = compile_blocking(
        [bad, good],
        app_dir / "cache",
        timeout_s=60,
        memory_mb=2048,
        log=Logger(LogLevel.DEBUG, records),
    )

    assert not results["bad"].ok
    assert results["bad"].error.startswith(f"component bad: {bad.path}: ")
    assert "failed to parse WebAssembly module" in results["bad"].error
    assert "\n" not in results["bad"].error
    assert results["api"].ok
    assert f"compile bad: {bad.path}: " in records.texts("error")[0]


def test_module_that_fails_validation_reports_wasmtimes_reason(
    app_dir: Path, records: Records
) -> None:
    wrong = write_wasm(
        app_dir, "wrong", wasmtime.wat2wasm("(module (func (result i32) i64.const 1))")
    )

    [result] = compile_blocking(
        [wrong],
        app_dir / "cache",
        timeout_s=60,
        memory_mb=2048,
        log=Logger(LogLevel.DEBUG, records),
    ).values()

    assert not result.ok
    assert wrong.path in result.error
    assert "type mismatch" in result.error


def test_missing_artifact_file_fails_with_the_os_reason(app_dir: Path, records: Records) -> None:
    gone = CompileJob(name="gone", path=str(app_dir / "wasm" / "gone.wasm"))

    result = compile_blocking(
        [gone], app_dir / "cache", timeout_s=60, memory_mb=2048, log=Logger(LogLevel.DEBUG, records)
    )["gone"]

    assert result.error == f"component gone: cannot read {gone.path}: No such file or directory"


def test_hundred_megabyte_module_is_killed_at_its_compile_timeout(
    app_dir: Path, records: Records
) -> None:
    big = write_wasm(app_dir, "big", pathological_module(functions=14))
    assert Path(big.path).stat().st_size > 90_000_000

    result = compile_blocking(
        [big], app_dir / "cache", timeout_s=2, memory_mb=4096, log=Logger(LogLevel.DEBUG, records)
    )["big"]

    assert not result.ok
    assert result.error == "component big: compile exceeded 2 s; killed"
    assert no_children_left()


def test_compile_timeout_kills_the_child_and_a_fresh_one_compiles_the_rest(
    app_dir: Path, records: Records
) -> None:
    big = write_wasm(app_dir, "big", pathological_module(functions=3))
    small = write_wasm(app_dir, "api", wasmtime.wat2wasm(HELLO_WAT))

    results = compile_blocking(
        [big, small],
        app_dir / "cache",
        timeout_s=1,
        memory_mb=4096,
        log=Logger(LogLevel.DEBUG, records),
    )

    assert results["big"].error == "component big: compile exceeded 1 s; killed"
    assert results["api"].ok
    assert "compile big: compile exceeded 1 s; killed" in records.texts("error")
    assert not list((app_dir / "cache").glob("*.tmp"))
    assert no_children_left()


def test_compile_memory_limit_kills_the_child(app_dir: Path, records: Records) -> None:
    big = write_wasm(app_dir, "big", pathological_module(functions=3))

    result = compile_blocking(
        [big], app_dir / "cache", timeout_s=60, memory_mb=160, log=Logger(LogLevel.DEBUG, records)
    )["big"]

    assert result.error == "component big: compile exceeded 160 MiB of memory; killed"
    assert no_children_left()


def drive(run: CompileRun) -> tuple[int, int]:
    """Run ``run`` to the end on a selector; (loop turns, turns while compiling)."""
    turns = compiling_turns = 0
    with selectors.DefaultSelector() as selector:

        def follow(old_fd: int | None, new_fd: int | None) -> None:
            if old_fd is not None:
                selector.unregister(old_fd)
            if new_fd is not None:
                selector.register(new_fd, selectors.EVENT_READ)

        run.on_fd_change = follow
        run.start()
        while not run.done:
            for _key, _events in selector.select(SELECT_TIMEOUT_S):
                run.on_readable()
            run.tick()
            turns += 1
            compiling_turns += run.current_compiling
    return turns, compiling_turns


def test_selector_loop_keeps_turning_while_a_big_module_compiles(
    app_dir: Path, records: Records
) -> None:
    big = write_wasm(app_dir, "big", pathological_module(functions=3))
    run = CompileRun(
        [big], app_dir / "cache", timeout_s=1.5, memory_mb=4096, log=Logger(LogLevel.DEBUG, records)
    )

    _turns, compiling_turns = drive(run)

    # Each turn waits at most 0.05 s; a blocking on_readable or tick would
    # leave one or two turns for the whole compile.
    assert compiling_turns >= 10, compiling_turns
    assert run.results["big"].error == "component big: compile exceeded 1.5 s; killed"


def test_owner_is_told_of_every_pipe_change_and_a_replacement_gets_a_new_fd(
    app_dir: Path, records: Records
) -> None:
    big = write_wasm(app_dir, "big", pathological_module(functions=3))
    small = write_wasm(app_dir, "api", wasmtime.wat2wasm(HELLO_WAT))
    run = CompileRun(
        [big, small],
        app_dir / "cache",
        timeout_s=1,
        memory_mb=4096,
        log=Logger(LogLevel.DEBUG, records),
    )
    changes: list[tuple[int | None, int | None]] = []
    with selectors.DefaultSelector() as selector:

        def follow(old_fd: int | None, new_fd: int | None) -> None:
            changes.append((old_fd, new_fd))
            if old_fd is not None:
                selector.unregister(old_fd)
            if new_fd is not None:
                selector.register(new_fd, selectors.EVENT_READ)

        run.on_fd_change = follow
        run.start()
        while not run.done:
            for _key, _events in selector.select(SELECT_TIMEOUT_S):
                run.on_readable()
            run.tick()

    [(_, first), (closed_first, _), (_, second), (closed_second, _)] = changes
    assert (closed_first, closed_second) == (first, second)
    assert first != second
    assert run.results["api"].ok
    assert run.fileno() is None


def test_child_killed_from_outside_fails_that_module_and_the_rest_still_compile(
    app_dir: Path, records: Records
) -> None:
    big = write_wasm(app_dir, "big", pathological_module(functions=3))
    small = write_wasm(app_dir, "api", wasmtime.wat2wasm(HELLO_WAT))
    run = CompileRun(
        [big, small],
        app_dir / "cache",
        timeout_s=60,
        memory_mb=4096,
        log=Logger(LogLevel.DEBUG, records),
    )
    killed: list[int] = []
    with selectors.DefaultSelector() as selector:
        run.on_fd_change = lambda old, new: (
            selector.unregister(old) if old is not None else None,
            selector.register(new, selectors.EVENT_READ) if new is not None else None,
        )
        run.start()
        while not run.done:
            for _key, _events in selector.select(SELECT_TIMEOUT_S):
                run.on_readable()
            if run.current_compiling and not killed:
                # What the OOM killer would do to the compile child.
                [child] = psutil.Process().children()
                child.send_signal(signal.SIGKILL)
                killed.append(child.pid)
            run.tick()

    assert run.results["big"].error.startswith(
        "component big: the compile child died while compiling it (killed by SIGKILL)"
    )
    assert run.results["api"].ok
    assert no_children_left()


def test_child_reaped_by_another_waitpid_is_still_accounted_for(
    app_dir: Path, records: Records
) -> None:
    # In the daemon the main process's one reaper hands the compile child's exit to the run.
    big = write_wasm(app_dir, "big", pathological_module(functions=3))
    small = write_wasm(app_dir, "api", wasmtime.wat2wasm(HELLO_WAT))
    run = CompileRun(
        [big, small],
        app_dir / "cache",
        timeout_s=60,
        memory_mb=4096,
        log=Logger(LogLevel.DEBUG, records),
    )
    with selectors.DefaultSelector() as selector:
        run.on_fd_change = lambda old, new: (
            selector.unregister(old) if old is not None else None,
            selector.register(new, selectors.EVENT_READ) if new is not None else None,
        )
        run.start()
        reaped = False
        while not run.done:
            for _key, _events in selector.select(SELECT_TIMEOUT_S):
                run.on_readable()
            if run.current_compiling and not reaped:
                [child] = psutil.Process().children()
                child.send_signal(signal.SIGKILL)
                pid, status = os.waitpid(child.pid, 0)
                run.child_exited(pid, status)
                reaped = True
            run.tick()

    assert "(killed by SIGKILL)" in run.results["big"].error
    assert run.results["api"].ok


def test_cancel_kills_and_reaps_the_child_and_fails_unfinished_jobs(
    app_dir: Path, records: Records
) -> None:
    big = write_wasm(app_dir, "big", pathological_module(functions=3))
    run = CompileRun(
        [big], app_dir / "cache", timeout_s=60, memory_mb=4096, log=Logger(LogLevel.DEBUG, records)
    )
    run.start()
    assert run.fileno() is not None

    run.cancel()

    assert run.done
    assert run.fileno() is None
    assert run.results["big"].error == "component big: compile cancelled"
    assert no_children_left()


def test_run_without_jobs_is_done_at_once_and_starts_nothing(
    app_dir: Path, records: Records
) -> None:
    run = CompileRun(
        [], app_dir / "cache", timeout_s=60, memory_mb=2048, log=Logger(LogLevel.DEBUG, records)
    )

    run.start()

    assert run.done
    assert run.fileno() is None
    assert no_children_left()


def test_progress_lines_announce_a_big_module_and_its_end(app_dir: Path, records: Records) -> None:
    big = write_wasm(app_dir, "big", pathological_module(functions=1))
    lines: list[str] = []

    result = compile_blocking(
        [big],
        app_dir / "cache",
        timeout_s=60,
        memory_mb=4096,
        log=Logger(LogLevel.DEBUG, records),
        progress=lines.append,
    )["big"]

    assert result.ok
    assert lines[0] == "compiling big (6.9 MB)…"
    assert lines[-1] == f"  big: compiled in {result.seconds:.1f} s"


def test_jobs_for_resolves_artifacts_and_fails_components_without_one(
    app_dir: Path,
) -> None:
    write_wasm(app_dir, "api", wasmtime.wat2wasm(HELLO_WAT))
    (app_dir / "wasm" / "web.js").write_text("export default {}")
    manifest_path = app_dir / "rusm.toml"
    manifest_path.write_text("[components.api]\n[components.web]\n[components.gone]\n")

    jobs, failures = jobs_for(load_manifest(manifest_path))

    assert jobs == [CompileJob(name="api", path=str(app_dir / "wasm" / "api.wasm"))]
    assert set(failures) == {"web", "gone"}
    assert "JavaScript components arrive with the JS runtime" in failures["web"].error
    assert failures["gone"].error.startswith("component gone: no artifact")


def run_child(job: bytes) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "rusmd.wasm.compiler"],
        input=job,
        capture_output=True,
        timeout=60,
        check=False,
    )


def test_compile_child_protocol_is_json_lines_ending_in_done(app_dir: Path) -> None:
    api = write_wasm(app_dir, "api", wasmtime.wat2wasm(HELLO_WAT))
    other = write_wasm(app_dir, "other", wasmtime.wat2wasm(OTHER_WAT))
    job = {
        "cache_dir": str(app_dir / "cache"),
        "components": [{"name": "api", "path": api.path}, {"name": "other", "path": other.path}],
    }

    first = run_child(json.dumps(job).encode())
    second = run_child(json.dumps(job).encode())

    assert first.returncode == 0, first.stderr
    events = [json.loads(line) for line in first.stdout.splitlines()]
    assert [(e["event"], e.get("component")) for e in events] == [
        ("start", "api"),
        ("compiling", "api"),
        ("compiled", "api"),
        ("start", "other"),
        ("compiling", "other"),
        ("compiled", "other"),
        ("done", None),
    ]
    assert events[0]["bytes"] == Path(api.path).stat().st_size
    again = [json.loads(line)["event"] for line in second.stdout.splitlines()]
    assert again == ["start", "hit", "start", "hit", "done"]


def test_compile_child_refuses_a_bad_job_with_exit_2(app_dir: Path) -> None:
    result = run_child(b"{not json")

    assert result.returncode == 2
    assert result.stdout == b""
    assert b"bad job on stdin" in result.stderr


@pytest.mark.parametrize("layout", [[1 << 30], [-1, 0], ["4G", 0], [True, 0]])
def test_compile_child_refuses_a_job_with_a_bad_memory_layout(
    app_dir: Path, layout: list[object]
) -> None:
    job = {"cache_dir": str(app_dir / "cache"), "components": [], "memory_layout": layout}

    result = run_child(json.dumps(job).encode())

    assert result.returncode == 2
    assert result.stdout == b""
    assert b"'memory_layout' must be [reservation bytes, guard bytes]" in result.stderr
