"""Traps and errors: made for wasmtime by a host callback, read back into an exit report.

Runs in: worker (on the thread of the process concerned: its guest
thread, or the I/O thread for an inline handler or a fiber).

A host callback never raises into wasmtime: it hands back a new trap
(``new_trap``), an epoch callback a new error (``new_error``), and the
guest's call fails with it. When a call fails, ``failure`` turns what
wasmtime returned (an error, or a trap with its frames) into the
process's ``ExitReport``, preferring what the host already knew: a stop
reason, an exit code, a crash a host function recorded, the CPU budget.
"""

from __future__ import annotations

import ctypes
import re
from typing import Any

import wasmtime
from wasmtime import _ffi as ffi

from rusmd.abi import ExitReason
from rusmd.wasm import capi
from rusmd.wasm.process import ExitReport, Process

# One line of wasmtime's text backtrace: ``  0:  0x1a2b - module!function``.
_TRACE_LINE = re.compile(r"^\d+:\s+(0x[0-9a-f]+) - (.+)$")
# How wasmtime words an exhausted pool (instances, memories, tables, fibers).
_POOL_FULL = "maximum concurrent limit of "


def new_trap(message: str) -> int:
    """A new wasmtime trap with ``message``, as the address a callback returns."""
    encoded = message.encode()
    trap = capi.trap_new(encoded, len(encoded))
    return int(ctypes.cast(trap, ctypes.c_void_p).value or 0)


def new_error(message: str) -> int:
    """A new wasmtime error with ``message``, as the address an epoch callback returns."""
    error = capi.error_new(message.encode())
    return int(ctypes.cast(error, ctypes.c_void_p).value or 0)


def failure(process: Process, error: Any, trap: Any, where: str) -> ExitReport:
    """Turn a wasmtime error or trap into an exit report (and free it)."""
    if error:
        status = ctypes.c_int()
        if ffi.wasmtime_error_exit_status(error, ctypes.byref(status)):
            ffi.wasmtime_error_delete(error)
            code = status.value
            return (
                ExitReport(ExitReason.NORMAL)
                if code == 0
                else ExitReport(ExitReason.CRASHED, f"exit code {code}")
            )
        exc = wasmtime.WasmtimeError._from_ptr(error)
        text = str(exc)
        frames: tuple[str, ...] = frames_from_text(text)
    else:
        trap_obj = wasmtime.Trap._from_ptr(trap)
        text = trap_obj.message
        frames = tuple(frame_line(f) for f in trap_obj.frames)
    if process.stop_reason:
        return ExitReport(process.stop_reason, process.stop_detail)
    if process.exit_code is not None:
        code = process.exit_code
        return (
            ExitReport(ExitReason.NORMAL)
            if code == 0
            else ExitReport(ExitReason.CRASHED, f"exit code {code}")
        )
    if process.crash:
        return ExitReport(ExitReason.CRASHED, process.crash, frames)
    if process.cpu_exceeded:
        budget = process.component.capability.max_cpu_ms
        return ExitReport(ExitReason.CRASHED, f"cpu limit: ran over its {budget} ms budget", frames)
    detail = cause(text).removeprefix("wasm trap: ")
    if trap:
        detail = f"trap: {detail}"
    if where == "instantiate" and not frames:
        if detail.startswith(_POOL_FULL):
            # wasmtime's pool ran out although the process limit let the
            # spawn through (a limit set above the pool's slots).
            detail = f"the worker's process pool is full ({detail}; [node].max-processes sizes it)"
        detail = f"cannot instantiate: {detail}"
    cap = process.component.capability.max_memory_mb << 20
    if process.memory_bytes and process.memory_bytes + (64 << 10) > cap:
        detail += f"; memory at its {process.component.capability.max_memory_mb} MiB limit"
    return ExitReport(ExitReason.CRASHED, detail, frames)


def first_line(text: str) -> str:
    """The first non-blank line of a wasmtime error text, stripped."""
    for line in text.strip().splitlines():
        if line.strip():
            return line.strip()
    return text


def cause(text: str) -> str:
    """The innermost cause of a wasmtime error text (``wasm trap: …``)."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if "Caused by:" in lines:
        after = lines[lines.index("Caused by:") + 1 :]
        if after:
            last = after[-1]
            return last.split(": ", 1)[1] if last[:1].isdigit() and ": " in last else last
    return lines[0] if lines else text


def frames_from_text(text: str) -> tuple[str, ...]:
    """Backtrace lines of a wasmtime error text, as ``module!function +0xoffset``."""
    frames: list[str] = []
    in_trace = False
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("error while executing at wasm backtrace"):
            in_trace = True
            continue
        if in_trace:
            match = _TRACE_LINE.match(stripped)
            if match is None:
                break
            offset, where = match.groups()
            frames.append(f"{where.replace('<unknown>', 'module', 1)} +{offset}")
    return tuple(frames)


def frame_line(frame: Any) -> str:
    """A trap's frame as ``module!function +0xoffset``."""
    name = frame.func_name or f"<wasm function {frame.func_index}>"
    module = frame.module_name or "module"
    return f"{module}!{name} +{frame.module_offset:#x}"
