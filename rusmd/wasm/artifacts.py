"""Find a component's artifact under ``wasm/`` and check that rusm can run it.

Runs in: any (pure file checks; the main process uses it before it asks
the compile child for anything, and never loads wasmtime).

``[components.<name>]`` is backed by the first of these that exists in the
app dir:

1. ``wasm/<name>.qjsbc`` — QuickJS bytecode (a JavaScript component),
2. ``wasm/<name>.js`` — JavaScript source (a JavaScript component),
3. ``wasm/<name>.wasm`` — a core wasm module (wasip1).

The first match decides: a JavaScript artifact is refused even when a
``.wasm`` of the same name also exists, so the file an operator sees
first in the search order is never silently skipped. Only the 8-byte
header is read here; the compile child validates the whole module.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path

from rusmd.errors import RusmError

# Where artifacts live, relative to the app dir.
ARTIFACT_DIR = "wasm"
# "\0asm": the magic of every wasm binary, module or component.
WASM_MAGIC = b"\x00asm"
# Version 1, layer 0: a core module (what rusm runs).
CORE_MODULE_VERSION = b"\x01\x00\x00\x00"
# Bytes 6-7 are the layer: 1 marks a component-model binary (wasip2).
COMPONENT_LAYER = b"\x01\x00"
HEADER_BYTES = 8


class ArtifactKind(enum.StrEnum):
    """An artifact's file type, spelled as its suffix."""

    QJSBC = "qjsbc"
    JS = "js"
    WASM = "wasm"


# The search order of resolve_artifact.
SEARCH_ORDER = (ArtifactKind.QJSBC, ArtifactKind.JS, ArtifactKind.WASM)


class ArtifactError(RusmError):
    """A component has no artifact, or one rusm cannot run (the message names both)."""


@dataclass(frozen=True)
class Artifact:
    """A component's resolved artifact.

    Attributes:
        name: The component name.
        path: Absolute path of the file.
        kind: Its type; ``wasm`` for every artifact ``resolve_artifact``
            returns today.
    """

    name: str
    path: Path
    kind: ArtifactKind

    def shown(self, app_dir: Path) -> str:
        """The path as an operator reads it: ``wasm/api.wasm`` inside the app dir."""
        try:
            return str(self.path.relative_to(app_dir))
        except ValueError:
            return str(self.path)


def resolve_artifact(app_dir: Path, name: str) -> Artifact:
    """The artifact of ``[components.<name>]`` in ``app_dir``.

    Raises:
        ArtifactError: None exists, it is JavaScript, a wasip2 component,
            not wasm at all, or unreadable.
    """
    candidates = [f"{ARTIFACT_DIR}/{name}.{kind}" for kind in SEARCH_ORDER]
    for kind, relative in zip(SEARCH_ORDER, candidates, strict=True):
        path = app_dir / relative
        if not path.exists() and not path.is_symlink():
            continue
        if kind is not ArtifactKind.WASM:
            raise ArtifactError(
                f"component {name}: {relative} is a JavaScript component; "
                "JavaScript components arrive with the JS runtime"
            )
        try:
            with path.open("rb") as file:
                header = file.read(HEADER_BYTES)
        except OSError as exc:
            raise ArtifactError(
                f"component {name}: cannot read {relative}: {exc.strerror or exc}"
            ) from None
        problem = header_problem(header)
        if problem:
            raise ArtifactError(f"component {name}: {relative} {problem}")
        return Artifact(name=name, path=path.absolute(), kind=kind)
    raise ArtifactError(f"component {name}: no artifact (looked for {', '.join(candidates)})")


def header_problem(data: bytes) -> str:
    """Why ``data`` (at least its first 8 bytes) is not a core wasm module ("" if it is).

    The phrase follows the file's name: ``wasm/api.wasm <problem>``.
    """
    header = bytes(data[:HEADER_BYTES])
    if len(header) < HEADER_BYTES or header[:4] != WASM_MAGIC:
        return "is not a wasm module (bad magic bytes)"
    if header[6:8] == COMPONENT_LAYER:
        return (
            "is a wasip2 component; rusm runs core wasm modules (wasip1) for now — "
            "build for wasm32-wasi (preview 1)"
        )
    if header[4:8] != CORE_MODULE_VERSION:
        version = int.from_bytes(header[4:8], "little")
        return f"is a wasm binary of unsupported version {version:#x} (expected 1)"
    return ""
