"""Helpers for the actor tests: the actor guest, its apps, and a driver.

Runs in: any (the test process).

The guest is ``tests/guests/actor.c``, a command interpreter: a test
sends it text with ``rusmctl send`` (``link 3001``, ``call 2000 500
hi``, ``crash``…), and it logs what it receives and each command's
result (``result link=0``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from rusmd.errors import EX_OK
from tests.guests.build import GUESTS, build_c_guest
from tests.integration.conftest import App, Daemon, wait_for

# Long enough for a loaded two-core machine to spawn, deliver and log.
SETTLE_S = 20.0

TRUSTED = "trusted"
CAPABILITIES = """
[capabilities.boss]
allow-spawn = true
allow-process-control = true
"""


@pytest.fixture(scope="session")
def actor_wasm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``tests/guests/actor.c`` built once per session, and beside it the
    ``actor-nospawn.wasm`` build without the spawn imports (a sandboxed
    profile cannot run a module that imports them)."""
    out = tmp_path_factory.mktemp("guests")
    build_c_guest(GUESTS / "actor.c", out / "actor-nospawn.wasm", defines=["ACTOR_NO_SPAWN"])
    return build_c_guest(GUESTS / "actor.c", out / "actor.wasm")


def write_actor_app(app: App, actor_wasm: Path, components: dict[str, str]) -> None:
    """An app whose components (name → extra TOML lines) all run the actor guest;
    those with a sandboxed capability run the build without spawn imports."""
    wasm = app.directory / "wasm"
    wasm.mkdir(exist_ok=True)
    tables = []
    for name, extra in components.items():
        build = actor_wasm
        if '"sandboxed"' in extra:
            build = actor_wasm.with_name("actor-nospawn.wasm")
        (wasm / f"{name}.wasm").write_bytes(build.read_bytes())
        tables.append(f"[components.{name}]\n{extra}\n")
    app.manifest.write_text(
        f'[node]\nlisten = "127.0.0.1:{app.node_port}"\n[log]\nlevel = "info"\n'
        + CAPABILITIES
        + "".join(tables)
    )


class Actors:
    """Drive actor guests on one daemon through rusmctl and its log."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon

    def spawn(self, component: str, *, slot: int | None = None) -> int:
        """Spawn ``component`` (on worker ``slot`` if given) and wait until it is ready."""
        for _ in range(8):
            result = self.daemon.ctl("spawn", component, "--json")
            assert result.returncode == EX_OK, result.stderr
            pid = int(json.loads(result.stdout)["pid"])
            if slot is None or pid % 1000 == slot:
                self.line(pid, component, f"ready {pid}")
                return pid
            self.daemon.ctl("kill", str(pid))
        raise AssertionError(f"no spawn of {component} landed on worker {slot}")

    def send(self, pid: int | str, text: str) -> None:
        result = self.daemon.ctl("send", str(pid), text)
        assert result.returncode == EX_OK, result.stderr

    def lines(self, source: str | None = None) -> list[str]:
        records = self.daemon.log_records()
        return [
            r["text"] if source is not None else f"{r['source']} {r['text']}"
            for r in records
            if source is None or r["source"] == source
        ]

    def line(self, pid: int, component: str, prefix: str) -> str:
        """Wait for a line of ``component#pid`` starting with ``prefix``."""
        source = f"{component}#{pid}"

        def found() -> str | None:
            return next((t for t in self.lines(source) if t.startswith(prefix)), None)

        return wait_for(found, SETTLE_S, f"{source} to log {prefix!r}")

    def result(self, pid: int, component: str, op: str, command: str) -> str:
        """Run ``command`` in the guest and return what it logged for ``op``."""
        before = len([t for t in self.lines(f"{component}#{pid}") if t.startswith(f"result {op}=")])
        self.send(pid, command)
        source = f"{component}#{pid}"

        def found() -> str | None:
            hits = [t for t in self.lines(source) if t.startswith(f"result {op}=")]
            return hits[before] if len(hits) > before else None

        line = wait_for(found, SETTLE_S, f"{source} to log result {op}=")
        return line.removeprefix(f"result {op}=")

    def exit_line(self, pid: int, component: str) -> str:
        """Wait for the ``exit component#pid …`` line and return it."""
        label = f"{component}#{pid}"

        def found() -> str | None:
            return next(
                (
                    r["text"]
                    for r in self.daemon.log_records()
                    if r["source"] == "rusm" and r["text"].startswith(f"exit {label} ")
                ),
                None,
            )

        return wait_for(found, SETTLE_S, f"{label} to exit")

    def alive(self, pid: int) -> bool:
        return self.daemon.ctl("info", f"#{pid}").returncode == EX_OK

    def info(self, pid: int) -> dict[str, Any]:
        result = self.daemon.ctl("info", f"#{pid}", "--json")
        assert result.returncode == EX_OK, result.stderr
        process: dict[str, Any] = json.loads(result.stdout)["process"]
        return process
