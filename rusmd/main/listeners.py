"""Listen sockets: bound once in the main process, inherited by every worker.

Runs in: main.

A worker restart never drops a port: the socket belongs to the main
process, and connections queue in its backlog while a worker is replaced.
Under systemd socket activation the sockets come from ``LISTEN_FDS``
instead and are matched to ``[[serve]].listen`` by address.
"""

from __future__ import annotations

import os
import socket
from collections.abc import MutableMapping
from dataclasses import dataclass

from rusmd.config.model import Serve
from rusmd.errors import RusmError
from rusmd.main.systemd import adopt_listen_fds, socket_address

# Connections the kernel queues per listener while every worker is busy
# or being replaced; the kernel caps it at net.core.somaxconn.
LISTEN_BACKLOG = 1024


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
