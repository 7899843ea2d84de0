"""``rusmctl spawn --module``: ad-hoc launch against the real daemon.

Runs in: any (the test process; ``rusmd`` runs as a subprocess with one
worker).

The guest is ``tests/guests/launched.wat``: its entrypoint logs the
arguments it got, then logs every message it receives; the ``utf8`` and
``buffer`` arguments' bytes are the first two.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
import wasmtime

from rusmd.errors import EX_NOSUCH, EX_OK, EX_REFUSED, EX_USAGE
from tests.integration.conftest import App, Daemon
from tests.integration.test_wasm_processes import (
    GUESTS,
    SETTLE_S,
    lines_with,
    processes,
    texts,
    write_app,
)

GOOD = (
    "path=mods/launched.wasm;entrypoint=start;"
    "params=utf8,u16,i64,f32,f64,buffer;args=localhost,7000,-5,1.5,2.25,6869"
)


@pytest.fixture
def launch_app(app: App) -> App:
    """An app with the hello and spawner components, and launched.wasm under mods/."""
    write_app(app, "[components.hello]\n[components.spawner]\n", guests=["hello", "spawner"])
    mods = app.directory / "mods"
    mods.mkdir()
    (mods / "launched.wasm").write_bytes(wasmtime.wat2wasm((GUESTS / "launched.wat").read_text()))
    # The same guest importing a WASI call that blocks: it runs on a guest
    # thread instead of as a fiber, and its entry is called another way.
    threaded = (
        (GUESTS / "launched.wat")
        .read_text()
        .replace(
            "(module\n",
            '(module\n  (import "wasi_snapshot_preview1" "sched_yield" (func (result i32)))\n',
            1,
        )
    )
    (mods / "threaded.wasm").write_bytes(wasmtime.wat2wasm(threaded))
    # The same guest with its entrypoint exported as `run`: a component's
    # entry takes no parameters, an ad-hoc entrypoint named run may.
    named_run = (GUESTS / "launched.wat").read_text().replace('(export "start")', '(export "run")')
    (mods / "run.wasm").write_bytes(wasmtime.wat2wasm(named_run))
    (mods / "spawner.wasm").write_bytes(wasmtime.wat2wasm((GUESTS / "spawner.wat").read_text()))
    return app


def launch(daemon: Daemon, spec: str) -> Any:
    return daemon.ctl("spawn", "--module", spec, "--json")


def test_module_spec_runs_the_entrypoint_with_typed_args_and_bytes_in_its_mailbox(
    launch_app: App, start_daemon: Callable[..., Daemon]
) -> None:
    daemon = start_daemon(cpus=2)

    result = launch(daemon, GOOD)

    assert result.returncode == EX_OK, result.stderr
    spawned = json.loads(result.stdout)
    label = spawned["label"]
    assert label == f"launched.wasm#{spawned['pid']}"
    args_line = f"{label} info args 9 7000 -5 1500 2250 2"
    daemon.wait_for(lines_with(daemon, args_line), SETTLE_S, "the entrypoint's arguments")
    daemon.wait_for(lines_with(daemon, f"{label} info inbox hi"), SETTLE_S, "the buffer")
    lines = texts(daemon)
    assert lines.index(f"{label} info inbox localhost") < lines.index(f"{label} info inbox hi")
    listed = processes(daemon)[spawned["pid"]]
    assert listed["component"] == "launched.wasm"

    killed = daemon.ctl("kill", label)

    assert killed.returncode == EX_OK, killed.stderr
    daemon.wait_for(lines_with(daemon, f"exit {label} killed"), SETTLE_S, "the exit line")
    assert spawned["pid"] not in processes(daemon)


@pytest.mark.parametrize(
    ("module", "entrypoint"), [("launched", "start"), ("threaded", "start"), ("run", "run")]
)
def test_module_spec_with_typed_args_and_no_params_runs(
    launch_app: App, start_daemon: Callable[..., Daemon], module: str, entrypoint: str
) -> None:
    daemon = start_daemon(cpus=2)
    spec = (
        f"path=mods/{module}.wasm;entrypoint={entrypoint};"
        "args=utf8:a\\,b,u16:65535,i64:9000000000,f32:-0.5,f64:0.001,hex:00ff"
    )

    result = launch(daemon, spec)

    assert result.returncode == EX_OK, result.stderr
    label = json.loads(result.stdout)["label"]
    args_line = f"{label} info args 3 65535 9000000000 -500 1 2"
    daemon.wait_for(lines_with(daemon, args_line), SETTLE_S, "the entrypoint's arguments")
    daemon.wait_for(lines_with(daemon, f"{label} info inbox a,b"), SETTLE_S, "the utf8 value")


def test_module_grants_are_enforced_as_a_components_are(
    launch_app: App, start_daemon: Callable[..., Daemon]
) -> None:
    daemon = start_daemon(cpus=2)

    denied = launch(daemon, "path=mods/spawner.wasm;entrypoint=run")
    granted = launch(daemon, "path=mods/spawner.wasm;entrypoint=run;capabilities=allow-spawn")

    assert denied.returncode == EX_REFUSED
    assert (
        "capability denied: spawner.wasm imports rusm.spawn, which needs allow-spawn"
        in denied.stderr
    )
    assert granted.returncode == EX_OK, granted.stderr
    daemon.wait_for(lines_with(daemon, "info hello from a guest"), SETTLE_S, "the hello it spawned")


BAD_SPECS = [
    ("entrypoint=start", EX_USAGE, "path is missing"),
    ("path=../launched.wasm", EX_USAGE, "has a '..' segment"),
    ("path=mods/../mods/launched.wasm", EX_USAGE, "has a '..' segment"),
    ("path=/etc/passwd", EX_USAGE, "is outside the app dir"),
    ("path=mods/nosuch.wasm", EX_NOSUCH, "no module at 'mods/nosuch.wasm'"),
    ("path=mods/launched.wasm;log_uri=x", EX_USAGE, "unknown key 'log_uri'"),
    ("path=mods/launched.wasm;params=utf8,u17;args=a,1", EX_USAGE, "unknown type 'u17'"),
    ("path=mods/launched.wasm;args=resource:14", EX_USAGE, "unknown type 'resource'"),
    (
        "path=mods/launched.wasm;params=utf8,u16;args=localhost",
        EX_USAGE,
        "params declares 2 type(s) but args gives 1 value(s)",
    ),
    ("path=mods/launched.wasm;args=u16:70000", EX_USAGE, "u16 value 70000 is out of range"),
    ("path=mods/launched.wasm;args=7000", EX_USAGE, "has no type"),
    ("path=mods/launched.wasm;args=buffer:xyz", EX_USAGE, "is not hex"),
    (
        "path=mods/launched.wasm;capabilities=allow-everything",
        EX_USAGE,
        "unknown capability 'allow-everything'",
    ),
    ("path=mods/launched.wasm;entrypoint=nosuch", EX_USAGE, "exports no function 'nosuch'"),
    (
        "path=mods/launched.wasm;args=utf8:localhost,u16:7000",
        EX_USAGE,
        "entrypoint 'start' is (i32, i32, i64, f32, f64, i32) -> (); the spec's params "
        "need (i32, i32) -> () or -> (i32)",
    ),
]


def test_bad_module_specs_give_their_error_and_spawn_nothing(
    launch_app: App, start_daemon: Callable[..., Daemon]
) -> None:
    daemon = start_daemon(cpus=2)

    for spec, code, message in BAD_SPECS:
        result = launch(daemon, spec)

        assert result.returncode == code, (spec, result.stderr)
        assert message in result.stderr, (spec, result.stderr)
        assert processes(daemon) == {}, spec
    assert not [line for line in texts(daemon) if "spawn launched.wasm#" in line]
