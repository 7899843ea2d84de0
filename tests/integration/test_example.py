"""The bundled example app (``make run``) on the real daemon.

Runs in: any (the test process; ``rusmd`` runs as a subprocess).

``examples/hello`` is a resident greeter: rusmd boot-spawns it, registers
it as ``hello`` and restarts it with fresh state when its worker dies.
"""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Callable

from rusmd.control.protocol import EX_OK
from tests.guests.build import ROOT, build_c_guest
from tests.integration.conftest import App, Daemon, wait_for

EXAMPLE = ROOT / "examples" / "hello"
SETTLE_S = 20.0


def example_app(app: App) -> None:
    """The example's manifest on this test's free ports, its guest built fresh."""
    text = (EXAMPLE / "rusm.toml").read_text()
    text = text.replace("127.0.0.1:4000", f"127.0.0.1:{app.node_port}")
    text = text.replace("127.0.0.1:8080", f"127.0.0.1:{app.serve_port}")
    app.manifest.write_text(text)
    (app.directory / "wasm").mkdir(exist_ok=True)
    build_c_guest(EXAMPLE / "components" / "hello.c", app.directory / "wasm" / "hello.wasm")


def greetings(daemon: Daemon) -> list[str]:
    return [r["text"] for r in daemon.log_records() if r["source"].startswith("hello#")]


def test_the_example_greets_and_comes_back_fresh_after_its_worker_dies(
    app: App, start_daemon: Callable[..., Daemon]
) -> None:
    example_app(app)
    daemon = start_daemon()
    wait_for(
        lambda: "hello from a rusm guest" in greetings(daemon) or None,
        SETTLE_S,
        "the greeting",
    )
    assert daemon.ctl("send", "hello", "world").returncode == EX_OK
    wait_for(
        lambda: "hello, world! (greeting #1)" in greetings(daemon) or None,
        SETTLE_S,
        "the greeter to greet",
    )
    resident = next(r for r in daemon.status()["residents"] if r["name"] == "hello")
    os.kill(daemon.workers()[resident["worker"]]["pid"], signal.SIGKILL)
    wait_for(
        lambda: next(
            (
                r
                for r in daemon.status()["residents"]
                if r["state"] == "running" and r["pid"] != resident["pid"]
            ),
            None,
        ),
        SETTLE_S,
        "the greeter to be back",
    )
    assert daemon.ctl("send", "hello", "again").returncode == EX_OK
    wait_for(
        lambda: "hello, again! (greeting #1)" in greetings(daemon) or None,
        SETTLE_S,
        "a fresh greeter to greet",
    )
    status = daemon.ctl("status").stdout
    assert re.search(r"hello\s+hello#\d+\s+\d+\s+running\s+1\s", status), status
