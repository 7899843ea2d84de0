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

from rusmd.wasm import capi

_U32 = 0xFFFFFFFF


class BadPointer(Exception):
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

    __slots__ = ("context", "memory")

    def __init__(self, context: Any, memory: Any) -> None:
        self.context = context
        self.memory = memory

    def size(self) -> int:
        """Current size in bytes."""
        return int(capi.memory_data_size(self.context, ctypes.byref(self.memory)))

    def read(self, function: str, ptr: int, length: int) -> bytes:
        """Copy ``length`` bytes at ``ptr`` out of guest memory."""
        size = self.size()
        start, count = check_range(function, ptr, length, size)
        if count == 0:
            return b""
        base = capi.memory_data(self.context, ctypes.byref(self.memory))
        return ctypes.string_at(ctypes.addressof(base.contents) + start, count)

    def write(self, function: str, ptr: int, data: bytes) -> None:
        """Copy ``data`` into guest memory at ``ptr``."""
        size = self.size()
        start, count = check_range(function, ptr, len(data), size)
        if count == 0:
            return
        base = capi.memory_data(self.context, ctypes.byref(self.memory))
        ctypes.memmove(ctypes.addressof(base.contents) + start, data, count)

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
                data = capi.memory_data(self.context, ctypes.byref(self.memory))
                base = ctypes.addressof(data.contents)
            out.append(ctypes.string_at(base + start, count))
        return out
