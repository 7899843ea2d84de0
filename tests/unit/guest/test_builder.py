"""``rusmd build``: the real compiler, run through the real command line.

Runs in: tests.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import wasmtime

from rusmd.errors import EX_CONFIG, EX_DATAERR, EX_OK
from rusmd.guest.builder import COMPILE_TIMEOUT_S

pytestmark = [
    pytest.mark.skipif(importlib.util.find_spec("ziglang") is None, reason="ziglang is missing"),
    pytest.mark.timeout(COMPILE_TIMEOUT_S * 2),
]

HANDLER = """\
#include "rusm.h"
#include "greeting.h"
RUSM_EXPORT(home) int home(void) { return rusm_respond_text(200, GREETING) < 0; }
"""
COMMAND = """\
#include "rusm.h"
RUSM_EXPORT(run) void run(void) { rusm_info("up"); }
"""


def rusmd_build(app: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rusmd", "build", *args],
        cwd=app,
        capture_output=True,
        text=True,
        timeout=COMPILE_TIMEOUT_S,
        check=False,
    )


@pytest.fixture
def app(tmp_path: Path) -> Path:
    web = tmp_path / "components" / "web"
    web.mkdir(parents=True)
    (web / "web.c").write_text(HANDLER, encoding="utf-8")
    (web / "greeting.h").write_text('#define GREETING "hi"\n', encoding="utf-8")
    (tmp_path / "components" / "svc.c").write_text(COMMAND, encoding="utf-8")
    return tmp_path


def exports(path: Path) -> set[str]:
    return {
        str(item.name) for item in wasmtime.Module(wasmtime.Engine(), path.read_bytes()).exports
    }


def test_build_compiles_each_component_dir_and_lone_file_into_wasm(app: Path) -> None:
    done = rusmd_build(app)
    assert done.returncode == EX_OK, done.stderr
    assert "build web: wasm/web.wasm" in done.stdout
    assert {"home", "_initialize"} <= exports(app / "wasm" / "web.wasm")  # actions: a reactor
    assert {"run", "_start"} <= exports(app / "wasm" / "svc.wasm")  # a run loop: a command
    # The name section stays, so guest backtraces name functions.
    assert b"\x04name" in (app / "wasm" / "web.wasm").read_bytes()


def test_build_skips_an_up_to_date_module_and_rebuilds_when_a_header_changes(app: Path) -> None:
    assert rusmd_build(app).returncode == EX_OK
    module = app / "wasm" / "web.wasm"
    first = module.stat().st_mtime_ns
    again = rusmd_build(app)
    assert "build web: wasm/web.wasm is up to date" in again.stdout
    assert module.stat().st_mtime_ns == first
    header = app / "components" / "web" / "greeting.h"
    header.write_text('#define GREETING "hello"\n', encoding="utf-8")
    os.utime(header, ns=(first + 1_000_000, first + 1_000_000))
    rebuilt = rusmd_build(app)
    assert "build web: wasm/web.wasm (" in rebuilt.stdout
    assert "build svc: wasm/svc.wasm is up to date" in rebuilt.stdout
    assert module.stat().st_mtime_ns != first


def test_build_error_names_file_and_line_exits_65_and_keeps_the_old_module(app: Path) -> None:
    assert rusmd_build(app).returncode == EX_OK
    module = app / "wasm" / "web.wasm"
    before = module.read_bytes()
    source = app / "components" / "web" / "web.c"
    source.write_text(HANDLER + "int broken = ;\n", encoding="utf-8")
    done = rusmd_build(app)
    assert done.returncode == EX_DATAERR
    assert "components/web/web.c:4:" in done.stderr and "error" in done.stderr
    assert "build web: failed" in done.stderr
    assert module.read_bytes() == before
    assert not list((app / "wasm").glob(".*")), "no scratch file is left behind"


def test_build_without_components_dir_or_with_unknown_name_is_a_clear_error(
    tmp_path: Path, app: Path
) -> None:
    done = rusmd_build(tmp_path / "components" / "web")
    assert done.returncode == EX_CONFIG
    assert "components: no such directory" in done.stderr
    unknown = rusmd_build(app, "nope")
    assert unknown.returncode == EX_CONFIG
    assert "no component nope (found: svc, web)" in unknown.stderr
    assert not (app / "wasm").exists()
