"""A valid core module that is slow to compile: the compile limits' test guest.

Runs in: tests.

``pathological_module(functions)`` is ``functions`` functions whose
bodies are ``i32.const 0; drop`` repeated: cheap to build, linear (and
slow) for Cranelift. The compile child's timeout and memory limit, its
progress lines and a component too big to load are tested with it.
"""

from __future__ import annotations

# Instructions per function body. wasmparser caps one body at 7,654,321
# bytes, so a big module is many such functions (~7 MB each).
INSTRUCTIONS_PER_FUNCTION = 2_300_000


def leb128(value: int) -> bytes:
    """``value`` as unsigned LEB128, the module format's integer encoding."""
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def section(section_id: int, payload: bytes) -> bytes:
    """One module section: its id, its size, its payload."""
    return bytes([section_id]) + leb128(len(payload)) + payload


def pathological_module(functions: int) -> bytes:
    """A valid core module of ``functions`` huge no-op functions (~7 MB each)."""
    body = b"\x00" + b"\x41\x00\x1a" * INSTRUCTIONS_PER_FUNCTION + b"\x0b"  # no locals ... end
    entry = leb128(len(body)) + body
    return (
        b"\x00asm\x01\x00\x00\x00"
        + section(1, b"\x01\x60\x00\x00")  # one type: [] -> []
        + section(3, leb128(functions) + b"\x00" * functions)  # every function has type 0
        + section(10, leb128(functions) + entry * functions)
    )
