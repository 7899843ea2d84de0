"""Taking a listener's connections off its socket, and turning one too many away.

Runs in: worker, on its I/O thread (uvloop).

``Acceptor`` accepts up to ``ACCEPTS_PER_TURN`` connections each time the
listen socket is readable, and hands each to the loop as a transport.
uvloop's own server does not: libuv accepts one connection per readiness,
that is one per turn of the loop, and a worker serving a thousand
keep-alive connections spends tens of milliseconds on a turn. New
connections then waited in the kernel's accept queue at some 15 a second
(a burst of a thousand clients connecting at once waited up to 3 s), and
once the queue was full the kernel dropped their handshakes, which
clients retry only after 1 s and 3 s.

``TurnedAway`` answers a connection past the listener's
``max-connections``: 503 with ``Retry-After`` at once, the write side
shut after it, and whatever the client sends read and dropped until it
closes or ``LINGER_S`` passes. Closing a socket that holds unread bytes
makes the kernel send a reset, which a client reports as an error in
place of the 503 it was sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
from collections.abc import Callable, Coroutine
from typing import Any

from rusmd.serving.http import LINGER_S

# Connections accepted in one turn of the loop: a burst the size of a full
# accept queue is taken in a few turns rather than one a turn; the bound
# keeps a flood of connects (some 30 µs of work each) from holding the
# loop more than ~30 ms before it serves the connections it already has.
ACCEPTS_PER_TURN = 1024
# How long accepting pauses when the worker is out of file descriptors:
# the listen socket stays readable, so accepting again at once would spin.
# Meanwhile connections wait in the kernel's queue (or go to other workers).
ACCEPT_PAUSE_S = 0.1
# Turned-away connections lingering at once per listener: each holds a
# file descriptor for up to LINGER_S; past this a refused connection is
# closed at once, so a flood of connects cannot exhaust the descriptors
# the admitted connections need.
MAX_TURNED_AWAY = 1024

# accept() errors that concern one client only (it reset or gave up before
# it was taken, or the network failed it; accept(2) says to go on): any
# other (EMFILE, ENFILE, ENOBUFS) would fail again at once, so accepting pauses.
_CLIENT_GONE = frozenset(
    {
        errno.ECONNABORTED,
        errno.EPERM,
        errno.EPROTO,
        errno.ENOPROTOOPT,
        errno.ENETDOWN,
        errno.ENETUNREACH,
        errno.EHOSTDOWN,
        errno.EHOSTUNREACH,
        errno.ENONET,
        errno.EOPNOTSUPP,
    }
)
_OUT_OF_FILES = frozenset({errno.EMFILE, errno.ENFILE})


class Acceptor:
    """Accepts on one inherited listen socket, many connections per turn.

    Args:
        loop: The worker's loop.
        sock: The listen socket (non-blocking; the main process bound it).
        factory: Makes the protocol of each accepted connection.
        warn: Logs a warning line (accepting failed: out of file descriptors).
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        factory: Callable[[], asyncio.Protocol],
        warn: Callable[[str], None],
    ) -> None:
        self.loop = loop
        self.sock = sock
        self.factory = factory
        self.warn = warn
        self.address = _address(sock)
        self.accepting = False
        self.closed = False
        self._failing = False  # logged once until an accept succeeds again

    def start(self) -> None:
        """Accept whenever the socket is readable."""
        if not self.accepting and not self.closed:
            self.loop.add_reader(self.sock.fileno(), self.ready)
            self.accepting = True

    def close(self) -> None:
        """Stop accepting (a drain) and close this worker's copy of the socket.

        Connections already accepted go on. The main process and the other
        workers hold their own copies; once the last is closed (a listener
        a reload removed), new connections are refused at once instead of
        queueing where nobody accepts.
        """
        self.closed = True
        self._stop()
        self.sock.close()

    def _stop(self) -> None:
        if self.accepting:
            self.loop.remove_reader(self.sock.fileno())
            self.accepting = False

    def ready(self) -> None:
        """The socket is readable: accept what the kernel has queued, up to ``ACCEPTS_PER_TURN``."""
        for _ in range(ACCEPTS_PER_TURN):
            try:
                conn, _address = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in _CLIENT_GONE:
                    continue
                self._pause(exc)
                return
            self._failing = False
            self._open(conn)

    def _open(self, conn: socket.socket) -> None:
        """Make ``conn`` a transport now; its ``connection_made`` runs next turn.

        The loop's coroutine is stepped by hand, not run as a task: a
        task's first step waits for the next turn, and under load a turn
        is the time it takes to serve every open connection once.
        """
        opening = self.loop.connect_accepted_socket(self.factory, conn)
        try:
            waiter = opening.send(None)  # up to its wait for connection_made
        except StopIteration:
            return
        except OSError:
            conn.close()  # the client reset it before it became a transport
            return
        waiter.add_done_callback(lambda _done: _finish(opening))

    def _pause(self, exc: OSError) -> None:
        """Stop accepting for ``ACCEPT_PAUSE_S``; say why once until an accept succeeds."""
        if not self._failing:
            self._failing = True
            hint = " (the open-files limit)" if exc.errno in _OUT_OF_FILES else ""
            self.warn(
                f"accept {self.address}: {exc.strerror or exc}{hint}; new connections wait "
                f"in the kernel's queue, accepting again every {ACCEPT_PAUSE_S:g} s"
            )
        self._stop()
        self.loop.call_later(ACCEPT_PAUSE_S, self.start)


def _address(sock: socket.socket) -> str:
    """``host:port`` of a listen socket (IPv6 as ``[::1]:port``), for log lines."""
    try:
        name = sock.getsockname()
    except OSError:
        return "?"
    if not isinstance(name, tuple):
        return str(name)
    host, port = name[0], name[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _finish(opening: Coroutine[Any, Any, Any]) -> None:
    """Let ``connect_accepted_socket`` return, now that ``connection_made`` has run."""
    with contextlib.suppress(StopIteration):
        opening.send(None)


class TurnedAway(asyncio.Protocol):
    """A connection past ``max-connections``: 503 with ``Retry-After``, then a clean close.

    ``take(transport)`` makes it the transport's protocol in place of the
    connection that refused it: the answer is written, the write side
    shut (the client reads a whole response and a clean end), and what
    the client sends is read and dropped. The socket closes when the
    client closes its side, or at ``deadline`` (the listener's sweep);
    the refusing connection is then told ``connection_lost``, as it would
    be had it closed the socket itself.

    Args:
        lingering: The listener's turned-away connections; this one is in
            it until it closes.
        now: The monotonic time it was turned away.
    """

    def __init__(self, lingering: set[TurnedAway], now: float) -> None:
        self.lingering = lingering
        self.deadline = now + LINGER_S
        self.transport: Any = None
        self.refused: asyncio.BaseProtocol | None = None

    def take(self, transport: Any, answer: bytes) -> None:
        """Answer on ``transport`` and read it to its end."""
        self.transport = transport
        self.refused = transport.get_protocol()
        transport.set_protocol(self)
        transport.write(answer)
        if len(self.lingering) >= MAX_TURNED_AWAY or not transport.can_write_eof():
            transport.close()
            return
        transport.write_eof()
        self.lingering.add(self)

    def data_received(self, data: bytes) -> None:
        """The refused request (and anything after it): dropped."""

    def eof_received(self) -> bool:
        """The client closed its side: every byte it sent was read, so closing sends no reset."""
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.lingering.discard(self)
        refused, self.refused = self.refused, None
        if refused is not None:
            refused.connection_lost(exc)

    def expire(self, now: float) -> None:
        """Close once ``LINGER_S`` has passed (the client neither read nor closed)."""
        if now >= self.deadline:
            self.lingering.discard(self)
            self.transport.close()
