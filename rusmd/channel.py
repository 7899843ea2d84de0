"""Channels: length-prefixed msgspec (msgpack) frames over socketpairs.

Runs in: any (main ↔ worker, and worker ↔ worker on the mesh).

A frame is a 4-byte big-endian length followed by one msgpack-encoded
message from the ``Message`` union. File descriptors (fresh mesh
channels for a restarted worker) travel with a frame as SCM_RIGHTS
ancillary data. The channel itself is buffer logic over a non-blocking
socket: the owner's loop (selectors in main, uvloop in a worker) calls
``read_ready``/``write_ready`` when the socket is ready.
"""

from __future__ import annotations

import array
import os
import socket
import struct
from collections import deque
from typing import Any

import msgspec

from rusmd.errors import RusmError
from rusmd.log import LogRecord

# A frame larger than this is a corrupt stream or a runaway peer; the
# channel closes rather than allocate for it. Large payloads go through
# shared memory, never a frame.
MAX_FRAME_BYTES = 16 << 20
# Bytes read per recv call: large enough to batch many small frames, and
# under glibc's mmap threshold (128 KiB): Python allocates the whole chunk
# for every recvmsg, and a chunk above the threshold is an mmap/munmap pair
# each read (measured: 22-26 µs a read at 256 KiB against 4-6 at 64 KiB,
# for the few bytes a round trip's frame carries).
READ_CHUNK_BYTES = 64 << 10
# File descriptors accepted with one recvmsg (mesh hand-offs send one).
MAX_FDS_PER_READ = 16

_LENGTH = struct.Struct(">I")


class Ready(msgspec.Struct, tag="ready", frozen=True):
    """Worker → main: the worker's loop runs and it can take work.

    ``loaded`` says its components were loaded at boot (the compile step
    had finished when it was forked); else ``Loaded`` follows once they are.
    """

    slot: int
    pid: int
    loaded: bool = False


class Loaded(msgspec.Struct, tag="loaded", frozen=True):
    """Worker → main: the components main sent are loaded; its listeners serve them."""

    slot: int


class Heartbeat(msgspec.Struct, tag="heartbeat", frozen=True):
    """Worker → main: the loop is turning over; with the mesh peers seen so far."""

    slot: int
    peers: list[int]
    processes: int = 0


class Log(msgspec.Struct, tag="log", frozen=True):
    """Worker → main: one log record for the single stderr writer."""

    record: LogRecord


class Stop(msgspec.Struct, tag="stop", frozen=True):
    """Main → worker: drain and exit 0 within ``timeout_s``."""

    timeout_s: float


class MeshPeer(msgspec.Struct, tag="mesh_peer", frozen=True):
    """Main → worker: a fresh channel to worker ``slot`` travels with this frame."""

    slot: int


class MeshHello(msgspec.Struct, tag="mesh_hello", frozen=True):
    """Worker → worker over the mesh: proves the channel carries frames."""

    slot: int
    pid: int


class MeshRead(msgspec.Struct, tag="mesh_read", frozen=True):
    """Worker → worker over the mesh: shared-memory payloads of ``size`` bytes were read.

    The sender counts the payload files it passed until their reader says
    so: they hold memory the socket's own bound does not see.
    """

    size: int


class ComponentImage(msgspec.Struct, frozen=True, kw_only=True):
    """One component as the compile step left it.

    Attributes:
        name: The component name.
        cwasm: Path of its compiled code in the AOT cache ("" when unavailable).
        digest: The cache's content digest of that file; a worker checks it
            again before deserializing.
        error: Why the component cannot run ("" when it can).
    """

    name: str
    cwasm: str = ""
    digest: str = ""
    error: str = ""


class Components(msgspec.Struct, tag="components", frozen=True):
    """Main → worker: the compiled components (after boot, reload, a rebuild)."""

    images: list[ComponentImage]


class PidLease(msgspec.Struct, tag="pid_lease", frozen=True):
    """Main → worker: pid serials ``[start, end)`` are this worker's to hand out."""

    start: int
    end: int


class LeaseRequest(msgspec.Struct, tag="lease_request", frozen=True):
    """Worker → main: the current pid lease is running low."""

    slot: int


class Query(msgspec.Struct, tag="query", frozen=True):
    """Main → worker: one control operation on wasm processes (spawn, list, info, kill)."""

    id: int
    op: str
    args: dict[str, Any]


class Answer(msgspec.Struct, tag="answer", frozen=True, kw_only=True):
    """Worker → main: the reply to ``Query`` ``id``."""

    id: int
    ok: bool
    result: dict[str, Any] = msgspec.field(default_factory=dict)
    error: str = ""
    code: int = 0


class Sig(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """One signal between two processes (see ``rusmd.actors.signals``).

    It holds only ints and bytes, so the cycle collector need not track
    it: one is made for every message, and tracked ones bring collections.

    Attributes:
        op: ``rusmd.actors.signals.Op``.
        to: The receiving pid.
        sender: The sending pid (0: the operator, through rusmctl).
        ref: The monitor, call or timer ref, when the op has one.
        reason: The ABI exit reason, for exits and downs.
        payload: The message bytes (empty when ``shm`` carries them).
        shm: Payload size when it travels in a shared-memory file passed
            with the frame (one descriptor per such signal, in order).
    """

    op: int
    to: int
    sender: int
    ref: int = 0
    reason: int = 0
    payload: bytes = b""
    shm: int = 0


class Signals(msgspec.Struct, tag="signals", frozen=True):
    """Signals from processes of one worker to processes of another (mesh)."""

    batch: list[Sig]


class NameClaim(msgspec.Struct, tag="name_claim", frozen=True):
    """Worker → main: ``pid`` asks for the node-wide ``name``."""

    req: int
    name: str
    pid: int


class NameReply(msgspec.Struct, tag="name_reply", frozen=True):
    """Main → worker: the answer to claim ``req``; ``holder`` owns the name now."""

    req: int
    ok: bool
    holder: int


class NameDrop(msgspec.Struct, tag="name_drop", frozen=True):
    """Worker → main: ``pid`` gave up ``names`` (unregistered, or it exited)."""

    pid: int
    names: list[str]


class Names(msgspec.Struct, tag="names", frozen=True):
    """Main → workers: registry changes (or, with ``full``, the whole registry)."""

    set: dict[str, int]
    removed: list[str]
    full: bool = False


class ProcessExit(msgspec.Struct, tag="process_exit", frozen=True):
    """Worker → main: a process main supervises (a resident) exited."""

    pid: int
    component: str
    reason: str
    detail: str = ""


class WorkerDown(msgspec.Struct, tag="worker_down", frozen=True):
    """Main → workers: every process of worker ``slot`` has gone, with ``reason``."""

    slot: int
    reason: str


Message = (
    Ready
    | Loaded
    | Heartbeat
    | Log
    | Stop
    | MeshPeer
    | MeshHello
    | MeshRead
    | Components
    | PidLease
    | LeaseRequest
    | Query
    | Answer
    | Signals
    | NameClaim
    | NameReply
    | NameDrop
    | Names
    | ProcessExit
    | WorkerDown
)

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Message)


class ChannelClosed(RusmError):
    """The peer closed the channel or broke the frame protocol."""


class Channel:
    """One end of a framed, non-blocking socketpair.

    Args:
        sock: A connected AF_UNIX stream socket; made non-blocking here.
    """

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock
        self._inbox = bytearray()
        self._outbox: deque[tuple[bytes, list[int], bool]] = deque()
        self._received_fds: deque[int] = deque()
        self.closed = False
        # Bytes queued and not yet written: a sender that must not grow the
        # queue without bound (log frames) checks it first.
        self.queued_bytes = 0

    def fileno(self) -> int:
        """The socket's fd, for selectors and ``loop.add_reader``."""
        return self.sock.fileno()

    @property
    def wants_write(self) -> bool:
        """True while queued output waits for the socket to drain."""
        return bool(self._outbox)

    def send(
        self, message: Message, fds: list[int] | None = None, *, close_fds: bool = False
    ) -> None:
        """Queue ``message`` (and ``fds``, duplicated by the kernel) and write what fits.

        With ``close_fds`` the channel closes ``fds`` once they are sent
        (or when it closes first): the caller hands them over.
        """
        if self.closed:
            if close_fds:
                for fd in fds or []:
                    _close_quietly(fd)
            raise ChannelClosed("channel is closed")
        payload = _encoder.encode(message)
        self._outbox.append((_LENGTH.pack(len(payload)) + payload, list(fds or []), close_fds))
        self.queued_bytes += _LENGTH.size + len(payload)
        self.write_ready()

    def write_ready(self) -> None:
        """Write queued frames until the socket would block."""
        while self._outbox:
            data, fds, close_fds = self._outbox[0]
            try:
                if fds:
                    sent = self.sock.sendmsg(
                        [data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
                    )
                else:
                    sent = self.sock.send(data)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                raise ChannelClosed(f"write failed: {exc.strerror}") from None
            if fds and close_fds:
                for fd in fds:
                    _close_quietly(fd)
            self.queued_bytes -= sent
            if sent == len(data):
                self._outbox.popleft()
            else:
                # The fds went with the first byte; never send them twice.
                self._outbox[0] = (data[sent:], [], False)

    def read_ready(self) -> list[Message]:
        """Read what the socket holds and return every complete message.

        Raises:
            ChannelClosed: The peer hung up, or sent a frame over the cap or
                one that does not decode. The owner unregisters the socket
                from its loop, then calls ``close``.
        """
        while True:
            try:
                data, ancillary, _flags, _addr = self.sock.recvmsg(
                    READ_CHUNK_BYTES, socket.CMSG_SPACE(MAX_FDS_PER_READ * 4)
                )
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                raise ChannelClosed(f"read failed: {exc.strerror}") from None
            self._take_fds(ancillary)
            if not data:
                if self._inbox:
                    raise ChannelClosed("peer closed mid-frame")
                raise ChannelClosed("peer closed")
            self._inbox += data
            if len(data) < READ_CHUNK_BYTES:
                break
        return self._decode_frames()

    def take_fd(self) -> int:
        """The oldest file descriptor received and not yet taken."""
        if not self._received_fds:
            raise ChannelClosed("expected a file descriptor with the frame")
        return self._received_fds.popleft()

    def close(self) -> None:
        """Close the socket and any descriptors received but never taken."""
        if self.closed:
            return
        self.closed = True
        while self._received_fds:
            _close_quietly(self._received_fds.popleft())
        for _data, fds, close_fds in self._outbox:
            if close_fds:
                for fd in fds:
                    _close_quietly(fd)
        self._outbox.clear()
        self.queued_bytes = 0
        self.sock.close()

    def _take_fds(self, ancillary: list[tuple[int, int, bytes]]) -> None:
        for level, kind, data in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds = array.array("i")
                fds.frombytes(data[: len(data) - (len(data) % fds.itemsize)])
                self._received_fds.extend(fds)

    def _decode_frames(self) -> list[Message]:
        messages: list[Message] = []
        offset = 0
        inbox = self._inbox
        while len(inbox) - offset >= _LENGTH.size:
            (length,) = _LENGTH.unpack_from(inbox, offset)
            if length > MAX_FRAME_BYTES:
                raise ChannelClosed(f"frame of {length} bytes exceeds {MAX_FRAME_BYTES}")
            end = offset + _LENGTH.size + length
            if len(inbox) < end:
                break
            try:
                messages.append(_decoder.decode(inbox[offset + _LENGTH.size : end]))
            except msgspec.DecodeError as exc:
                raise ChannelClosed(f"undecodable frame: {exc}") from None
            offset = end
        del inbox[:offset]
        return messages


def _close_quietly(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass
