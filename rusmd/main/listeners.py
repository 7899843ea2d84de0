"""Listen sockets: bound once in the main process, inherited by every worker.

Runs in: main.

A worker restart never drops a port: the socket belongs to the main
process, and connections queue in its backlog while a worker is replaced.
Under systemd socket activation the sockets come from ``LISTEN_FDS``
instead and are matched to ``[[serve]].listen`` by address.

What the kernel allows the listeners is checked here too, since the
workers inherit it: the open-files limit (``fit_open_files`` raises the
soft limit to the hard one when ``max-connections`` needs more) and the
backlog cap ``net.core.somaxconn`` (``backlog_warnings``).
"""

from __future__ import annotations

import os
import resource
import socket
from collections.abc import MutableMapping
from dataclasses import dataclass
from pathlib import Path

from rusmd.config.model import Serve
from rusmd.errors import RusmError
from rusmd.main.systemd import adopt_listen_fds, socket_address

# Connections the kernel queues per listener while every worker is busy
# or being replaced: asks for the most listen() takes, which the kernel
# caps at net.core.somaxconn (4096 by default since Linux 5.4). A full
# queue drops the handshakes of new connections, and clients resend them
# only after 1 s, then 3 s: every connection of a burst the queue cannot
# hold waits that long.
LISTEN_BACKLOG = 65535
# Descriptors a worker holds besides its admitted connections: connections
# being turned away (up to 1024 a listener, each for at most 2 s), its
# channels, the store, the guests' files. Counted when sizing the
# open-files limit, so a worker at max-connections still has room.
WORKER_FILES_RESERVE = 2048
# Where the kernel's backlog cap is read; absent outside Linux.
SOMAXCONN_PATH = Path("/proc/sys/net/core/somaxconn")


class ListenError(RusmError):
    """A listener cannot be bound."""


@dataclass
class Listener:
    """One bound listen socket and the ``[[serve]]`` entry it belongs to."""

    address: str
    sock: socket.socket
    adopted: bool


def open_listeners(serve: tuple[Serve, ...], environ: MutableMapping[str, str]) -> list[Listener]:
    """Adopt systemd's sockets where they match, bind the rest.

    Raises:
        ListenError: An address cannot be bound (names the listener).
    """
    adopted = {socket_address(sock): sock for sock, _name in adopt_listen_fds(environ, os.getpid())}
    listeners: list[Listener] = []
    try:
        for index, entry in enumerate(serve):
            sock = adopted.pop(entry.listen, None)
            if sock is not None:
                sock.setblocking(False)
                listeners.append(Listener(entry.listen, sock, adopted=True))
            else:
                listeners.append(Listener(entry.listen, bind(entry.listen, index), adopted=False))
    except ListenError:
        close_listeners(listeners)
        raise
    for sock in adopted.values():
        sock.close()  # activated for an address the manifest no longer serves
    return listeners


def bind(address: str, index: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (IPv6 as ``[::1]:port``)."""
    host, _, port = address.rpartition(":")
    family = socket.AF_INET6 if host.startswith("[") else socket.AF_INET
    host = host.strip("[]")
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, int(port)))
        sock.listen(LISTEN_BACKLOG)
    except OSError as exc:
        sock.close()
        raise ListenError(
            f"serve[{index}]: cannot listen on {address}: {exc.strerror or exc}"
        ) from None
    sock.setblocking(False)
    return sock


def close_listeners(listeners: list[Listener]) -> None:
    """Close the main process's copies (workers close theirs when they drain)."""
    for listener in listeners:
        listener.sock.close()


def files_needed(serve: tuple[Serve, ...]) -> int:
    """Descriptors one worker may hold: every listener full, and the reserve."""
    return sum(entry.max_connections for entry in serve) + WORKER_FILES_RESERVE


def fit_open_files(serve: tuple[Serve, ...]) -> str | None:
    """Raise the soft open-files limit to the hard one if the listeners need more.

    Workers inherit the limit, and each holds one descriptor per
    connection: under the usual soft limit of 1024 a worker runs out (its
    accepts fail with EMFILE) long before ``max-connections``. Returns the
    line to log when it raised the limit.
    """
    needed = files_needed(serve)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return None
    target = hard if hard != resource.RLIM_INFINITY else needed
    if target <= soft:
        return None
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (OSError, ValueError):
        return None  # ``open_files_warnings`` says what is short
    return f"limits: open-files soft limit raised from {soft} to {target} for the listeners"


def open_files_warnings(serve: tuple[Serve, ...]) -> list[str]:
    """A line if the open-files limit is below what a worker may need."""
    needed = files_needed(serve)
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return []
    return [
        f"limits: the open-files limit {soft} is below the {needed} descriptors a worker "
        f"may need (max-connections of every listener + {WORKER_FILES_RESERVE}); past it "
        "new connections wait in the kernel's queue: raise LimitNOFILE= (systemd) or "
        "ulimit -n, or lower max-connections"
    ]


def backlog_warnings(serve: tuple[Serve, ...], somaxconn: int | None) -> list[str]:
    """A line per listener whose ``max-connections`` the kernel's backlog cap cannot queue.

    ``somaxconn`` is ``net.core.somaxconn`` (None when unknown: nothing is said).
    """
    if somaxconn is None:
        return []
    return [
        f"serve[{index}] {entry.listen}: the kernel caps the listen backlog at {somaxconn} "
        f"(net.core.somaxconn), below max-connections {entry.max_connections}: a burst of "
        f"more new connections than that waits 1 s or more; raise net.core.somaxconn"
        for index, entry in enumerate(serve)
        if somaxconn < min(entry.max_connections, LISTEN_BACKLOG)
    ]


def read_somaxconn(path: Path = SOMAXCONN_PATH) -> int | None:
    """``net.core.somaxconn``, or None where it cannot be read."""
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None
