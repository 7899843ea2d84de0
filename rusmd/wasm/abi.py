"""The guest ABI: the ``rusm`` import module's functions, error codes and log levels.

Runs in: any (pure data: the worker links from it, ``rusmd check`` and the
docs read it, the main process may import it).

This table is the contract with guest authors; ``docs/abi.md`` and
``rusmd/sdk/c/rusm.h`` follow it, and a test checks that they agree. Each
function names the capability grant it needs: a function whose grant the
component's profile lacks is not linked, and a module that imports it is
refused at spawn with ``capability denied`` before any guest code runs.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

# The wasm import module every host function lives in.
ABI_MODULE = "rusm"
# Bumped on any incompatible change; part of the AOT cache key.
ABI_VERSION = 2
# The WASI preview 1 module a C or Rust guest imports for libc.
WASI_MODULE = "wasi_snapshot_preview1"


class Grant(enum.StrEnum):
    """The capability key a host function needs (``always`` needs none)."""

    ALWAYS = "always"
    NETWORK = "allow-network"
    SPAWN = "allow-spawn"
    PROCESS_CONTROL = "allow-process-control"
    STORAGE = "allow-storage"


class LogLevel(enum.IntEnum):
    """``rusm.log`` levels; they map to the platform logger's levels."""

    ERROR = 0
    WARN = 1
    INFO = 2
    DEBUG = 3


@dataclass(frozen=True)
class HostFunction:
    """One import of the ``rusm`` module.

    Attributes:
        name: The import name.
        params: Wasm parameter types with names, as ("name", "i32") pairs.
        results: Wasm result types.
        grant: The capability it needs.
        summary: One line for the docs.
        blocking: True when the call may wait (it has its own timeout and
            is woken by a kill).
        checked_per_call: Linked for every profile; a caller whose profile
            lacks ``grant`` gets DENIED from the call instead of being refused
            at spawn (the kv functions).
    """

    name: str
    params: tuple[tuple[str, str], ...]
    results: tuple[str, ...]
    grant: Grant
    summary: str
    blocking: bool = False
    checked_per_call: bool = False


def _fn(
    name: str,
    params: str,
    results: str,
    grant: Grant,
    summary: str,
    *,
    blocking: bool = False,
    checked_per_call: bool = False,
) -> HostFunction:
    """A ``HostFunction`` from compact "name:type name:type" spellings."""
    pairs = tuple(tuple(p.split(":")) for p in params.split()) if params else ()
    return HostFunction(
        name,
        pairs,  # type: ignore[arg-type]
        tuple(results.split()),
        grant,
        summary,
        blocking,
        checked_per_call,
    )


A, SP, ST = Grant.ALWAYS, Grant.SPAWN, Grant.STORAGE
_KV_ERRORS = "DENIED (no allow-storage), NOSTORE, INVALID (bucket or key), UNAVAILABLE"

# The functions that act on the request or connection a process serves.
SERVING_FUNCTIONS = frozenset(
    {"request", "respond", "write", "flush", "sse_event", "ws_send", "ws_close"}
)
# Functions an HTTP handler may import and still run on the worker's I/O
# thread (nothing in them waits); a handler importing anything else runs
# on a guest thread of its own (see docs/abi.md, "Serving"). The kv reads
# are here: an LMDB read is a lookup in the mapped file, with no lock a
# writer holds (a write waits for its commit, so kv_set and the rest are not).
INLINE_FUNCTIONS = frozenset(
    {
        "self",
        "log",
        "exit",
        "request",
        "respond",
        "write",
        "flush",
        "kv_get",
        "kv_exists",
        "kv_list",
    }
)
# WASI imports that block the calling thread (wasmtime's WASI calls are
# synchronous): a sleep, stdin, a yield. A module importing one runs each
# process on a guest thread of its own, never as a fiber on the loop
# (docs/abi.md, "Where a process runs"); a handler importing one never
# runs inline.
WASI_BLOCKING = frozenset({"poll_oneoff", "fd_read", "sched_yield"})

FUNCTIONS: dict[str, HostFunction] = {
    f.name: f
    for f in (
        _fn("self", "", "i64", A, "The caller's own pid."),
        _fn(
            "log",
            "level:i32 ptr:i32 len:i32",
            "i32",
            A,
            "Write one UTF-8 line to the platform log at a level (0 error … 3 debug); "
            "0, or INVALID for an unknown level or bad UTF-8.",
        ),
        _fn(
            "exit",
            "code:i32",
            "",
            A,
            "End the caller now: code 0 exits normal, any other code exits crashed.",
        ),
        _fn(
            "sleep",
            "ms:i32",
            "i32",
            A,
            "Block the caller for ms milliseconds (not counted against its CPU budget); "
            "0, or INVALID for a negative time.",
            blocking=True,
        ),
        _fn(
            "send",
            "pid:i64 ptr:i32 len:i32",
            "i32",
            A,
            "Send len bytes to pid's mailbox (FIFO per sender and receiver); 0, NOPROC when "
            "the pid is known dead, LIMIT when its mailbox is full (dropped), TOOBIG.",
        ),
        _fn(
            "recv",
            "header_ptr:i32 buf_ptr:i32 buf_cap:i32 timeout_ms:i32",
            "i32",
            A,
            "Take the oldest message (timeout_ms -1 waits forever, 0 polls): writes the "
            "32-byte header, the payload into buf, returns its size; TIMEOUT, or TOOBIG "
            "(header written, the message stays) when buf is too small.",
            blocking=True,
        ),
        _fn(
            "call",
            "pid:i64 req_ptr:i32 req_len:i32 buf_ptr:i32 buf_cap:i32 timeout_ms:i32",
            "i32",
            A,
            "Send a request and wait for its reply: the reply's size (only buf_cap bytes "
            "are written), or NOPROC (the callee is or goes down), TIMEOUT, LIMIT, "
            "TOOBIG, INVALID (calling itself).",
            blocking=True,
        ),
        _fn(
            "reply",
            "pid:i64 ref:i64 ptr:i32 len:i32",
            "i32",
            A,
            "Answer a call message (its sender and ref); 0, NOPROC, TOOBIG.",
        ),
        _fn(
            "register",
            "name_ptr:i32 name_len:i32",
            "i32",
            A,
            "Give the caller a node-wide name; 0, EXISTS (taken, or the caller has one), "
            "INVALID, UNAVAILABLE.",
            blocking=True,
        ),
        _fn(
            "unregister",
            "name_ptr:i32 name_len:i32",
            "i32",
            A,
            "Drop one of the caller's own names; 0, NOTFOUND, DENIED (another's name), INVALID.",
        ),
        _fn(
            "whereis",
            "name_ptr:i32 name_len:i32",
            "i64",
            A,
            "The pid registered under a name, or NOTFOUND, INVALID.",
        ),
        _fn(
            "link",
            "pid:i64",
            "i32",
            A,
            "Link the caller and pid (both ways); 0, or NOPROC when pid is known dead.",
        ),
        _fn("unlink", "pid:i64", "i32", A, "Remove a link; 0."),
        _fn(
            "monitor",
            "pid:i64",
            "i64",
            A,
            "Watch pid: a down message arrives when it exits (at once, reason noproc, "
            "if it is not alive); the monitor ref (> 0).",
        ),
        _fn(
            "demonitor",
            "ref:i64",
            "i32",
            A,
            "Drop a monitor and any down message it already queued; 0, or NOTFOUND.",
        ),
        _fn(
            "trap_exit",
            "on:i32",
            "i32",
            A,
            "Turn exit signals from links into exit messages (1) or not (0); the old value.",
        ),
        _fn(
            "exit_signal",
            "pid:i64 reason:i32",
            "i32",
            A,
            "Send an exit signal with a reason (ends the caller when pid is itself); "
            "another pid needs allow-process-control, else DENIED; 0, NOPROC, INVALID "
            "(an unknown reason, or noproc).",
        ),
        _fn(
            "kill",
            "pid:i64",
            "i32",
            A,
            "Kill a process, untrappably (reason killed); another pid needs "
            "allow-process-control, else DENIED; 0, or NOPROC.",
        ),
        _fn(
            "is_alive",
            "pid:i64",
            "i32",
            A,
            "1 if the process is alive, 0 if not (a pid on another worker is asked there); "
            "another pid needs allow-process-control, else DENIED.",
            blocking=True,
        ),
        _fn(
            "list",
            "buf_ptr:i32 max:i32",
            "i32",
            A,
            "Write up to max pids (i64) of the caller's worker's processes, return how many "
            "there are; without allow-process-control only the caller's own pid; INVALID "
            "for a negative max.",
        ),
        _fn(
            "info",
            "pid:i64 buf_ptr:i32 buf_cap:i32",
            "i32",
            A,
            "One process as JSON: its size (only buf_cap bytes are written), NOPROC; another "
            "pid needs allow-process-control, else DENIED.",
            blocking=True,
        ),
        _fn(
            "send_after",
            "pid:i64 ms:i32 ptr:i32 len:i32",
            "i64",
            A,
            "Send a timer message to pid after ms milliseconds; the timer ref (> 0), INVALID, "
            "TOOBIG, LIMIT.",
        ),
        _fn(
            "cancel_timer",
            "ref:i64",
            "i32",
            A,
            "Cancel a timer so it never fires; 0, or NOTFOUND (fired, cancelled or unknown).",
        ),
        _fn(
            "set_label",
            "ptr:i32 len:i32",
            "i32",
            A,
            "A free-form label for the caller (rusmctl list shows it); 0, INVALID, TOOBIG.",
        ),
        _fn(
            "spawn",
            "name_ptr:i32 name_len:i32",
            "i64",
            SP,
            "Start a registered component by name under its own profile; its pid, "
            "or NOTFOUND, UNAVAILABLE, LIMIT, INVALID.",
        ),
        _fn(
            "spawn_link",
            "name_ptr:i32 name_len:i32",
            "i64",
            SP,
            "spawn, linked to the caller before the child runs; its pid or an error.",
        ),
        _fn(
            "supervise",
            "spec_ptr:i32 spec_len:i32",
            "i64",
            SP,
            "Start a supervisor (JSON spec: strategy, intensity, period_s, children) linked "
            "to the caller; its pid, or INVALID (the spec is logged), NOTFOUND, UNAVAILABLE, "
            "TOOBIG.",
        ),
        _fn(
            "kv_get",
            "bucket_ptr:i32 bucket_len:i32 key_ptr:i32 key_len:i32 buf_ptr:i32 buf_cap:i32",
            "i32",
            ST,
            "Read a key of a bucket: the value's size (only buf_cap bytes are written), "
            f"or NOTFOUND, {_KV_ERRORS}.",
            checked_per_call=True,
        ),
        _fn(
            "kv_exists",
            "bucket_ptr:i32 bucket_len:i32 key_ptr:i32 key_len:i32",
            "i32",
            ST,
            f"1 if the bucket holds the key, 0 if not, or {_KV_ERRORS}.",
            checked_per_call=True,
        ),
        _fn(
            "kv_set",
            "bucket_ptr:i32 bucket_len:i32 key_ptr:i32 key_len:i32 val_ptr:i32 val_len:i32",
            "i32",
            ST,
            "Store a value under a key; returns once the commit is on disk: 0, or TOOBIG "
            f"(value over 1 MiB), LIMIT (a new bucket past 1,000), {_KV_ERRORS}.",
            blocking=True,
            checked_per_call=True,
        ),
        _fn(
            "kv_delete",
            "bucket_ptr:i32 bucket_len:i32 key_ptr:i32 key_len:i32",
            "i32",
            ST,
            f"Remove a key, durably: 0, NOTFOUND (it was not there), {_KV_ERRORS}.",
            blocking=True,
            checked_per_call=True,
        ),
        _fn(
            "kv_batch",
            "bucket_ptr:i32 bucket_len:i32 ops_ptr:i32 ops_len:i32",
            "i32",
            ST,
            "Apply several sets and deletes to one bucket all together or not at all "
            "(ops: see docs/abi.md), durably: 0, or INVALID (a malformed op), TOOBIG, "
            f"LIMIT, {_KV_ERRORS}.",
            blocking=True,
            checked_per_call=True,
        ),
        _fn(
            "kv_list",
            "bucket_ptr:i32 bucket_len:i32 prefix_ptr:i32 prefix_len:i32 "
            "after_ptr:i32 after_len:i32 limit:i32 buf_ptr:i32 buf_cap:i32",
            "i32",
            ST,
            "Keys of a bucket starting with prefix, in order, strictly after the key "
            "'after' (empty: from the start): writes up to limit keys that fit in buf, "
            "each as a u16 length then its bytes, and returns how many (0: no more); "
            f"TOOBIG (the first key does not fit), {_KV_ERRORS}.",
            checked_per_call=True,
        ),
        _fn(
            "request",
            "field:i32 key_ptr:i32 key_len:i32 buf_ptr:i32 buf_cap:i32",
            "i32",
            A,
            "Read part of the request being served (field: 0 method, 1 path, 2 query, "
            "3 route param, 4 header, 5 all headers, 6 body, 7 query param; key names the "
            "param or header): its size (only buf_cap bytes are written), NOTFOUND, "
            "INVALID (unknown field), UNAVAILABLE (the caller serves no request).",
        ),
        _fn(
            "respond",
            "status:i32 headers_ptr:i32 headers_len:i32 body_ptr:i32 body_len:i32",
            "i32",
            A,
            "Answer the request: status 200-599, headers as 'Name: value' lines, the "
            "first body bytes (more with rusm.write); 0, INVALID (status or a header, "
            "logged), TOOBIG (headers over 64 KiB), EXISTS (already answered), CLOSED, "
            "UNAVAILABLE.",
        ),
        _fn(
            "write",
            "ptr:i32 len:i32",
            "i32",
            A,
            "Append to the response body (answers 200 first if rusm.respond was not "
            "called); 0, CLOSED, UNAVAILABLE.",
        ),
        _fn(
            "flush",
            "",
            "i32",
            A,
            "Send the response so far now (a flushed response is chunked); 0, CLOSED, UNAVAILABLE.",
        ),
        _fn(
            "sse_event",
            "name_ptr:i32 name_len:i32 data_ptr:i32 data_len:i32",
            "i32",
            A,
            "Send one server-sent event (name may be empty; data lines split on \\n); "
            "0, CLOSED (the client left: return), INVALID (CR/LF in the name), TOOBIG, "
            "UNAVAILABLE.",
        ),
        _fn(
            "ws_send",
            "kind:i32 ptr:i32 len:i32",
            "i32",
            A,
            "Send a WebSocket frame (kind 1 text, must be UTF-8; 2 binary); 0, CLOSED, "
            "INVALID, TOOBIG, UNAVAILABLE.",
        ),
        _fn(
            "ws_close",
            "code:i32 reason_ptr:i32 reason_len:i32",
            "i32",
            A,
            "Close the WebSocket with a code (1000, or 3000-4999) and a reason of up to "
            "123 bytes; 0, CLOSED (already closed), INVALID, UNAVAILABLE.",
        ),
    )
}
