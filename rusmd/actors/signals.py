"""Signals between processes: what travels, locally and over the mesh.

Runs in: any (pure data; workers send and handle signals).

Every interaction between two processes is one signal from a sender pid
to a receiver pid: a message, a call and its reply, a timer firing, a
link, a monitor, an exit. A signal to a process on the same worker is
handled at once under the worker's actor lock; one to another worker
travels in a ``Signals`` batch frame on the mesh channel between the two
workers. One channel per pair of workers, written in order by one loop,
keeps every sender → receiver pair FIFO.
"""

from __future__ import annotations

import enum


class Op(enum.IntEnum):
    """What a signal asks of its receiver."""

    SEND = 0  # a message (Kind.MESSAGE)
    CALL = 1  # a call request (Kind.CALL), ref = the caller's monitor of the callee
    REPLY = 2  # the answer to CALL ref; dropped unless the caller still waits for it
    TIMER = 3  # a send_after firing (Kind.TIMER)
    EXIT = 4  # the sender, a linked process, exited with reason
    EXIT_SIGNAL = 5  # rusm.exit_signal / kill from the sender
    DOWN = 6  # the sender, monitored under ref, exited with reason
    LINK = 7  # the sender links to the receiver
    UNLINK = 8  # the sender unlinks from the receiver
    MONITOR = 9  # the sender monitors the receiver under ref
    DEMONITOR = 10  # the sender drops monitor ref
    PROBE = 11  # is the receiver alive? (reason 1: and send its info); answered by ALIVE
    ALIVE = 12  # the answer to PROBE ref: reason 1 alive, 0 not; payload: info JSON


USER_OPS = frozenset({Op.SEND, Op.CALL, Op.TIMER})
"""The signals that are messages a process sent: each lands in a mailbox
as a user message (bounded by the mailbox limit), is counted as sent,
and is refused when the worker it goes to is backlogged."""
