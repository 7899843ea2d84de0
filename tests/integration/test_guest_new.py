"""``rusmd new`` → ``rusmd build`` → ``rusmd``, from the built package, as a new user would.

Runs in: tests (the daemon runs as the installed ``rusmd`` in its own session).

The package is built into a wheel from a copy of the sources and installed
with pip into a fresh virtual environment; every command is that
environment's ``rusmd`` console script, run without ``PYTHONPATH`` in a
temporary directory outside the checkout, so the C SDK must come from the
package data and nothing from the checkout.
"""

from __future__ import annotations

import http.client
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from websockets.sync.client import connect as ws_connect

from rusmd.errors import EX_CANTCREAT, EX_OK
from rusmd.guest.builder import COMPILE_TIMEOUT_S
from tests.integration.conftest import (
    DAEMONS_KEY,
    SCRUBBED_VARIABLES,
    App,
    Daemon,
    free_port,
    wait_for,
)

ROOT = Path(__file__).resolve().parents[2]
# Reading one response or event from a daemon that is ready.
READ_TIMEOUT_S = 30.0

pytestmark = pytest.mark.timeout(COMPILE_TIMEOUT_S * 2)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment with the package's wheel installed: its ``bin``.

    The wheel is built from a copy of the sources and installed with pip,
    offline and without dependencies; the environment sees the test
    environment's dependencies (wasmtime, ziglang, …) through one path in a
    ``.pth`` file, which names that directory alone: its own ``.pth`` files
    (an editable install of the checkout) are not read.
    """
    work = tmp_path_factory.mktemp("wheel")
    source = work / "src"
    skip = shutil.ignore_patterns("__pycache__", "*.pyc")
    for tree in ("rusmd", "rusmctl"):
        shutil.copytree(ROOT / tree, source / tree, ignore=skip)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    built = subprocess.run(
        [
            sys.executable,
            "-c",
            "from setuptools import build_meta as b; print(b.build_wheel('dist'))",
        ],
        cwd=source,
        capture_output=True,
        text=True,
        timeout=COMPILE_TIMEOUT_S,
        check=True,
    )
    wheel = source / "dist" / built.stdout.strip().splitlines()[-1]
    venv = work / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(venv)],
        capture_output=True,
        timeout=COMPILE_TIMEOUT_S,
        check=True,
    )
    site = Path(sysconfig.get_path("purelib", vars={"base": str(venv), "platbase": str(venv)}))
    (site / "test-dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-cache-dir"]
    install = ["--python", str(venv / "bin" / "python"), "install", "--no-deps", "--no-index"]
    installing = subprocess.run(
        [*pip, *install, str(wheel)],
        capture_output=True,
        text=True,
        timeout=COMPILE_TIMEOUT_S,
        check=False,
    )
    assert installing.returncode == 0, installing.stderr
    where = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import rusmd; print(rusmd.__file__)"],
        cwd=work,
        env=_environment(),
        capture_output=True,
        text=True,
        timeout=READ_TIMEOUT_S,
        check=True,
    )
    assert Path(where.stdout.strip()).is_relative_to(site), where.stdout
    assert (site / "rusmd" / "sdk" / "c" / "rusm.h").is_file(), "the wheel lacks the C SDK"
    # rusmd bench compiles the kv-storm scenario's C guest from the package.
    assert (site / "rusmd" / "node" / "guests" / "kv_get.c").is_file(), "the wheel lacks kv_get.c"
    return venv / "bin"


def _environment() -> dict[str, str]:
    """The test's environment without what would reach the checkout (``PYTHONPATH``)."""
    drop = {*SCRUBBED_VARIABLES, "PYTHONPATH", "VIRTUAL_ENV"}
    return {key: value for key, value in os.environ.items() if key not in drop}


def rusmd(
    installed: Path, cwd: Path, *args: str, timeout_s: float = COMPILE_TIMEOUT_S
) -> subprocess.CompletedProcess[str]:
    """The installed ``rusmd`` console script, run in ``cwd``."""
    return subprocess.run(
        [str(installed / "rusmd"), *args],
        cwd=cwd,
        env=_environment(),
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


@pytest.fixture
def serve_new_app(
    request: pytest.FixtureRequest,
    installed: Path,
    tmp_path_factory: pytest.TempPathFactory,
    tmp_path: Path,
) -> Iterator[Callable[[str], tuple[Daemon, str]]]:
    """``rusmd new hello --protocol P && cd hello && rusmd build && rusmd``: (daemon, URL)."""
    daemons = request.node.stash.setdefault(DAEMONS_KEY, [])

    def serve(protocol: str) -> tuple[Daemon, str]:
        # A short directory: the control socket's path must fit in 108 bytes.
        work = tmp_path_factory.mktemp("new")
        port, node_port = free_port(), free_port()
        flags = ["--protocol", protocol, "--port", str(port), "--node-port", str(node_port)]
        created = rusmd(installed, work, "new", "hello", *flags)
        assert created.returncode == EX_OK, created.stderr
        app = work / "hello"
        built = rusmd(installed, app, "build")
        assert built.returncode == EX_OK, built.stderr
        assert (app / "wasm" / "hello.wasm").is_file()
        daemon = Daemon(
            App(app, node_port, port), tmp_path / f"rusmd-{len(daemons)}.log",
            program=[str(installed / "rusmd")], unset=("PYTHONPATH", "VIRTUAL_ENV"),
        )  # fmt: skip
        daemons.append(daemon)
        daemon.start().wait_ready()
        url = wait_for(
            lambda: re.search(r"serving \w+ at (\S+)", daemon.read_log()),
            READ_TIMEOUT_S,
            "the URL line",
        ).group(1)
        return daemon, url

    yield serve
    for daemon in daemons:
        daemon.kill_group()


def test_new_http_app_builds_serves_and_answers_on_the_printed_url(
    serve_new_app: Callable[[str], tuple[Daemon, str]],
) -> None:
    _daemon, url = serve_new_app("http")
    assert url.startswith("http://127.0.0.1:")
    with urllib.request.urlopen(url, timeout=READ_TIMEOUT_S) as response:
        assert response.status == 200
        assert response.read() == b"Hello from hello!\n"
    with urllib.request.urlopen(url + "hello/a%22b", timeout=READ_TIMEOUT_S) as response:
        assert response.headers["Content-Type"] == "application/json"
        assert response.read() == b'{"greeting":"hello","name":"a\\"b"}'


def test_new_sse_app_streams_a_tick_event(
    serve_new_app: Callable[[str], tuple[Daemon, str]],
) -> None:
    daemon, _url = serve_new_app("sse")
    conn = http.client.HTTPConnection("127.0.0.1", daemon.app.serve_port, timeout=READ_TIMEOUT_S)
    try:
        conn.request("GET", "/ticks?n=1")
        response = conn.getresponse()
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        body = response.read().decode()
    finally:
        conn.close()
    assert "event: tick\ndata: hello tick 1\n" in body


def test_new_ws_app_echoes_a_frame(serve_new_app: Callable[[str], tuple[Daemon, str]]) -> None:
    _daemon, url = serve_new_app("ws")
    assert url.startswith("ws://127.0.0.1:")
    with ws_connect(url, open_timeout=READ_TIMEOUT_S) as ws:
        ws.send("ping")
        assert ws.recv(timeout=READ_TIMEOUT_S) == "ping"


def test_new_refuses_a_non_empty_directory_and_writes_nothing(
    installed: Path, tmp_path: Path
) -> None:
    taken = tmp_path / "hello"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine\n", encoding="utf-8")
    done = rusmd(installed, tmp_path, "new", "hello")
    assert done.returncode == EX_CANTCREAT
    assert "rusmd: hello: exists and is not empty; nothing was written" in done.stderr
    assert sorted(p.name for p in taken.iterdir()) == ["notes.txt"]
    bad = rusmd(installed, tmp_path, "new", "1bad name")
    assert bad.returncode == EX_CANTCREAT
    assert "'1bad name': not an app name" in bad.stderr
    assert not (tmp_path / "1bad name").exists()
