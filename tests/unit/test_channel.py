"""Channel framing: bytes in, messages out, and what a broken stream raises.

Runs in: any (the test process; each test holds a real AF_UNIX
socketpair, one end a ``Channel`` and the other a plain socket the test
writes raw bytes to, or a second ``Channel``).

A unix socketpair hands a send to the peer's receive queue before the
call returns, so a test writes bytes and calls ``read_ready`` at once:
no loop and no waiting. The frame is ``channel``'s: a 4-byte big-endian
length, then one msgpack message.
"""

from __future__ import annotations

import os
import socket
import struct
import typing
from collections.abc import Iterator

import msgspec
import pytest

from rusmd.channel import (
    MAX_FRAME_BYTES,
    Answer,
    Channel,
    ChannelClosed,
    ComponentImage,
    Components,
    Heartbeat,
    LeaseRequest,
    Loaded,
    Log,
    MeshHello,
    MeshPeer,
    MeshRead,
    Message,
    NameClaim,
    NameDrop,
    NameReply,
    Names,
    PidLease,
    ProcessExit,
    Query,
    Ready,
    Sig,
    Signals,
    Stop,
    WorkerDown,
)
from rusmd.log import LogRecord

# One of each message the union holds, every optional field set away from
# its default so a field the encoding dropped would show.
EXAMPLES: list[Message] = [
    Ready(slot=2, pid=4242, loaded=True),
    Loaded(slot=2),
    Heartbeat(slot=1, peers=[0, 2, 3], processes=17),
    Log(record=LogRecord(1700000000.25, "api#3001", "warn", "exit crashed: trap", 12)),
    Stop(timeout_s=2.5),
    MeshPeer(slot=3),
    MeshHello(slot=3, pid=999),
    MeshRead(size=70_000),
    Components(
        images=[
            ComponentImage(name="api", cwasm="/cache/ab.cwasm", digest="ab12"),
            ComponentImage(name="bad", error="wasm/bad.wasm: not a module"),
        ]
    ),
    PidLease(start=1000, end=2000),
    LeaseRequest(slot=1),
    Query(id=7, op="spawn", args={"component": "api", "n": [1, 2]}),
    Answer(id=7, ok=False, result={"pid": 3001}, error="no such component", code=3),
    Signals(
        batch=[
            Sig(op=1, to=2001, sender=3001),
            Sig(op=4, to=2001, sender=3001, ref=5001, reason=3, payload=b"\x00hi\xff", shm=9),
        ]
    ),
    NameClaim(req=1, name="greeter", pid=3001),
    NameReply(req=1, ok=False, holder=2001),
    NameDrop(pid=3001, names=["greeter", "other"]),
    Names(set={"greeter": 3001}, removed=["old"], full=True),
    ProcessExit(pid=3001, component="hello", reason="crashed", detail="unreachable"),
    WorkerDown(slot=1, reason="killed"),
]


def frame(payload: bytes) -> bytes:
    """A frame carrying ``payload`` as it is, valid msgpack or not."""
    return struct.pack(">I", len(payload)) + payload


def encoded(message: Message) -> bytes:
    return frame(msgspec.msgpack.encode(message))


@pytest.fixture
def wire() -> Iterator[tuple[Channel, socket.socket]]:
    """A channel and the raw socket at the other end of its pair."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    channel = Channel(ours)
    yield channel, theirs
    channel.close()
    theirs.close()


@pytest.fixture
def pair() -> Iterator[tuple[Channel, Channel]]:
    """Two channels on the two ends of one socketpair."""
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    a, b = Channel(left), Channel(right)
    yield a, b
    a.close()
    b.close()


def is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def open_fds() -> set[int]:
    """This process's open descriptors below 1024 (found without opening one)."""
    return {fd for fd in range(1024) if is_open(fd)}


# ── round trips ─────────────────────────────────────────────────────────


def test_examples_cover_every_message_type() -> None:
    assert {type(m) for m in EXAMPLES} == set(typing.get_args(Message))


@pytest.mark.parametrize("message", EXAMPLES, ids=lambda m: type(m).__name__)
def test_each_message_type_round_trips_field_for_field(
    pair: tuple[Channel, Channel], message: Message
) -> None:
    a, b = pair
    a.send(message)
    assert not a.wants_write and a.queued_bytes == 0
    assert b.read_ready() == [message]


def test_every_message_sent_in_a_row_arrives_in_order_in_one_read(
    pair: tuple[Channel, Channel],
) -> None:
    a, b = pair
    for message in EXAMPLES:
        a.send(message)
    assert b.read_ready() == EXAMPLES


# ── frames and reads ────────────────────────────────────────────────────


def test_a_frame_split_across_reads_is_returned_once_whole(
    wire: tuple[Channel, socket.socket],
) -> None:
    channel, peer = wire
    data = encoded(Heartbeat(slot=1, peers=[2], processes=3))
    # Inside the length prefix, at its end, inside the payload, then the rest.
    pieces = [data[:2], data[2:4], data[4:9]]
    for piece in pieces:
        peer.sendall(piece)
        assert channel.read_ready() == []
    peer.sendall(data[9:])
    assert channel.read_ready() == [Heartbeat(slot=1, peers=[2], processes=3)]


def test_a_frame_sent_a_byte_at_a_time_decodes(wire: tuple[Channel, socket.socket]) -> None:
    channel, peer = wire
    data = encoded(MeshHello(slot=1, pid=77))
    got: list[Message] = []
    for byte in data:
        peer.sendall(bytes([byte]))
        got += channel.read_ready()
    assert got == [MeshHello(slot=1, pid=77)]


def test_several_frames_and_a_partial_one_in_one_read(wire: tuple[Channel, socket.socket]) -> None:
    channel, peer = wire
    third = encoded(Loaded(slot=3))
    peer.sendall(encoded(Loaded(slot=1)) + encoded(Loaded(slot=2)) + third[:5])
    assert channel.read_ready() == [Loaded(slot=1), Loaded(slot=2)]
    peer.sendall(third[5:])
    assert channel.read_ready() == [Loaded(slot=3)]


def test_nothing_to_read_returns_no_messages(wire: tuple[Channel, socket.socket]) -> None:
    channel, _peer = wire
    assert channel.read_ready() == []


def test_a_read_larger_than_one_chunk_returns_every_frame(
    wire: tuple[Channel, socket.socket],
) -> None:
    channel, peer = wire
    # Over READ_CHUNK_BYTES (256 KiB) queued at once: read_ready keeps
    # reading while a chunk comes back full.
    messages = [Query(id=i, op="list", args={"pad": "x" * 1000}) for i in range(400)]
    peer.setblocking(False)
    data = b"".join(encoded(m) for m in messages)
    got: list[Message] = []
    while data:
        try:
            data = data[peer.send(data) :]
        except BlockingIOError:
            pass
        got += channel.read_ready()
    got += channel.read_ready()
    assert got == messages


# ── broken streams ──────────────────────────────────────────────────────


def test_a_length_over_the_cap_closes_before_the_payload_arrives(
    wire: tuple[Channel, socket.socket],
) -> None:
    channel, peer = wire
    peer.sendall(struct.pack(">I", MAX_FRAME_BYTES + 1))
    with pytest.raises(ChannelClosed, match=f"frame of {MAX_FRAME_BYTES + 1} bytes exceeds"):
        channel.read_ready()


def test_a_length_at_the_cap_waits_for_its_payload(wire: tuple[Channel, socket.socket]) -> None:
    channel, peer = wire
    peer.sendall(struct.pack(">I", MAX_FRAME_BYTES) + b"\x00" * 10)
    assert channel.read_ready() == []


@pytest.mark.parametrize(
    "payload",
    [
        b"\xc1",  # a byte msgpack never uses
        msgspec.msgpack.encode({"type": "no_such_tag", "slot": 1}),
        msgspec.msgpack.encode({"type": "ready", "slot": "one", "pid": 1}),
        msgspec.msgpack.encode([1, 2, 3]),
        b"",
    ],
    ids=["not-msgpack", "unknown-tag", "wrong-field-type", "not-a-map", "empty"],
)
def test_a_frame_that_does_not_decode_closes_the_channel(
    wire: tuple[Channel, socket.socket], payload: bytes
) -> None:
    channel, peer = wire
    peer.sendall(encoded(Loaded(slot=1)) + frame(payload))
    with pytest.raises(ChannelClosed, match="undecodable frame"):
        channel.read_ready()


def test_a_peer_that_hangs_up_between_frames_raises_peer_closed(
    wire: tuple[Channel, socket.socket],
) -> None:
    channel, peer = wire
    peer.shutdown(socket.SHUT_WR)
    with pytest.raises(ChannelClosed, match=r"^peer closed$"):
        channel.read_ready()


def test_a_peer_that_hangs_up_mid_frame_says_so(wire: tuple[Channel, socket.socket]) -> None:
    channel, peer = wire
    peer.sendall(encoded(Loaded(slot=1))[:3])
    assert channel.read_ready() == []
    peer.shutdown(socket.SHUT_WR)
    with pytest.raises(ChannelClosed, match="peer closed mid-frame"):
        channel.read_ready()


def test_a_write_to_a_closed_peer_raises_channel_closed(
    wire: tuple[Channel, socket.socket],
) -> None:
    channel, peer = wire
    peer.close()
    with pytest.raises(ChannelClosed, match="write failed"):
        channel.send(Loaded(slot=1))


def test_send_on_a_closed_channel_raises_and_closes_handed_over_fds(
    wire: tuple[Channel, socket.socket],
) -> None:
    channel, _peer = wire
    channel.close()
    read_end, write_end = os.pipe()
    with pytest.raises(ChannelClosed, match="channel is closed"):
        channel.send(MeshPeer(slot=1), [read_end], close_fds=True)
    assert not is_open(read_end)
    with pytest.raises(ChannelClosed):
        channel.send(MeshPeer(slot=1), [write_end])
    assert is_open(write_end)  # not handed over: still the caller's
    os.close(write_end)


# ── back-pressure and descriptors ───────────────────────────────────────


def test_a_frame_bigger_than_the_socket_buffer_queues_and_drains(
    pair: tuple[Channel, Channel],
) -> None:
    a, b = pair
    big = Signals(batch=[Sig(op=1, to=2001, sender=3001, payload=b"p" * (4 << 20))])
    a.send(big)
    assert a.wants_write and 0 < a.queued_bytes < (4 << 20) + 64
    got: list[Message] = []
    while a.wants_write or not got:
        got += b.read_ready()
        a.write_ready()
    assert got == [big]
    assert a.queued_bytes == 0


def test_fds_travel_once_with_a_frame_written_in_pieces(pair: tuple[Channel, Channel]) -> None:
    a, b = pair
    read_end, write_end = os.pipe()
    big = Signals(batch=[Sig(op=1, to=2001, sender=3001, shm=1, payload=b"q" * (2 << 20))])
    a.send(big, [read_end], close_fds=True)
    assert a.wants_write
    assert not is_open(read_end)  # went with the first piece, then closed
    got: list[Message] = []
    while a.wants_write or not got:
        got += b.read_ready()
        a.write_ready()
    assert got == [big]
    received = b.take_fd()
    with pytest.raises(ChannelClosed, match="expected a file descriptor"):
        b.take_fd()
    os.write(write_end, b"through")
    assert os.read(received, 16) == b"through"
    os.close(received)
    os.close(write_end)


def test_take_fd_without_one_raises(pair: tuple[Channel, Channel]) -> None:
    _a, b = pair
    with pytest.raises(ChannelClosed, match="expected a file descriptor with the frame"):
        b.take_fd()


def test_close_closes_received_fds_never_taken_and_is_idempotent(
    pair: tuple[Channel, Channel],
) -> None:
    a, b = pair
    read_end, write_end = os.pipe()
    a.send(MeshPeer(slot=1), [read_end, write_end], close_fds=True)
    assert b.read_ready() == [MeshPeer(slot=1)]
    before = open_fds()
    b.close()
    b.close()
    assert b.closed
    assert len(before - open_fds()) == 3  # the socket and the two descriptors


def test_close_with_unsent_output_closes_its_handed_over_fds(
    pair: tuple[Channel, Channel],
) -> None:
    a, _b = pair
    a.send(Signals(batch=[Sig(op=1, to=2001, sender=3001, payload=b"r" * (4 << 20))]))
    read_end, write_end = os.pipe()
    a.send(MeshPeer(slot=1), [read_end], close_fds=True)
    assert is_open(read_end)  # still queued behind the big frame
    a.close()
    assert not is_open(read_end)
    assert not a.wants_write and a.queued_bytes == 0
    os.close(write_end)
