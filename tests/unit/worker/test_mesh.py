"""The mesh's batching: frames cut from queued signals, the outbox, the bound.

Runs in: any (the test process). ``pack``/``unpack`` and ``Outbox`` are
pure logic with fake transports; ``Mesh`` runs on a real asyncio loop
over a real socketpair between two of them.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from collections.abc import Callable, Iterator

import pytest

from rusmd.actors.signals import Op
from rusmd.channel import Sig
from rusmd.worker.mesh import (
    MAX_BATCH_BYTES,
    MAX_FDS_PER_FRAME,
    MAX_PEER_BACKLOG_BYTES,
    SHM_THRESHOLD_BYTES,
    SIG_OVERHEAD_BYTES,
    Mesh,
    Outbox,
    pack,
    unpack,
)

BIG = b"x" * (SHM_THRESHOLD_BYTES + 1)


def send(i: int, payload: bytes = b"") -> Sig:
    return Sig(Op.SEND, 1001, 2000 + i, payload=payload or str(i).encode())


class FakeShm:
    """Payload files as a dict: ``to_shm`` hands out numbers, ``take`` reads them in order."""

    def __init__(self) -> None:
        self.files: dict[int, bytes] = {}
        self.order: list[int] = []

    def to_shm(self, payload: bytes) -> int:
        fd = 100 + len(self.files)
        self.files[fd] = payload
        self.order.append(fd)
        return fd

    def take(self, size: int) -> bytes:
        payload = self.files.pop(self.order.pop(0))
        assert len(payload) == size
        return payload


# ── pack / unpack ───────────────────────────────────────────────────────


def test_small_signals_of_one_flush_go_in_one_frame_in_order() -> None:
    sigs = [send(i) for i in range(1000)]
    frames = list(pack(sigs, FakeShm().to_shm))
    assert len(frames) == 1
    frame, fds = frames[0]
    assert frame.batch == sigs and fds == []


def test_a_payload_over_the_threshold_goes_by_file_and_comes_back_in_place() -> None:
    shm = FakeShm()
    sigs = [send(0), send(1, BIG), send(2)]
    [(frame, fds)] = list(pack(sigs, shm.to_shm))
    assert [s.shm for s in frame.batch] == [0, len(BIG), 0]
    assert frame.batch[1].payload == b"" and len(fds) == 1
    assert unpack(frame.batch, shm.take, lost=_never) == sigs


def test_more_files_than_one_read_takes_are_cut_into_several_frames_in_order() -> None:
    shm = FakeShm()
    sigs = [send(i, BIG if i % 2 else b"") for i in range(4 * MAX_FDS_PER_FRAME)]
    frames = list(pack(sigs, shm.to_shm))
    assert len(frames) == 2
    assert all(len(fds) <= MAX_FDS_PER_FRAME for _frame, fds in frames)
    back = [s for frame, _fds in frames for s in unpack(frame.batch, shm.take, lost=_never)]
    assert back == sigs


def test_a_frame_is_cut_at_the_batch_byte_cap() -> None:
    chunk = b"y" * SHM_THRESHOLD_BYTES
    sigs = [send(i, chunk) for i in range(2 * MAX_BATCH_BYTES // len(chunk) + 1)]
    frames = list(pack(sigs, FakeShm().to_shm))
    assert len(frames) == 3
    assert all(sum(len(s.payload) for s in f.batch) <= MAX_BATCH_BYTES for f, _ in frames)
    assert [s for frame, _fds in frames for s in frame.batch] == sigs


def test_a_payload_file_that_cannot_be_read_is_reported_and_the_rest_delivered() -> None:
    sigs = [send(0), send(1, BIG), send(2)]
    [(frame, _fds)] = list(pack(sigs, FakeShm().to_shm))
    lost: list[Sig] = []

    def broken(_size: int) -> bytes:
        raise OSError("payload file ended at 0 of 65537 bytes")

    back = unpack(frame.batch, broken, lambda sig, _exc: lost.append(sig))
    assert back == [sigs[0], sigs[2]]
    assert [s.sender for s in lost] == [sigs[1].sender]


def _never(sig: Sig, exc: Exception) -> None:
    raise AssertionError(f"lost {sig}: {exc}")


# ── the outbox ──────────────────────────────────────────────────────────


def test_the_first_signal_after_a_flush_schedules_it_and_the_rest_ride_along() -> None:
    scheduled: list[int] = []
    outbox = Outbox(lambda: scheduled.append(1))
    for i in range(50):
        outbox.put(1, send(i))
        outbox.put(2, send(100 + i))
    assert scheduled == [1]
    taken = outbox.take()
    assert taken == {1: [send(i) for i in range(50)], 2: [send(100 + i) for i in range(50)]}
    outbox.put(1, send(7))
    assert scheduled == [1, 1]


def test_the_outbox_counts_the_messages_it_queues_and_no_other_signal() -> None:
    outbox = Outbox(lambda: None)
    for op in Op:
        outbox.put(1, Sig(op, 1001, 2002, 5, payload=b"x"))
    outbox.take()
    outbox.put(2, Sig(Op.SEND, 1002, 2002))
    assert outbox.sent == 4  # SEND, CALL, TIMER, then SEND again; a reply is no message sent


def test_queued_bytes_count_until_the_flush_hands_them_to_the_channel() -> None:
    outbox = Outbox(lambda: None)
    outbox.put(1, send(0, b"z" * 100))
    assert outbox.queued_bytes(1) == 100 + SIG_OVERHEAD_BYTES
    outbox.take()
    assert outbox.queued_bytes(1) == 100 + SIG_OVERHEAD_BYTES
    outbox.put(1, send(1, b"z" * 10))
    assert outbox.queued_bytes(1) == 110 + 2 * SIG_OVERHEAD_BYTES
    outbox.handed(1)
    assert outbox.queued_bytes(1) == 10 + SIG_OVERHEAD_BYTES
    assert outbox.queued_bytes(2) == 0


def test_senders_on_many_threads_keep_their_own_order_and_schedule_once() -> None:
    scheduled: list[int] = []
    outbox = Outbox(lambda: scheduled.append(1))
    per_thread = 2000

    def sender(t: int) -> None:
        for i in range(per_thread):
            outbox.put(1, Sig(Op.SEND, 1001, t, payload=i.to_bytes(4, "big")))

    threads = [threading.Thread(target=sender, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert scheduled == [1]
    sigs = outbox.take()[1]
    for t in range(4):
        mine = [int.from_bytes(s.payload, "big") for s in sigs if s.sender == t]
        assert mine == list(range(per_thread))


# ── two meshes over a socketpair ────────────────────────────────────────


class Pair:
    """Worker 0's and worker 1's meshes on one loop, joined by a socketpair."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.delivered: list[list[Sig]] = []
        self.undeliverable: list[Sig] = []
        self.lost: list[str] = []
        self.left = self._mesh(0)
        self.right = self._mesh(1)
        a, b = socket.socketpair()
        self.left.add_peer(1, a, os.getpid())
        self.right.add_peer(0, b, os.getpid())
        self.right_sock = b

    def _mesh(self, slot: int) -> Mesh:
        def schedule(job: Callable[[], None]) -> None:
            self.loop.call_soon_threadsafe(job)

        return Mesh(
            slot,
            self.loop,
            schedule_flush=schedule,
            deliver=self.delivered.append,
            undeliverable=self.undeliverable.append,
            lost=self.lost.append,
        )

    def turn_until(self, done: Callable[[], bool]) -> None:
        """Run the loop until ``done()`` (or fail after a generous bound)."""

        async def wait() -> None:
            while not done():
                await asyncio.sleep(0.001)

        self.loop.run_until_complete(asyncio.wait_for(wait(), 10.0))

    def close(self) -> None:
        self.left.close()
        self.right.close()
        self.loop.close()


@pytest.fixture
def pair() -> Iterator[Pair]:
    pair = Pair()
    yield pair
    pair.close()


def test_signals_of_one_turn_arrive_as_one_delivery_in_order(pair: Pair) -> None:
    pair.turn_until(lambda: pair.left.verified == [1] and pair.right.verified == [0])
    sigs = [send(i, BIG if i % 10 == 0 else b"") for i in range(200)]
    for sig in sigs:
        assert pair.left.queue(1, sig)
    pair.turn_until(lambda: sum(len(batch) for batch in pair.delivered) == len(sigs))
    assert [s for batch in pair.delivered for s in batch] == sigs
    # 20 payload files: two frames, read in (at most) two passes.
    assert len(pair.delivered) <= 2
    assert pair.lost == []


def test_a_peer_that_stops_reading_is_backlogged_and_then_drains(pair: Pair) -> None:
    pair.loop.remove_reader(pair.right_sock.fileno())  # worker 1 stops reading
    chunk = b"w" * (SHM_THRESHOLD_BYTES - 1)
    sent = 0
    while not pair.left.backlogged(1):
        pair.left.queue(1, send(sent, chunk))
        sent += 1
        if sent % 64 == 0:
            pair.turn_until(lambda: True)
            pair.left.flush()
    assert sent * len(chunk) >= MAX_PEER_BACKLOG_BYTES // 2
    assert sent * len(chunk) <= 2 * MAX_PEER_BACKLOG_BYTES
    pair.loop.add_reader(pair.right_sock.fileno(), pair.right._on_readable, 0, pair.right.peers[0])
    pair.left.flush()
    pair.turn_until(lambda: sum(len(batch) for batch in pair.delivered) == sent)
    assert not pair.left.backlogged(1)


def test_shared_memory_payloads_count_until_the_peer_says_it_read_them(pair: Pair) -> None:
    pair.loop.remove_reader(pair.right_sock.fileno())
    count = MAX_PEER_BACKLOG_BYTES // len(BIG) + 1
    for i in range(count):
        pair.left.queue(1, send(i, BIG))
    pair.left.flush()
    # The frames are small and all in the socket; the files are what is held.
    assert not pair.left.peers[1].channel.wants_write
    assert pair.left.backlogged(1)
    pair.loop.add_reader(pair.right_sock.fileno(), pair.right._on_readable, 0, pair.right.peers[0])
    pair.turn_until(lambda: sum(len(batch) for batch in pair.delivered) == count)
    pair.turn_until(lambda: not pair.left.backlogged(1))  # its MeshRead came back
    assert pair.left.peers[1].shm_bytes == 0


def test_signals_for_a_peer_that_is_gone_are_refused_or_answered_for_it(pair: Pair) -> None:
    pair.right.close()  # worker 1 dies
    pair.turn_until(lambda: 1 not in pair.left.peers)
    assert not pair.left.queue(1, send(1))  # the table answers NOPROC
    # One queued by another thread just before the channel was found closed:
    link = Sig(Op.LINK, 1001, 2000)
    pair.left.outbox.put(1, link)
    pair.left.flush()
    assert pair.undeliverable == [link]
    assert pair.left.outbox.queued_bytes(1) == 0
