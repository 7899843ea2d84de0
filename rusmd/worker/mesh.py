"""The mesh: signals between this worker and its siblings, one frame per peer per turn.

Runs in: worker. ``queue`` and ``backlogged`` from any thread (guest
threads and the loop thread); everything else on the loop thread.

One channel per sibling worker, inherited at fork or handed over later
by the main process (``MeshPeer`` + a descriptor). Each side says
``MeshHello`` first; a peer counts once its hello arrived.

Sending. A signal for a process of another worker is appended to that
peer's queue under one short lock; the first signal after a flush
schedules one ``flush`` on the loop (``call_soon`` from the loop thread,
``call_soon_threadsafe`` from a guest thread), so every signal queued
during one loop iteration leaves in one ``Signals`` frame per peer: one
write. A frame is cut early only at ``MAX_BATCH_BYTES`` of payload or
``MAX_FDS_PER_FRAME`` shared-memory payloads. One queue and one channel
per peer, written in order by one loop, keep every sender → receiver
pair FIFO, large payloads included.

Large payloads. One over ``SHM_THRESHOLD_BYTES`` travels in a
shared-memory file (memfd) passed with its frame (SCM_RIGHTS), one
descriptor per such signal, in order; the frame carries its size.

Receiving. One read takes every frame the socket holds; their signals
are delivered in one pass under the actor table's lock
(``ActorTable.deliver_batch``), which wakes each receiver once.

The bound. A peer that stops reading (a stopped or wedged worker: the
main process kills it after its heartbeats stop) must not make this
worker buffer without bound, and the loop never waits for it. Past
``MAX_PEER_BACKLOG_BYTES`` queued for a peer (in the queue, in the
channel's unsent frames, and in shared-memory payloads the peer has not
yet said it read: it answers each read that took some with
``MeshRead``), user signals to it (message, call, timer) are refused: the
sender gets ``LIMIT`` and the message is dropped and counted, as for a
full mailbox. Exits, downs, links, monitors and replies are never
refused (a process holds a bounded number of links and monitors).
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from collections.abc import Callable, Iterator

from rusmd.actors.signals import USER_OPS
from rusmd.channel import (
    MAX_FDS_PER_READ,
    Channel,
    ChannelClosed,
    MeshHello,
    MeshRead,
    Message,
    Sig,
    Signals,
)

# Payloads larger than this cross to another worker in a shared-memory
# file (memfd) passed with the frame instead of inside it: copying a large
# payload through the socket costs more than the file.
SHM_THRESHOLD_BYTES = 64 << 10
# Payload bytes in one mesh frame at most (frames stay far below the
# channel's frame cap, which the receiver enforces).
MAX_BATCH_BYTES = 4 << 20
# Shared-memory payloads in one frame at most: the receiver takes
# MAX_FDS_PER_READ descriptors per read (the kernel drops the rest of a
# frame's), and the kernel refuses more than 253 in one sendmsg.
MAX_FDS_PER_FRAME = MAX_FDS_PER_READ
# Bytes queued for one peer past which user signals to it are refused
# (LIMIT): a peer that stops reading must not grow this worker's memory.
MAX_PEER_BACKLOG_BYTES = 16 << 20
# What one queued signal is counted as besides its payload (its framing).
SIG_OVERHEAD_BYTES = 16


class Outbox:
    """Signals for sibling workers, queued until the loop's next flush.

    Args:
        schedule: Arrange for the owner's flush to run once on the loop
            thread (any thread); called for the first signal after a ``take``.

    Attributes:
        pending: Bytes queued per peer slot since the last ``take``.
        flushing: Bytes the flush under way took per peer slot, until
            ``handed``: still part of the backlog while they are encoded.
        sent: Messages processes sent to other workers (``USER_OPS``)
            queued so far, counted under the lock ``put`` takes anyway.
    """

    def __init__(self, schedule: Callable[[], None]) -> None:
        self._schedule = schedule
        self._lock = threading.Lock()
        self._queued: dict[int, list[Sig]] = {}
        self.pending: dict[int, int] = {}
        self.flushing: dict[int, int] = {}
        self._scheduled = False
        self.sent = 0

    def put(self, slot: int, sig: Sig) -> None:
        """Queue ``sig`` for worker ``slot`` (any thread)."""
        with self._lock:
            if sig.op in USER_OPS:
                self.sent += 1
            queued = self._queued.get(slot)
            if queued is None:
                self._queued[slot] = [sig]
                self.pending[slot] = len(sig.payload) + SIG_OVERHEAD_BYTES
            else:
                queued.append(sig)
                self.pending[slot] += len(sig.payload) + SIG_OVERHEAD_BYTES
            if self._scheduled:
                return
            self._scheduled = True
        self._schedule()

    def queued_bytes(self, slot: int) -> int:
        """Bytes queued for ``slot`` and not yet in its channel (a racy read is fine: a bound)."""
        return self.pending.get(slot, 0) + self.flushing.get(slot, 0)

    def take(self) -> dict[int, list[Sig]]:
        """Everything queued, per peer in queue order; the next ``put`` schedules again.

        The bytes taken still count for their peer until ``handed(slot)``.
        """
        with self._lock:
            queued, self._queued = self._queued, {}
            self.flushing, self.pending = self.pending, {}
            self._scheduled = False
        return queued

    def handed(self, slot: int) -> None:
        """What ``take`` gave for ``slot`` is in its channel now (or dropped)."""
        self.flushing.pop(slot, None)


def pack(sigs: list[Sig], to_shm: Callable[[bytes], int]) -> Iterator[tuple[Signals, list[int]]]:
    """Cut ``sigs`` into frames, in order: ``(Signals, descriptors)`` each.

    A payload over ``SHM_THRESHOLD_BYTES`` goes to ``to_shm`` (which
    returns a descriptor); its signal carries the size instead.
    """
    if not sigs:
        return
    lengths = [len(sig.payload) for sig in sigs]
    if max(lengths) <= SHM_THRESHOLD_BYTES and sum(lengths) <= MAX_BATCH_BYTES:
        yield Signals(batch=sigs), []  # the common case: one frame as it is
        return
    batch: list[Sig] = []
    fds: list[int] = []
    size = 0
    for queued in sigs:
        length = len(queued.payload)
        if length > SHM_THRESHOLD_BYTES:
            if len(fds) >= MAX_FDS_PER_FRAME:
                yield Signals(batch=batch), fds
                batch, fds, size = [], [], 0
            fds.append(to_shm(queued.payload))
            q = queued
            batch.append(Sig(q.op, q.to, q.sender, q.ref, q.reason, b"", length))
            continue
        if size + length > MAX_BATCH_BYTES and batch:
            yield Signals(batch=batch), fds
            batch, fds, size = [], [], 0
        size += length
        batch.append(queued)
    if batch:
        yield Signals(batch=batch), fds


def unpack(
    batch: list[Sig], take_shm: Callable[[int], bytes], lost: Callable[[Sig, Exception], None]
) -> list[Sig]:
    """The signals of one frame with their shared-memory payloads read back.

    ``take_shm(size)`` reads the frame's next payload file; a signal
    whose file cannot be read is reported to ``lost`` and left out.
    A frame without payload files comes back as the same list.
    """
    if not any(sig.shm for sig in batch):
        return batch
    out: list[Sig] = []
    for sig in batch:
        if not sig.shm:
            out.append(sig)
            continue
        try:
            payload = take_shm(sig.shm)
        except (ChannelClosed, OSError) as exc:
            lost(sig, exc)
            continue
        out.append(Sig(sig.op, sig.to, sig.sender, sig.ref, sig.reason, payload))
    return out


class _Peer:
    """One sibling worker's channel and what it holds for it."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self.verified = False
        # Shared-memory payload bytes sent and not yet reported read by the
        # peer (``MeshRead``); only the loop thread changes it.
        self.shm_bytes = 0


class Mesh:
    """The channels to sibling workers.

    Args:
        slot: This worker's slot.
        loop: The worker's event loop.
        schedule_flush: Run ``flush`` once on the loop thread, soon (any thread).
        deliver: Signals from a peer for this worker's processes (loop thread).
        undeliverable: Answer a signal whose peer is gone (loop thread).
        lost: Report a large payload that could not be read (loop thread).
    """

    def __init__(
        self,
        slot: int,
        loop: asyncio.AbstractEventLoop,
        *,
        schedule_flush: Callable[[Callable[[], None]], None],
        deliver: Callable[[list[Sig]], None],
        undeliverable: Callable[[Sig], None],
        lost: Callable[[str], None],
    ) -> None:
        self.slot = slot
        self.loop = loop
        self.outbox = Outbox(lambda: schedule_flush(self.flush))
        self._deliver = deliver
        self._undeliverable = undeliverable
        self._lost = lost
        self.peers: dict[int, _Peer] = {}

    @property
    def verified(self) -> list[int]:
        """Slots whose hello arrived, in order."""
        return sorted(slot for slot, peer in self.peers.items() if peer.verified)

    # ── sending ─────────────────────────────────────────────────────────

    def queue(self, slot: int, sig: Sig) -> bool:
        """Queue a signal for worker ``slot`` (any thread); False if it has no worker."""
        if slot not in self.peers:
            return False
        self.outbox.put(slot, sig)
        return True

    def backlogged(self, slot: int) -> bool:
        """True when worker ``slot`` has ``MAX_PEER_BACKLOG_BYTES`` waiting for it (any thread)."""
        peer = self.peers.get(slot)
        if peer is None:
            return False
        # As ``Outbox.queued_bytes``, inline: this runs for every message sent.
        outbox = self.outbox
        backlog = outbox.pending.get(slot, 0) + outbox.flushing.get(slot, 0)
        backlog += peer.channel.queued_bytes + peer.shm_bytes
        return backlog >= MAX_PEER_BACKLOG_BYTES

    def flush(self) -> None:
        """Write everything queued: one frame per peer (loop thread)."""
        for slot, sigs in self.outbox.take().items():
            peer = self.peers.get(slot)
            if peer is None or peer.channel.closed:
                self.outbox.handed(slot)
                for sig in sigs:
                    self._undeliverable(sig)
                continue
            for frame, fds in pack(sigs, _to_memfd):
                if fds:
                    peer.shm_bytes += sum(sig.shm for sig in frame.batch)
                self._send(peer, frame, fds)
            self.outbox.handed(slot)

    def _send(self, peer: _Peer, message: Message, fds: list[int] | None = None) -> None:
        send_on_loop(self.loop, peer.channel, message, fds)

    # ── peers ───────────────────────────────────────────────────────────

    def add_peer(self, slot: int, sock: socket.socket, pid: int) -> None:
        """A channel to worker ``slot`` (a fresh one replaces the old); say hello on it."""
        old = self.peers.pop(slot, None)
        if old is not None:
            self._forget(old.channel)
        peer = _Peer(Channel(sock))
        self.peers[slot] = peer
        self.loop.add_reader(peer.channel.fileno(), self._on_readable, slot, peer)
        self._send(peer, MeshHello(slot=self.slot, pid=pid))

    def _on_readable(self, slot: int, peer: _Peer) -> None:
        channel = peer.channel
        try:
            messages = channel.read_ready()
        except ChannelClosed:
            self._drop(slot, peer)
            return
        # Every frame of the read in one delivery: a receiver is woken once.
        sigs: list[Sig] = []
        shm_read = 0
        for message in messages:
            if isinstance(message, Signals):
                take = lambda size: _from_memfd(channel.take_fd(), size)  # noqa: E731
                unpacked = unpack(message.batch, take, self._report_lost)
                if unpacked is not message.batch:  # it carried payload files
                    shm_read += sum(sig.shm for sig in message.batch)
                sigs += unpacked
            elif isinstance(message, MeshRead):
                peer.shm_bytes = max(0, peer.shm_bytes - message.size)
            elif isinstance(message, MeshHello) and message.slot == slot:
                peer.verified = True
        if shm_read:
            # Their files are closed: the sender may count them as gone.
            self._send(peer, MeshRead(size=shm_read))
        if sigs:
            self._deliver(sigs)

    def _report_lost(self, sig: Sig, exc: Exception) -> None:
        self._lost(f"lost a large message from #{sig.sender} to #{sig.to}: {exc}")

    def _drop(self, slot: int, peer: _Peer) -> None:
        if self.peers.get(slot) is peer:
            del self.peers[slot]
        self._forget(peer.channel)

    def _forget(self, channel: Channel) -> None:
        if not channel.closed:
            self.loop.remove_reader(channel.fileno())
            self.loop.remove_writer(channel.fileno())
            channel.close()

    def close(self) -> None:
        """Write what is queued, as far as each socket takes it, then close (loop ending)."""
        self.flush()
        for peer in self.peers.values():
            channel = peer.channel
            if not channel.closed:
                try:
                    channel.sock.setblocking(True)
                    channel.write_ready()
                except (ChannelClosed, OSError):
                    pass
                channel.close()


def _to_memfd(payload: bytes) -> int:
    """A shared-memory file holding ``payload`` (the receiver reads it once)."""
    fd = os.memfd_create("rusm-message", os.MFD_CLOEXEC)
    view = memoryview(payload)
    while view:
        written = os.write(fd, view)
        view = view[written:]
    return fd


def _from_memfd(fd: int, size: int) -> bytes:
    """Read and close a payload file sent by another worker."""
    try:
        chunks: list[bytes] = []
        offset = 0
        while offset < size:
            chunk = os.pread(fd, size - offset, offset)
            if not chunk:
                raise OSError(f"payload file ended at {offset} of {size} bytes")
            chunks.append(chunk)
            offset += len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def send_on_loop(
    loop: asyncio.AbstractEventLoop,
    channel: Channel,
    message: Message,
    fds: list[int] | None = None,
    drained: Callable[[], None] | None = None,
) -> None:
    """Send ``message`` on ``channel`` (loop thread); what the socket does not
    take yet is written as it drains, then ``drained`` is called. A closed
    channel drops it: its reader finds the channel gone."""
    try:
        channel.send(message, fds, close_fds=bool(fds))
    except ChannelClosed:
        return
    if channel.wants_write:
        loop.add_writer(channel.fileno(), _write_ready, loop, channel, drained)


def _write_ready(
    loop: asyncio.AbstractEventLoop, channel: Channel, drained: Callable[[], None] | None
) -> None:
    try:
        channel.write_ready()
    except ChannelClosed:
        loop.remove_writer(channel.fileno())
        return
    if not channel.wants_write:
        loop.remove_writer(channel.fileno())
        if drained is not None:
            drained()
