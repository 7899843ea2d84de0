"""The actor test guest (tests/guests/actor.c) builds and links against the ABI table.

Runs in: any (the guest is compiled with the pinned ``ziglang`` dev
dependency into tmp_path; wasmtime only reads the module, and the real
import check of ``rusmd.wasm.linking`` judges it).

The integration tests run this guest in a daemon; here it is only built,
so a header or ABI change that breaks it fails fast, without a daemon.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import wasmtime

from rusmd.config.model import BUILTIN_CAPABILITIES, BuiltinCapability
from rusmd.wasm.abi import ABI_MODULE, FUNCTIONS, SERVING_FUNCTIONS, WASI_MODULE, Grant
from rusmd.wasm.linking import LinkError, check_module, granted
from tests.guests.build import COMPILE_TIMEOUT_S, GUESTS, build_c_guest
from tests.unit.wasm.test_abi_contract import abi_signatures, needs_zig, rusm_imports

ACTOR = GUESTS / "actor.c"

pytestmark = [needs_zig, pytest.mark.timeout(COMPILE_TIMEOUT_S * 2)]


def build(tmp_path_factory: pytest.TempPathFactory, *defines: str) -> wasmtime.Module:
    out = tmp_path_factory.mktemp("actor") / "actor.wasm"
    build_c_guest(ACTOR, out, defines=defines)
    return wasmtime.Module(wasmtime.Engine(), out.read_bytes())


@pytest.fixture(scope="module")
def actor(tmp_path_factory: pytest.TempPathFactory) -> wasmtime.Module:
    return build(tmp_path_factory)


@pytest.fixture(scope="module")
def actor_no_spawn(tmp_path_factory: pytest.TempPathFactory) -> wasmtime.Module:
    return build(tmp_path_factory, "ACTOR_NO_SPAWN")


def test_actor_imports_only_rusm_and_wasi(actor: wasmtime.Module) -> None:
    assert {item.module for item in actor.imports} == {ABI_MODULE, WASI_MODULE}


def test_actor_rusm_imports_have_the_abi_signatures(actor: wasmtime.Module) -> None:
    imports = rusm_imports(actor)
    for name, signature in imports.items():
        assert name in FUNCTIONS, name
        assert signature == abi_signatures()[name], name


def test_actor_exercises_every_messaging_and_spawn_function(actor: wasmtime.Module) -> None:
    # A new `always` or `allow-spawn` function wants a command in actor.c
    # (the serving functions are exercised by the serving tests' guests).
    wanted = {
        name
        for name, f in FUNCTIONS.items()
        if f.grant in {Grant.ALWAYS, Grant.SPAWN} and name not in SERVING_FUNCTIONS
    }
    assert set(rusm_imports(actor)) == wanted


def test_actor_exports_run_and_memory(actor: wasmtime.Module) -> None:
    exports = {item.name: item.type for item in actor.exports}
    run = exports.get("run")
    assert isinstance(run, wasmtime.FuncType)
    assert (list(run.params), list(run.results)) == ([], [])
    assert isinstance(exports.get("memory"), wasmtime.MemoryType)


def test_actor_links_with_allow_spawn_and_not_without(actor: wasmtime.Module) -> None:
    shape = check_module("actor", actor, frozenset({Grant.ALWAYS, Grant.SPAWN}))
    assert shape.entry == "run"
    assert shape.has_memory
    denied = r"capability denied: actor imports rusm\.(spawn|spawn_link|supervise),"
    with pytest.raises(LinkError, match=denied):
        check_module("actor", actor, frozenset({Grant.ALWAYS}))


def test_actor_without_spawn_links_sandboxed(actor_no_spawn: wasmtime.Module) -> None:
    imports = set(rusm_imports(actor_no_spawn))
    assert imports == {
        name
        for name, f in FUNCTIONS.items()
        if f.grant is Grant.ALWAYS and name not in SERVING_FUNCTIONS
    }
    sandboxed = granted(BUILTIN_CAPABILITIES[BuiltinCapability.SANDBOXED])
    assert check_module("actor", actor_no_spawn, sandboxed).entry == "run"


def test_build_helper_returns_the_output_path(tmp_path: Path) -> None:
    source = tmp_path / "tiny.c"
    source.write_text('#include "rusm.h"\nRUSM_EXPORT(run) void run(void) {}\n', encoding="utf-8")
    out = tmp_path / "tiny.wasm"
    assert build_c_guest(source, out) == out
    assert out.read_bytes()[:4] == b"\0asm"
