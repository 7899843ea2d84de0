"""Control command dispatch: the reply to every kind of request, good or bad.

Runs in: any (the test process; ``dispatch`` gets a fake of the few
parts of ``MainProcess`` the handlers under test reach: its log, the
control server's ``send``, the worker queries, the pool and the
manifest). No socket, no worker, no daemon.

What an operator must see: an unknown command is a usage error naming
the valid ones; a refused command is an error with its own exit code; a
command that breaks is an error reply, logged, and the next command is
answered as if nothing happened.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, cast

import pytest

from rusmd.channel import Answer
from rusmd.config.model import Profile
from rusmd.control import protocol
from rusmd.control.protocol import COMMANDS, CommandInfo
from rusmd.control.server import Connection
from rusmd.errors import EX_NOSUCH, EX_REFUSED, EX_USAGE
from rusmd.main import commands
from rusmd.main.commands import HANDLERS, dispatch

CONNECTION = cast(Connection, SimpleNamespace(streaming=False, on_close=[]))


@dataclass
class Asked:
    slots: list[int]
    op: str
    args: dict[str, Any]
    done: Callable[[dict[int, Answer | None]], None]
    timeout_s: float


@dataclass
class FakeDaemon:
    """What the handlers under test use of ``MainProcess``, recorded."""

    pool: Any = None
    profile: Profile = Profile.LIGHT
    drain_error: Exception | None = None
    errors: list[str] = field(default_factory=list)
    sent: list[dict[str, Any]] = field(default_factory=list)
    asked: list[Asked] = field(default_factory=list)
    drains: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.log = SimpleNamespace(error=self.errors.append)
        self.control = SimpleNamespace(send=lambda _conn, document: self.sent.append(document))
        self.queries = SimpleNamespace(ask=self._ask)
        self.manifest = SimpleNamespace(
            components={"api": object()}, node=SimpleNamespace(store=None), path="rusm.toml"
        )

    def _ask(
        self,
        slots: list[int],
        op: str,
        args: dict[str, Any],
        done: Callable[[dict[int, Answer | None]], None],
        timeout_s: float = 5.0,
    ) -> None:
        self.asked.append(Asked(slots, op, args, done, timeout_s))

    def pick_worker(self) -> int | None:
        return 0 if self.pool is not None else None

    def begin_drain(self, reason: str) -> None:
        if self.drain_error is not None:
            raise self.drain_error
        self.drains.append(reason)

    def set_profile(self, profile: Profile) -> None:
        self.profile = profile


def ready_pool(*slots: int, **more: Any) -> SimpleNamespace:
    """A pool whose ``slots`` each hold a ready worker, with ``more`` attributes."""
    workers = {slot: SimpleNamespace(state="ready") for slot in slots}
    return SimpleNamespace(target=len(slots), workers=workers, **more)


def run(daemon: FakeDaemon, command: Any, **args: Any) -> dict[str, Any] | None:
    return dispatch(cast(Any, daemon), {"command": command, "args": args}, CONNECTION)


# ── the command table ───────────────────────────────────────────────────


def test_every_declared_command_has_one_handler_and_no_handler_is_undeclared() -> None:
    assert set(HANDLERS) == set(COMMANDS)
    assert all(callable(handler) for handler in HANDLERS.values())


def test_a_declared_command_without_a_handler_fails_the_import(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(
        protocol.COMMANDS, "bogus", CommandInfo("bogus", "a command nobody handles")
    )
    assert commands.__file__ is not None
    spec = importlib.util.spec_from_file_location("commands_copy", commands.__file__)
    assert spec is not None and spec.loader is not None
    copy = importlib.util.module_from_spec(spec)
    with pytest.raises(RuntimeError, match="control commands and handlers differ: bogus"):
        spec.loader.exec_module(copy)


# ── requests dispatch refuses ───────────────────────────────────────────


@pytest.mark.parametrize("command", ["nope", None, 42, "dispatch", "HANDLERS", "_pool"], ids=repr)
def test_an_unknown_command_is_a_usage_error_naming_the_valid_ones(command: Any) -> None:
    daemon = FakeDaemon(pool=ready_pool(0))
    reply = run(daemon, command)
    valid = ", ".join(COMMANDS)
    assert reply == {
        "ok": False,
        "error": f"unknown command {command!r} (valid: {valid})",
        "code": EX_USAGE,
    }
    assert daemon.sent == daemon.asked == daemon.errors == []


def test_a_request_whose_args_are_not_an_object_is_a_usage_error() -> None:
    daemon = FakeDaemon(pool=ready_pool(0))
    reply = dispatch(cast(Any, daemon), {"command": "stop", "args": ["now"]}, CONNECTION)
    assert reply is not None and reply["code"] == EX_USAGE and not reply["ok"]
    assert daemon.drains == []


def test_a_request_without_args_runs_with_empty_args() -> None:
    daemon = FakeDaemon(pool=ready_pool(0))
    reply = dispatch(cast(Any, daemon), {"command": "stop"}, CONNECTION)
    assert reply == {"ok": True, "result": {"message": "draining"}}
    assert daemon.drains == ["rusmctl stop"]


# ── handlers that refuse ────────────────────────────────────────────────


@pytest.mark.parametrize(
    ("command", "args", "error", "code"),
    [
        ("spawn", {}, "spawn needs a component name", EX_USAGE),
        ("spawn", {"name": "nosuch"}, "no component named 'nosuch' (registered: api)", EX_NOSUCH),
        ("profile", {"profile": "huge"}, "unknown profile 'huge'", EX_USAGE),
        ("restart", {"what": "worker.x"}, "nothing to restart named 'worker.x'", EX_NOSUCH),
        (
            "kv",
            {"action": "get"},
            "no store configured: rusm.toml sets no [node] store",
            EX_REFUSED,
        ),
        ("logs", {"lines": -1}, "lines must be a whole number", EX_USAGE),
    ],
    ids=[
        "spawn-unnamed",
        "spawn-unknown",
        "profile-unknown",
        "restart-unknown",
        "kv-no-store",
        "logs-negative",
    ],
)
def test_a_refused_command_is_an_error_reply_with_its_exit_code(
    command: str, args: dict[str, Any], error: str, code: int
) -> None:
    pool = ready_pool(0, supervisor=SimpleNamespace(terminated=False), restart_slot=lambda _: False)
    daemon = FakeDaemon(pool=pool)
    reply = run(daemon, command, **args)
    assert reply is not None
    assert (reply["ok"], reply["code"]) == (False, code)
    assert reply["error"].startswith(error)
    assert daemon.sent == daemon.asked == daemon.errors == []


@pytest.mark.parametrize("command", ["status", "list", "restart", "profile", "kill"])
def test_a_command_before_the_pool_exists_is_refused_as_still_starting(command: str) -> None:
    daemon = FakeDaemon(pool=None)
    reply = run(daemon, command, pid="1", what="workers")
    assert reply == {"ok": False, "error": "the daemon is still starting", "code": EX_REFUSED}


# ── handlers that break ─────────────────────────────────────────────────


def test_a_handler_that_raises_is_an_error_reply_and_the_next_command_runs() -> None:
    daemon = FakeDaemon(pool=ready_pool(0, 1), drain_error=OSError(5, "Input/output error"))
    reply = run(daemon, "stop")
    assert reply == {
        "ok": False,
        "error": "stop failed: OSError: [Errno 5] Input/output error",
        "code": EX_REFUSED,
    }
    assert daemon.errors == ["control: stop failed: OSError: [Errno 5] Input/output error"]
    # Nothing else was touched, and the daemon answers the next request.
    assert daemon.sent == daemon.asked == []
    assert run(daemon, "profile") == {
        "ok": True,
        "result": {"profile": "light", "workers_target": 2},
    }
    assert run(daemon, "profile", profile="max") == {
        "ok": True,
        "result": {"profile": "max", "workers_target": 2},
    }


def test_a_deferred_reply_that_breaks_answers_the_client_with_an_error() -> None:
    daemon = FakeDaemon(pool=ready_pool(0, 1))
    assert run(daemon, "list") is None
    [asked] = daemon.asked
    assert (asked.slots, asked.op) == ([0, 1], "list")
    # A worker's answer without the field the reply sorts by.
    asked.done({0: Answer(id=1, ok=True, result={"processes": [{"name": "x"}]}), 1: None})
    assert daemon.sent == [
        {"ok": False, "error": "list failed: KeyError: 'pid'", "code": EX_REFUSED}
    ]
    assert daemon.errors == ["control: list failed: KeyError: 'pid'"]


# ── deferred replies ────────────────────────────────────────────────────


def test_spawn_is_deferred_and_answered_with_the_workers_result() -> None:
    daemon = FakeDaemon(pool=ready_pool(0))
    assert run(daemon, "spawn", name="api") is None
    [asked] = daemon.asked
    assert (asked.slots, asked.op, asked.args) == ([0], "spawn", {"component": "api"})
    asked.done({0: Answer(id=1, ok=True, result={"pid": 1000, "label": "api#1000"})})
    assert daemon.sent == [{"ok": True, "result": {"pid": 1000, "label": "api#1000"}}]


@pytest.mark.parametrize(
    ("answer", "reply"),
    [
        (
            None,
            {"ok": False, "error": "worker 0 did not answer (it may have exited)", "code": 1},
        ),
        (
            Answer(id=1, ok=False, error="no such process", code=EX_NOSUCH),
            {"ok": False, "error": "no such process", "code": EX_NOSUCH},
        ),
        (
            Answer(id=1, ok=False, error="refused"),
            {"ok": False, "error": "refused", "code": EX_REFUSED},
        ),
    ],
    ids=["no-answer", "refused-with-code", "refused-without-code"],
)
def test_a_deferred_command_the_worker_fails_is_an_error_reply(
    answer: Answer | None, reply: dict[str, Any]
) -> None:
    daemon = FakeDaemon(pool=ready_pool(0, by_pid={}))
    assert run(daemon, "kill", pid="api#1000") is None
    [asked] = daemon.asked
    assert (asked.op, asked.args) == ("kill", {"pid": 1000, "component": "api"})
    asked.done({0: answer})
    assert daemon.sent == [reply]
