"""One handler per control command, keyed by the names ``protocol.COMMANDS`` declares.

Runs in: main.

A command is declared once, as its ``CommandInfo`` in
``protocol.COMMANDS``: its name, the one line of help and its arguments,
which rusmctl turns into ``rusmctl --help`` and ``rusmctl <command>
--help`` with the stdlib alone (it never imports this package). A
handler's docstring says how the daemon carries the command out.

``dispatch`` looks the command up in ``HANDLERS``, a fixed table with
exactly the names of ``protocol.COMMANDS`` (checked when this module is
imported): nothing is dispatched by attribute name. A handler returns
its result or raises ``CommandError`` with the exit code rusmctl should
end with. Commands on wasm processes (spawn, list, info, kill) ask the
workers and return ``DEFERRED``: their reply is sent when the answers
arrive. One failing command never disturbs the daemon: anything
unexpected becomes an error reply.

The store (``[node] store``) is open in every worker and never in this
process (it forks; an LMDB environment must not cross a fork), so ``kv``
is forwarded to one ready worker, and ``status`` takes the store's
numbers from one worker's ``stats`` answer.

Pids: ``component#N`` or ``#N`` is a wasm process; a bare number is a
worker's OS pid if one has it, else a wasm pid; anything else is a
registered name (the names main keeps in ``Registry``), so a name works
wherever a pid does, and an unknown one is no such process.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec
import psutil

from rusmd import __version__
from rusmd.abi import slot_of
from rusmd.channel import Answer
from rusmd.config.model import Profile
from rusmd.control.protocol import COMMANDS
from rusmd.control.server import Connection
from rusmd.errors import EX_NOSUCH, EX_REFUSED, EX_USAGE, RusmError
from rusmd.log import LogRecord
from rusmd.main import launch
from rusmd.main.pool import WorkerHandle

if TYPE_CHECKING:
    from rusmd.main.loop import MainProcess

# `logs` returns at most this many past lines per request.
MAX_LOG_LINES = 1000
# How long `status` waits for a worker's store numbers: status must stay
# quick even when a worker's loop is busy; the store line then says so.
STORE_STATS_TIMEOUT_S = 1.0
# How long `kv` waits for its worker: a write answers after its fsync, which
# a busy disk can stretch to seconds (the guest-side wait has no timeout at
# all); kept below rusmctl's 30 s reply timeout so the client hears why.
KV_QUERY_TIMEOUT_S = 20.0


class CommandError(RusmError):
    """A command the daemon refuses, with the exit code rusmctl reports."""

    def __init__(self, message: str, code: int = EX_REFUSED) -> None:
        super().__init__(message)
        self.code = code


class _Deferred:
    """The reply will be sent later, when workers answer."""


DEFERRED = _Deferred()
_PID_FORMS = "pid must be a number, #pid, component#pid or a registered name, not {value!r}"

Handler = Callable[["MainProcess", dict[str, Any], Connection], "dict[str, Any] | _Deferred"]

_process_cache: dict[int, psutil.Process] = {}


def dispatch(
    daemon: MainProcess, request: dict[str, Any], connection: Connection
) -> dict[str, Any] | None:
    """Run one request; return the reply, or None when it is sent later."""
    name = request.get("command")
    args = request.get("args") or {}
    if not isinstance(name, str) or name not in HANDLERS or not isinstance(args, dict):
        valid = ", ".join(COMMANDS)
        return {
            "ok": False,
            "error": f"unknown command {name!r} (valid: {valid})",
            "code": EX_USAGE,
        }
    try:
        result = HANDLERS[name](daemon, args, connection)
        if isinstance(result, _Deferred):
            return None
        return {"ok": True, "result": result}
    except CommandError as exc:
        return {"ok": False, "error": str(exc), "code": exc.code}
    except Exception as exc:
        daemon.log.error(f"control: {name} failed: {type(exc).__name__}: {exc}")
        return {
            "ok": False,
            "error": f"{name} failed: {type(exc).__name__}: {exc}",
            "code": EX_REFUSED,
        }


def status(
    daemon: MainProcess, _args: dict[str, Any], conn: Connection
) -> dict[str, Any] | _Deferred:
    """The daemon, each worker (pid, state, uptime, restarts, last exit, CPU, RSS), the store."""
    result = _status(daemon)
    store_path = daemon.manifest.node.store
    if store_path is None:
        return {**result, "store": None}
    slot = _first_ready(daemon)
    if slot is None:
        return {**result, "store": {"path": store_path, "error": "no worker is ready to read it"}}

    def done(answers: dict[int, Answer | None]) -> None:
        answer = answers.get(slot)
        store: dict[str, Any] = {
            "path": store_path,
            "error": f"worker {slot} did not answer within {STORE_STATS_TIMEOUT_S:g} s",
        }
        if answer is not None and answer.ok:
            store = answer.result.get("store") or {"error": f"worker {slot} has no store open"}
            store = {"path": store_path, **store, "worker": slot}
        _reply(daemon, conn, {**result, "store": store})

    daemon.queries.ask(
        [slot], "stats", {}, _guarded(daemon, conn, "status", done), STORE_STATS_TIMEOUT_S
    )
    return DEFERRED


def _status(daemon: MainProcess, *, usage: bool = True) -> dict[str, Any]:
    """The status document; without ``usage`` the workers' CPU % and RSS are left out.

    ``stats`` leaves them out: the workers report their own CPU time and
    RSS there, and its frequent polls would reset the CPU % baseline that
    ``status`` measures from.
    """
    pool = _pool(daemon)
    now = time.monotonic()
    in_window = pool.restarts_in_window()
    for stale in set(_process_cache) - set(pool.by_pid):
        del _process_cache[stale]  # a restarted worker must not leave its entry behind
    workers = [
        _worker_row(pool.workers[slot], pool, now, usage=usage) for slot in sorted(pool.workers)
    ]
    for slot, until in sorted(pool.quarantined.items()):
        history = pool.history.get(slot)
        workers.append(
            {
                "slot": slot,
                "pid": None,
                "state": "quarantined",
                "quarantine_ends_in_s": round(max(0.0, until - now), 3),
                "quarantine_until": _iso(time.time() + max(0.0, until - now)),
                "restarts": history.restarts if history else 0,
                "last_exit": history.last_exit if history else "",
            }
        )
    for row in workers:
        row["restarts_in_window"] = in_window.get(row["slot"], 0)
    workers.sort(key=lambda row: row["slot"])
    return {
        "daemon": {
            "pid": os.getpid(),
            "version": _version(),
            "state": str(daemon.state),
            "uptime_s": round(now - daemon.started_at, 3),
            "profile": str(daemon.profile),
            "workers_target": pool.target,
            "usable_cores": daemon.cores,
            "config": daemon.manifest.path,
            "socket": str(daemon.socket_path),
            "reloads": daemon.reloads,
            "listeners": [listener.address for listener in daemon.listeners],
        },
        "workers": workers,
        "components": daemon.component_states(),
        "residents": daemon.residents.rows(),
    }


def stats(daemon: MainProcess, _args: dict[str, Any], conn: Connection) -> _Deferred:
    """The status document, each ready worker's counters, and the restarts and quarantines.

    What the node endpoint's snapshots and ``/metrics`` are made of: the
    workers answer the ``meters`` query (counters only, nothing walked),
    main adds the counts it keeps itself. A worker that does not answer
    within ``STORE_STATS_TIMEOUT_S`` is listed in ``unanswered``.
    """
    pool = _pool(daemon)
    result = _status(daemon, usage=False)
    result["main"] = {
        "worker_restarts": sum(history.restarts for history in pool.history.values()),
        "worker_quarantines": pool.quarantines,
        "resident_restarts": sum(row["restarts"] for row in result["residents"]),
        "resident_quarantines": daemon.residents.quarantines,
        "reloads": daemon.reloads,
    }
    slots = sorted(slot for slot, h in pool.workers.items() if str(h.state) == "ready")

    def done(answers: dict[int, Answer | None]) -> None:
        meters: list[dict[str, Any]] = []
        unanswered: list[int] = []
        for slot, answer in sorted(answers.items()):
            if answer is None or not answer.ok:
                unanswered.append(slot)
            else:
                meters.append(answer.result)
        _reply(daemon, conn, {**result, "meters": meters, "unanswered": unanswered})

    daemon.queries.ask(
        slots, "meters", {}, _guarded(daemon, conn, "stats", done), STORE_STATS_TIMEOUT_S
    )
    return DEFERRED


def list_processes(daemon: MainProcess, _args: dict[str, Any], conn: Connection) -> _Deferred:
    """The wasm processes: component#pid, worker, state, memory."""
    pool = _pool(daemon)
    slots = sorted(slot for slot, h in pool.workers.items() if str(h.state) == "ready")

    def done(answers: dict[int, Answer | None]) -> None:
        rows: list[dict[str, Any]] = []
        unanswered: list[int] = []
        for slot, answer in sorted(answers.items()):
            if answer is None or not answer.ok:
                unanswered.append(slot)
            else:
                rows.extend(answer.result.get("processes", []))
        rows.sort(key=lambda row: row["pid"])
        _reply(daemon, conn, {"processes": rows, "unanswered": unanswered})

    daemon.queries.ask(slots, "list", {}, _guarded(daemon, conn, "list", done))
    return DEFERRED


def info(daemon: MainProcess, args: dict[str, Any], conn: Connection) -> dict[str, Any] | _Deferred:
    """One wasm process (component#pid) or worker (OS pid) in detail."""
    pool = _pool(daemon)
    handle, pid, component = _target(daemon, args)
    if handle is not None:
        return {"worker": _worker_row(handle, pool, time.monotonic())}
    _ask_owner(daemon, conn, pid, component, "info")
    return DEFERRED


def kill(daemon: MainProcess, args: dict[str, Any], conn: Connection) -> dict[str, Any] | _Deferred:
    """Kill a wasm process (exit reason killed), or a worker by OS pid (it is replaced)."""
    handle, pid, component = _target(daemon, args)
    if handle is not None:
        os.kill(handle.pid, 9)
        daemon.log.warn(f"kill: worker {handle.slot} pid={handle.pid} by operator")
        return {"killed": handle.pid, "slot": handle.slot}
    _ask_owner(daemon, conn, pid, component, "kill")
    return DEFERRED


def spawn(daemon: MainProcess, args: dict[str, Any], conn: Connection) -> _Deferred:
    """Start a process of a registered component on a worker; reply with its pid.

    With ``module`` (``rusmctl spawn --module SPEC``), a module that is no
    component, launched ad hoc with typed entrypoint arguments (``launch``).
    """
    if args.get("module") is not None:
        if args.get("name") is not None:
            raise CommandError("spawn takes a component name or --module, not both", EX_USAGE)
        try:
            launch.start(daemon, launch.prepare(daemon, args["module"]), conn)
        except launch.LaunchRefused as exc:
            raise CommandError(str(exc), exc.code) from None
        return DEFERRED
    name = args.get("name")
    if not isinstance(name, str) or not name:
        raise CommandError("spawn needs a component name (or --module SPEC)", EX_USAGE)
    components = daemon.manifest.components
    if name not in components:
        known = ", ".join(sorted(components)) or "none"
        raise CommandError(f"no component named {name!r} (registered: {known})", EX_NOSUCH)
    slot = daemon.pick_worker()
    if slot is None:
        raise CommandError("no worker is ready to take a process")

    def done(answers: dict[int, Answer | None]) -> None:
        _reply_answer(daemon, conn, slot, answers.get(slot))

    daemon.queries.ask([slot], "spawn", {"component": name}, _guarded(daemon, conn, "spawn", done))
    return DEFERRED


def send(daemon: MainProcess, args: dict[str, Any], conn: Connection) -> _Deferred:
    """Put a text message in a process's mailbox (sender pid 0: the operator)."""
    text = args.get("text")
    if not isinstance(text, str):
        raise CommandError("send needs the message text", EX_USAGE)
    handle, pid, component = _target(daemon, args)
    if handle is not None:
        raise CommandError(f"{pid} is a worker's OS pid, not a process", EX_USAGE)
    _ask_owner(daemon, conn, pid, component, "send", extra={"text": text})
    return DEFERRED


def restart(daemon: MainProcess, args: dict[str, Any], _conn: Connection) -> dict[str, Any]:
    """Replace worker.N (also ends its quarantine), or every worker one by one (workers)."""
    pool = _pool(daemon)
    what = str(args.get("what", ""))
    if pool.supervisor.terminated:
        raise CommandError("the daemon is stopping", EX_REFUSED)
    if what == "workers":
        pool.roll(daemon.manifest)
        return {"restarting": sorted(pool.workers)}
    if what.startswith("worker."):
        suffix = what.removeprefix("worker.")
        if suffix.isdigit() and pool.restart_slot(int(suffix)):
            return {"restarting": [int(suffix)]}
    raise CommandError(f"nothing to restart named {what!r} (worker.N or workers)", EX_NOSUCH)


def reload(daemon: MainProcess, _args: dict[str, Any], conn: Connection) -> _Deferred:
    """Re-read and compile the manifest; an invalid one is rejected and nothing changes."""

    def answer(ok: bool, message: str) -> None:
        if ok:
            _reply(daemon, conn, {"message": message})
        else:
            daemon.control.send(conn, {"ok": False, "error": message, "code": EX_REFUSED})

    daemon.reload(answer)
    return DEFERRED


def upgrade(daemon: MainProcess, _args: dict[str, Any], conn: Connection) -> _Deferred:
    """Recompile the running manifest's modules; hand changed ones to the workers, no roll.

    Workers, listeners and running processes stay; new processes run the
    new code. A component that no longer compiles keeps its running code
    and is listed under ``failed`` (``rusmd dev`` sends this after a build).
    """

    def answer(ok: bool, result: dict[str, Any]) -> None:
        if ok:
            _reply(daemon, conn, result)
        else:
            daemon.control.send(conn, {"ok": False, "error": result["error"], "code": EX_REFUSED})

    daemon.upgrade(answer)
    return DEFERRED


def stop(daemon: MainProcess, _args: dict[str, Any], _conn: Connection) -> dict[str, Any]:
    """Drain the workers and stop the daemon (exit 0)."""
    daemon.begin_drain("rusmctl stop")
    return {"message": "draining"}


def profile(daemon: MainProcess, args: dict[str, Any], _conn: Connection) -> dict[str, Any]:
    """Show the profile, or set it live: the pool grows or drains."""
    wanted = args.get("profile")
    if wanted:
        valid = [p.value for p in Profile]
        if wanted not in valid:
            raise CommandError(f"unknown profile {wanted!r} (valid: {', '.join(valid)})", EX_USAGE)
        daemon.set_profile(Profile(wanted))
    pool = _pool(daemon)
    return {"profile": str(daemon.profile), "workers_target": pool.target}


def logs(daemon: MainProcess, args: dict[str, Any], conn: Connection) -> dict[str, Any]:
    """Recent log records; with follow, new ones stream until the client hangs up."""
    count = args.get("lines", 100)
    if not isinstance(count, int) or count < 0:
        raise CommandError("lines must be a whole number", EX_USAGE)
    records = [_record(r) for r in daemon.ring.tail(min(count, MAX_LOG_LINES))]
    if args.get("follow"):
        conn.streaming = True

        def forward(record: LogRecord) -> None:
            daemon.control.send(conn, {"log": _record(record)})

        token = daemon.ring.subscribe(forward)
        conn.on_close.append(lambda: daemon.ring.unsubscribe(token))
    return {"records": records, "follow": bool(args.get("follow"))}


def kv(daemon: MainProcess, args: dict[str, Any], conn: Connection) -> _Deferred:
    """Get, set, list or remove a key in the node store, through one ready worker."""
    if daemon.manifest.node.store is None:
        raise CommandError(
            f"no store configured: {daemon.manifest.path} sets no [node] store "
            '(e.g. store = "data/app.mdb")',
            EX_REFUSED,
        )
    slot = _first_ready(daemon)
    if slot is None:
        raise CommandError("no worker is ready to reach the store")

    def done(answers: dict[int, Answer | None]) -> None:
        answer = answers.get(slot)
        if answer is None and args.get("action") in ("set", "rm"):
            # The commit may be on disk already: say so rather than "failed".
            error = (
                f"worker {slot} did not answer the kv {args['action']} (it exited or timed "
                "out); the write may or may not have been applied"
            )
            daemon.control.send(conn, {"ok": False, "error": error, "code": EX_REFUSED})
            return
        _reply_answer(daemon, conn, slot, answer)

    daemon.queries.ask(
        [slot], "kv", args, _guarded(daemon, conn, "kv", done), timeout_s=KV_QUERY_TIMEOUT_S
    )
    return DEFERRED


HANDLERS: dict[str, Handler] = {
    "status": status,
    "list": list_processes,
    "info": info,
    "kill": kill,
    "spawn": spawn,
    "send": send,
    "restart": restart,
    "reload": reload,
    "upgrade": upgrade,
    "stop": stop,
    "profile": profile,
    "logs": logs,
    "stats": stats,
    "kv": kv,
}
_UNMATCHED = sorted(set(HANDLERS) ^ set(COMMANDS))
if _UNMATCHED:
    # Not an assert: a command rusmctl offers must never lack its handler,
    # even under python -O.
    raise RuntimeError(
        f"control commands and handlers differ: {', '.join(_UNMATCHED)} "
        "(declare each command in protocol.COMMANDS and give it one handler here)"
    )


def _pool(daemon: MainProcess) -> Any:
    if daemon.pool is None:
        raise CommandError("the daemon is still starting")
    return daemon.pool


def _first_ready(daemon: MainProcess) -> int | None:
    """The lowest ready worker slot, or None."""
    pool = _pool(daemon)
    ready = [slot for slot, handle in pool.workers.items() if str(handle.state) == "ready"]
    return min(ready, default=None)


def _target(daemon: MainProcess, args: dict[str, Any]) -> tuple[WorkerHandle | None, int, str]:
    """A worker (by OS pid) or a wasm pid, from ``N``, ``#N``, ``component#N`` or a name.

    A value that is no pid form is looked up among the registered names;
    one that is neither is no such process (exit 3), unless it cannot be a
    name either (empty, or ``#`` without digits after it): a usage error.
    """
    pool = _pool(daemon)
    value = args.get("pid")
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value:
        raise CommandError(_PID_FORMS.format(value=value), EX_USAGE)
    component, hash_sign, digits = value.rpartition("#")
    if not digits.isdigit():
        if value in daemon.registry.names:
            return None, daemon.registry.names[value], ""
        if hash_sign:
            raise CommandError(_PID_FORMS.format(value=value), EX_USAGE)
        raise CommandError(f"no process registered as {value!r}", EX_NOSUCH)
    pid = int(digits)
    if not hash_sign:
        handle = pool.by_pid.get(pid)
        if handle is not None:
            return handle, pid, ""
    return None, pid, component


def _ask_owner(
    daemon: MainProcess,
    conn: Connection,
    pid: int,
    component: str,
    op: str,
    *,
    extra: dict[str, Any] | None = None,
) -> None:
    pool = _pool(daemon)
    slot = slot_of(pid)
    if slot not in pool.workers:
        raise CommandError(f"no worker or process with pid {pid}", EX_NOSUCH)

    def done(answers: dict[int, Answer | None]) -> None:
        _reply_answer(daemon, conn, slot, answers.get(slot))

    ask_args = {"pid": pid, "component": component, **(extra or {})}
    daemon.queries.ask([slot], op, ask_args, _guarded(daemon, conn, op, done))


def _guarded(
    daemon: MainProcess, conn: Connection, name: str, done: Callable[[Any], None]
) -> Callable[[Any], None]:
    """``done`` with its failure caught, as ``dispatch`` catches a handler's.

    A deferred reply runs from the main loop, not from ``dispatch``: a
    bug there must answer the client with an error, not stop the daemon.
    """

    def guarded(answers: Any) -> None:
        try:
            done(answers)
        except Exception as exc:
            daemon.log.error(f"control: {name} failed: {type(exc).__name__}: {exc}")
            error = f"{name} failed: {type(exc).__name__}: {exc}"
            daemon.control.send(conn, {"ok": False, "error": error, "code": EX_REFUSED})

    return guarded


def _reply_answer(daemon: MainProcess, conn: Connection, slot: int, answer: Answer | None) -> None:
    if answer is None:
        daemon.control.send(
            conn,
            {
                "ok": False,
                "error": f"worker {slot} did not answer (it may have exited)",
                "code": EX_REFUSED,
            },
        )
    elif not answer.ok:
        daemon.control.send(
            conn, {"ok": False, "error": answer.error, "code": answer.code or EX_REFUSED}
        )
    else:
        _reply(daemon, conn, answer.result)


def _reply(daemon: MainProcess, conn: Connection, result: dict[str, Any]) -> None:
    daemon.control.send(conn, {"ok": True, "result": result})


def _worker_row(
    handle: WorkerHandle, pool: Any, now: float, *, usage: bool = True
) -> dict[str, Any]:
    history = pool.history.get(handle.slot)
    cpu_percent, rss_bytes = _usage(handle.pid) if usage else (None, None)
    return {
        "slot": handle.slot,
        "pid": handle.pid,
        "state": str(handle.state),
        "generation": handle.generation,
        "uptime_s": round(now - handle.started_at, 3),
        "restarts": history.restarts if history else 0,
        "last_exit": history.last_exit if history else "",
        "cpu_percent": cpu_percent,
        "rss_bytes": rss_bytes,
        "heartbeat_age_s": round(now - handle.last_heartbeat, 3),
        "mesh_peers": handle.peers,
        "processes": handle.processes,
    }


def _usage(pid: int) -> tuple[float, int]:
    try:
        process = _process_cache.get(pid)
        if process is None:
            process = _process_cache[pid] = psutil.Process(pid)
            process.cpu_percent(None)  # the first call only sets the baseline
        return process.cpu_percent(None), process.memory_info().rss
    except psutil.Error:
        _process_cache.pop(pid, None)
        return 0.0, 0


def _record(record: LogRecord) -> dict[str, Any]:
    document: dict[str, Any] = msgspec.to_builtins(
        {"time": record.time, "source": record.source, "level": record.level, "text": record.text}
    )
    return document


def _iso(epoch_s: float) -> str:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch_s))
    return f"{stamp}.{int(epoch_s % 1 * 1000):03d}Z"


def _version() -> str:
    return __version__
