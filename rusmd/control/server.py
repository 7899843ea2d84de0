"""The control socket: a unix stream socket served from the main loop.

Runs in: main.

The socket is created with mode 0600 (bound under a 0177 umask, so there
is no window with wider permissions) in a directory rusmd makes 0700.
Each peer is checked with SO_PEERCRED: only root and the daemon's own
user may talk to it. Frames are capped (``protocol.MAX_FRAME_BYTES``,
``protocol.MAX_NESTING_DEPTH``); a bad frame gets an error reply and that
connection closes, and nothing else is disturbed. A command that fails
unexpectedly, or whose reply cannot be encoded, answers an error too.

Idle connections cannot lock the operator out: one that has not sent a
whole frame within ``FIRST_FRAME_TIMEOUT_S`` of connecting is dropped,
one idle after that within ``IDLE_TIMEOUT_S``. At most ``MAX_CLIENTS``
are open at once; when a new one arrives at the cap, the oldest that
has never sent a frame makes room for it, else the longest idle one
that waits for no reply, else the oldest ``logs -f`` follower. Only when
every connection waits for a reply is the newcomer refused.
"""

from __future__ import annotations

import errno
import os
import selectors
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rusmd.control.protocol import MAX_REPLY_BYTES, FrameReader, ProtocolError, encode_frame
from rusmd.errors import EX_NOPERM, EX_REFUSED, RusmError

# Open control connections at once: rusmctl opens one per command, so more
# than this is a runaway script or an attempt to exhaust descriptors.
MAX_CLIENTS = 64
# Connections the kernel queues before the loop accepts them: room for a
# burst of rusmctl invocations (or a flood of connects) without ECONNREFUSED.
LISTEN_BACKLOG = 128
# rusmctl sends its request as soon as it connects; a connection without a
# whole frame by then is idle or dribbling, and would hold a slot.
FIRST_FRAME_TIMEOUT_S = 5.0
# A client that says nothing for this long is gone; streaming ones are exempt.
IDLE_TIMEOUT_S = 300.0
# Output queued for one slow client before it is dropped (a `logs -f` that
# never reads must not grow the main process without bound): the largest
# reply and 8 MiB more.
MAX_PENDING_OUTPUT_BYTES = MAX_REPLY_BYTES + (8 << 20)
# Out of descriptors, the listening socket stays readable with nothing it
# can accept: it leaves the selector for this long, so the main loop does
# not spin on it, then is tried again.
ACCEPT_RETRY_S = 0.5
_PEERCRED = struct.Struct("3i")


class ControlSocketError(RusmError):
    """The control socket cannot be created (in use, bad path, permissions)."""


@dataclass
class Connection:
    """One rusmctl connection."""

    sock: socket.socket
    peer_pid: int
    reader: FrameReader = field(default_factory=FrameReader)
    output: bytearray = field(default_factory=bytearray)
    accepted_at: float = field(default_factory=time.monotonic)
    last_activity: float = field(default_factory=time.monotonic)
    # Whether a whole frame has arrived yet (the short timeout applies until then).
    framed: bool = False
    # Replies owed to it by deferred commands (sent once workers answer).
    awaiting: int = 0
    streaming: bool = False
    closing: bool = False
    on_close: list[Callable[[], None]] = field(default_factory=list)

    def eviction_rank(self) -> tuple[int, float] | None:
        """Lowest goes first when room is needed; None: never (a reply is owed).

        A connection that never sent a frame goes first, oldest first; then
        one that waits for nothing (or does not read what it was sent),
        longest idle first; a ``logs -f`` follower last.
        """
        if self.awaiting:
            return None  # answered within its command's timeout, then evictable
        if not self.framed:
            return (0, self.accepted_at)
        if not self.streaming or self.output:
            return (1, self.last_activity)
        return (2, self.last_activity)


# A dispatch returns the reply, or None when the reply comes later (a
# command waiting for workers sends it with ``send`` once they answer).
Dispatch = Callable[[dict[str, Any], Connection], dict[str, Any] | None]


class ControlServer:
    """Serves control frames on ``path`` through the main loop's selector."""

    def __init__(
        self,
        path: Path,
        selector: selectors.BaseSelector,
        dispatch: Dispatch,
        warn: Callable[[str], None] = lambda _text: None,
    ) -> None:
        self.path = path
        self.selector = selector
        self.dispatch = dispatch
        self.warn = warn
        self.listener: socket.socket | None = None
        self.connections: dict[int, Connection] = {}
        self.accept_paused_until: float | None = None  # out of descriptors: when to retry
        self._starved = False  # warned of this shortage already

    def open(self) -> None:
        """Create the socket; refuse if another daemon answers on it."""
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._remove_stale()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)
        try:
            listener.bind(str(self.path))
        except OSError as exc:
            listener.close()
            raise ControlSocketError(
                f"control socket {self.path}: cannot bind: {exc.strerror or exc}"
            ) from None
        finally:
            os.umask(old_umask)
        listener.listen(LISTEN_BACKLOG)
        listener.setblocking(False)
        self.listener = listener
        self.selector.register(listener, selectors.EVENT_READ, self._on_accept)

    def close(self) -> None:
        """Close every connection and the socket, and remove the path."""
        for connection in list(self.connections.values()):
            self._close(connection)
        if self.listener is not None:
            if self.accept_paused_until is None:
                self.selector.unregister(self.listener)
            self.listener.close()
            self.listener = None
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass

    def send(self, connection: Connection, document: dict[str, Any]) -> None:
        """Queue a frame for ``connection`` and write what the socket takes."""
        if connection.closing and not connection.output:
            return
        if connection.awaiting:
            connection.awaiting -= 1
        try:
            frame = encode_frame(document, MAX_REPLY_BYTES)
        except (ProtocolError, TypeError, ValueError, RecursionError) as exc:
            # A reply too big for a frame, or one holding something JSON
            # cannot carry: the client hears why instead of the loop dying.
            frame = encode_frame(
                {"ok": False, "error": f"reply cannot be sent: {exc}", "code": EX_REFUSED}
            )
        connection.output += frame
        if len(connection.output) > MAX_PENDING_OUTPUT_BYTES:
            self._close(connection)
            return
        self._flush(connection)

    def sweep(self, now: float) -> None:
        """Drop connections without a frame past ``FIRST_FRAME_TIMEOUT_S``, or idle ones.

        Also takes the listening socket back into the selector once an
        accept that ran out of descriptors may be tried again.
        """
        resume = self.accept_paused_until
        if resume is not None and now >= resume and self.listener is not None:
            self.accept_paused_until = None
            self.selector.register(self.listener, selectors.EVENT_READ, self._on_accept)
        for connection in list(self.connections.values()):
            silent = not connection.framed and now - connection.accepted_at > FIRST_FRAME_TIMEOUT_S
            idle = not connection.streaming and now - connection.last_activity > IDLE_TIMEOUT_S
            if silent or idle:
                self._close(connection)

    def _remove_stale(self) -> None:
        if not self.path.exists() and not self.path.is_symlink():
            return
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(self.path))
        except OSError:
            self.path.unlink()  # a dead daemon's socket
            return
        finally:
            probe.close()
        raise ControlSocketError(f"control socket {self.path}: another rusmd is running there")

    def _on_accept(self, _events: int) -> None:
        assert self.listener is not None
        while True:
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE):
                    self._pause_accepting(exc)
                    return
                if exc.errno == errno.ECONNABORTED:
                    continue  # the client gave up while queued
                raise
            self._starved = False
            self._admit(sock)

    def _pause_accepting(self, exc: OSError) -> None:
        """Out of descriptors: leave the connection queued and the selector alone a while."""
        assert self.listener is not None
        self.selector.unregister(self.listener)
        self.accept_paused_until = time.monotonic() + ACCEPT_RETRY_S
        if not self._starved:  # once a shortage, not every retry
            self._starved = True
            self.warn(
                f"control socket {self.path}: cannot accept ({exc.strerror}); "
                f"retrying every {ACCEPT_RETRY_S:g}s"
            )

    def _admit(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        pid, uid, _gid = _PEERCRED.unpack(
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
        )
        connection = Connection(sock=sock, peer_pid=pid)
        if uid not in (0, os.getuid()):
            self._refuse(
                connection, f"permission denied: uid {uid} may not control rusmd", EX_NOPERM
            )
            return
        if len(self.connections) >= MAX_CLIENTS and not self._evict_one():
            self._refuse(
                connection,
                f"too many control connections ({MAX_CLIENTS}, each waiting for a reply)",
                EX_REFUSED,
            )
            return
        self.connections[sock.fileno()] = connection
        self.selector.register(sock, selectors.EVENT_READ, lambda ev: self._on_io(connection, ev))

    def _evict_one(self) -> bool:
        """Close the connection that matters least to make room; False if none may go."""
        ranked = [
            (rank, connection)
            for connection in self.connections.values()
            if (rank := connection.eviction_rank()) is not None
        ]
        if not ranked:
            return False
        self._close(min(ranked, key=lambda pair: pair[0])[1])
        return True

    def _refuse(self, connection: Connection, message: str, code: int) -> None:
        try:
            connection.sock.send(encode_frame({"ok": False, "error": message, "code": code}))
        except OSError:
            pass
        connection.sock.close()

    def _on_io(self, connection: Connection, events: int) -> None:
        if events & selectors.EVENT_WRITE:
            self._flush(connection)
        if events & selectors.EVENT_READ and connection.sock.fileno() >= 0:
            self._read(connection)

    def _read(self, connection: Connection) -> None:
        try:
            data = connection.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(connection)
            return
        if not data:
            self._close(connection)
            return
        connection.last_activity = time.monotonic()
        try:
            requests = connection.reader.feed(data)
        except ProtocolError as exc:
            self.send(connection, {"ok": False, "error": f"bad frame: {exc}", "code": EX_REFUSED})
            self._close_after_flush(connection)
            return
        if requests:
            connection.framed = True
        for request in requests:
            # Owed from now on; ``send`` settles it, at once or when workers answer.
            connection.awaiting += 1
            reply = self._run(request, connection)
            if reply is not None:
                self.send(connection, reply)

    def _run(self, request: dict[str, Any], connection: Connection) -> dict[str, Any] | None:
        """One command, its failure caught: a control request never stops the loop."""
        try:
            return self.dispatch(request, connection)
        except Exception as exc:
            # Catching broadly is deliberate: this is the command boundary.
            return {
                "ok": False,
                "error": f"{request.get('command')!r} failed: {type(exc).__name__}: {exc}",
                "code": EX_REFUSED,
            }

    def _flush(self, connection: Connection) -> None:
        if connection.sock.fileno() < 0:
            return
        while connection.output:
            try:
                sent = connection.sock.send(connection.output)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self._close(connection)
                return
            del connection.output[:sent]
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if connection.output else 0)
        if connection.closing and not connection.output:
            self._close(connection)
            return
        self.selector.modify(connection.sock, events, lambda ev: self._on_io(connection, ev))

    def _close_after_flush(self, connection: Connection) -> None:
        connection.closing = True
        if not connection.output:
            self._close(connection)

    def _close(self, connection: Connection) -> None:
        fd = connection.sock.fileno()
        if fd < 0:
            return
        self.connections.pop(fd, None)
        try:
            self.selector.unregister(connection.sock)
        except (KeyError, ValueError):
            pass
        connection.sock.close()
        for callback in connection.on_close:
            callback()
