"""The actor half of the ``rusm`` host functions: messages, links, names, timers.

Runs in: worker, on the thread of the calling process: the loop thread
for a fiber (whose waiting calls are ``fiber_calls``' async forms, which
read their arguments with the helpers here), its guest thread for a
process that keeps one.

Each function reads its arguments from the raw value array, checks every
pointer and length against the caller's memory (a bad one crashes the
caller alone), and writes its result back into ``values[0]``. Errors are
``ErrorCode`` values for the guest, never exceptions into wasmtime.
Acting on another process without ``allow-process-control`` returns
DENIED and logs once per process at warn.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from typing import Any, Protocol

from rusmd.abi import (
    HEADER_BYTES,
    HEADER_FORMAT,
    MAX_LABEL_BYTES,
    MAX_MESSAGE_BYTES,
    MAX_NAME_BYTES,
    ErrorCode,
    ExitReason,
    slot_of,
)
from rusmd.actors.records import Envelope, Stopped
from rusmd.actors.supervisor import GuestSupervisor, SpecError, SupervisorHost, parse_spec
from rusmd.config.model import LogLevel, Manifest
from rusmd.errors import SpawnError
from rusmd.wasm.memory import BadPointer, GuestMemory, check_range
from rusmd.wasm.process import Exit, Process, ProcessState, log_for
from rusmd.wasm.runners import RunnerPool

_HEADER = struct.Struct(HEADER_FORMAT)
_PID = struct.Struct("<q")

# The reasons a guest may send with rusm.exit_signal (noproc only ever comes
# from the host: the target was already gone).
_SIGNAL_CODES = frozenset(r.code for r in ExitReason if r is not ExitReason.NOPROC)
Impl = Callable[[Process, Any], None]


class ActorHost(SupervisorHost, Protocol):
    """What the actor functions use of the worker's host (a supervisor's needs, and more)."""

    slot: int
    ticks: int
    manifest: Manifest
    processes: dict[int, Process]
    runners: RunnerPool

    def info(self, pid: int) -> dict[str, Any] | None: ...


class ActorCalls:
    """Host functions over the worker's actor table.

    Args:
        host: The worker's wasm host.
    """

    def __init__(self, host: ActorHost) -> None:
        self.host = host
        self.table = host.actors
        self._warned: set[tuple[int, str]] = set()

    def implementations(self) -> dict[str, Impl]:
        """Host function name → implementation."""
        return {
            "send": self.send,
            "recv": self.recv,
            "call": self.call,
            "reply": self.reply,
            "register": self.register,
            "unregister": self.unregister,
            "whereis": self.whereis,
            "link": self.link,
            "unlink": self.unlink,
            "monitor": self.monitor,
            "demonitor": self.demonitor,
            "trap_exit": self.trap_exit,
            "exit_signal": self.exit_signal,
            "kill": self.kill,
            "is_alive": self.is_alive,
            "list": self.list,
            "info": self.info,
            "send_after": self.send_after,
            "cancel_timer": self.cancel_timer,
            "set_label": self.set_label,
            "spawn_link": self.spawn_link,
            "supervise": self.supervise,
        }

    # ── helpers ─────────────────────────────────────────────────────────

    def memory_of(self, process: Process, function: str) -> GuestMemory:
        """The caller's memory (a module without one crashes the caller)."""
        if process.memory is None:
            raise BadPointer(f"rusm.{function}: the module exports no memory")
        return process.memory

    def read_bytes(self, process: Process, function: str, ptr: int, length: int) -> bytes | None:
        """Guest bytes, or None when over the message size limit (range checked first)."""
        memory = self.memory_of(process, function)
        check_range(function, ptr, length, memory.size())
        if length > MAX_MESSAGE_BYTES:
            return None
        return memory.read(function, ptr, length)

    def read_name(self, process: Process, function: str, ptr: int, length: int) -> str | None:
        """A process or registry name from guest memory, or None when it is not one."""
        memory = self.memory_of(process, function)
        check_range(function, ptr, length, memory.size())
        if not 0 < length <= MAX_NAME_BYTES:
            return None
        try:
            return memory.read(function, ptr, length).decode("utf-8")
        except UnicodeDecodeError:
            return None

    def allowed(self, process: Process, target: int, function: str) -> bool:
        """May ``process`` act on ``target``? (itself always; others with the grant)"""
        if target == process.pid or process.component.capability.allow_process_control:
            return True
        key = (process.pid, function)
        if key not in self._warned:
            self._warned.add(key)
            self.host.log.warn(
                f"{process.label}: rusm.{function} on #{target} denied "
                "(needs allow-process-control)"
            )
        return False

    def _block(self, process: Process, timeout_ms: int) -> bool:
        """Enter a blocking wait (unless it is a poll); True when entered."""
        if timeout_ms == 0:
            return False
        process.state = ProcessState.WAITING
        self.host.runners.blocking()
        return True

    def _unblock(self, process: Process, blocked: bool) -> None:
        if not blocked:
            return
        self.host.runners.unblocked()
        process.state = ProcessState.RUNNING
        # Time parked is not CPU time.
        process.call_started_tick = self.host.ticks

    def _stopped(self, process: Process, reason: ExitReason) -> Exception:
        if not process.stop_reason:
            process.stop_reason = reason
        return Exit(process.stop_reason)

    @staticmethod
    def _timeout(ms: int) -> float | None:
        return None if ms < 0 else ms / 1000

    # ── messages ────────────────────────────────────────────────────────

    def send(self, process: Process, values: Any) -> None:
        to, ptr, length = values[0].i64, values[1].i32, values[2].i32
        data = self.read_bytes(process, "send", ptr, length)
        if data is None:
            values[0].i32 = ErrorCode.TOOBIG
            return
        values[0].i32 = self.table.send(process.pid, to, data)

    def recv(self, process: Process, values: Any) -> None:
        header, buf, cap, timeout_ms = (
            values[0].i32,
            values[1].i32,
            values[2].i32,
            values[3].i32,
        )
        memory = self.memory_of(process, "recv")
        size = memory.size()
        check_range("recv", header, HEADER_BYTES, size)
        check_range("recv", buf, cap, size)
        if timeout_ms < -1:
            values[0].i32 = ErrorCode.INVALID
            return
        assert process.actor is not None
        blocked = self._block(process, timeout_ms)
        try:
            code, envelope = self.table.receive(process.actor, self._timeout(timeout_ms), cap)
        except Stopped as exc:
            raise self._stopped(process, exc.reason) from None
        finally:
            self._unblock(process, blocked)
        if envelope is None:
            values[0].i32 = code
            return
        values[0].i32 = write_received(memory, header, buf, code, envelope)

    def call(self, process: Process, values: Any) -> None:
        to, req, req_len, buf, cap, timeout_ms = (
            values[0].i64,
            values[1].i32,
            values[2].i32,
            values[3].i32,
            values[4].i32,
            values[5].i32,
        )
        memory = self.memory_of(process, "call")
        check_range("call", buf, cap, memory.size())
        data = self.read_bytes(process, "call", req, req_len)
        if data is None:
            values[0].i32 = ErrorCode.TOOBIG
            return
        if timeout_ms < -1:
            values[0].i32 = ErrorCode.INVALID
            return
        if to == process.pid:
            values[0].i32 = ErrorCode.INVALID  # it would wait for itself
            return
        assert process.actor is not None
        blocked = self._block(process, 1)
        try:
            code, reply = self.table.call(process.actor, to, data, self._timeout(timeout_ms))
        except Stopped as exc:
            raise self._stopped(process, exc.reason) from None
        finally:
            self._unblock(process, blocked)
        if code != ErrorCode.OK:
            values[0].i32 = code
            return
        memory.write("call", buf, reply[: max(cap, 0)])
        values[0].i32 = len(reply)

    def reply(self, process: Process, values: Any) -> None:
        to, ref, ptr, length = values[0].i64, values[1].i64, values[2].i32, values[3].i32
        data = self.read_bytes(process, "reply", ptr, length)
        if data is None:
            values[0].i32 = ErrorCode.TOOBIG
            return
        assert process.actor is not None
        values[0].i32 = self.table.reply(process.actor, to, ref, data)

    # ── names ───────────────────────────────────────────────────────────

    def register(self, process: Process, values: Any) -> None:
        name = self.read_name(process, "register", values[0].i32, values[1].i32)
        if name is None:
            values[0].i32 = ErrorCode.INVALID
            return
        assert process.actor is not None
        blocked = self._block(process, 1)
        try:
            values[0].i32 = self.table.register(process.actor, name)
        except Stopped as exc:
            raise self._stopped(process, exc.reason) from None
        finally:
            self._unblock(process, blocked)

    def unregister(self, process: Process, values: Any) -> None:
        name = self.read_name(process, "unregister", values[0].i32, values[1].i32)
        if name is None:
            values[0].i32 = ErrorCode.INVALID
            return
        assert process.actor is not None
        code = self.table.unregister(process.actor, name)
        if code == ErrorCode.DENIED:
            self.allowed(process, self.table.whereis(name) or 0, "unregister")
        values[0].i32 = code

    def whereis(self, process: Process, values: Any) -> None:
        name = self.read_name(process, "whereis", values[0].i32, values[1].i32)
        if name is None:
            values[0].i64 = ErrorCode.INVALID
            return
        pid = self.table.whereis(name)
        values[0].i64 = ErrorCode.NOTFOUND if pid is None else pid

    # ── links, monitors, exits ──────────────────────────────────────────

    def link(self, process: Process, values: Any) -> None:
        assert process.actor is not None
        values[0].i32 = self.table.link(process.actor, values[0].i64)

    def unlink(self, process: Process, values: Any) -> None:
        assert process.actor is not None
        values[0].i32 = self.table.unlink(process.actor, values[0].i64)

    def monitor(self, process: Process, values: Any) -> None:
        assert process.actor is not None
        values[0].i64 = self.table.monitor(process.actor, values[0].i64)

    def demonitor(self, process: Process, values: Any) -> None:
        assert process.actor is not None
        values[0].i32 = self.table.demonitor(process.actor, values[0].i64)

    def trap_exit(self, process: Process, values: Any) -> None:
        assert process.actor is not None
        with self.table.lock:
            old = process.actor.trap_exit
            process.actor.trap_exit = values[0].i32 != 0
        values[0].i32 = int(old)

    def exit_signal(self, process: Process, values: Any) -> None:
        target, reason = values[0].i64, values[1].i32
        if reason not in _SIGNAL_CODES:
            values[0].i32 = ErrorCode.INVALID
            return
        if target == process.pid:
            process.stop_reason = ExitReason.of_code(reason)
            process.stop_detail = "exit_signal to itself"
            raise Exit(process.stop_reason)
        if not self.allowed(process, target, "exit_signal"):
            values[0].i32 = ErrorCode.DENIED
            return
        assert process.actor is not None
        values[0].i32 = self.table.exit_signal(process.actor, target, reason)

    def kill(self, process: Process, values: Any) -> None:
        target = values[0].i64
        if target == process.pid:
            process.stop_reason = ExitReason.KILLED
            process.stop_detail = "killed itself"
            raise Exit(ExitReason.KILLED)
        if not self.allowed(process, target, "kill"):
            values[0].i32 = ErrorCode.DENIED
            return
        assert process.actor is not None
        values[0].i32 = self.table.exit_signal(process.actor, target, ExitReason.KILLED.code)

    def is_alive(self, process: Process, values: Any) -> None:
        target = values[0].i64
        if not self.allowed(process, target, "is_alive"):
            values[0].i32 = ErrorCode.DENIED
            return
        blocked = self._block(process, int(slot_of(target) != self.host.slot))
        try:
            alive = self.host.is_alive(target)
        finally:
            self._unblock(process, blocked)
        values[0].i32 = 1 if alive else 0

    def list(self, process: Process, values: Any) -> None:
        buf, most = values[0].i32, values[1].i32
        memory = self.memory_of(process, "list")
        if most < 0 or most > (1 << 24):
            values[0].i32 = ErrorCode.INVALID
            return
        check_range("list", buf, most * _PID.size, memory.size())
        if process.component.capability.allow_process_control:
            pids = sorted(self.host.processes)
        else:
            pids = [process.pid]
        data = b"".join(_PID.pack(pid) for pid in pids[:most])
        memory.write("list", buf, data)
        values[0].i32 = len(pids)

    def info(self, process: Process, values: Any) -> None:
        target, buf, cap = values[0].i64, values[1].i32, values[2].i32
        memory = self.memory_of(process, "info")
        check_range("info", buf, cap, memory.size())
        if not self.allowed(process, target, "info"):
            values[0].i32 = ErrorCode.DENIED
            return
        blocked = self._block(process, int(slot_of(target) != self.host.slot))
        try:
            row = self.host.info(target)
        finally:
            self._unblock(process, blocked)
        if row is None:
            values[0].i32 = ErrorCode.NOPROC
            return
        data = json.dumps(row, separators=(",", ":"), default=str).encode()
        memory.write("info", buf, data[: max(cap, 0)])
        values[0].i32 = len(data)

    # ── timers, labels ──────────────────────────────────────────────────

    def send_after(self, process: Process, values: Any) -> None:
        to, ms, ptr, length = values[0].i64, values[1].i32, values[2].i32, values[3].i32
        data = self.read_bytes(process, "send_after", ptr, length)
        if data is None:
            values[0].i64 = ErrorCode.TOOBIG
            return
        if ms < 0:
            values[0].i64 = ErrorCode.INVALID
            return
        assert process.actor is not None
        values[0].i64 = self.table.send_after(process.actor, to, ms / 1000, data)

    def cancel_timer(self, process: Process, values: Any) -> None:
        assert process.actor is not None
        values[0].i32 = self.table.cancel_timer(process.actor, values[0].i64)

    def set_label(self, process: Process, values: Any) -> None:
        ptr, length = values[0].i32, values[1].i32
        memory = self.memory_of(process, "set_label")
        check_range("set_label", ptr, length, memory.size())
        if length > MAX_LABEL_BYTES:
            values[0].i32 = ErrorCode.TOOBIG
            return
        try:
            text = memory.read("set_label", ptr, length).decode("utf-8")
        except UnicodeDecodeError:
            values[0].i32 = ErrorCode.INVALID
            return
        assert process.actor is not None
        process.actor.user_label = text
        values[0].i32 = ErrorCode.OK

    # ── spawning ────────────────────────────────────────────────────────

    def spawn_link(self, process: Process, values: Any) -> None:
        name = self.read_name(process, "spawn_link", values[0].i32, values[1].i32)
        if name is None:
            values[0].i64 = ErrorCode.INVALID
            return
        try:
            values[0].i64 = self.host.spawn(name, parent=process.pid, link=True)
        except SpawnError as exc:
            why = f"spawn_link from {process.label} failed: {exc}"
            log_for(self.host.log, process, LogLevel.WARN, why)
            values[0].i64 = exc.code

    def supervise(self, process: Process, values: Any) -> None:
        data = self.read_bytes(process, "supervise", values[0].i32, values[1].i32)
        if data is None:
            values[0].i64 = ErrorCode.TOOBIG
            return
        try:
            flags, children = parse_spec(data, set(self.host.manifest.components))
        except SpecError as exc:
            log_for(self.host.log, process, LogLevel.WARN, f"supervise from {process.label}: {exc}")
            values[0].i64 = exc.code
            return
        try:
            values[0].i64 = GuestSupervisor.start(self.host, process.pid, flags, children)
        except SpawnError as exc:
            why = f"supervise from {process.label} failed: {exc}"
            log_for(self.host.log, process, LogLevel.WARN, why)
            values[0].i64 = exc.code


def write_received(
    memory: GuestMemory, header: int, buf: int, code: int, envelope: Envelope
) -> int:
    """Write a received message's header (and payload, if it fit): ``recv``'s result.

    ``code`` is ``ActorTable.receive``'s: OK (taken) or TOOBIG (left in the
    mailbox, only the header written).
    """
    payload = envelope.payload
    memory.write(
        "recv",
        header,
        _HEADER.pack(
            envelope.kind, envelope.reason, envelope.sender, envelope.ref, len(payload), 0
        ),
    )
    if code == ErrorCode.OK:
        memory.write("recv", buf, payload)
        return len(payload)
    return code
