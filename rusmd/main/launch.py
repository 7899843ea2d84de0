"""``rusmctl spawn --module SPEC``: run a module that is no manifest component.

Runs in: main.

The spec (``rusmd.config.launch``) is parsed and resolved here, against
the app dir and the manifest's profiles; a bad one is refused before
anything is compiled, with exit 2 (or 3 for a missing file). The module
is then compiled by the compile child, as components are (same cache,
same limits), and one ready worker loads it under the spec's profile,
checks its imports and its entrypoint's signature, puts the ``utf8`` and
``buffer`` arguments in its mailbox and runs it (``spawn_module`` query).
Whatever fails there fails the command, and no process is left behind.

The process is named for the module's file: ``greeter.wasm#2001`` in
``rusmctl list``; ``rusmctl kill`` and ``info`` take that name like a
component's.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec

from rusmd.channel import Answer, ComponentImage
from rusmd.config.launch import Launch, LaunchError, ModuleMissing, parse_spec, resolve
from rusmd.errors import EX_NOSUCH, EX_REFUSED, EX_USAGE
from rusmd.main.compile import CompileJob, CompileResult

if TYPE_CHECKING:
    from rusmd.control.server import Connection
    from rusmd.main.loop import MainProcess


_F = TypeVar("_F", bound=Callable[..., None])


class LaunchRefused(LaunchError):
    """A launch the daemon cannot carry out now, with the exit code rusmctl reports."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def prepare(daemon: MainProcess, text: object) -> Launch:
    """The spec, parsed and resolved against the running manifest.

    Raises:
        LaunchRefused: The spec is malformed (exit 2) or names no file (exit 3).
    """
    if not isinstance(text, str) or not text.strip():
        raise LaunchRefused("spawn --module needs a spec (path=<module>.wasm;...)", EX_USAGE)
    manifest = daemon.manifest
    try:
        spec = parse_spec(text)
        return resolve(spec, Path(manifest.app_dir), manifest.capabilities)
    except LaunchError as exc:
        code = EX_NOSUCH if isinstance(exc, ModuleMissing) else EX_USAGE
        raise LaunchRefused(str(exc), code) from None


def start(daemon: MainProcess, launch: Launch, conn: Connection) -> None:
    """Compile the module, then have one ready worker spawn it; reply when it did.

    Raises:
        LaunchRefused: No worker is ready, or another compile is running.
    """
    if daemon.pick_worker() is None:
        raise LaunchRefused("no worker is ready to take a process", EX_REFUSED)
    name = launch.spec.name
    job = CompileJob(name=name, path=str(launch.module), pre_initialize=True)

    @_guarded(daemon, conn)
    def compiled(_images: list[ComponentImage], results: dict[str, CompileResult]) -> None:
        result = results.get(name)
        if result is None or not result.ok:
            why = result.error if result is not None else f"{name}: compile cancelled"
            _refuse(daemon, conn, why, EX_REFUSED)
            return
        _spawn_on_worker(daemon, launch, result.image(), conn)

    if not daemon.compile_module(job, compiled):
        raise LaunchRefused(
            "a compile is already running (start-up, reload or upgrade); retry", EX_REFUSED
        )


def _spawn_on_worker(
    daemon: MainProcess, launch: Launch, image: ComponentImage, conn: Connection
) -> None:
    slot = daemon.pick_worker()
    if slot is None:
        _refuse(daemon, conn, "no worker is ready to take a process", EX_REFUSED)
        return
    spec = launch.spec
    args: dict[str, Any] = {
        "name": spec.name,
        "image": msgspec.to_builtins(image),
        "capability": msgspec.to_builtins(launch.capability),
        "entry": spec.entrypoint,
        "arguments": [[str(arg.wasm_type), arg.value] for arg in spec.arguments],
        "inbox": [arg.data for arg in spec.arguments if arg.data is not None],
    }

    @_guarded(daemon, conn)
    def done(answers: dict[int, Answer | None]) -> None:
        answer = answers.get(slot)
        if answer is None:
            why = f"worker {slot} did not answer (it may have exited)"
            _refuse(daemon, conn, why, EX_REFUSED)
        elif not answer.ok:
            _refuse(daemon, conn, answer.error, answer.code or EX_REFUSED)
        else:
            daemon.control.send(conn, {"ok": True, "result": answer.result})

    daemon.queries.ask([slot], "spawn_module", args, done)


def _guarded(daemon: MainProcess, conn: Connection) -> Callable[[_F], _F]:
    """A deferred step whose failure answers the client, as ``dispatch`` does a handler's."""

    def wrap(step: _F) -> _F:
        def guarded(*args: Any) -> None:
            try:
                step(*args)
            except Exception as exc:
                daemon.log.error(f"control: spawn --module failed: {type(exc).__name__}: {exc}")
                _refuse(daemon, conn, f"spawn failed: {type(exc).__name__}: {exc}", EX_REFUSED)

        return guarded  # type: ignore[return-value]

    return wrap


def _refuse(daemon: MainProcess, conn: Connection, error: str, code: int) -> None:
    daemon.control.send(conn, {"ok": False, "error": error, "code": code})
