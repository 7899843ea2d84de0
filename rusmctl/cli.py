"""The ``rusmctl`` command line: one connection per run to the control socket.

Runs in: rusmctl (stdlib plus the shared command table).

Each run sends one request, except ``kv list``, which sends one per page
of keys on the same connection (``kv.py``).

Exit codes follow sysexits: 0 ok, 1 the daemon refused (the message says
why), 2 usage, 3 no such pid/name/component/key, 69 daemon not reachable
(or, for ``kv``, its store cannot be opened), 77 permission denied.

``--socket`` and ``--json`` are global options, accepted before or after
the verb. ``--json`` prints one JSON document on stdout; without it the
output is text a person reads (a sentence or a table), never JSON. A
process is named by ``component#pid``, ``#pid``, a worker's OS pid, or a
registered name, for every verb that takes one.

The socket: ``--socket``, else ``$RUSMD_SOCKET``, else
``$RUNTIME_DIRECTORY/rusmd.sock``, else ``./.rusm/rusmd.sock`` (the app
dir), else ``/run/rusmd/rusmd.sock`` (the systemd unit's).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rusmd.control.protocol import (
    COMMANDS,
    MAX_REPLY_BYTES,
    FrameReader,
    ProtocolError,
    encode_frame,
)
from rusmd.errors import EX_NOPERM, EX_OK, EX_REFUSED, EX_UNAVAILABLE
from rusmd.store import kv_command as kv

SYSTEMD_SOCKET = Path("/run/rusmd/rusmd.sock")
# How long to wait for a reply: a reload that rolls workers answers at once,
# so a daemon silent this long is wedged.
REPLY_TIMEOUT_S = 30.0


def socket_path(explicit: str | None) -> Path:
    """Where the daemon's control socket is, by the documented search order."""
    if explicit:
        return Path(explicit)
    if os.environ.get("RUSMD_SOCKET"):
        return Path(os.environ["RUSMD_SOCKET"])
    runtime = os.environ.get("RUNTIME_DIRECTORY")
    if runtime:
        return Path(runtime.split(":")[0]) / "rusmd.sock"
    local = Path.cwd() / ".rusm" / "rusmd.sock"
    if not local.exists() and SYSTEMD_SOCKET.exists():
        return SYSTEMD_SOCKET
    return local


def build_parser() -> argparse.ArgumentParser:
    """One subcommand per entry of the shared command table.

    ``--socket`` and ``--json`` are global: accepted before the verb (on the
    main parser, which holds their defaults) or after it (on each verb, and
    on each ``kv`` action). Given after the verb they default to SUPPRESS, so
    a verb without them keeps what was given before it.
    """
    parser = argparse.ArgumentParser(prog="rusmctl", description="Control a running rusmd.")
    _common_flags(parser, None, False)
    common = _common_flags(
        argparse.ArgumentParser(add_help=False), argparse.SUPPRESS, argparse.SUPPRESS
    )
    verbs = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for info in COMMANDS.values():
        sub = verbs.add_parser(
            info.name, help=info.summary, description=info.summary, parents=[common]
        )
        for name, help_text, required in info.args:
            sub.add_argument(name, help=help_text, nargs=None if required else "?")
        if info.name == "logs":
            sub.add_argument("-f", "--follow", action="store_true", help="stream new lines")
            sub.add_argument("-n", "--lines", type=int, default=100, help="past lines (100)")
        if info.name == "spawn":
            sub.add_argument(
                "--module",
                metavar="SPEC",
                help="launch a module ad hoc: 'path=x.wasm;entrypoint=start;"
                "capabilities=allow-network,...;params=utf8,u16;args=localhost,7000' "
                "(path relative to the app dir; see docs/operations.md)",
            )
        if info.name == "kv":
            kv.add_kv_parsers(sub, [common])
    return parser


def _common_flags(
    parser: argparse.ArgumentParser, socket_default: Any, json_default: Any
) -> argparse.ArgumentParser:
    parser.add_argument(
        "--socket", metavar="PATH", default=socket_default, help="the control socket"
    )
    parser.add_argument(
        "--json", action="store_true", default=json_default, help="print one JSON document"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``rusmctl`` command."""
    args = build_parser().parse_args(argv)
    try:
        request_args = _request_args(args)
    except kv.KvRefused as exc:
        return _fail(str(exc), exc.code, as_json=args.json)
    path = socket_path(args.socket)
    try:
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.settimeout(REPLY_TIMEOUT_S)
        conn.connect(str(path))
    except PermissionError:
        return _fail(f"permission denied on the control socket {path}", EX_NOPERM, args.json)
    except OSError as exc:
        reason = exc.strerror or exc
        return _fail(f"rusmd is not reachable at {path}: {reason}", EX_UNAVAILABLE, args.json)
    with conn:
        try:
            frames = FrameStream(conn)
            if args.command == "kv":
                return _kv(frames, args, request_args)
            conn.sendall(encode_frame({"command": args.command, "args": request_args}))
            reply = frames.next()
            if not reply.get("ok"):
                return _fail(
                    str(reply.get("error", "refused")),
                    int(reply.get("code", EX_REFUSED)),
                    as_json=args.json,
                    reply=reply,
                )
            following = args.command == "logs" and args.follow
            if following and args.json:
                # JSON Lines while streaming: the reply, then one record per line.
                print(json.dumps(reply["result"]), flush=True)
            else:
                _print_result(args.command, reply["result"], args.json)
            if following:
                conn.settimeout(None)
                while True:
                    _print_log(frames.next()["log"], args.json)
        except KeyboardInterrupt:
            return EX_OK
        except (OSError, ProtocolError, EOFError) as exc:
            message = f"lost the connection to rusmd at {path}: {exc}"
            return _fail(message, EX_UNAVAILABLE, args.json)
    return EX_OK


def _request_args(args: argparse.Namespace) -> dict[str, Any]:
    """The request's ``args`` from the command line.

    Raises:
        kv.KvRefused: ``kv set`` names a value file that cannot be read.
    """
    if args.command == "kv":
        return kv.request(args, sys.stdin.buffer)
    request_args = {
        name: getattr(args, name)
        for name, _, _ in COMMANDS[args.command].args
        if getattr(args, name) is not None
    }
    if args.command == "logs":
        request_args.update(lines=args.lines, follow=args.follow)
    if args.command == "spawn" and args.module is not None:
        request_args["module"] = args.module
    return request_args


def _kv(frames: FrameStream, args: argparse.Namespace, first: dict[str, Any]) -> int:
    """``kv``: one request, or for list one per page, on the same connection."""

    def ask(request_args: dict[str, Any]) -> dict[str, Any]:
        frames.conn.sendall(encode_frame({"command": "kv", "args": request_args}))
        reply = frames.next()
        if not reply.get("ok"):
            error, code = str(reply.get("error", "refused")), int(reply.get("code", EX_REFUSED))
            raise kv.KvRefused(error, code)
        result: dict[str, Any] = reply["result"]
        return result

    try:
        kv.run(ask, args, first, sys.stdout.buffer)
    except kv.KvRefused as exc:
        return _fail(str(exc), exc.code, as_json=args.json)
    return EX_OK


class FrameStream:
    """Frames read off one connection, in order."""

    def __init__(self, conn: socket.socket) -> None:
        self.conn = conn
        self.reader = FrameReader(MAX_REPLY_BYTES)
        self.pending: list[dict[str, Any]] = []

    def next(self) -> dict[str, Any]:
        """The next frame; EOFError when the daemon hangs up."""
        while not self.pending:
            data = self.conn.recv(65536)
            if not data:
                raise EOFError("the daemon closed the connection")
            self.pending = self.reader.feed(data)
        return self.pending.pop(0)


def _fail(
    message: str, code: int, as_json: bool = False, reply: dict[str, Any] | None = None
) -> int:
    if as_json:
        print(json.dumps(reply or {"ok": False, "error": message, "code": code}))
    print(f"rusmctl: {message}", file=sys.stderr)
    return code


def _print_result(command: str, result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(result, indent=2))
        return
    if command == "status":
        _print_status(result)
    elif command == "list":
        _print_list(result)
    elif command == "info":
        _print_info(result)
    elif command == "spawn":
        print(f"spawned {result['label']} on worker {result['worker']}")
    elif command == "kill":
        _print_kill(result)
    elif command == "send":
        print(f"sent to {result['label']}")
    elif command == "restart":
        _print_restart(result)
    elif command == "logs":
        for record in result["records"]:
            _print_log(record, False)
    elif command == "profile":
        print(f"profile {result['profile']}: {result['workers_target']} worker(s)")
    elif command == "upgrade":
        _print_upgrade(result)
    elif "message" in result:
        print(result["message"])
    else:
        _print_fields(result)


def _print_upgrade(result: dict[str, Any]) -> None:
    changed = ", ".join(result["changed"])
    print(f"upgraded {changed}" if changed else "upgrade: no component's code changed")
    for name, error in sorted(result["failed"].items()):
        print(f"{name}: not upgraded (the running code stays): {error}")


def _print_info(result: dict[str, Any]) -> None:
    if "worker" in result:
        worker = result["worker"]
        print(f"worker {worker['slot']} (pid {worker['pid']})")
        _print_fields(worker)
        return
    process = dict(result.get("process") or {})
    print(process.get("label") or f"#{process.get('pid')}")
    if isinstance(process.get("started"), float | int):
        process["started"] = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(process["started"]))
    _print_fields({key: value for key, value in process.items() if key != "children"})
    children = process.get("children")
    if children is not None:
        print()
        print(f"{'CHILD':<20}{'PROCESS':<12}{'STATE':<14}RESTARTS")
        for child in children:
            pid = "-" if child.get("pid") is None else f"#{child['pid']}"
            print(f"{child['id']:<20}{pid:<12}{child['state']:<14}{child['restarts_in_window']}")


def _print_kill(result: dict[str, Any]) -> None:
    if "label" in result:
        print(f"killed {result['label']}")
    else:
        print(f"killed worker {result['slot']} (pid {result['killed']}); it is being replaced")


def _print_restart(result: dict[str, Any]) -> None:
    slots = result["restarting"]
    if len(slots) == 1:
        print(f"restarting worker {slots[0]}")
    elif slots:
        shown = ", ".join(str(slot) for slot in slots)
        print(f"restarting workers {shown}, one at a time")
    else:
        print("no worker to restart")


def _print_fields(fields: dict[str, Any]) -> None:
    """One ``key  value`` line per field; lists joined, nothing left as JSON."""
    for key, value in fields.items():
        print(f"{key:<18}{_field(value)}")


def _field(value: Any) -> str:
    if value in (None, "", []):
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ", ".join(_field(item) for item in value)
    if isinstance(value, dict):
        return ", ".join(f"{key}={_field(item)}" for key, item in value.items())
    return str(value)


def _print_status(result: dict[str, Any]) -> None:
    daemon = result["daemon"]
    print(
        f"rusmd {daemon['version']} pid {daemon['pid']} {daemon['state']}, up "
        f"{_duration(daemon['uptime_s'])}, profile {daemon['profile']} "
        f"({daemon['workers_target']} worker(s) of {daemon['usable_cores']} core(s))"
    )
    print(f"config {daemon['config']}  socket {daemon['socket']}")
    if result.get("store") is not None:
        print(_store_line(result["store"]))
    print("RESTARTS is total/within the intensity period")
    print()
    header = f"{'SLOT':<5}{'PID':<9}{'STATE':<13}{'UPTIME':<9}{'RESTARTS':<12}{'CPU%':<7}"
    print(f"{header}{'RSS':<10}{'PROCS':<7}LAST EXIT")
    for worker in result["workers"]:
        if worker["state"] == "quarantined":
            state = (
                f"quarantined until {worker['quarantine_until']} "
                f"({worker['quarantine_ends_in_s']:.1f}s)"
            )
            print(f"{worker['slot']:<5}{'-':<9}{state:<50}{worker['last_exit']}")
            continue
        print(
            f"{worker['slot']:<5}{worker['pid']:<9}{worker['state']:<13}"
            f"{_duration(worker['uptime_s']):<9}"
            f"{str(worker['restarts']) + '/' + str(worker['restarts_in_window']):<12}"
            f"{worker['cpu_percent']:<7.1f}{_size(worker['rss_bytes']):<10}"
            f"{worker.get('processes', 0):<7}{worker['last_exit'] or '-'}"
        )
    components = result.get("components") or []
    if components:
        print()
        print(f"{'COMPONENT':<24}{'STATE':<12}DETAIL")
        for component in components:
            print(f"{component['name']:<24}{component['state']:<12}{component['detail']}")
    residents = result.get("residents") or []
    if residents:
        print()
        print(f"{'RESIDENT':<20}{'PROCESS':<24}{'WORKER':<8}{'STATE':<14}{'RESTARTS':<10}LAST EXIT")
        for resident in residents:
            state = resident["state"]
            if "quarantine_ends_in_s" in resident:
                state = f"quarantined ({resident['quarantine_ends_in_s']:.1f}s left)"
            worker = "-" if resident["worker"] is None else resident["worker"]
            print(
                f"{resident['name']:<20}{resident['label'] or '-':<24}{worker:<8}"
                f"{state:<14}{resident['restarts']:<10}{resident['last_exit'] or '-'}"
            )


def _store_line(store: dict[str, Any]) -> str:
    if "error" in store:
        return f"store {store['path']}: {store['error']}"
    return (
        f"store {store['path']}  file {_human(store['file_bytes'])}  "
        f"map {_human(store['map_bytes'])} ({_human(store['used_bytes'])} used)  "
        f"entries {store['entries']}  buckets {store['buckets']}  "
        f"readers {store['readers']}/{store['max_readers']}"
    )


def _print_list(result: dict[str, Any]) -> None:
    processes = result["processes"]
    if not processes:
        print("no wasm processes")
        return
    print(
        f"{'PROCESS':<28}{'WORKER':<8}{'STATE':<10}{'MEMORY':<10}{'CPU':<10}{'UPTIME':<8}"
        f"{'MBOX':<6}{'NAME':<16}{'LINKS':<20}MONITORS"
    )
    for process in processes:
        name = f"{process['component']}#{process['pid']}"
        print(
            f"{name:<28}{process['worker']:<8}{process['state']:<10}"
            f"{_size(process['memory_bytes']):<10}{_cpu(process.get('cpu_ms', 0)):<10}"
            f"{_duration(process['uptime_s']):<8}"
            f"{process.get('mailbox', 0):<6}{','.join(process.get('names', [])) or '-':<16}"
            f"{_pids(process.get('links', [])):<20}{_pids(process.get('monitors', []))}"
        )
    for slot in result.get("unanswered", []):
        print(f"(worker {slot} did not answer)")


def _pids(pids: list[int]) -> str:
    if not pids:
        return "-"
    shown = ",".join(f"#{pid}" for pid in pids[:3])
    return shown if len(pids) <= 3 else f"{shown},+{len(pids) - 3}"


def _print_log(record: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(record), flush=True)
        return
    stamp = time.strftime("%H:%M:%S", time.localtime(record["time"]))
    millis = int(record["time"] % 1 * 1000)
    print(
        f"{stamp}.{millis:03d} {record['source']:<16} {record['level']:<5} {record['text']}",
        flush=True,
    )


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _cpu(ms: float) -> str:
    """CPU time a process used: 0.4ms, 12ms, 3.2s, 41m."""
    if ms < 10:
        return f"{ms:.1f}ms"
    if ms < 10_000:
        return f"{ms:.0f}ms"
    if ms < 600_000:
        return f"{ms / 1000:.1f}s"
    return f"{ms / 60_000:.0f}m"


def _size(count: int) -> str:
    return f"{count / (1 << 20):.1f}M"


def _human(count: int) -> str:
    """Bytes with a binary unit: 512B, 32.0K, 1.5M, 2.0G."""
    if count < 1024:
        return f"{count}B"
    size = count / 1024
    for unit in ("K", "M"):
        if size < 1024:
            return f"{size:.1f}{unit}"
        size /= 1024
    return f"{size:.1f}G"
