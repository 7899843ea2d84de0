"""Pre-initialisation's decisions: which modules have a start-up, finding Wizer, its reasons."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import wasmtime

from rusmd.wasm import preinit
from rusmd.wasm.preinit import (
    OFF,
    SKIPPED,
    WIZER_NOT_FOUND,
    Preinit,
    WizerMissing,
    exports,
    find_wizer,
    has_startup,
    snapshot_inputs,
    wizer_reason,
)

REACTOR = wasmtime.wat2wasm(
    '(module (memory (export "memory") 1) (func (export "_initialize")) (func (export "show")))'
)
COMMAND = wasmtime.wat2wasm(
    '(module (memory (export "memory") 1) (func (export "_initialize")) (func (export "_start")))'
)
ACTIONS_ONLY = wasmtime.wat2wasm('(module (func (export "show")))')
# Cut inside the export section, in the middle of "_initialize".
TRUNCATED = REACTOR[: REACTOR.index(b"_initialize") + 4]
GLOBAL_NAMED_INITIALIZE = wasmtime.wat2wasm(
    '(module (global (export "_initialize") i32 (i32.const 0)))'
)

IMPORT_CALL_STDERR = """Error: calling the Reactor initialization function

Caused by:
    0: error while executing at wasm backtrace:
           0:     0x6c - <unknown>!<wasm function 1>
    1: Error: attempted to call an unknown imported function: 'rusm' 'log'

       You cannot call arbitrary imported functions during Wizer initialization.
"""
TRAP_STDERR = """Error: calling the Reactor initialization function

Caused by:
    0: error while executing at wasm backtrace:
           0:     0x51 - <unknown>!<wasm function 0>
    1: wasm trap: wasm `unreachable` instruction executed

Stack backtrace:
   0: anyhow::error::<impl anyhow::Error>::msg
"""


def fake_wizer(directory: Path, answer: str, name: str = "wizer") -> Path:
    """An executable that answers ``--version`` with ``answer``."""
    directory.mkdir(parents=True, exist_ok=True)
    script = directory / name
    script.write_text(f"#!/bin/sh\necho '{answer}'\n")
    script.chmod(0o755)
    return script


def test_exports_lists_every_export_by_name_and_kind() -> None:
    assert exports(REACTOR) == {"memory": 2, "_initialize": 0, "show": 0}
    assert exports(ACTIONS_ONLY) == {"show": 0}
    assert exports(wasmtime.wat2wasm("(module)")) == {}


def test_exports_of_a_truncated_export_section_is_none() -> None:
    assert exports(TRUNCATED) is None


def test_only_a_reactor_has_a_start_up_to_snapshot() -> None:
    assert has_startup(REACTOR)
    assert not has_startup(COMMAND)  # a command starts libc inside _start
    assert not has_startup(ACTIONS_ONLY)
    assert not has_startup(GLOBAL_NAMED_INITIALIZE)
    assert not has_startup(TRUNCATED)


def test_wizer_variable_naming_no_executable_is_reported_with_its_value(tmp_path: Path) -> None:
    with pytest.raises(WizerMissing) as raised:
        find_wizer({"RUSM_WIZER": str(tmp_path / "nope")})

    assert (
        str(raised.value)
        == f"{WIZER_NOT_FOUND}: RUSM_WIZER={tmp_path}/nope is not an executable file"
    )


def test_wizer_variable_comes_first_and_its_version_is_read(tmp_path: Path) -> None:
    script = fake_wizer(tmp_path / "mine", "wizer 99.1.0")
    fake_wizer(tmp_path / "bin", "wizer 1.0.0")

    found = find_wizer({"RUSM_WIZER": str(script), "PATH": str(tmp_path / "bin")})

    assert (found.path, found.version) == (str(script), "wizer 99.1.0")
    assert snapshot_inputs(found) == "wizer 99.1.0 --init-func _initialize"


def test_wizer_on_path_is_found_when_the_source_tree_has_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(preinit, "bundled_wizer", lambda: tmp_path / "tools" / "wizer")
    script = fake_wizer(tmp_path / "bin", "wizer 10.0.0")

    found = find_wizer({"PATH": str(tmp_path / "bin")})

    assert (found.path, found.version) == (str(script), "wizer 10.0.0")


def test_no_wizer_anywhere_names_where_it_looked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(preinit, "bundled_wizer", lambda: tmp_path / "tools" / "wizer")

    with pytest.raises(WizerMissing) as raised:
        find_wizer({"PATH": str(tmp_path / "empty")})

    message = str(raised.value)
    assert message.startswith(
        f"{WIZER_NOT_FOUND} (looked at $RUSM_WIZER, {tmp_path}/tools/wizer and PATH)"
    )


def test_an_executable_that_is_not_wizer_is_refused(tmp_path: Path) -> None:
    script = fake_wizer(tmp_path, "something else 1.0")

    with pytest.raises(WizerMissing) as raised:
        find_wizer({"RUSM_WIZER": str(script)})

    assert "answered 'something else 1.0'" in str(raised.value)


def test_plan_snapshots_a_wanted_reactor_and_keys_it_on_wizers_version(tmp_path: Path) -> None:
    script = fake_wizer(tmp_path, "wizer 10.0.0")
    warnings: list[str] = []
    planner = Preinit({"RUSM_WIZER": str(script)}, warn=warnings.append)

    assert planner.plan(REACTOR, wanted=True).inputs == "wizer 10.0.0 --init-func _initialize"
    assert planner.plan(REACTOR, wanted=False) == preinit.Plan("", OFF)
    assert planner.plan(COMMAND, wanted=True) == preinit.Plan("", "")
    assert warnings == []


def test_plan_without_wizer_warns_once_and_compiles_reactors_as_they_are(tmp_path: Path) -> None:
    warnings: list[str] = []
    planner = Preinit({"RUSM_WIZER": str(tmp_path / "nope")}, warn=warnings.append)

    first = planner.plan(REACTOR, wanted=True)
    second = planner.plan(REACTOR, wanted=True)

    assert first == second == preinit.Plan("", SKIPPED + WIZER_NOT_FOUND)
    assert len(warnings) == 1
    assert "install it with `make tools`" in warnings[0]


def test_plan_does_not_look_for_wizer_without_a_reactor_that_wants_it(tmp_path: Path) -> None:
    warnings: list[str] = []
    planner = Preinit({"RUSM_WIZER": str(tmp_path / "nope")}, warn=warnings.append)

    assert planner.plan(ACTIONS_ONLY, wanted=True) == preinit.Plan("", "")
    assert planner.plan(REACTOR, wanted=False) == preinit.Plan("", OFF)
    assert warnings == []


def test_reason_for_an_import_call_names_the_import() -> None:
    assert wizer_reason(IMPORT_CALL_STDERR, 1) == (
        "its _initialize calls the import rusm.log, which a snapshot cannot hold"
    )


def test_reason_for_a_trap_is_the_trap_without_the_backtrace() -> None:
    assert wizer_reason(TRAP_STDERR, 1) == (
        "its _initialize trapped: wasm trap: wasm `unreachable` instruction executed"
    )


def test_reason_for_anything_else_is_the_headline_and_the_innermost_cause() -> None:
    stderr = "Error: failed to parse\n\nCaused by:\n    0: bad thing\n    1: the detail\n"

    assert wizer_reason(stderr, 1) == "failed to parse: the detail"
    assert wizer_reason("Error: the Wasm module does not have a `x` export\n", 1) == (
        "the Wasm module does not have a `x` export"
    )
    assert wizer_reason("", 101) == "Wizer exited with status 101 and said nothing"


def test_reason_is_one_bounded_line_without_control_characters() -> None:
    reason = wizer_reason("Error: \x1b[31m" + "x" * 5000, 1)

    assert "\x1b" not in reason
    assert len(reason) == preinit.MAX_REASON_CHARS
    assert os.linesep not in reason
