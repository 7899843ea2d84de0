"""What the main process hands a worker at fork.

Runs in: main (builds it before ``fork``) and worker (starts from it).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field

from rusmd.channel import ComponentImage
from rusmd.config.model import Manifest


@dataclass
class WorkerBoot:
    """Everything a worker starts from.

    Attributes:
        slot: The worker's slot number (stable across its restarts).
        generation: How many workers this slot has had, this one included.
        parent_pid: The main process; the worker exits if it is gone.
        channel: The worker's end of its channel to main.
        mesh: Channels to sibling workers, by their slot.
        listeners: The listen sockets the main process bound, inherited.
        manifest: The resolved manifest.
        images: The compiled components, when the compile step had finished
            by the time of the fork (else they arrive as a message).
        lease: The first pid serials ``[start, end)`` this worker hands out.
    """

    slot: int
    generation: int
    parent_pid: int
    channel: socket.socket
    mesh: dict[int, socket.socket] = field(default_factory=dict)
    listeners: list[socket.socket] = field(default_factory=list)
    manifest: Manifest | None = None
    images: list[ComponentImage] | None = None
    lease: tuple[int, int] = (1, 1)

    def own_fds(self) -> set[int]:
        """Descriptors this worker keeps: stdio, its channels, its listeners."""
        fds = {0, 1, 2, self.channel.fileno()}
        fds.update(sock.fileno() for sock in self.mesh.values())
        fds.update(sock.fileno() for sock in self.listeners)
        return fds
