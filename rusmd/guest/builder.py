"""``rusmd build``: compile an app's C components into wasm modules.

Runs in: the ``rusmd build`` and ``rusmd dev`` commands (a short-lived
process, or the ``dev`` parent; never the daemon). The compiler runs as a
child: ``python -m ziglang cc``, the ``ziglang`` package being a runtime
dependency of rusm.

The layout: each directory ``components/<name>/`` holding ``*.c`` files
becomes ``wasm/<name>.wasm``, compiled from all of them together with
``-I components/<name>`` and the C SDK (``rusm.h``, shipped in the package,
see ``sdk_include_dir``) on the include path. A lone file
``components/<name>.c`` (the layout of ``examples/hello``) does the same.
A component none of whose sources defines ``main`` or ``run`` has only
actions: it is built as a WASI reactor (``-mexec-model=reactor``), as
``make guests`` does.

The flags are the Makefile's ``ZIGCC`` without ``-s``: the module keeps its
name section, so a guest's backtrace names its functions (strip for
production with ``-s``, see docs/writing-c.md). Warnings are on
(``-Wall``) and shown; they do not fail the build.

A component is rebuilt only when its output is older than one of its
inputs (its ``.c`` and ``.h`` files and ``rusm.h``). The compiler writes
into a temporary file next to the output, renamed over it on success, so
a running daemon (or ``rusmd dev``'s watcher) never reads half a module
and a failed build leaves the previous module in place. The compiler's
messages name ``components/<name>/<file>.c:LINE:COL`` because it runs in
the app directory with relative paths.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from rusmd.errors import RusmError

# A guest's stack lives in its linear memory: 64 KiB keeps a handler's whole
# memory inside the pages the instance pool keeps resident between
# requests (the Makefile's GUEST_STACK_BYTES; docs/benchmarks.md).
GUEST_STACK_BYTES = 65536
COMPILER_FLAGS = ("--target=wasm32-wasi", "-O2", f"-Wl,-z,stack-size={GUEST_STACK_BYTES}", "-Wall")
# A cold zig cache builds wasi-libc first (tens of seconds on 2 cores); a
# compiler that hangs past this is killed rather than holding `dev` forever.
COMPILE_TIMEOUT_S = 300
# A definition of main or run at the start of a line: the Makefile's ENTRY_RE.
_ENTRY = re.compile(r"^[A-Za-z_].*\b(main|run) *[(]", re.MULTILINE)


class BuildError(RusmError):
    """The app cannot be built at all (no ``components/`` directory)."""


@dataclass(frozen=True)
class ComponentSources:
    """One component's inputs and output, paths relative to the app directory.

    Attributes:
        name: The component (``components.<name>`` in ``rusm.toml``).
        sources: The ``.c`` files compiled together.
        headers: The ``.h`` files beside them (inputs for the up-to-date check).
        include: The component's directory, on the include path.
        output: ``wasm/<name>.wasm``.
    """

    name: str
    sources: tuple[Path, ...]
    headers: tuple[Path, ...]
    include: Path
    output: Path


@dataclass(frozen=True)
class BuildResult:
    """What building one component did.

    Attributes:
        name: The component.
        output: Its module, relative to the app directory.
        ok: False when the compiler refused it (or timed out).
        built: False when the module was up to date and left alone.
        seconds: The compile's duration (0 when not built).
        messages: The compiler's output: errors and warnings with file:line.
    """

    name: str
    output: Path
    ok: bool
    built: bool
    seconds: float = 0.0
    messages: str = ""


def sdk_include_dir() -> Path:
    """The directory holding ``rusm.h``, inside the installed package."""
    return Path(__file__).resolve().parent.parent / "sdk" / "c"


def find_components(app_dir: Path) -> list[ComponentSources]:
    """Every component under ``app_dir/components``, sorted by name.

    Raises:
        BuildError: There is no ``components`` directory.
    """
    root = app_dir / "components"
    if not root.is_dir():
        raise BuildError(f"{root}: no such directory (components/<name>/*.c are built)")
    found = []
    for entry in sorted(root.iterdir()):
        relative = entry.relative_to(app_dir)
        if entry.is_dir():
            sources = tuple(sorted(p.relative_to(app_dir) for p in entry.glob("*.c")))
            headers = tuple(sorted(p.relative_to(app_dir) for p in entry.glob("*.h")))
            if sources:
                output = Path("wasm") / f"{entry.name}.wasm"
                found.append(ComponentSources(entry.name, sources, headers, relative, output))
        elif entry.suffix == ".c" and entry.is_file():
            output = Path("wasm") / f"{entry.stem}.wasm"
            found.append(ComponentSources(entry.stem, (relative,), (), relative.parent, output))
    return found


def is_up_to_date(app_dir: Path, component: ComponentSources) -> bool:
    """Whether ``component``'s module is newer than each of its inputs."""
    try:
        built_ns = (app_dir / component.output).stat().st_mtime_ns
    except FileNotFoundError:
        return False
    inputs = [app_dir / path for path in (*component.sources, *component.headers)]
    inputs.append(sdk_include_dir() / "rusm.h")
    return all(path.stat().st_mtime_ns < built_ns for path in inputs)


def is_reactor(app_dir: Path, component: ComponentSources) -> bool:
    """True when no source defines ``main`` or ``run``: a module of actions only."""
    return not any(
        _ENTRY.search((app_dir / source).read_text(encoding="utf-8", errors="replace"))
        for source in component.sources
    )


def compile_flags(app_dir: Path, component: ComponentSources) -> list[str]:
    """The flags ``component`` is compiled with (no paths): ``COMPILER_FLAGS``, and
    ``-mexec-model=reactor`` for a module of actions only."""
    flags = list(COMPILER_FLAGS)
    if is_reactor(app_dir, component):
        flags.append("-mexec-model=reactor")
    return flags


def compile_command(app_dir: Path, component: ComponentSources, out: Path) -> list[str]:
    """The compiler's command line for ``component``, run in ``app_dir``."""
    command = [sys.executable, "-m", "ziglang", "cc", *compile_flags(app_dir, component)]
    command += ["-I", str(component.include), "-I", str(sdk_include_dir())]
    return [*command, "-o", str(out), *(str(source) for source in component.sources)]


def compile_component(app_dir: Path, component: ComponentSources) -> BuildResult:
    """Compile ``component`` now, replacing its module only on success."""
    output = app_dir / component.output
    output.parent.mkdir(parents=True, exist_ok=True)
    scratch = output.with_name(f".{output.name}.building")
    command = compile_command(app_dir, component, scratch)
    started = time.monotonic()
    try:
        done = subprocess.run(
            command,
            cwd=app_dir,
            capture_output=True,
            text=True,
            timeout=COMPILE_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        scratch.unlink(missing_ok=True)
        message = f"{component.include}: the compiler ran over {COMPILE_TIMEOUT_S} s; killed"
        return BuildResult(component.name, component.output, ok=False, built=True, messages=message)
    seconds = time.monotonic() - started
    if done.returncode != 0:
        scratch.unlink(missing_ok=True)
        messages = (done.stderr + done.stdout).strip() or f"the compiler exited {done.returncode}"
        return BuildResult(component.name, component.output, False, True, seconds, messages)
    os.replace(scratch, output)
    return BuildResult(component.name, component.output, True, True, seconds, done.stderr.strip())


def build_app(
    app_dir: Path, *, force: bool = False, names: frozenset[str] | None = None
) -> list[BuildResult]:
    """Build the app's components that are out of date; each one's result.

    Args:
        app_dir: The directory holding ``components/`` (and ``rusm.toml``).
        force: Rebuild even an up-to-date module. Optional; defaults to False.
        names: Build only these components. Optional; defaults to all of them.

    Raises:
        BuildError: No ``components`` directory, or a name in ``names``
            that is not a component.
    """
    components = find_components(app_dir)
    if names is not None:
        unknown = names - {component.name for component in components}
        if unknown:
            known = ", ".join(c.name for c in components) or "none"
            raise BuildError(
                f"{app_dir / 'components'}: no component {', '.join(sorted(unknown))} "
                f"(found: {known})"
            )
        components = [component for component in components if component.name in names]
    results = []
    for component in components:
        if not force and is_up_to_date(app_dir, component):
            results.append(BuildResult(component.name, component.output, ok=True, built=False))
        else:
            results.append(compile_component(app_dir, component))
    return results


def report_line(result: BuildResult) -> str:
    """One line saying what happened to a component, as ``rusmd build`` prints it."""
    if not result.ok:
        return f"build {result.name}: failed"
    if not result.built:
        return f"build {result.name}: {result.output} is up to date"
    return f"build {result.name}: {result.output} ({result.seconds:.1f} s)"
