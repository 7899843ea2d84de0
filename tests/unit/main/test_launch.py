"""``spawn --module`` in the main process: refused specs, the compile, the worker query.

Runs in: any (the test process; ``dispatch`` gets a fake of what the
launch reaches of ``MainProcess``: its manifest, the compile, the worker
queries and the control server's ``send``). No compile child, no worker.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from rusmd.channel import Answer, ComponentImage
from rusmd.control.server import Connection
from rusmd.errors import EX_NOSUCH, EX_REFUSED, EX_USAGE
from rusmd.main.commands import dispatch
from rusmd.main.compile import CompileJob, CompileResult

CONNECTION = cast(Connection, SimpleNamespace(streaming=False, on_close=[]))
SPEC = "path=mods/tool.wasm;entrypoint=go;capabilities=allow-spawn;args=utf8:hi,u16:7000"


@dataclass
class FakeDaemon:
    """What ``spawn --module`` uses of ``MainProcess``, recorded."""

    app_dir: Path
    busy: bool = False
    errors: list[str] = field(default_factory=list)
    sent: list[dict[str, Any]] = field(default_factory=list)
    asked: list[tuple[str, dict[str, Any], Callable[..., None]]] = field(default_factory=list)
    compiles: list[tuple[CompileJob, Callable[..., None]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.log = SimpleNamespace(error=self.errors.append)
        self.control = SimpleNamespace(send=lambda _conn, document: self.sent.append(document))
        self.queries = SimpleNamespace(
            ask=lambda _slots, op, args, done: self.asked.append((op, args, done))
        )
        self.manifest = SimpleNamespace(app_dir=str(self.app_dir), capabilities={}, components={})

    def pick_worker(self) -> int | None:
        return 1

    def compile_module(self, job: CompileJob, done: Callable[..., None]) -> bool:
        if self.busy:
            return False
        self.compiles.append((job, done))
        return True


@pytest.fixture
def daemon(tmp_path: Path) -> FakeDaemon:
    (tmp_path / "mods").mkdir()
    (tmp_path / "mods" / "tool.wasm").write_bytes(b"\0asm\1\0\0\0")
    return FakeDaemon(tmp_path)


def spawn(daemon: FakeDaemon, **args: Any) -> dict[str, Any] | None:
    return dispatch(cast(Any, daemon), {"command": "spawn", "args": args}, CONNECTION)


@pytest.mark.parametrize(
    ("args", "code", "error"),
    [
        ({"module": "path=../tool.wasm"}, EX_USAGE, "--module: path '../tool.wasm' has a '..'"),
        ({"module": "path=mods/nosuch.wasm"}, EX_NOSUCH, "--module: no module at"),
        ({"module": "path=mods/tool.wasm;args=u8:256"}, EX_USAGE, "--module: u8 value 256"),
        ({"module": ""}, EX_USAGE, "spawn --module needs a spec"),
        ({"module": "path=mods/tool.wasm", "name": "api"}, EX_USAGE, "spawn takes a component"),
    ],
)
def test_a_bad_spec_is_refused_before_anything_is_compiled(
    daemon: FakeDaemon, args: dict[str, Any], code: int, error: str
) -> None:
    reply = spawn(daemon, **args)

    assert reply is not None and (reply["ok"], reply["code"]) == (False, code)
    assert reply["error"].startswith(error), reply["error"]
    assert daemon.compiles == [] and daemon.asked == [] and daemon.sent == []


def test_a_good_spec_compiles_then_asks_a_worker_with_the_typed_arguments(
    daemon: FakeDaemon,
) -> None:
    assert spawn(daemon, module=SPEC) is None  # answered later
    [(job, compiled)] = daemon.compiles
    assert (job.name, job.path) == ("tool.wasm", str(daemon.app_dir / "mods" / "tool.wasm"))

    compiled([], {"tool.wasm": CompileResult("tool.wasm", ok=True, cwasm="/c/x", digest="d")})

    [(op, args, done)] = daemon.asked
    assert op == "spawn_module"
    assert args["name"] == "tool.wasm"
    assert args["entry"] == "go"
    assert args["arguments"] == [["i32", 2], ["i32", 7000]]
    assert args["inbox"] == [b"hi"]
    assert args["image"] == {"name": "tool.wasm", "cwasm": "/c/x", "digest": "d", "error": ""}
    assert args["capability"]["allow_spawn"] is True
    assert args["capability"]["allow_storage"] is False
    assert ComponentImage(**args["image"]).cwasm == "/c/x"
    assert daemon.sent == []

    result = {"pid": 1001, "label": "tool.wasm#1001", "worker": 1, "component": "tool.wasm"}
    done({1: Answer(id=1, ok=True, result=result)})

    assert daemon.sent == [{"ok": True, "result": result}]


def test_a_module_that_does_not_compile_is_an_error_and_no_worker_is_asked(
    daemon: FakeDaemon,
) -> None:
    spawn(daemon, module=SPEC)
    [(_job, compiled)] = daemon.compiles

    failed = CompileResult("tool.wasm", ok=False, error="component tool.wasm: bad magic")
    compiled([], {"tool.wasm": failed})

    assert daemon.asked == []
    assert daemon.sent == [
        {"ok": False, "error": "component tool.wasm: bad magic", "code": EX_REFUSED}
    ]


def test_a_worker_refusal_is_the_reply_with_its_code(daemon: FakeDaemon) -> None:
    spawn(daemon, module=SPEC)
    [(_job, compiled)] = daemon.compiles
    compiled([], {"tool.wasm": CompileResult("tool.wasm", ok=True, cwasm="/c/x", digest="d")})
    [(_op, _args, done)] = daemon.asked

    done({1: Answer(id=1, ok=False, error="tool.wasm exports no function 'go'", code=EX_USAGE)})

    assert daemon.sent == [
        {"ok": False, "error": "tool.wasm exports no function 'go'", "code": EX_USAGE}
    ]


def test_a_launch_while_another_compile_runs_is_refused(daemon: FakeDaemon) -> None:
    daemon.busy = True

    reply = spawn(daemon, module=SPEC)

    assert reply is not None and reply["code"] == EX_REFUSED
    assert "a compile is already running" in reply["error"]
