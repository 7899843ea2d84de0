"""One handler per control command; each docstring is the command's help.

Runs in: main.

``dispatch`` looks the command up in ``HANDLERS``, a fixed table keyed by
the names in ``protocol.COMMANDS``: nothing is dispatched by attribute
name. A handler returns its result or raises ``CommandError`` with the
exit code rusmctl should end with. One failing command never disturbs
the daemon: anything unexpected becomes an error reply.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec
import psutil

from rusmd.config.model import Profile
from rusmd.control.protocol import COMMANDS, EX_NOSUCH, EX_REFUSED, EX_USAGE
from rusmd.control.server import Connection
from rusmd.log import LogRecord
from rusmd.process.pool import WorkerHandle

if TYPE_CHECKING:
    from rusmd.process.main import MainProcess

# `logs` returns at most this many past lines per request.
MAX_LOG_LINES = 1000


class CommandError(Exception):
    """A command the daemon refuses, with the exit code rusmctl reports."""

    def __init__(self, message: str, code: int = EX_REFUSED) -> None:
        super().__init__(message)
        self.code = code


Handler = Callable[["MainProcess", dict[str, Any], Connection], dict[str, Any]]

_process_cache: dict[int, psutil.Process] = {}


def dispatch(
    daemon: MainProcess, request: dict[str, Any], connection: Connection
) -> dict[str, Any]:
    """Run one request; always return a reply document."""
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
        return {"ok": True, "result": HANDLERS[name](daemon, args, connection)}
    except CommandError as exc:
        return {"ok": False, "error": str(exc), "code": exc.code}
    except Exception as exc:
        daemon.log.error(f"control: {name} failed: {type(exc).__name__}: {exc}")
        return {
            "ok": False,
            "error": f"{name} failed: {type(exc).__name__}: {exc}",
            "code": EX_REFUSED,
        }


def status(daemon: MainProcess, _args: dict[str, Any], _conn: Connection) -> dict[str, Any]:
    """The daemon and each worker: pid, state, uptime, restarts, last exit, CPU, RSS."""
    pool = _pool(daemon)
    now = time.monotonic()
    in_window = pool.restarts_in_window()
    for stale in set(_process_cache) - set(pool.by_pid):
        del _process_cache[stale]  # a restarted worker must not leave its entry behind
    workers = [_worker_row(pool.workers[slot], pool, now) for slot in sorted(pool.workers)]
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
    }


def list_processes(daemon: MainProcess, _args: dict[str, Any], _conn: Connection) -> dict[str, Any]:
    """The wasm processes: component#pid, worker, state, memory."""
    # TODO(#4): wasm processes are hosted once the wasm host lands.
    return {"processes": []}


def info(daemon: MainProcess, args: dict[str, Any], _conn: Connection) -> dict[str, Any]:
    """One worker (by OS pid) in detail."""
    pool = _pool(daemon)
    handle = pool.by_pid.get(_pid_arg(args))
    if handle is None:
        raise CommandError(f"no worker or process with pid {args.get('pid')}", EX_NOSUCH)
    return {"worker": _worker_row(handle, pool, time.monotonic())}


def kill(daemon: MainProcess, args: dict[str, Any], _conn: Connection) -> dict[str, Any]:
    """Kill a worker by OS pid; its supervisor replaces it."""
    pool = _pool(daemon)
    pid = _pid_arg(args)
    handle = pool.by_pid.get(pid)
    if handle is None:
        raise CommandError(f"no worker or process with pid {pid}", EX_NOSUCH)
    os.kill(pid, 9)
    daemon.log.warn(f"kill: worker {handle.slot} pid={pid} by operator")
    return {"killed": pid, "slot": handle.slot}


def restart(daemon: MainProcess, args: dict[str, Any], _conn: Connection) -> dict[str, Any]:
    """Replace worker.N (also ends its quarantine), or every worker one by one (workers)."""
    pool = _pool(daemon)
    what = str(args.get("what", ""))
    if what == "workers":
        pool.roll(daemon.manifest)
        return {"restarting": sorted(pool.workers)}
    if what.startswith("worker."):
        suffix = what.removeprefix("worker.")
        if suffix.isdigit() and pool.restart_slot(int(suffix)):
            return {"restarting": [int(suffix)]}
    raise CommandError(f"nothing to restart named {what!r} (worker.N or workers)", EX_NOSUCH)


def reload(daemon: MainProcess, _args: dict[str, Any], _conn: Connection) -> dict[str, Any]:
    """Re-read the manifest; an invalid one is rejected and nothing changes."""
    ok, message = daemon.reload()
    if not ok:
        raise CommandError(message)
    return {"message": message}


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


HANDLERS: dict[str, Handler] = {
    "status": status,
    "list": list_processes,
    "info": info,
    "kill": kill,
    "restart": restart,
    "reload": reload,
    "stop": stop,
    "profile": profile,
    "logs": logs,
}
assert set(HANDLERS) == set(COMMANDS), "every command in the table has one handler"


def _pool(daemon: MainProcess) -> Any:
    if daemon.pool is None:
        raise CommandError("the daemon is still starting")
    return daemon.pool


def _pid_arg(args: dict[str, Any]) -> int:
    value = args.get("pid")
    if isinstance(value, str) and value.isdigit():
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise CommandError(f"pid must be a number, not {value!r}", EX_USAGE)


def _worker_row(handle: WorkerHandle, pool: Any, now: float) -> dict[str, Any]:
    history = pool.history.get(handle.slot)
    cpu_percent, rss_bytes = _usage(handle.pid)
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
    from rusmd import __version__

    return __version__
