"""The ABI's shared vocabulary: error codes, pids, exit reasons, limits.

Runs in: any (pure data, stdlib only: the bottom layer every package may
import — the store, the actors, serving, the worker and the main process
use these without reaching up into ``rusmd.wasm``).

What guests see of the host and what crosses between rusm's processes:
the numbers in ``docs/abi.md`` and ``rusmd/sdk/c/rusm.h`` (a test checks that
they agree). The import table itself (each host function, its signature
and the grant it needs) is ``rusmd.wasm.abi``.
"""

from __future__ import annotations

import enum

# A pid is ``serial * PID_STRIDE + slot``: its last three decimal digits
# name the worker that hosts it, so any worker routes by the pid alone.
# Serials are leased to workers by the main process and never reused.
PID_STRIDE = 1000


def make_pid(serial: int, slot: int) -> int:
    """The pid for ``serial`` on worker ``slot``."""
    return serial * PID_STRIDE + slot


def slot_of(pid: int) -> int:
    """The worker slot that hosts ``pid``."""
    return pid % PID_STRIDE


class ErrorCode(enum.IntEnum):
    """Negative results of host functions; 0 and positive values mean success."""

    OK = 0
    NOPROC = -1  # no such process (or it has exited)
    DENIED = -2  # the caller's profile does not allow this (another's pid or name)
    INVALID = -3  # a malformed argument (bad UTF-8, negative size, unknown level)
    NOTFOUND = -4  # no such component, name, monitor or timer
    LIMIT = -5  # a limit was reached (processes per worker, a full mailbox, timers)
    TIMEOUT = -6  # a blocking call ran out of time
    UNAVAILABLE = -7  # the thing exists but cannot be used now (failed to load)
    TOOBIG = -8  # a size over a limit, or the caller's buffer is too small
    EXISTS = -9  # the name is taken, or the caller already has one
    CLOSED = -10  # the client went away (or the socket is closed): stop serving it
    NOSTORE = -11  # no store configured ([node] store is not set)


class Kind(enum.IntEnum):
    """What a received message is (the ``kind`` field of its header)."""

    MESSAGE = 0  # rusm.send; the payload is the sender's bytes
    EXIT = 1  # an exit signal (a linked process exited) and the receiver traps exits
    DOWN = 2  # a monitored process exited (ref: the monitor)
    CALL = 3  # rusm.call; answer with rusm.reply(from, ref, ...)
    TIMER = 4  # rusm.send_after fired (ref: the timer)
    FRAME = 5  # a WebSocket frame from the client (reason: 1 text, 2 binary)
    CLOSED = 6  # the WebSocket client closed (ref: its close code, 1005 for none)


class ExitReason(enum.StrEnum):
    """Why a process, a worker or a supervised child ended, as OTP spells it.

    The name is what logs, ``rusmctl`` and the supervisors use; ``code`` is
    the number guests see (the ``reason`` of EXIT and DOWN messages, the
    argument of ``rusm.exit_signal``). For a worker, the OS-process mapping
    is the main process's: exit code 0 is ``normal``, an exit the supervisor
    asked for with SIGTERM is ``shutdown``, SIGKILL is ``killed``, a trap,
    OOM, CPU limit or any other code or signal is ``crashed``, and a child
    that was already gone when looked for is ``noproc``.
    """

    NORMAL = "normal"
    SHUTDOWN = "shutdown"
    KILLED = "killed"
    CRASHED = "crashed"
    NOPROC = "noproc"

    @property
    def code(self) -> int:
        """The ABI number of this reason."""
        return _CODE_OF[self]

    @property
    def is_abnormal(self) -> bool:
        """True for the reasons that restart a transient child."""
        return self not in (ExitReason.NORMAL, ExitReason.SHUTDOWN)

    @classmethod
    def of_code(cls, code: int) -> ExitReason:
        """The reason an ABI number names (an unknown number reads as ``crashed``)."""
        return _REASON_OF.get(code, ExitReason.CRASHED)

    @classmethod
    def of_name(cls, name: str) -> ExitReason:
        """The reason a name spells (an unknown name reads as ``crashed``)."""
        return _BY_NAME.get(name, ExitReason.CRASHED)


# The ABI numbers (docs/abi.md, "Exit reasons"; RUSM_REASON_* in rusm.h).
_CODE_OF: dict[ExitReason, int] = {
    ExitReason.NORMAL: 0,
    ExitReason.SHUTDOWN: 1,
    ExitReason.KILLED: 2,
    ExitReason.CRASHED: 3,
    ExitReason.NOPROC: 4,
}
_REASON_OF: dict[int, ExitReason] = {code: reason for reason, code in _CODE_OF.items()}
_BY_NAME: dict[str, ExitReason] = {reason.value: reason for reason in ExitReason}


# The header rusm.recv writes: kind i32, reason i32, from i64, ref i64,
# size i32, reserved i32 (little-endian, 32 bytes, 8-aligned).
HEADER_FORMAT = "<iiqqii"
HEADER_BYTES = 32
# The largest payload of one message, call or reply.
MAX_MESSAGE_BYTES = 8 << 20
# User messages (message, call, timer) a mailbox holds; past this they are
# dropped (and counted). Exit and down messages always get through.
MAILBOX_LIMIT = 10_000
# Names: UTF-8, 1..255 bytes.
MAX_NAME_BYTES = 255
# rusm.set_label text: UTF-8, up to 255 bytes.
MAX_LABEL_BYTES = 255
# Timers one process may have pending at once.
MAX_TIMERS_PER_PROCESS = 10_000


class RequestField(enum.IntEnum):
    """What ``rusm.request`` reads (its ``field`` argument)."""

    METHOD = 0  # GET, POST, ...
    PATH = 1  # the path as sent, without the query (still percent-encoded)
    QUERY = 2  # the raw query string after '?', without the '?'
    PARAM = 3  # a route parameter by name (key), decoded; '*' is the wildcard's rest
    HEADER = 4  # a header by name (key, any case); repeats joined with ", "
    HEADERS = 5  # every header as "name: value\n" lines, names lower-case
    BODY = 6  # the request body (de-chunked)
    QUERY_PARAM = 7  # the first query parameter by name (key), decoded
    BLOCK = 8  # method, path, query, route params and headers in one block (BLOCK_ENTRY)


# The request block (RequestField.BLOCK): entries back to back, each a
# header of three little-endian u32s (its field: METHOD, PATH, QUERY, PARAM
# or HEADER; its key's length; its value's length), then the key, then the
# value. Method, path and query come first, with empty keys; then one entry
# per route parameter (decoded); then one per header line in arrival order
# (names lower-case, repeats not joined). The body is not in it.
BLOCK_ENTRY_FORMAT = "<III"
BLOCK_ENTRY_BYTES = 12


class WsKind(enum.IntEnum):
    """A WebSocket frame's type (``rusm.ws_send`` kind, FRAME message reason)."""

    TEXT = 1
    BINARY = 2


# kv_batch: the operations, each a 7-byte header (op u8: 1 set, 2 delete;
# key length u16; value length u32; little-endian) then key then value.
KV_BATCH_OP_HEADER = "<BHI"
KV_BATCH_OP_HEADER_BYTES = 7
# The largest kv_batch (all its operations' bytes).
MAX_KV_BATCH_BYTES = 8 << 20

# A response: status 200-599; headers as "Name: value" lines separated by
# "\n" (a "\r\n" is accepted too), each name a token, no CR/LF/NUL in values.
MIN_STATUS = 200
MAX_STATUS = 599
# Response header bytes one handler may set (the whole block).
MAX_RESPONSE_HEADER_BYTES = 64 << 10
# Body bytes the host holds before it starts sending: a response finished
# within this and never flushed goes out with Content-Length, any other
# chunked; rusm.flush sends what is held at once. Bounds a handler's
# buffered output per request.
RESPONSE_HOLD_BYTES = 16 << 10
# One SSE event's data, or one WebSocket frame the guest sends.
MAX_EVENT_BYTES = 1 << 20
# Keys one kv list returns at most (a guest's kv_list, ``rusmctl kv list``'s
# pages): bounds the work one call does inside a read transaction.
MAX_LIST_KEYS = 1000
