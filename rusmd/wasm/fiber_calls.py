"""The waiting actor and kv host calls as a fiber makes them: park, then finish.

Runs in: worker, on its loop thread (inside a fiber's poll, or when the
scheduler finishes a parked call).

A process on a guest thread waits in these calls on a condition or an
event; a fiber parks instead (``FiberScheduler.park``) and the scheduler
finishes the call on the loop thread once what it waits for came:

- ``sleep``: a loop timer;
- ``call``: the reply with its ref, or the callee's down (NOPROC), or
  the timeout; the request goes out and the caller monitors the callee
  as on a thread (``ActorTable.call_begin``);
- ``register``: the main process's answer to the claim (or
  ``NAME_CLAIM_TIMEOUT_S``);
- ``is_alive`` and ``info`` on another worker's pid: the peer's answer
  (or ``PROBE_TIMEOUT_S``); on a local pid they answer at once;
- ``kv_set``, ``kv_delete``, ``kv_batch``: the group commit holding the
  write (its writer thread wakes the fiber).

Arguments are checked and read exactly as the threaded calls do (the
parsing is theirs: ``calls``, ``kv_calls``), so a bad pointer crashes
the caller alike. A parked call whose fiber is stopped is undone: the
call's monitor is dropped, a name claim is abandoned (a late grant is
given back); a write already queued still commits.
"""

from __future__ import annotations

import ctypes
import json
import time
from collections.abc import Callable
from typing import Any, Protocol

from rusmd.abi import MAX_MESSAGE_BYTES, ErrorCode, slot_of
from rusmd.actors.records import NAME_CLAIM_TIMEOUT_S, PROBE_TIMEOUT_S, Claim
from rusmd.store.kv import Write
from rusmd.wasm import capi
from rusmd.wasm.calls import ActorCalls
from rusmd.wasm.fiber import Body, Fiber, SyncBody, ValArgs
from rusmd.wasm.fibers import FiberScheduler
from rusmd.wasm.kv_calls import KvCalls
from rusmd.wasm.memory import check_range
from rusmd.wasm.process import Process, ProcessState

_monotonic = time.monotonic
_OK, _INVALID, _TOOBIG = ErrorCode.OK, ErrorCode.INVALID, ErrorCode.TOOBIG
_TIMEOUT, _UNAVAILABLE, _NOPROC = ErrorCode.TIMEOUT, ErrorCode.UNAVAILABLE, ErrorCode.NOPROC
_I32, _I64 = 0, 1  # WASMTIME_I32, WASMTIME_I64


class WaitsHost(Protocol):
    """What the waiting calls use of the worker's host."""

    slot: int


class FiberCalls:
    """The async forms of the actor and kv calls that wait.

    Args:
        fibers: The worker's scheduler (it parks and finishes them).
        host: The worker's host (its slot).
        actor_calls: The threaded actor calls (their argument checks and
            the calls that never wait here).
        kv_calls: The threaded kv calls (their argument checks).
    """

    def __init__(
        self, fibers: FiberScheduler, host: WaitsHost, actor_calls: ActorCalls, kv_calls: KvCalls
    ) -> None:
        self.fibers = fibers
        self.host = host
        self.table = actor_calls.table
        self.actor_calls = actor_calls
        self.kv_calls = kv_calls

    def bodies(self) -> dict[str, Body]:
        """Host function name → async body (``FiberScheduler.define``)."""
        kv = self.kv_calls
        return {
            "sleep": self.sleep,
            "call": self.call,
            "register": self.register,
            "is_alive": self.is_alive,
            "info": self.info,
            "kv_set": self._kv_write(kv.prepare_set),
            "kv_delete": self._kv_write(kv.prepare_delete),
            "kv_batch": self._kv_write(kv.prepare_batch),
        }

    def sync_bodies(self) -> dict[str, SyncBody]:
        """Host function name → synchronous body (``FiberScheduler.define_sync``)."""
        return {"send": self.send}

    # ── send, sleep, call ───────────────────────────────────────────────

    def send(self, fiber: Fiber, address: int) -> None:
        """``rusm.send(to, ptr, len)`` from a fiber: as the threaded one, through its view."""
        to = self.fibers.raw_i64(address)[0]
        u32 = self.fibers.raw_u32(address)
        ptr, length = u32[4], u32[8]
        view, size = self.fibers.view(fiber, "send")
        if ptr + length > size:
            check_range("send", ptr, length, size)
        code: int = _TOOBIG
        if length <= MAX_MESSAGE_BYTES:
            code = self.table.send(fiber.process.pid, to, view[ptr : ptr + length].tobytes())
        u32[0] = code & 0xFFFFFFFF  # the i32 result, in place

    def sleep(self, fiber: Fiber, args: int, results: int) -> None:
        """``rusm.sleep(ms)``: parked until a loop timer fires."""
        ms = ValArgs.from_address(args)[0].of.i32
        if ms < 0:
            self.fibers.set_result(results, _INVALID)
            return
        deadline = _monotonic() + ms / 1000
        fibers = self.fibers

        def finish() -> bool:
            if _monotonic() < deadline:
                return False
            fibers.set_result(results, _OK)
            return True

        if ms == 0:
            fibers.set_result(results, _OK)
            return
        fibers.park(fiber, finish, deadline=deadline, state=ProcessState.SLEEPING)

    def call(self, fiber: Fiber, args: int, results: int) -> None:
        """``rusm.call(to, req, req_len, buf, cap, timeout_ms)``: parked until answered."""
        given = ValArgs.from_address(args)
        to, req, req_len = given[0].of.i64, given[1].of.i32, given[2].of.i32
        buf, cap, timeout_ms = given[3].of.i32, given[4].of.i32, given[5].of.i32
        process = fiber.process
        calls = self.actor_calls
        memory = calls.memory_of(process, "call")
        check_range("call", buf, cap, memory.size())
        data = calls.read_bytes(process, "call", req, req_len)
        fibers = self.fibers
        if data is None:
            fibers.set_result(results, _TOOBIG)
            return
        if timeout_ms < -1 or to == process.pid:  # the second would wait for itself
            fibers.set_result(results, _INVALID)
            return
        actor = process.actor
        assert actor is not None
        table = self.table
        code, ref = table.call_begin(actor, to, data)
        if code != _OK:
            fibers.set_result(results, code)
            return
        deadline = None if timeout_ms < 0 else _monotonic() + timeout_ms / 1000

        def finish() -> bool:
            answer = table.call_answer(actor)
            if answer is None:
                if deadline is None or _monotonic() < deadline:
                    return False
                answer = (_TIMEOUT, b"")
            table.call_end(actor, to, ref)
            answer_code, reply = answer
            if answer_code != _OK:
                fibers.set_result(results, answer_code)
                return True
            memory.write("call", buf, reply[: max(cap, 0)])
            fibers.set_result(results, len(reply))
            return True

        if not finish():
            cancel = lambda: table.call_end(actor, to, ref)  # noqa: E731
            fibers.park(fiber, finish, deadline=deadline, cancel=cancel)

    # ── names, probes ───────────────────────────────────────────────────

    def register(self, fiber: Fiber, args: int, results: int) -> None:
        """``rusm.register(name, len)``: parked until the main process answers the claim."""
        given = ValArgs.from_address(args)
        process = fiber.process
        name = self.actor_calls.read_name(process, "register", given[0].of.i32, given[1].of.i32)
        fibers = self.fibers
        if name is None:
            fibers.set_result(results, _INVALID)
            return
        assert process.actor is not None
        table = self.table
        claim = table.register_begin(process.actor, name)
        if not isinstance(claim, Claim):
            fibers.set_result(results, claim)
            return
        deadline = _monotonic() + NAME_CLAIM_TIMEOUT_S

        def finish() -> bool:
            if claim.answer is not None:
                fibers.set_result(results, table.register_answer(claim))
                return True
            if _monotonic() < deadline:
                return False
            table.register_abandon(claim)
            fibers.set_result(results, _UNAVAILABLE)
            return True

        fibers.park(fiber, finish, deadline=deadline, cancel=lambda: table.register_abandon(claim))

    def is_alive(self, fiber: Fiber, args: int, results: int) -> None:
        """``rusm.is_alive(pid)``: a local pid at once, another worker's once it answers."""
        target = ValArgs.from_address(args)[0].of.i64
        if slot_of(target) == self.host.slot:
            self._at_once(self.actor_calls.is_alive, fiber, args, results, 1)
            return
        if not self.actor_calls.allowed(fiber.process, target, "is_alive"):
            self.fibers.set_result(results, ErrorCode.DENIED)
            return
        self._probe(fiber, target, results, None)

    def info(self, fiber: Fiber, args: int, results: int) -> None:
        """``rusm.info(pid, buf, cap)``: as ``is_alive``, with the process's details."""
        given = ValArgs.from_address(args)
        target, buf, cap = given[0].of.i64, given[1].of.i32, given[2].of.i32
        if slot_of(target) == self.host.slot:
            self._at_once(self.actor_calls.info, fiber, args, results, 3)
            return
        process = fiber.process
        memory = self.actor_calls.memory_of(process, "info")
        check_range("info", buf, cap, memory.size())
        if not self.actor_calls.allowed(process, target, "info"):
            self.fibers.set_result(results, ErrorCode.DENIED)
            return

        def answer(alive: bool, payload: bytes) -> int:
            if not alive:
                return _NOPROC
            try:
                row = json.loads(payload)
            except ValueError:
                return _NOPROC
            if row is None:
                return _NOPROC
            data = json.dumps(row, separators=(",", ":"), default=str).encode()
            memory.write("info", buf, data[: max(cap, 0)])
            return len(data)

        self._probe(fiber, target, results, answer)

    def _probe(
        self,
        fiber: Fiber,
        target: int,
        results: int,
        answer: Callable[[bool, bytes], int] | None,
    ) -> None:
        """Ask ``target``'s worker about it; ``answer(alive, info)`` makes the result
        (None: 1 alive, 0 not)."""
        table = self.table
        fibers = self.fibers
        waiter = table.probe_begin(target, want_info=answer is not None)
        if waiter is None:
            fibers.set_result(results, answer(False, b"") if answer is not None else 0)
            return
        waiter.waker = lambda: fibers.wake_fiber(fiber)
        deadline = _monotonic() + PROBE_TIMEOUT_S

        def finish() -> bool:
            if waiter.reply is None and _monotonic() < deadline:
                return False
            alive, payload = table.probe_end(waiter)
            fibers.set_result(results, answer(alive, payload) if answer else int(alive))
            return True

        def cancel() -> None:
            table.probe_end(waiter)

        fibers.park(fiber, finish, deadline=deadline, cancel=cancel)

    @staticmethod
    def _at_once(
        impl: Callable[[Process, Any], None], fiber: Fiber, args: int, results: int, count: int
    ) -> None:
        """Run the threaded form of a call that will not wait (its ``count`` i64/i32 values)."""
        process = fiber.process
        given = ValArgs.from_address(args)
        values = capi.Values()
        for k in range(count):
            if int(given[k].kind) == _I64:
                values[k].i64 = given[k].of.i64
            else:
                values[k].i32 = given[k].of.i32
        impl(process, values)
        result = ValArgs.from_address(results)
        result[0].kind = ctypes.c_uint8(_I32)
        result[0].of.i32 = values[0].i32

    # ── kv writes ───────────────────────────────────────────────────────

    def _kv_write(self, prepare: Callable[[Process, Any], Write | ErrorCode]) -> Body:
        """The async form of a kv write: parked until the commit holding it is durable."""
        fibers = self.fibers
        kv_calls = self.kv_calls

        def body(fiber: Fiber, args: int, results: int) -> None:
            given = ValArgs.from_address(args)
            values = capi.Values()
            for k in range(6):
                values[k].i32 = given[k].of.i32
            write = prepare(fiber.process, values)
            if not isinstance(write, Write):
                fibers.set_result(results, write)
                return
            done: list[ErrorCode] = []

            def notify(result: ErrorCode) -> None:  # the writer thread
                done.append(result)
                fibers.wake_fiber(fiber)

            def finish() -> bool:
                if not done:
                    return False
                fibers.set_result(results, done[0])
                return True

            if not kv_calls.committer().submit(write, notify):
                fibers.set_result(results, _UNAVAILABLE)
                return
            fibers.park(fiber, finish)

        return body
