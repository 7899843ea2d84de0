"""Pre-initialised reactors on the real daemon: start-up once at compile time, fresh requests.

Runs in: any (the test process; ``rusmd`` runs as a subprocess and runs
Wizer, from ``make tools``, in its compile child).

The guest is ``tests/guests/preinit.c``, a C reactor built the way ``make
guests`` builds one: a constructor counts its runs and rewrites static
data, and the action ``show`` counts its own and answers
``started=<n> handled=<n> motto=<text>``. Built with ``STARTUP_SPIN`` its
start-up costs far more CPU than its profile's per-call budget; built
with ``STARTUP_READS_ENV`` its start-up reads ``$GREETING``.
"""

from __future__ import annotations

import http.client
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from rusmd.errors import EX_OK
from rusmd.wasm.preinit import WizerMissing, find_wizer
from tests.guests.build import GUESTS, build_c_guest
from tests.integration.conftest import App, Daemon

SETTLE_S = 20.0
# The spinning start-up's rounds: ~1 s of compute here, ten times the 100 ms
# budget of the `tight` profile below and far inside half the 60 s
# compile-timeout-s that Wizer may take.
SPIN_ROUNDS = 3_000_000_000
FRESH = "started=1 handled=1 motto=ready\n"
TIGHT = """
[capabilities.tight]
max-cpu-ms = 100

[capabilities.greeter]
env = ["GREETING"]
"""
ENV_REASON = (
    "its _initialize calls the import wasi_snapshot_preview1.environ_sizes_get, "
    "which a snapshot cannot hold"
)


@pytest.fixture(scope="session")
def guests(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``preinit.c`` built plain, spinning and reading the environment, once per session."""
    try:
        find_wizer(os.environ)
    except WizerMissing as exc:
        pytest.fail(f"{exc}: run `make tools`")
    out = tmp_path_factory.mktemp("preinit-guests")
    source = GUESTS / "preinit.c"
    return {
        "plain": build_c_guest(source, out / "plain.wasm", reactor=True),
        "spin": build_c_guest(
            source, out / "spin.wasm", defines=[f"STARTUP_SPIN={SPIN_ROUNDS}u"], reactor=True
        ),
        "env": build_c_guest(source, out / "env.wasm", defines=["STARTUP_READS_ENV"], reactor=True),
    }


def write_app(app: App, components: dict[str, tuple[Path, str]]) -> None:
    """An app serving ``GET /<name>`` by ``<name>#show`` for each component
    (name → (its module, extra TOML lines))."""
    wasm = app.directory / "wasm"
    wasm.mkdir(exist_ok=True)
    routes, tables = [], []
    for name, (module, extra) in components.items():
        (wasm / f"{name}.wasm").write_bytes(module.read_bytes())
        routes.append(f'"GET /{name}" = "{name}#show"\n')
        tables.append(f"[components.{name}]\n{extra}\n")
    app.manifest.write_text(
        f'[node]\nlisten = "127.0.0.1:{app.node_port}"\n[log]\nlevel = "info"\n'
        f'[[serve]]\nprotocol = "http"\nlisten = "127.0.0.1:{app.serve_port}"\n'
        "[serve.routes]\n" + "".join(routes) + TIGHT + "".join(tables)
    )


def get(app: App, path: str) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", app.serve_port, timeout=SETTLE_S)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


def compile_lines(daemon: Daemon, name: str) -> list[str]:
    return [r["text"] for r in daemon.log_records() if r["text"].startswith(f"compile {name}:")]


def check(app: App, **env: str) -> str:
    """``rusmd check`` on the app, as an operator runs it; its output."""
    done = subprocess.run(
        [sys.executable, "-m", "rusmd", "check", "--config", str(app.manifest)],
        cwd=app.directory,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == EX_OK, done.stderr
    return done.stdout


def test_reactor_start_up_runs_once_at_compile_time_and_each_request_starts_fresh(
    app: App, start_daemon: Callable[..., Daemon], guests: dict[str, Path]
) -> None:
    write_app(
        app,
        {
            "counter": (guests["plain"], ""),
            "heavy": (guests["spin"], 'capability = "tight"'),
        },
    )
    daemon = start_daemon()

    # The constructor's work is there in every instance, once; the
    # action's increment of the previous request is not.
    assert [get(app, "/counter") for _ in range(5)] == [(200, FRESH)] * 5
    # A start-up ten times the profile's CPU budget costs requests nothing.
    assert [get(app, "/heavy") for _ in range(3)] == [(200, FRESH)] * 3
    for name in ("counter", "heavy"):
        (line,) = compile_lines(daemon, name)
        assert line.startswith(f"compile {name}: compiled in ")
        assert line.endswith(", pre-initialized")
    shown = check(app)
    assert "artifact wasm/counter.wasm ok (cached), pre-initialized" in shown


def test_pre_initialize_false_runs_the_start_up_in_every_request(
    app: App, start_daemon: Callable[..., Daemon], guests: dict[str, Path]
) -> None:
    write_app(
        app,
        {
            "counter": (guests["plain"], "pre-initialize = false"),
            "heavy": (guests["spin"], 'capability = "tight"\npre-initialize = false'),
        },
    )
    daemon = start_daemon()

    assert [get(app, "/counter") for _ in range(3)] == [(200, FRESH)] * 3
    # Each request pays the start-up, past its 100 ms CPU budget.
    assert [get(app, "/heavy")[0] for _ in range(2)] == [504] * 2
    for name in ("counter", "heavy"):
        assert not any("pre-initialized" in line for line in compile_lines(daemon, name))
    shown = check(app)
    assert (
        "artifact wasm/counter.wasm ok (cached), not pre-initialized (pre-initialize = false)"
        in (shown)
    )


def test_start_up_reading_the_environment_is_not_snapshotted_and_reads_each_instances_env(
    app: App, start_daemon: Callable[..., Daemon], guests: dict[str, Path]
) -> None:
    write_app(app, {"hello": (guests["env"], 'capability = "greeter"')})
    (app.directory / ".env").write_text("GREETING=bonjour\n")
    daemon = start_daemon()

    expected = "started=1 handled=1 motto=ready greeting=bonjour\n"
    assert [get(app, "/hello") for _ in range(3)] == [(200, expected)] * 3
    assert f"compile hello: not pre-initialized: {ENV_REASON}" in compile_lines(daemon, "hello")
    assert f"artifact wasm/hello.wasm ok (cached), not pre-initialized: {ENV_REASON}" in check(app)

    # The start-up reads the environment of the instance it runs in, so a
    # new value reaches the next requests without anything recompiled.
    (app.directory / ".env").write_text("GREETING=hola\n")
    assert daemon.ctl("reload").returncode == EX_OK
    daemon.wait_for(
        lambda: get(app, "/hello") == (200, expected.replace("bonjour", "hola")),
        SETTLE_S,
        "requests to see the new GREETING",
    )
