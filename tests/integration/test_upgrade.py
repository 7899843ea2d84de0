"""``rusmctl upgrade``: rebuilt modules load into the running workers, no roll.

Runs in: tests (the real daemon, a C component built with ``rusmd build``).
"""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from rusmd.guest.builder import COMPILE_TIMEOUT_S, build_app
from rusmd.guest.scaffold import create_app
from tests.integration.conftest import App, Daemon, free_port

READ_TIMEOUT_S = 30.0

pytestmark = pytest.mark.timeout(COMPILE_TIMEOUT_S * 2)


@pytest.fixture
def served(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> Iterator[Daemon]:
    work = tmp_path_factory.mktemp("up")
    port, node_port = free_port(), free_port()
    create_app(work / "hello", "http", port=port, node_port=node_port)
    assert all(result.ok for result in build_app(work / "hello"))
    daemon = Daemon(App(work / "hello", node_port, port), tmp_path / "rusmd.log")
    try:
        daemon.start().wait_ready()
        yield daemon
    finally:
        daemon.kill_group()


def get(daemon: Daemon) -> bytes:
    url = f"http://127.0.0.1:{daemon.app.serve_port}/"
    with urllib.request.urlopen(url, timeout=READ_TIMEOUT_S) as response:
        body: bytes = response.read()
        return body


def test_upgrade_loads_a_rebuilt_module_into_the_same_workers(served: Daemon) -> None:
    assert get(served) == b"Hello from hello!\n"
    pids = sorted(row["pid"] for row in served.status()["workers"])
    source = served.app.directory / "components" / "hello" / "hello.c"
    source.write_text(source.read_text().replace("Hello from", "Howdy from"))
    assert [result.built for result in build_app(served.app.directory)] == [True]

    reply = served.request("upgrade")

    assert reply["ok"], reply
    assert reply["result"] == {"changed": ["hello"], "failed": {}}
    assert get(served) == b"Howdy from hello!\n"
    assert sorted(row["pid"] for row in served.status()["workers"]) == pids
    assert served.request("upgrade")["result"] == {"changed": [], "failed": {}}


def test_upgrade_of_a_module_that_no_longer_compiles_keeps_the_running_code(
    served: Daemon,
) -> None:
    (served.app.directory / "wasm" / "hello.wasm").write_bytes(b"\0asm\x01\0\0\0garbage")

    reply = served.request("upgrade")

    assert reply["ok"], reply
    assert reply["result"]["changed"] == []
    assert list(reply["result"]["failed"]) == ["hello"]
    assert get(served) == b"Hello from hello!\n"
    text = served.ctl("upgrade")
    assert "hello: not upgraded (the running code stays):" in text.stdout
