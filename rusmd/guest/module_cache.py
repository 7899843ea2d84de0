"""C guests the package ships, compiled once and kept between runs.

Runs in: the ``rusmd bench`` command's own process, before it starts its
daemon (the scenario app's C guest, ``rusmd.node.scenario_app.C_GUESTS``);
never the daemon's main process or a worker.

``build_cached`` compiles one C file as ``rusmd build`` does
(``rusmd.guest.builder``: the same compiler, flags and SDK) and keeps the
module in the cache directory, ``$XDG_CACHE_HOME/rusm/guests`` (an unset
or relative ``XDG_CACHE_HOME`` means ``~/.cache``), named by the source's
stem and a hash of everything the module is made of: the source's bytes,
``rusm.h``'s bytes, the compiler flags and the compiler's version (the
``ziglang`` package's). A later call with the same inputs returns the
kept module and runs no compiler; a changed source, SDK, flag or compiler
gets a module of its own. Superseded modules stay: under 1 MB each (the
code is a few KB; libc's debug sections, which ``rusmd build`` keeps and
wasmtime does not compile, are the rest).

The compiler writes into a directory of its own inside the cache
directory, and the module is renamed into place once whole, so two runs
at once (two ``rusmd bench`` commands, two test processes) never read
half a module: each finds none yet (and compiles it too) or a whole one.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

from rusmd.guest.builder import (
    BuildError,
    BuildResult,
    ComponentSources,
    compile_component,
    compile_flags,
    sdk_include_dir,
)

# Hex digits of the inputs' SHA-256 in a module's name: 128 bits, so two
# different inputs never share a name in practice.
KEY_HEX_DIGITS = 32


class GuestCompileError(BuildError):
    """A C guest did not compile: the message names the file and has the compiler's output."""


def default_cache_dir(environ: Mapping[str, str] | None = None) -> Path:
    """``$XDG_CACHE_HOME/rusm/guests``, or ``~/.cache/rusm/guests`` when it is unset or relative."""
    configured = (os.environ if environ is None else environ).get("XDG_CACHE_HOME", "")
    # The XDG spec: a relative path is invalid and ignored.
    base = Path(configured) if configured and Path(configured).is_absolute() else None
    return (base or Path.home() / ".cache") / "rusm" / "guests"


def compiler_version() -> str:
    """The ``ziglang`` package's version (zig's own), or ``missing``."""
    try:
        return importlib.metadata.version("ziglang")
    except importlib.metadata.PackageNotFoundError:
        return "missing"


def _component(source: Path) -> ComponentSources:
    """``source`` alone as a component, its module ``<stem>.wasm`` in the build directory."""
    return ComponentSources(source.stem, (source,), (), source.parent, Path(f"{source.stem}.wasm"))


def cache_key(source: Path) -> str:
    """The hash of what ``source``'s module is made of (hex).

    Raises:
        OSError: ``source`` or ``rusm.h`` cannot be read.
    """
    digest = hashlib.sha256()
    parts = (
        source.read_bytes(),
        (sdk_include_dir() / "rusm.h").read_bytes(),
        "\0".join(compile_flags(source.parent, _component(source))).encode(),
        compiler_version().encode(),
    )
    for part in parts:
        # Each part's length first: no two different inputs hash the same bytes.
        digest.update(len(part).to_bytes(8, "little") + part)
    return digest.hexdigest()


def build_cached(source: Path, cache_dir: Path | None = None) -> BuildResult:
    """``source`` compiled as ``rusmd build`` compiles it; the kept module when there is one.

    Args:
        source: One C file (absolute or relative to the working directory).
        cache_dir: Where modules are kept. Optional; defaults to ``default_cache_dir()``.

    Returns:
        The result: ``output`` is the module's path in the cache directory;
        ``built`` is False when it was there already (no compiler ran).

    Raises:
        GuestCompileError: The compiler refused ``source`` or ran too long;
            the message names the file and carries the compiler's output.
        OSError: ``source`` cannot be read, or the cache directory written.
    """
    source = source.resolve()
    directory = cache_dir if cache_dir is not None else default_cache_dir()
    component = _component(source)
    kept = directory / f"{source.stem}-{cache_key(source)[:KEY_HEX_DIGITS]}.wasm"
    if kept.is_file():
        return BuildResult(component.name, kept, ok=True, built=False)
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".building-", dir=directory) as scratch:
        result = compile_component(Path(scratch), component)
        if not result.ok:
            raise GuestCompileError(f"{source}: does not compile:\n{result.messages}")
        os.replace(Path(scratch) / component.output, kept)
    return BuildResult(component.name, kept, True, True, result.seconds, result.messages)


def build_all(sources: Mapping[str, Path], cache_dir: Path | None = None) -> dict[str, BuildResult]:
    """``build_cached`` of each source; component name → its result.

    Raises:
        GuestCompileError: A source does not compile (the first one that does not).
        OSError: A source cannot be read, or the cache directory written.
    """
    return {name: build_cached(source, cache_dir) for name, source in sources.items()}
