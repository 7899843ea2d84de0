"""The control protocol: length-prefixed JSON frames and the fixed command table.

Runs in: any (the main process serves it; ``rusmctl`` speaks it with the
stdlib alone).

A frame is a 4-byte big-endian length, then one UTF-8 JSON object.
Requests are ``{"command": NAME, "args": {...}}``; replies are
``{"ok": true, "result": {...}}`` or ``{"ok": false, "error": TEXT,
"code": EXIT_CODE}``. A streaming command (``logs`` with ``follow``)
answers with one reply, then ``{"log": {...}}`` frames until the client
hangs up. Commands come from ``COMMANDS`` only: nothing is dispatched by
name lookup on an object.

A frame is checked before it is decoded: over ``MAX_FRAME_BYTES``, or
with brackets nested deeper than ``MAX_NESTING_DEPTH`` (the stdlib's JSON
decoder recurses once per level and a deep enough frame would raise
``RecursionError`` in the reader), it is refused with ``ProtocolError``.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass
from typing import Any

from rusmd.errors import RusmError

# Most control requests are a few hundred bytes; the largest frames are a
# `kv set` request and a `kv get` reply, which carry one value of up to
# 1 MiB (store.kv.MAX_VALUE_BYTES) base64-encoded, 1.34 MiB. A bigger frame
# is garbage or an attempt to make the main process buffer memory, so it is
# refused.
MAX_FRAME_BYTES = 2 << 20
# Replies come from the daemon, not from a client, and one can be large: a
# `list` costs about 300 bytes a process, and a worker may hold tens of
# thousands. A client's reader still caps what it buffers.
MAX_REPLY_BYTES = 64 << 20

# Brackets a frame may nest. A request is two levels deep (the frame and
# its args); JSON's decoder recurses once per level, so a frame of 100,000
# `[` would exhaust the reader's stack. Deeper frames are refused unread.
MAX_NESTING_DEPTH = 32

_LENGTH = struct.Struct(">I")
# A JSON string, escapes included; an unterminated one runs to the end.
# Possessive, so each byte is looked at once whatever the input.
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*+"?', re.DOTALL)
# Both kinds of bracket as one: depth does not care which.
_BRACKETS_AS_ONE = bytes.maketrans(b"{}", b"[]")
_NOT_BRACKETS = bytes(code for code in range(256) if code not in b"[]{}")


@dataclass(frozen=True)
class CommandInfo:
    """One control command, declared once.

    rusmctl builds its parser and help from it (``summary`` and ``args``
    are what ``rusmctl --help`` and ``rusmctl <name> --help`` print); the
    daemon's ``rusmd.main.commands.HANDLERS`` has one handler per name
    (checked when that module is imported).

    Attributes:
        name: The verb (``rusmctl <name>``).
        summary: One line of help.
        args: Positional arguments as (name, help, required).
        streams: True when the reply may be followed by a stream of frames.
    """

    name: str
    summary: str
    args: tuple[tuple[str, str, bool], ...] = ()
    streams: bool = False


COMMANDS: dict[str, CommandInfo] = {
    info.name: info
    for info in (
        CommandInfo(
            "status",
            "the daemon and each worker: pid, state, uptime, restarts, CPU, RSS; the store",
        ),
        CommandInfo(
            "list",
            "the processes: component#pid, worker, state, memory, names, links, monitors, mailbox",
        ),
        CommandInfo(
            "info",
            "one wasm process or worker in detail",
            (("pid", "component#pid, #pid, a registered name, or a worker's OS pid", True),),
        ),
        CommandInfo(
            "kill",
            "kill a wasm process (component#pid) or a worker by OS pid (it is replaced)",
            (("pid", "component#pid, #pid, a registered name, or a worker's OS pid", True),),
        ),
        CommandInfo(
            "spawn",
            "start a process of a registered component, or of a module ad hoc "
            "(--module 'path=x.wasm;entrypoint=start;capabilities=...;params=...;args=...'); "
            "prints its pid",
            (("name", "the component name (omitted with --module)", False),),
        ),
        CommandInfo(
            "send",
            "send a text message to a process's mailbox (from pid 0, the operator)",
            (
                ("pid", "component#pid, #pid, or a registered name", True),
                ("text", "the message", True),
            ),
        ),
        CommandInfo(
            "restart",
            "replace a worker (worker.N), or every worker one by one (workers)",
            (("what", "worker.N or workers", True),),
        ),
        CommandInfo("reload", "re-read the manifest; roll the workers if it is valid"),
        CommandInfo(
            "upgrade",
            "recompile the components' modules; load changed ones into the running workers",
        ),
        CommandInfo("stop", "drain and stop the daemon"),
        CommandInfo(
            "profile",
            "show the profile, or change it live (light, balanced, max)",
            (("profile", "light, balanced or max", False),),
        ),
        CommandInfo("logs", "recent log lines; -f follows", streams=True),
        CommandInfo(
            "stats",
            "the node's counters: requests, spawns, exits, restarts, store; what /metrics shows",
        ),
        CommandInfo(
            "kv",
            "the node store: get, set, list or rm a key (kv get BUCKET KEY, ...)",
        ),
    )
}


class ProtocolError(RusmError):
    """A peer sent a frame that is too large, too deeply nested or not a JSON object."""


def nested_too_deep(payload: bytes, limit: int = MAX_NESTING_DEPTH) -> bool:
    """Whether ``payload``'s brackets nest deeper than ``limit`` or do not balance.

    Without recursion, in at most ``limit`` passes over the bytes: strings
    are cut out, then each pass removes the innermost ``[]``/``{}`` pairs
    (one level); brackets left after that are too deep or unbalanced. Either way the
    payload is not a JSON document the decoder should be given.
    """
    if payload.count(b"[") + payload.count(b"{") <= limit:
        return False  # the common case: too few brackets to nest that deep
    structure = _STRING.sub(b"", payload).translate(_BRACKETS_AS_ONE, _NOT_BRACKETS)
    for _ in range(limit):
        reduced = structure.replace(b"[]", b"")
        if len(reduced) == len(structure):
            break
        structure = reduced
    return bool(structure)


def encode_frame(document: dict[str, Any], limit: int = MAX_FRAME_BYTES) -> bytes:
    """One frame: length prefix plus compact JSON (a reply may take ``MAX_REPLY_BYTES``)."""
    payload = json.dumps(document, separators=(",", ":")).encode()
    if len(payload) > limit:
        raise ProtocolError(f"frame of {len(payload)} bytes exceeds {limit}")
    return _LENGTH.pack(len(payload)) + payload


class FrameReader:
    """Splits a byte stream into JSON objects, enforcing the frame and depth caps.

    Args:
        limit: The largest frame accepted: ``MAX_FRAME_BYTES`` for requests
            (the daemon reading a client), ``MAX_REPLY_BYTES`` for a client
            reading replies. Optional; defaults to ``MAX_FRAME_BYTES``.
    """

    def __init__(self, limit: int = MAX_FRAME_BYTES) -> None:
        self._buffer = bytearray()
        self.limit = limit

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        """Add bytes; return every complete frame's object.

        Raises:
            ProtocolError: A frame over the cap, nested too deep, or not a
                JSON object.
        """
        self._buffer += data
        documents: list[dict[str, Any]] = []
        while len(self._buffer) >= _LENGTH.size:
            (length,) = _LENGTH.unpack_from(self._buffer)
            if length > self.limit:
                raise ProtocolError(f"frame of {length} bytes exceeds {self.limit}")
            end = _LENGTH.size + length
            if len(self._buffer) < end:
                break
            payload = bytes(self._buffer[_LENGTH.size : end])
            del self._buffer[:end]
            if nested_too_deep(payload):
                raise ProtocolError(
                    f"frame nests brackets deeper than {MAX_NESTING_DEPTH} levels (or they "
                    "do not balance)"
                )
            try:
                document = json.loads(payload)
            except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
                raise ProtocolError(f"frame is not JSON: {exc}") from None
            if not isinstance(document, dict):
                raise ProtocolError("frame is not a JSON object")
            documents.append(document)
        return documents
