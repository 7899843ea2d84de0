"""Bounds-checked access to a guest's linear memory from host functions.

Runs in: worker (on the guest thread that runs the calling process).

Host functions never trust guest values. wasmtime-py's ``Memory.read``
follows Python slice rules (a negative start counts from the end, an
out-of-range stop is silently clamped) and ``get_buffer_ptr`` checks
nothing, so rusm reads and writes through these helpers instead: the
i32 pointer and length are taken as unsigned, ``ptr + len`` must lie
within the memory's current size, and anything else raises
``BadPointer``, which crashes the calling process (never the worker).
The base address is fetched on every access because ``memory.grow``
may move the memory.
"""

from __future__ import annotations

import ctypes
from typing import Any

from rusmd.errors import RusmError
from rusmd.wasm import capi

_U32 = 0xFFFFFFFF


class BadPointer(RusmError):
    """A guest passed a (ptr, len) outside its memory; its process crashes."""


def as_u32(value: int) -> int:
    """An i32 argument as the unsigned 32-bit address wasm meant."""
    return value & _U32


def check_range(function: str, ptr: int, length: int, size: int) -> tuple[int, int]:
    """Normalise (ptr, len) and check ``[ptr, ptr + len)`` lies in ``size`` bytes.

    Raises:
        BadPointer: The range leaves the memory.
    """
    start = as_u32(ptr)
    count = as_u32(length)
    if start + count > size:
        raise BadPointer(
            f"bad pointer: rusm.{function}(ptr={start}, len={count}) outside memory of {size} bytes"
        )
    return start, count


class GuestMemory:
    """One process's exported ``memory``, reached through its store context."""

    __slots__ = ("context", "memory", "ref")

    def __init__(self, context: Any, memory: Any) -> None:
        self.context = context
        self.memory = memory
        self.ref = ctypes.byref(memory)

    def size(self) -> int:
        """Current size in bytes."""
        return int(_data_size(self.context, self.ref))

    def _base(self) -> int:
        return int(_data(self.context, self.ref))

    def read(self, function: str, ptr: int, length: int) -> bytes:
        """Copy ``length`` bytes at ``ptr`` out of guest memory."""
        start, count = check_range(function, ptr, length, self.size())
        if count == 0:
            return b""
        data: bytes = _string_at(self._base() + start, count)
        return data

    def write(self, function: str, ptr: int, data: bytes) -> None:
        """Copy ``data`` into guest memory at ``ptr``."""
        start, count = check_range(function, ptr, len(data), self.size())
        if count == 0:
            return
        ctypes.memmove(self._base() + start, data, count)

    def read_many(self, function: str, *ranges: tuple[int, int]) -> list[bytes]:
        """Several ``(ptr, length)`` ranges, each checked, with one size lookup.

        Every range is checked before any is read, so a bad pointer in the
        last one still reads nothing.
        """
        size = self.size()
        checked = [check_range(function, ptr, length, size) for ptr, length in ranges]
        base = 0
        out = []
        for start, count in checked:
            if not count:
                out.append(b"")
                continue
            if not base:
                base = self._base()
            out.append(_string_at(base + start, count))
        return out

    def key_and_buffer(
        self, function: str, key_ptr: int, key_len: int, buf_ptr: int, buf_cap: int
    ) -> tuple[bytes, int, int]:
        """A key to read and a buffer to fill, both checked before either is used.

        For a host call that looks something up by a key and writes the
        answer (``rusm.request``): one size and one base lookup for both.

        Returns:
            The key's bytes, the buffer's address in this process and its
            capacity (0 when the guest asks for a size only).
        """
        size = _data_size(self.context, self.ref)
        start, count = key_ptr & _U32, key_len & _U32
        start2, count2 = buf_ptr & _U32, buf_cap & _U32
        if start + count > size:
            check_range(function, key_ptr, key_len, size)
        if start2 + count2 > size:
            check_range(function, buf_ptr, buf_cap, size)
        base = _data(self.context, self.ref)
        return (_string_at(base + start, count) if count else b""), base + start2, count2

    def read_two(
        self, function: str, ptr: int, length: int, ptr2: int, length2: int
    ) -> tuple[bytes, bytes]:
        """Two ``(ptr, length)`` ranges, both checked before either is read.

        A bad pointer in the second range still reads nothing.
        """
        size = _data_size(self.context, self.ref)
        start, count = ptr & _U32, length & _U32
        start2, count2 = ptr2 & _U32, length2 & _U32
        if start + count > size:
            check_range(function, ptr, length, size)
        if start2 + count2 > size:
            check_range(function, ptr2, length2, size)
        if not count and not count2:
            return b"", b""
        base = _data(self.context, self.ref)
        return (
            _string_at(base + start, count) if count else b"",
            _string_at(base + start2, count2) if count2 else b"",
        )


# ``bytes`` from an address and a length: CPython's constructor itself
# (``ctypes.string_at`` is a Python function around the same call).
_string_at = ctypes.cast(
    ctypes.pythonapi.PyBytes_FromStringAndSize,
    ctypes.PYFUNCTYPE(ctypes.py_object, ctypes.c_void_p, ctypes.c_ssize_t),
)
# The two memory calls, raw (``capi.raw``): the store context is a ctypes
# pointer and the memory a ``byref``; both return plain integers (the
# shared bindings return a pointer object for the data).
_data = capi.raw("wasmtime_memory_data", ctypes.c_void_p)
_data_size = capi.raw("wasmtime_memory_data_size", ctypes.c_size_t)
