"""Ad-hoc launch specs: ``rusmctl spawn --module 'path=x.wasm;entrypoint=start;...'``.

Runs in: main (the ``spawn`` command parses and resolves a spec before
anything is compiled or spawned); pure apart from looking at the file the
spec names.

A spec is ``key=value`` pairs separated by ``;``. The keys:

- ``path``: the module, relative to the app dir. Required. No ``..``
  segment; an absolute path is accepted only inside the app dir, and a
  symlink may not lead out of it.
- ``entrypoint``: the export the process runs. Optional; defaults to
  ``start``.
- ``capabilities``: comma-separated grant names of ``[capabilities.<name>]``
  (``allow-network``, ``allow-spawn``, ``allow-process-control``,
  ``allow-stdio``, ``allow-storage``) and at most one profile name (a
  built-in or the manifest's own) to start from. Optional; defaults to
  none: the ``sandboxed`` profile.
- ``params``: comma-separated types of the entrypoint's arguments.
  Optional; without it every ``args`` value carries its type
  (``u16:7000``).
- ``args``: comma-separated values, one per param. Optional; defaults to
  none.

Types: ``i8 u8 i16 u16 i32 u32`` pass a wasm ``i32`` (an unsigned value
above 2^31 as its two's complement), ``i64 u64`` an ``i64``, ``f32 f64``
themselves; each value is checked against its type's range. ``utf8`` (text)
and ``buffer`` (bytes written as hex; ``hex`` is the same type) pass an
``i32``, the byte count, and the bytes arrive first in the process's
mailbox, one message from pid 0 per argument, in order (``docs/abi.md``,
"Ad-hoc processes").

Inside a value or the path, ``\\,`` ``\\;`` and ``\\\\`` stand for a comma,
a semicolon and a backslash.

``parse_spec`` checks the spec's text alone; ``resolve`` then checks it
against the app dir and the manifest's profiles. Both raise
``LaunchError`` naming the key and the offending value.
"""

from __future__ import annotations

import enum
import math
import struct
from dataclasses import dataclass
from pathlib import Path

import msgspec

from rusmd.abi import MAX_MESSAGE_BYTES
from rusmd.config.model import BUILTIN_CAPABILITIES, BuiltinCapability, Capability
from rusmd.config.settings import CAPABILITY
from rusmd.errors import RusmError

# A spec is one command-line argument; anything longer is a mistake (a
# whole file pasted in) and is refused before it is split.
MAX_SPEC_CHARS = 64 << 10
# Arguments an entrypoint may take: wasm allows far more, but a launch
# spec with more than this is not one a person wrote.
MAX_ARGS = 64
DEFAULT_ENTRYPOINT = "start"
KEYS = ("path", "entrypoint", "capabilities", "params", "args")
# The grant names of a [capabilities.<name>] table, and the field each sets.
GRANTS: dict[str, str] = {
    setting.name: setting.field
    for setting in CAPABILITY.settings
    if setting.name.startswith("allow-")
}


class LaunchError(RusmError):
    """A launch spec that cannot run; the message names the key and value."""


class ModuleMissing(LaunchError):
    """The spec's path names no file."""


class ParamType(enum.StrEnum):
    """An entrypoint argument's type, as a spec spells it."""

    I8 = "i8"
    U8 = "u8"
    I16 = "i16"
    U16 = "u16"
    I32 = "i32"
    U32 = "u32"
    I64 = "i64"
    U64 = "u64"
    F32 = "f32"
    F64 = "f64"
    UTF8 = "utf8"
    BUFFER = "buffer"
    HEX = "hex"


class WasmType(enum.StrEnum):
    """The wasm value type an argument arrives as."""

    I32 = "i32"
    I64 = "i64"
    F32 = "f32"
    F64 = "f64"


# Integer types: the lowest and highest value each holds.
_INTEGER_RANGES: dict[ParamType, tuple[int, int]] = {
    ParamType.I8: (-(1 << 7), (1 << 7) - 1),
    ParamType.U8: (0, (1 << 8) - 1),
    ParamType.I16: (-(1 << 15), (1 << 15) - 1),
    ParamType.U16: (0, (1 << 16) - 1),
    ParamType.I32: (-(1 << 31), (1 << 31) - 1),
    ParamType.U32: (0, (1 << 32) - 1),
    ParamType.I64: (-(1 << 63), (1 << 63) - 1),
    ParamType.U64: (0, (1 << 64) - 1),
}
_WASM_TYPE: dict[ParamType, WasmType] = {
    **{kind: WasmType.I32 for kind in ParamType},
    ParamType.I64: WasmType.I64,
    ParamType.U64: WasmType.I64,
    ParamType.F32: WasmType.F32,
    ParamType.F64: WasmType.F64,
}
_F32_MAX = struct.unpack("<f", struct.pack("<I", 0x7F7FFFFF))[0]


@dataclass(frozen=True)
class Argument:
    """One entrypoint argument, checked.

    Attributes:
        kind: Its declared type.
        text: The value as written.
        value: What the entrypoint receives (for ``utf8`` and ``buffer``, the
            byte count).
        data: The bytes that go to the mailbox first (``utf8`` and
            ``buffer`` only); None for a number.
    """

    kind: ParamType
    text: str
    value: int | float
    data: bytes | None = None

    @property
    def wasm_type(self) -> WasmType:
        """The wasm value type the entrypoint declares for it."""
        return _WASM_TYPE[self.kind]


@dataclass(frozen=True)
class ModuleSpec:
    """A parsed spec, before it meets the app dir.

    Attributes:
        path: ``path`` as written.
        entrypoint: The export to run. Optional; defaults to ``start``.
        capabilities: The names in ``capabilities``. Optional; defaults to none.
        arguments: The checked arguments. Optional; defaults to none.
    """

    path: str
    entrypoint: str = DEFAULT_ENTRYPOINT
    capabilities: tuple[str, ...] = ()
    arguments: tuple[Argument, ...] = ()

    @property
    def name(self) -> str:
        """What the process is called in ``rusmctl list``: the module's file name."""
        return Path(self.path).name


@dataclass(frozen=True)
class Launch:
    """A spec resolved against the app dir and the manifest.

    Attributes:
        spec: The parsed spec.
        module: The module's absolute path, inside the app dir.
        capability: The profile its process runs under.
    """

    spec: ModuleSpec
    module: Path
    capability: Capability


def split_escaped(text: str, separator: str) -> list[str]:
    """``text`` cut at each unescaped ``separator``; escapes stay for the next cut.

    One pass over the characters, no recursion: ``\\x`` is kept as it is
    (both characters) so that a later split on another separator still
    sees it; ``unescape`` removes the backslashes at the end.
    """
    parts: list[str] = []
    current: list[str] = []
    escaped = False
    for char in text:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            current.append(char)
            escaped = True
        elif char == separator:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def unescape(text: str) -> str:
    """``text`` with ``\\x`` turned into ``x``; a trailing lone backslash stays."""
    out: list[str] = []
    escaped = False
    for char in text:
        if escaped:
            out.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        else:
            out.append(char)
    if escaped:
        out.append("\\")
    return "".join(out)


def parse_spec(text: str) -> ModuleSpec:
    """Check a spec's text: its keys, types, values and their ranges.

    Raises:
        LaunchError: An unknown or repeated key, no path, an unknown type,
            params and args that do not pair up, a value its type cannot hold.
    """
    if len(text) > MAX_SPEC_CHARS:
        raise LaunchError(
            f"--module: the spec is {len(text)} characters (at most {MAX_SPEC_CHARS})"
        )
    fields: dict[str, str] = {}
    for item in split_escaped(text, ";"):
        if not item.strip():
            continue
        key, equals, value = item.partition("=")
        key = key.strip()
        if not equals:
            raise LaunchError(f"--module: {item!r} is not key=value")
        if key not in KEYS:
            raise LaunchError(f"--module: unknown key {key!r} (valid: {', '.join(KEYS)})")
        if key in fields:
            raise LaunchError(f"--module: key {key!r} is given twice")
        fields[key] = value
    path = unescape(fields.get("path", "").strip())
    if not path:
        raise LaunchError("--module: path is missing (path=<module>.wasm, relative to the app dir)")
    entrypoint = unescape(fields.get("entrypoint", "").strip()) or DEFAULT_ENTRYPOINT
    capabilities = tuple(
        name.strip() for name in fields.get("capabilities", "").split(",") if name.strip()
    )
    arguments = _arguments(fields.get("params"), fields.get("args"))
    return ModuleSpec(path, entrypoint, capabilities, arguments)


def _arguments(params: str | None, args: str | None) -> tuple[Argument, ...]:
    values = _list(args)
    if len(values) > MAX_ARGS:
        raise LaunchError(f"--module: {len(values)} args (at most {MAX_ARGS})")
    if params is None:
        return tuple(_typed(index, value) for index, value in enumerate(values))
    kinds = [_param_type(index, unescape(kind).strip()) for index, kind in enumerate(_list(params))]
    if len(kinds) != len(values):
        raise LaunchError(
            f"--module: params declares {len(kinds)} type(s) but args gives {len(values)} value(s)"
        )
    return tuple(argument(kind, unescape(value)) for kind, value in zip(kinds, values, strict=True))


def _list(text: str | None) -> list[str]:
    """A comma-separated field's items; an absent or empty field has none."""
    if text is None or not text.strip():
        return []
    return split_escaped(text, ",")


def _typed(index: int, value: str) -> Argument:
    """``type:value``, for args given without params."""
    kind, colon, rest = value.partition(":")
    if not colon:
        raise LaunchError(
            f"--module: args value {index + 1} ({unescape(value)!r}) has no type: write "
            "type:value (u16:7000) or give params"
        )
    return argument(_param_type(index, kind.strip()), unescape(rest))


def _param_type(index: int, text: str) -> ParamType:
    try:
        return ParamType(text)
    except ValueError:
        valid = " ".join(ParamType)
        raise LaunchError(
            f"--module: unknown type {text!r} for argument {index + 1} (valid: {valid})"
        ) from None


def argument(kind: ParamType, text: str) -> Argument:
    """One value checked against its type.

    Raises:
        LaunchError: The value is not of the type or out of its range.
    """
    if kind in _INTEGER_RANGES:
        return _integer(kind, text)
    if kind in (ParamType.F32, ParamType.F64):
        return _float(kind, text)
    if kind is ParamType.UTF8:
        data = text.encode()
    else:
        try:
            data = bytes.fromhex(text)
        except ValueError:
            raise LaunchError(
                f"--module: {kind} value {text!r} is not hex (two digits a byte: 68690a)"
            ) from None
    if len(data) > MAX_MESSAGE_BYTES:
        raise LaunchError(
            f"--module: {kind} value of {len(data)} bytes is over a message's "
            f"{MAX_MESSAGE_BYTES} bytes"
        )
    return Argument(kind, text, len(data), data)


def _integer(kind: ParamType, text: str) -> Argument:
    low, high = _INTEGER_RANGES[kind]
    try:
        number = int(text.strip(), 0)
    except ValueError:
        raise LaunchError(f"--module: {kind} value {text!r} is not an integer") from None
    if not low <= number <= high:
        raise LaunchError(f"--module: {kind} value {number} is out of range ({low} to {high})")
    if kind is ParamType.U32 and number >= 1 << 31:
        number -= 1 << 32
    elif kind is ParamType.U64 and number >= 1 << 63:
        number -= 1 << 64
    return Argument(kind, text, number)


def _float(kind: ParamType, text: str) -> Argument:
    try:
        number = float(text.strip())
    except ValueError:
        raise LaunchError(f"--module: {kind} value {text!r} is not a number") from None
    if math.isfinite(number) and kind is ParamType.F32 and abs(number) > _F32_MAX:
        raise LaunchError(f"--module: f32 value {text!r} is out of range (at most ±{_F32_MAX:g})")
    return Argument(kind, text, number)


def resolve(spec: ModuleSpec, app_dir: Path, profiles: dict[str, Capability]) -> Launch:
    """Check ``spec`` against the app dir and the manifest's profiles.

    Args:
        spec: A parsed spec.
        app_dir: The manifest's directory.
        profiles: The manifest's own ``[capabilities.<name>]``.

    Raises:
        LaunchError: A path with ``..`` or out of the app dir, an unknown
            capability, two profile names.
        ModuleMissing: No file at the path.
    """
    return Launch(spec, module_path(spec.path, app_dir), capability(spec, profiles))


def module_path(path: str, app_dir: Path) -> Path:
    """The module's absolute path, refused when it leaves the app dir or is missing."""
    if ".." in Path(path).parts:
        raise LaunchError(f"--module: path {path!r} has a '..' segment; it stays in the app dir")
    root = app_dir.resolve()
    candidate = Path(path) if Path(path).is_absolute() else root / path
    resolved = candidate.resolve()
    if not resolved.is_relative_to(root):
        raise LaunchError(f"--module: path {path!r} is outside the app dir {root}")
    if not resolved.is_file():
        raise ModuleMissing(f"--module: no module at {path!r} (looked at {resolved})")
    return resolved


def capability(spec: ModuleSpec, profiles: dict[str, Capability]) -> Capability:
    """The profile the spec's ``capabilities`` add up to."""
    known = {
        **{str(name): profile for name, profile in BUILTIN_CAPABILITIES.items()},
        **profiles,
    }
    base: Capability | None = None
    grants: dict[str, bool] = {}
    for name in spec.capabilities:
        if name in GRANTS:
            grants[GRANTS[name]] = True
        elif name in known:
            if base is not None:
                raise LaunchError(
                    f"--module: capabilities names two profiles, {base.name!r} and {name!r}"
                )
            base = known[name]
        else:
            valid = ", ".join([*GRANTS, *sorted(known)])
            raise LaunchError(f"--module: unknown capability {name!r} (valid: {valid})")
    if base is None:
        base = BUILTIN_CAPABILITIES[BuiltinCapability.SANDBOXED]
    if not grants:
        return base
    added = "+".join(name for name in spec.capabilities if name in GRANTS)
    return msgspec.structs.replace(base, name=f"{base.name}+{added}", **grants)
