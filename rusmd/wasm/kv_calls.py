"""The kv half of the ``rusm`` host functions: get, exists, set, delete, batch, list.

Runs in: worker, on the thread of the calling process: the loop thread
for a fiber (whose writes park it: ``waits``), its guest thread for a
process that keeps one. A module that imports a kv write never runs
inline on the I/O thread.

Every kv function is linked for every profile and checks the grant per
call: without ``allow-storage`` the guest gets DENIED, on a node without
a store NOSTORE, and if the store failed to open UNAVAILABLE; each is
logged once per component at warn, and none crashes anything. Pointers
are checked first as everywhere (a bad one crashes the caller alone).
Reads run on the caller's thread; writes wait for the worker's group
committer, so OK means the commit is on disk.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import lmdb

from rusmd.abi import (
    KV_BATCH_OP_HEADER,
    KV_BATCH_OP_HEADER_BYTES,
    MAX_KV_BATCH_BYTES,
    MAX_LIST_KEYS,
    ErrorCode,
)
from rusmd.log import Logger
from rusmd.store.kv import (
    MAX_KEY_BYTES,
    MAX_VALUE_BYTES,
    KvError,
    Op,
    Write,
    check_bucket,
    check_key,
    check_value,
)
from rusmd.wasm.memory import BadPointer, GuestMemory, as_u32, check_range
from rusmd.wasm.process import Process, ProcessState
from rusmd.wasm.runners import RunnerPool

if TYPE_CHECKING:
    from rusmd.store.committer import GroupCommitter
    from rusmd.store.kv import KvStore

_LENGTH = struct.Struct("<H")
_OP_HEADER = struct.Struct(KV_BATCH_OP_HEADER)


class KvHost(Protocol):
    """What the kv functions use of the worker's host."""

    # The node store and its committer (set by the worker once it opened
    # it), or why it could not be opened.
    store: KvStore | None
    committer: GroupCommitter | None
    store_error: str
    log: Logger
    runners: RunnerPool
    ticks: int


class KvCalls:
    """Host functions over the worker's store.

    Args:
        host: The worker's wasm host (its ``store``, ``committer``,
            ``store_error`` and logger).
    """

    def __init__(self, host: KvHost) -> None:
        self.host = host
        self._warned: set[tuple[str, ErrorCode]] = set()

    def implementations(self) -> dict[str, Callable[[Process, Any], None]]:
        """Host function name → implementation."""
        return {
            "kv_get": self.kv_get,
            "kv_exists": self.kv_exists,
            "kv_set": self.kv_set,
            "kv_delete": self.kv_delete,
            "kv_batch": self.kv_batch,
            "kv_list": self.kv_list,
        }

    # ── helpers ─────────────────────────────────────────────────────────

    def _memory(self, process: Process, function: str) -> GuestMemory:
        if process.memory is None:
            raise BadPointer(f"rusm.{function}: the module exports no memory")
        return process.memory

    def _store(self, process: Process, function: str) -> KvStore | ErrorCode:
        """The store, or the error the caller gets (logged once per component)."""
        host = self.host
        code: ErrorCode | None = None
        if not process.component.capability.allow_storage:
            code, why = ErrorCode.DENIED, "denied (needs allow-storage)"
        elif host.store is None and not host.store_error:
            code, why = ErrorCode.NOSTORE, "no store configured ([node] store)"
        elif host.store is None:
            code, why = ErrorCode.UNAVAILABLE, f"the store is unavailable ({host.store_error})"
        if code is None:
            assert host.store is not None
            return host.store
        key = (process.component.name, code)
        if key not in self._warned:
            self._warned.add(key)
            host.log.warn(f"{process.label}: rusm.{function}: {why}")
        return code

    def _read_args(self, process: Process, function: str, values: Any, *pairs: int) -> list[bytes]:
        """(ptr, len) pairs at value indexes ``pairs``: all range-checked, then read."""
        memory = self._memory(process, function)
        ranges = [(values[i].i32, values[i + 1].i32) for i in pairs]
        return memory.read_many(function, *ranges)

    def _refused(self, process: Process, function: str, exc: KvError) -> ErrorCode:
        key = (f"{process.component.name}:{function}", exc.code)
        if key not in self._warned:
            self._warned.add(key)
            self.host.log.warn(f"{process.label}: rusm.{function}: {exc}")
        return exc.code

    def _failed(self, process: Process, function: str, store: KvStore, exc: Exception) -> ErrorCode:
        """A read LMDB refused (reader table full, I/O error): UNAVAILABLE, logged."""
        self.host.log.error(f"{process.label}: rusm.{function}: store {store.path}: {exc}")
        return ErrorCode.UNAVAILABLE

    def _write(self, process: Process, committer: GroupCommitter, write: Write) -> ErrorCode:
        """Wait (as a blocked process) for ``write``'s commit."""
        process.state = ProcessState.WAITING
        self.host.runners.blocking()
        try:
            return committer.write(write)
        finally:
            self.host.runners.unblocked()
            process.state = ProcessState.RUNNING
            # Time waiting for the disk is not CPU time.
            process.call_started_tick = self.host.ticks

    def _target(
        self, process: Process, function: str, values: Any
    ) -> tuple[KvStore, bytes, bytes] | ErrorCode:
        """The store, bucket and key of a call whose first two pairs name them.

        The pairs are range-checked first (a bad one crashes the caller), then
        the grant and the store, then the names; an error is what the guest gets.
        """
        bucket, key = self._read_args(process, function, values, 0, 2)
        store = self._store(process, function)
        if isinstance(store, ErrorCode):
            return store
        try:
            check_bucket(bucket)
            check_key(key)
        except KvError as exc:
            return self._refused(process, function, exc)
        return store, bucket, key

    def committer(self) -> GroupCommitter:
        """The worker's group committer (there is one whenever there is a store)."""
        committer = self.host.committer
        assert committer is not None  # set whenever the store is
        return committer

    # ── reads ───────────────────────────────────────────────────────────

    def kv_get(self, process: Process, values: Any) -> None:
        memory = self._memory(process, "kv_get")
        buf, cap = values[4].i32, values[5].i32
        check_range("kv_get", buf, cap, memory.size())
        target = self._target(process, "kv_get", values)
        if isinstance(target, ErrorCode):
            values[0].i32 = target
            return
        store, bucket, key = target
        try:
            found = store.get(bucket, key)
        except lmdb.Error as exc:
            values[0].i32 = self._failed(process, "kv_get", store, exc)
            return
        if found is None:
            values[0].i32 = ErrorCode.NOTFOUND
            return
        if cap and found:
            memory.write("kv_get", buf, found[:cap])
        values[0].i32 = len(found)

    def kv_exists(self, process: Process, values: Any) -> None:
        target = self._target(process, "kv_exists", values)
        if isinstance(target, ErrorCode):
            values[0].i32 = target
            return
        store, bucket, key = target
        try:
            values[0].i32 = 1 if store.exists(bucket, key) else 0
        except lmdb.Error as exc:
            values[0].i32 = self._failed(process, "kv_exists", store, exc)

    def kv_list(self, process: Process, values: Any) -> None:
        memory = self._memory(process, "kv_list")
        limit, buf, cap = values[6].i32, values[7].i32, values[8].i32
        start, room = check_range("kv_list", buf, cap, memory.size())
        bucket, prefix, after = self._read_args(process, "kv_list", values, 0, 2, 4)
        store = self._store(process, "kv_list")
        if isinstance(store, ErrorCode):
            values[0].i32 = store
            return
        try:
            check_bucket(bucket)
            if len(prefix) > MAX_KEY_BYTES or len(after) > MAX_KEY_BYTES:
                raise KvError(ErrorCode.INVALID, f"prefix or after over {MAX_KEY_BYTES} bytes")
        except KvError as exc:
            values[0].i32 = self._refused(process, "kv_list", exc)
            return
        if limit < 0:
            values[0].i32 = self._refused(
                process, "kv_list", KvError(ErrorCode.INVALID, f"negative limit {limit}")
            )
            return
        try:
            keys = store.keys(bucket, prefix, after, min(limit, MAX_LIST_KEYS))
        except lmdb.Error as exc:
            values[0].i32 = self._failed(process, "kv_list", store, exc)
            return
        out = bytearray()
        count = 0
        for key in keys:
            if len(out) + _LENGTH.size + len(key) > room:
                break
            out += _LENGTH.pack(len(key))
            out += key
            count += 1
        if keys and not count:
            values[0].i32 = ErrorCode.TOOBIG
            return
        if out:
            memory.write("kv_list", start, bytes(out))
        values[0].i32 = count

    # ── writes ──────────────────────────────────────────────────────────

    def kv_set(self, process: Process, values: Any) -> None:
        self._finish_write(process, values, self.prepare_set(process, values))

    def kv_delete(self, process: Process, values: Any) -> None:
        self._finish_write(process, values, self.prepare_delete(process, values))

    def kv_batch(self, process: Process, values: Any) -> None:
        self._finish_write(process, values, self.prepare_batch(process, values))

    def _finish_write(self, process: Process, values: Any, write: Write | ErrorCode) -> None:
        if isinstance(write, Write):
            write = self._write(process, self.committer(), write)
        values[0].i32 = write

    def prepare_set(self, process: Process, values: Any) -> Write | ErrorCode:
        """``kv_set``'s write, or the result the guest gets at once."""
        memory = self._memory(process, "kv_set")
        value_ptr, value_len = values[4].i32, values[5].i32
        check_range("kv_set", value_ptr, value_len, memory.size())
        target = self._target(process, "kv_set", values)
        if isinstance(target, ErrorCode):
            return target
        _store, bucket, key = target
        if as_u32(value_len) > MAX_VALUE_BYTES:
            too_big = f"value of {as_u32(value_len)} bytes: the limit is {MAX_VALUE_BYTES}"
            return self._refused(process, "kv_set", KvError(ErrorCode.TOOBIG, too_big))
        value = memory.read("kv_set", value_ptr, value_len)
        return Write(bucket, ((Op.SET, key, value),))

    def prepare_delete(self, process: Process, values: Any) -> Write | ErrorCode:
        """``kv_delete``'s write, or the result the guest gets at once."""
        target = self._target(process, "kv_delete", values)
        if isinstance(target, ErrorCode):
            return target
        _store, bucket, key = target
        return Write(bucket, ((Op.DELETE, key, b""),), report_missing=True)

    def prepare_batch(self, process: Process, values: Any) -> Write | ErrorCode:
        """``kv_batch``'s write, or the result the guest gets at once (OK for no ops)."""
        memory = self._memory(process, "kv_batch")
        bucket_ptr, bucket_len = values[0].i32, values[1].i32
        ops_ptr, ops_len = values[2].i32, values[3].i32
        size = memory.size()
        check_range("kv_batch", bucket_ptr, bucket_len, size)
        check_range("kv_batch", ops_ptr, ops_len, size)
        store = self._store(process, "kv_batch")
        if isinstance(store, ErrorCode):
            return store
        if ops_len & 0xFFFFFFFF > MAX_KV_BATCH_BYTES:
            return self._refused(
                process,
                "kv_batch",
                KvError(ErrorCode.TOOBIG, f"batch over {MAX_KV_BATCH_BYTES} bytes"),
            )
        bucket = memory.read("kv_batch", bucket_ptr, bucket_len)
        data = memory.read("kv_batch", ops_ptr, ops_len)
        try:
            check_bucket(bucket)
            ops = parse_batch(data)
        except KvError as exc:
            return self._refused(process, "kv_batch", exc)
        if not ops:
            return ErrorCode.OK
        return Write(bucket, ops)


def parse_batch(data: bytes) -> tuple[tuple[int, bytes, bytes], ...]:
    """kv_batch's operations, each checked.

    Raises:
        KvError: INVALID for a malformed or truncated op, an unknown op, a
            bad key or a delete with a value; TOOBIG for a value over the limit.
    """
    ops: list[tuple[int, bytes, bytes]] = []
    offset = 0
    while offset < len(data):
        if offset + KV_BATCH_OP_HEADER_BYTES > len(data):
            raise KvError(ErrorCode.INVALID, f"batch op {len(ops)}: truncated header")
        op, key_len, value_len = _OP_HEADER.unpack_from(data, offset)
        offset += KV_BATCH_OP_HEADER_BYTES
        end = offset + key_len + value_len
        if end > len(data):
            raise KvError(ErrorCode.INVALID, f"batch op {len(ops)}: runs past the batch")
        key = data[offset : offset + key_len]
        value = data[offset + key_len : end]
        offset = end
        if op not in (Op.SET, Op.DELETE):
            raise KvError(ErrorCode.INVALID, f"batch op {len(ops)}: unknown op {op}")
        if op == Op.DELETE and value_len:
            raise KvError(ErrorCode.INVALID, f"batch op {len(ops)}: a delete carries no value")
        check_key(key)
        check_value(value)
        ops.append((op, key, value))
    return tuple(ops)
