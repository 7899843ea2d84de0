"""The apps under ``examples/`` (besides ``hello``) on the real daemon.

Runs in: any (the test process; ``rusmd build``, ``rusmd check`` and
``rusmd`` run as subprocesses).

Each test copies an example's manifest and ``components/`` into a fresh
app directory, moves every listen port to a free one, builds it the way
its README says (``rusmd build``) and runs it: ``api``, an HTTP API over
the node store; ``counter``, a resident service that handlers call;
``ticker``, an SSE stream per request; ``capabilities``, one granted, one
denied and one refused component; ``chat``, a process per WebSocket
joined through a resident room; ``supervision``, a tree that restarts a
crashing child alone, then, past its intensity, starts over.
"""

from __future__ import annotations

import http.client
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.guests.build import ROOT
from tests.integration.conftest import App, Daemon, free_port

EXAMPLES = ROOT / "examples"
SETTLE_S = 20.0
# A cold compiler cache builds wasi-libc first: tens of seconds on 2 cores.
BUILD_TIMEOUT_S = 300
EX_OK = 0
EX_CONFIG = 78

LISTEN = re.compile(r'^listen = "127\.0\.0\.1:(\d+)"', re.MULTILINE)


def rusmd(app: App, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rusmd", *args],
        cwd=app.directory,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_S,
        check=False,
    )


def example_app(app: App, name: str) -> dict[int, int]:
    """Example ``name`` in ``app``'s directory on free ports, built with ``rusmd
    build``; the example's port → this test's port."""
    example = EXAMPLES / name
    text = (example / "rusm.toml").read_text()
    moved = {int(port): free_port() for port in LISTEN.findall(text)}
    moved[4000] = app.node_port
    text = LISTEN.sub(lambda found: f'listen = "127.0.0.1:{moved[int(found[1])]}"', text)
    app.manifest.write_text(text)
    shutil.copytree(example / "components", app.directory / "components")
    built = rusmd(app, "build")
    assert built.returncode == EX_OK, built.stderr
    return moved


def fetch(port: int, method: str, path: str, **kwargs: Any) -> tuple[int, str, bytes]:
    """One request: status, content-type, body."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=SETTLE_S)
    try:
        conn.request(method, path, **kwargs)
        response = conn.getresponse()
        return response.status, response.getheader("content-type", ""), response.read()
    finally:
        conn.close()


def test_every_example_has_a_readme_a_manifest_and_components() -> None:
    examples = sorted(path.name for path in EXAMPLES.iterdir() if path.is_dir())

    expected = {"hello", "api", "counter", "ticker", "capabilities", "chat", "supervision"}
    assert expected <= set(examples)
    for name in examples:
        assert (EXAMPLES / name / "README.md").is_file(), name
        assert (EXAMPLES / name / "rusm.toml").is_file(), name
        assert list((EXAMPLES / name / "components").glob("*.c")), name


# ── api: routes, parameters and the node store ──────────────────────────


def test_api_example_stores_reads_and_deletes_items_across_a_restart(
    app: App, start_daemon: Callable[..., Daemon]
) -> None:
    port = example_app(app, "api")[8080]
    daemon = start_daemon()

    status, _, body = fetch(port, "GET", "/")
    assert status == 200
    assert body.startswith(b"rusm API example")
    assert fetch(port, "GET", "/items/fruit") == (
        404,
        "application/json",
        b'{"error":"no such item"}',
    )
    assert fetch(port, "PUT", "/items/fruit", body=b"apple") == (
        201,
        "application/json",
        b'{"key":"fruit","value":"apple"}',
    )
    status, _, body = fetch(port, "PUT", "/items/fruit", body=b'a "pear"\n')
    assert status == 200
    assert json.loads(body) == {"key": "fruit", "value": 'a "pear"\n'}
    status, _, body = fetch(port, "PUT", "/items/two%20words", body=b"spaced")
    assert status == 201
    assert json.loads(body) == {"key": "two words", "value": "spaced"}
    status, _, body = fetch(port, "PUT", "/items/" + "k" * 200, body=b"x")
    assert (status, json.loads(body)) == (400, {"error": "key longer than 127 bytes"})

    assert daemon.stop() == EX_OK
    start_daemon()

    status, _, body = fetch(port, "GET", "/items/fruit")
    assert (status, json.loads(body)) == (200, {"key": "fruit", "value": 'a "pear"\n'})
    assert fetch(port, "DELETE", "/items/fruit")[0] == 204
    assert fetch(port, "DELETE", "/items/fruit")[0] == 404
    assert fetch(port, "GET", "/items/fruit")[0] == 404
    assert json.loads(fetch(port, "GET", "/items/two%20words")[2])["value"] == "spaced"


# ── ticker: a server-sent event stream per request ─────────────────────


def test_ticker_example_streams_the_ticks_asked_for_and_refuses_a_bad_query(
    app: App, start_daemon: Callable[..., Daemon]
) -> None:
    port = example_app(app, "ticker")[8081]
    start_daemon()

    status, content_type, body = fetch(port, "GET", "/ticks?n=3&every-ms=20")
    assert (status, content_type) == (200, "text/event-stream")
    assert body == b"".join(b'event: tick\ndata: {"tick":%d,"of":3}\n\n' % i for i in range(1, 4))
    status, _, body = fetch(port, "GET", "/countdown/3")
    assert status == 200
    assert body == (
        b"event: count\ndata: 3\n\nevent: count\ndata: 2\n\nevent: count\ndata: 1\n\n"
        b"event: liftoff\ndata: 0\n\n"
    )
    for path in ("/ticks?n=0", "/ticks?n=ten", "/ticks?every-ms=1", "/countdown/1000"):
        status, content_type, _ = fetch(port, "GET", path)
        assert (status, content_type) == (400, "text/plain; charset=utf-8"), path


# ── capabilities: granted, denied per call, refused at load ────────────


def test_capabilities_example_check_names_the_refused_import(app: App) -> None:
    example_app(app, "capabilities")

    checked = rusmd(app, "check")

    assert checked.returncode == EX_CONFIG
    assert checked.stderr.splitlines() == [
        "rusm.toml:35: components.spawner: capability denied: spawner imports rusm.spawn, "
        "which needs allow-spawn"
    ]


def test_capabilities_example_grants_denies_and_refuses_as_its_profiles_say(
    app: App, start_daemon: Callable[..., Daemon]
) -> None:
    port = example_app(app, "capabilities")[8080]
    daemon = start_daemon()

    assert fetch(port, "POST", "/keeper", body=b"hi")[::2] == (200, b"stored\n")
    assert fetch(port, "POST", "/locked", body=b"hi")[::2] == (403, b"kv_set: denied\n")
    assert fetch(port, "POST", "/spawner")[0] == 503
    for line in (
        "rusm.kv_set: denied (needs allow-storage)",
        "capability denied: spawner imports rusm.spawn, which needs allow-spawn",
    ):
        daemon.wait_for(
            lambda line=line: [r for r in daemon.log_records() if line in r["text"]],
            SETTLE_S,
            f"{line!r} in the log",
        )


# ── counter: a resident service that handlers call ─────────────────────


def test_counter_example_keeps_counts_across_requests_until_the_counter_restarts(
    app: App, start_daemon: Callable[..., Daemon]
) -> None:
    port = example_app(app, "counter")[8080]
    daemon = start_daemon()
    daemon.wait_for(
        lambda: next((r for r in daemon.status()["residents"] if r["state"] == "running"), None),
        SETTLE_S,
        "the counter to run",
    )

    def count(method: str, path: str) -> tuple[int, dict[str, Any]]:
        status, content_type, body = fetch(port, method, path)
        assert content_type == "application/json", body
        return status, json.loads(body)

    assert count("GET", "/counts/visits") == (200, {"name": "visits", "count": 0})
    for expected in (1, 2, 3):
        assert count("POST", "/counts/visits") == (200, {"name": "visits", "count": expected})
    assert count("POST", "/counts/visits?by=10") == (200, {"name": "visits", "count": 13})
    assert count("POST", "/counts/other?by=-2") == (200, {"name": "other", "count": -2})
    assert count("GET", "/counts/visits") == (200, {"name": "visits", "count": 13})
    assert count("POST", "/counts/visits?by=lots")[0] == 400

    [resident] = daemon.status()["residents"]
    assert daemon.ctl("kill", str(resident["pid"])).returncode == EX_OK
    daemon.wait_for(
        lambda: next(
            (
                r
                for r in daemon.status()["residents"]
                if r["state"] == "running" and r["pid"] != resident["pid"]
            ),
            None,
        ),
        SETTLE_S,
        "a fresh counter",
    )
    assert count("GET", "/counts/visits") == (200, {"name": "visits", "count": 0})


# ── chat: per-connection processes joined through a resident room ──────


def test_chat_example_relays_every_line_to_every_member_and_says_who_left(
    app: App, start_daemon: Callable[..., Daemon]
) -> None:
    port = example_app(app, "chat")[8082]
    daemon = start_daemon()
    daemon.wait_for(
        lambda: [r for r in daemon.log_records() if r["text"] == "the room is open"],
        SETTLE_S,
        "the room to open",
    )
    url = f"ws://127.0.0.1:{port}/"

    with connect(url + "?name=alice", open_timeout=SETTLE_S) as alice:
        assert alice.recv(timeout=SETTLE_S) == "* alice joined"
        with connect(url + "?name=bob", open_timeout=SETTLE_S) as bob:
            assert bob.recv(timeout=SETTLE_S) == "* bob joined"
            assert alice.recv(timeout=SETTLE_S) == "* bob joined"
            alice.send("hi bob")
            assert bob.recv(timeout=SETTLE_S) == "alice: hi bob"
            assert alice.recv(timeout=SETTLE_S) == "alice: hi bob"
            bob.send("hello, alice")
            assert alice.recv(timeout=SETTLE_S) == "bob: hello, alice"
            assert bob.recv(timeout=SETTLE_S) == "bob: hello, alice"
        assert alice.recv(timeout=SETTLE_S) == "* bob left"

    with (
        connect(url + "?name=" + "x" * 40, open_timeout=SETTLE_S) as long_name,
        pytest.raises(ConnectionClosed) as closed,
    ):
        long_name.recv(timeout=SETTLE_S)
    assert closed.value.rcvd is not None
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (4008, "a name is 1 to 32 bytes")


# ── supervision: a tree that survives crashing children ───────────────


def test_supervision_example_restarts_a_crashing_child_alone_then_the_whole_tree(
    app: App, start_daemon: Callable[..., Daemon]
) -> None:
    example_app(app, "supervision")
    daemon = start_daemon()

    def lines(prefix: str) -> list[str]:
        return [r["text"] for r in daemon.log_records() if r["text"].startswith(prefix)]

    def wait_lines(prefix: str, count: int) -> list[str]:
        return daemon.wait_for(
            lambda: lines(prefix) if len(lines(prefix)) >= count else None,
            SETTLE_S,
            f"{count} line(s) {prefix!r}",
        )

    def send(name: str, text: str) -> None:
        assert daemon.ctl("send", name, text).returncode == EX_OK

    wait_lines("tree up as pid ", 1)
    [steady] = wait_lines("steady up as pid ", 1)
    steady_pid = steady.removeprefix("steady up as pid ")
    wait_lines("flaky up as pid ", 1)
    send("steady", "ping")
    wait_lines(f"steady pid {steady_pid}: ping #1", 1)

    for restarts in (1, 2):
        send("flaky", "crash")
        flaky = wait_lines("flaky up as pid ", 1 + restarts)
        assert len(set(flaky)) == 1 + restarts  # a new pid each time
    send("steady", "ping")
    wait_lines(f"steady pid {steady_pid}: ping #2", 1)
    assert len(lines("steady up as pid ")) == 1
    assert len(lines("tree up as pid ")) == 1

    # A third crash within period_s is more than intensity 2: the supervisor
    # gives up, the tree goes down with it, and rusmd restarts the resident.
    send("flaky", "crash")
    wait_lines("tree up as pid ", 2)
    assert re.search(
        r"supervisor#\d+: restart intensity 2 in 10s reached; giving up", daemon.read_log()
    )
    assert re.search(r"exit tree#\d+ shutdown \(linked to supervisor#\d+\)", daemon.read_log())
    steadies = wait_lines("steady up as pid ", 2)
    wait_lines("flaky up as pid ", 4)
    fresh_pid = steadies[-1].removeprefix("steady up as pid ")
    assert fresh_pid != steady_pid
    send("steady", "ping")
    wait_lines(f"steady pid {fresh_pid}: ping #1", 1)
