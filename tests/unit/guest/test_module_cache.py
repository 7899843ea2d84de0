"""The scenario app's C guest, compiled once and kept: the real compiler, the real builder.

Runs in: tests.

The compiler is watched by wrapping ``subprocess.run`` (it still runs):
a second build of the same inputs must not call it, a changed source
must. Each test keeps its modules in a directory of its own.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import wasmtime

from rusmd import cli
from rusmd.errors import EX_UNAVAILABLE
from rusmd.guest import module_cache
from rusmd.guest.builder import COMPILE_TIMEOUT_S
from rusmd.guest.module_cache import GuestCompileError, build_all, build_cached
from rusmd.node.scenario_app import C_GUESTS, KV_SOURCE, write_app

pytestmark = [
    pytest.mark.skipif(importlib.util.find_spec("ziglang") is None, reason="ziglang is missing"),
    pytest.mark.timeout(COMPILE_TIMEOUT_S * 2),
]

PORTS = (4000, 8080, 8081, 8082)


@pytest.fixture
def compiles(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Every compiler command run from now on (the compiler still runs)."""
    seen: list[list[str]] = []
    real = subprocess.run

    def watched(command: list[str], *args: Any, **kwargs: Any) -> Any:
        if command[1:4] == ["-m", "ziglang", "cc"]:
            seen.append(command)
        return real(command, *args, **kwargs)

    monkeypatch.setattr(subprocess, "run", watched)
    return seen


def test_a_second_app_with_the_same_c_guest_runs_no_compiler(
    tmp_path: Path, compiles: list[list[str]]
) -> None:
    source = tmp_path / "src" / "kv_get.c"
    source.parent.mkdir()
    shutil.copy(KV_SOURCE, source)
    cache = tmp_path / "cache"

    first = build_all({"sc_kv": source}, cache)["sc_kv"]
    assert first.built and len(compiles) == 1, compiles
    write_app(tmp_path / "one", PORTS, {"sc_kv": first.output})
    module = (tmp_path / "one" / "wasm" / "sc_kv.wasm").read_bytes()
    assert module == first.output.read_bytes()
    exports = {e.name for e in wasmtime.Module(wasmtime.Engine(), module).exports}
    assert {"get", "_initialize"} <= exports  # kv_get.c's action, as a reactor

    kept_ns = first.output.stat().st_mtime_ns
    again = build_all({"sc_kv": source}, cache)["sc_kv"]
    assert not again.built and len(compiles) == 1, compiles
    assert again.output == first.output and again.output.stat().st_mtime_ns == kept_ns
    write_app(tmp_path / "two", PORTS, {"sc_kv": again.output})
    assert (tmp_path / "two" / "wasm" / "sc_kv.wasm").read_bytes() == module

    source.write_text(source.read_text() + "\n/* changed */\n")
    changed = build_all({"sc_kv": source}, cache)["sc_kv"]
    assert changed.built and len(compiles) == 2, compiles
    assert changed.output != first.output and first.output.is_file()
    # Nothing half-written is left beside the modules.
    assert sorted(p.name for p in cache.iterdir()) == sorted(
        [first.output.name, changed.output.name]
    )


def test_a_c_guest_that_does_not_compile_names_the_file_and_keeps_nothing(
    tmp_path: Path,
) -> None:
    broken = tmp_path / "broken.c"
    broken.write_text('#include "rusm.h"\nRUSM_EXPORT(get) int get(void) { return nope; }\n')
    cache = tmp_path / "cache"
    with pytest.raises(GuestCompileError) as refused:
        build_cached(broken, cache)
    message = str(refused.value)
    assert message.startswith(f"{broken}: does not compile")
    assert "broken.c:2:" in message and "nope" in message, message
    assert list(cache.iterdir()) == []


def test_rusmd_bench_exits_69_naming_the_c_guest_that_does_not_compile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "kv_get.c"
    broken.write_text("int get(void) { return nope; }\n")
    monkeypatch.setitem(C_GUESTS, "sc_kv", broken)
    monkeypatch.setattr(module_cache, "default_cache_dir", lambda: tmp_path / "cache")
    assert cli.main(["bench", "kv-storm", "--seconds", "1"]) == EX_UNAVAILABLE
    err = capsys.readouterr().err
    assert err.startswith(f"rusmd bench kv-storm: {broken}: does not compile"), err
    assert "nope" in err


def test_the_cache_lives_under_xdg_cache_home_unless_it_is_unset_or_relative() -> None:
    home = Path.home() / ".cache" / "rusm" / "guests"
    assert module_cache.default_cache_dir({"XDG_CACHE_HOME": "/var/cache/me"}) == Path(
        "/var/cache/me/rusm/guests"
    )
    assert module_cache.default_cache_dir({"XDG_CACHE_HOME": "relative"}) == home
    assert module_cache.default_cache_dir({}) == home
