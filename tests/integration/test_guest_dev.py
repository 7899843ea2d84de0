"""``rusmd dev``: an edited handler is rebuilt and served live under steady load.

Runs in: tests (``rusmd dev`` and its daemon child run in their own
session; teardown kills that process group).
"""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

from rusmd.guest.builder import COMPILE_TIMEOUT_S
from rusmd.guest.scaffold import create_app
from tests.integration.conftest import (
    READY_TIMEOUT_S,
    SCRUBBED_VARIABLES,
    all_ready,
    free_port,
    request_socket,
    wait_for,
)

# Generous: the switch takes about a second (build, then the daemon's
# compile child); a loaded two-core machine may take several.
SWITCH_TIMEOUT_S = 30.0
# One request of the steady client.
REQUEST_TIMEOUT_S = 10.0
# Requests seen after the failed build, all of them still answered by the old code.
AFTER_FAILURE_REQUESTS = 20

pytestmark = pytest.mark.timeout(COMPILE_TIMEOUT_S * 2)


@dataclass
class SteadyClient:
    """A thread making one request after another, recording each.

    With ``keep_alive`` every request goes over one connection, which must
    stay open through the upgrades; else each request opens its own.
    """

    port: int
    keep_alive: bool = False
    bodies: list[bytes] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=REQUEST_TIMEOUT_S)
        while not self.stop.is_set():
            try:
                conn.request("GET", "/")
                response = conn.getresponse()
                body = response.read()
                if response.status != 200:
                    self.failures.append(f"{response.status} {body!r}")
                self.bodies.append(body)
            except (OSError, http.client.HTTPException) as exc:
                self.failures.append(repr(exc))
            if not self.keep_alive or self.failures:
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=REQUEST_TIMEOUT_S)
        conn.close()

    def count(self, body: bytes) -> int:
        return sum(1 for seen in list(self.bodies) if seen == body)


@dataclass
class DevRun:
    app: Path
    port: int
    log_path: Path
    proc: subprocess.Popen[bytes]

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def status(self) -> dict[str, object] | None:
        try:
            reply = request_socket(self.app / ".rusm" / "rusmd.sock", {"command": "status"})
        except (OSError, EOFError):
            return None
        return reply["result"] if reply.get("ok") else None

    def worker_pids(self) -> list[int]:
        status = self.status()
        assert status is not None
        return sorted(row["pid"] for row in status["workers"])  # type: ignore[attr-defined]


@pytest.fixture
def dev(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> Iterator[DevRun]:
    work = tmp_path_factory.mktemp("dev")
    port = free_port()
    create_app(work / "hello", "http", port=port, node_port=free_port())
    environment = {k: v for k, v in os.environ.items() if k not in SCRUBBED_VARIABLES}
    environment.update(NO_COLOR="1", PYTHONUNBUFFERED="1")
    log_path = tmp_path / "dev.log"
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "rusmd", "dev", "--profile", "light", "--cpus", "2"],
            cwd=work / "hello",
            env=environment,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    run = DevRun(work / "hello", port, log_path, proc)
    try:
        yield run
    finally:
        # The daemon runs in a session of its own (Ctrl-C reaches only
        # rusmd dev, which stops it): its group is killed on its own.
        groups = [proc.pid]
        try:
            groups += [child.pid for child in psutil.Process(proc.pid).children()]
        except psutil.NoSuchProcess:
            pass
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
        for group in groups:
            try:
                os.killpg(group, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait()


def test_dev_edit_under_load_switches_to_the_new_text_then_a_syntax_error_keeps_it(
    dev: DevRun,
) -> None:
    try:
        status = wait_for(
            lambda: (s := dev.status()) is not None and all_ready(s),  # type: ignore[arg-type]
            READY_TIMEOUT_S + COMPILE_TIMEOUT_S,
            "rusmd dev's daemon to be ready",
        )
        assert status
        pids = dev.worker_pids()
        client = SteadyClient(dev.port)
        kept = SteadyClient(dev.port, keep_alive=True)
        threads = [threading.Thread(target=c.run, daemon=True) for c in (client, kept)]
        for thread in threads:
            thread.start()
        wait_for(lambda: client.count(b"Hello from hello!\n") >= 5, SWITCH_TIMEOUT_S, "old text")

        source = dev.app / "components" / "hello" / "hello.c"
        source.write_text(source.read_text().replace("Hello from", "Howdy from"))
        edited = time.monotonic()
        wait_for(lambda: client.count(b"Howdy from hello!\n"), SWITCH_TIMEOUT_S, "the new text")
        switched_s = time.monotonic() - edited
        # Once switched, no response goes back to the old text.
        seen = len(client.bodies)
        wait_for(lambda: len(client.bodies) >= seen + 10, SWITCH_TIMEOUT_S, "more responses")
        assert set(client.bodies[seen:]) == {b"Howdy from hello!\n"}

        source.write_text(source.read_text() + "int broken = ;\n")
        wait_for(lambda: "build hello: failed" in dev.log(), SWITCH_TIMEOUT_S, "the failure")
        seen = len(client.bodies)
        wait_for(
            lambda: len(client.bodies) >= seen + AFTER_FAILURE_REQUESTS,
            SWITCH_TIMEOUT_S,
            "responses after the failed build",
        )
        for steady, thread in zip((client, kept), threads, strict=True):
            steady.stop.set()
            thread.join(timeout=REQUEST_TIMEOUT_S * 2)
        assert set(client.bodies[seen:]) == {b"Howdy from hello!\n"}
        assert not client.failures, client.failures[:5]
        assert not kept.failures, f"the kept-alive connection failed: {kept.failures[:5]}"
        assert kept.count(b"Howdy from hello!\n"), "the kept-alive connection saw the new text"
        assert set(client.bodies) == {b"Hello from hello!\n", b"Howdy from hello!\n"}
        assert dev.worker_pids() == pids, "the workers were replaced"
        log = dev.log()
        assert "components/hello/hello.c:" in log and "error: expected expression" in log
        assert log.count("dev: upgraded hello") == 1
        assert f"serving http at http://127.0.0.1:{dev.port}/" in log
        print(f"switched {switched_s:.2f} s after the edit")  # reported, not asserted
    except AssertionError:
        print(dev.log())
        raise
