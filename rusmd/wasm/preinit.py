"""Pre-initialisation: a reactor's start-up runs once, when it is compiled, not per request.

Runs in: the compile child (``rusmd.wasm.compiler``), which runs Wizer as
a child of its own; the main process reads the constants only. Nothing
here loads wasmtime.

A WASI reactor's ``_initialize`` starts libc and runs the C constructors.
Without this step the workers call it in every fresh instance, that is on
every request. Wizer instantiates the module, calls ``_initialize`` once
and writes a new module whose data segments and globals hold the memory
and globals the start-up left, and which no longer exports
``_initialize``, so the workers skip the call. Each request still gets a
fresh instance of that module: what one request writes is never seen by
the next.

When it applies: the module exports a function ``_initialize``, does not
export ``_start`` (a command starts libc inside ``_start``), and its
component keeps ``pre-initialize = true`` (the default).

What is not snapshotted: Wizer runs the start-up with no imports at all
(``--allow-wasi`` stays off). A start-up that calls an import — it reads
the environment or a preopened directory, the clock or randomness, or
calls a ``rusm`` function — depends on the instance it runs in (its env
grants, its preopens, the time), so freezing one answer into every
instance would be wrong. It traps inside Wizer; the original module is
compiled and its start-up runs per request as before, and the compile
event says why (``skipped: its _initialize calls the import …``). A
start-up that traps, or that Wizer refuses (imported memories, tables or
globals), is not snapshotted either.

Limits: Wizer runs at the compile child's nice level, in its own process
group, and dies with the compile child. It may run for half of
``compile-timeout-s`` (the compile of the result needs the rest) and use
up to ``compile-memory-mb`` of resident memory; past either it is killed
and the original is compiled. Those two outcomes depend on the machine's
load, so they are not cached: the next compile tries again.

Finding Wizer: the first of

1. ``$RUSM_WIZER``, the path of a Wizer executable (when set, only it);
2. ``tools/node_modules/.bin/wizer-<os>-<arch>`` in the source tree this
   package runs from: the native binary the pinned npm package installs
   (``make tools``), run directly rather than through its node launcher,
   so killing it kills Wizer itself;
3. ``wizer`` on ``PATH``.

Its ``--version`` line and the flags are part of the cache key
(``snapshot_inputs``), so a Wizer upgrade recompiles the reactors.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import psutil

from rusmd.errors import RusmError

WIZER_VARIABLE = "RUSM_WIZER"
INIT_FUNC = "_initialize"
# The flags every snapshot is made with; part of the cache key.
WIZER_FLAGS = ("--init-func", INIT_FUNC)
INSTALL_HINT = (
    "install it with `make tools` (npm ci in tools/: @bytecodealliance/wizer 10.0.0) "
    f"or set {WIZER_VARIABLE} to a wizer executable"
)
# The compile event's "preinit" values; "skipped: <why>" for the rest.
PREINITIALIZED = "pre-initialized"
OFF = "off"
SKIPPED = "skipped: "
WIZER_NOT_FOUND = "Wizer not found"
# `wizer --version` prints one line at once; longer is a broken install.
VERSION_TIMEOUT_S = 10.0
# A start-up may take this share of compile-timeout-s; compiling the
# snapshot (or, after a kill, the original) needs the rest.
SNAPSHOT_TIME_SHARE = 0.5
# How often a running Wizer's memory is checked: a start-up touching
# memory at full speed gains well under 1 GiB between two checks.
POLL_S = 0.05
# Wizer's error output is a few lines (with a backtrace at most a few KiB);
# the rest is not read.
MAX_STDERR_BYTES = 64 * 1024
# One reason is one log line.
MAX_REASON_CHARS = 300
PR_SET_PDEATHSIG = 1
# Wizer's stdin, stdout and stderr: memory files, never paths on disk.
PARTS = ("in", "out", "err")
# Wasm export kinds (the binary format's externkind byte).
FUNC_KIND = 0
_EXPORT_SECTION = 7
# Wizer's words for a start-up that called an import.
_IMPORT_CALL = re.compile(r"unknown imported function: '([^']*)' '([^']*)'")
_WASM_FRAME = re.compile(r"^\d+:\s+0x[0-9a-f]+ - ")
_CAUSE_NUMBER = re.compile(r"^\d+: ")
# Node's names for this machine, as the npm package spells its platform builds.
_NODE_ARCH = {"x86_64": "x64", "amd64": "x64", "aarch64": "arm64", "arm64": "arm64"}


class WizerMissing(RusmError):
    """No usable Wizer: the message says where rusmd looked or what was wrong."""


@dataclass(frozen=True)
class Wizer:
    """A Wizer executable that answered ``--version``.

    Attributes:
        path: The executable.
        version: Its ``--version`` line (``wizer 10.0.0``).
    """

    path: str
    version: str


@dataclass(frozen=True)
class Snapshot:
    """What running Wizer on one module came to.

    Attributes:
        wasm: The pre-initialised module; b"" when there is none.
        reason: Why there is none ("" when there is).
        lasting: The outcome follows from the module and Wizer alone, so it
            may be cached; False after a kill at a limit or a failed start.
    """

    wasm: bytes
    reason: str = ""
    lasting: bool = True


def bundled_wizer() -> Path:
    """Where ``make tools`` puts this machine's Wizer binary, in the source tree."""
    machine = platform.machine().lower()
    arch = _NODE_ARCH.get(machine, machine)
    root = Path(__file__).resolve().parents[2]
    return root / "tools" / "node_modules" / ".bin" / f"wizer-{sys.platform}-{arch}"


def find_wizer(environ: Mapping[str, str]) -> Wizer:
    """The Wizer to run, in the documented order (see the module docstring).

    Raises:
        WizerMissing: None was found, ``$RUSM_WIZER`` names no executable,
            or the one found does not answer ``--version``.
    """
    configured = environ.get(WIZER_VARIABLE, "")
    if configured:
        if not _executable(configured):
            raise WizerMissing(
                f"{WIZER_NOT_FOUND}: {WIZER_VARIABLE}={configured} is not an executable file"
            )
        return _probe(configured)
    bundled = bundled_wizer()
    if _executable(str(bundled)):
        return _probe(str(bundled))
    on_path = shutil.which("wizer", path=environ.get("PATH", os.defpath))
    if on_path:
        return _probe(on_path)
    raise WizerMissing(
        f"{WIZER_NOT_FOUND} (looked at ${WIZER_VARIABLE}, {bundled} and PATH); "
        "reactors run their start-up on every request"
    )


def snapshot_inputs(wizer: Wizer) -> str:
    """What, besides the module's bytes, decides a snapshot: the cache key's preinit part."""
    return " ".join((wizer.version, *WIZER_FLAGS))


def _executable(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


def _probe(path: str) -> Wizer:
    try:
        done = subprocess.run(
            [path, "--version"],
            capture_output=True,
            text=True,
            timeout=VERSION_TIMEOUT_S,
            check=False,
            env=_wizer_environment(),
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise WizerMissing(f"{WIZER_NOT_FOUND}: {path} --version failed: {exc}") from None
    version = done.stdout.strip().splitlines()[0] if done.stdout.strip() else ""
    if done.returncode != 0 or not version.startswith("wizer "):
        raise WizerMissing(
            f"{WIZER_NOT_FOUND}: {path} --version answered {version or done.stderr.strip()!r} "
            f"(exit status {done.returncode}), not 'wizer <version>'"
        )
    return Wizer(path=path, version=version)


def _wizer_environment() -> dict[str, str]:
    # Wizer runs with no WASI, so the guest sees none of this; a Rust
    # backtrace would only bury the one line rusmd reports.
    return {"PATH": os.defpath, "RUST_BACKTRACE": "0", "RUST_LIB_BACKTRACE": "0"}


# ── which modules have a start-up to snapshot ───────────────────────────


def exports(data: bytes) -> dict[str, int] | None:
    """The module's exports, name → kind byte; None when the binary is malformed.

    Reads the export section only, without wasmtime: the compile child
    decides the cache key before it loads wasmtime (an all-hits run never
    does). A malformed module is left to the compiler, which names the fault.
    """
    offset = 8  # magic and version, checked by artifacts.header_problem
    try:
        while offset < len(data):
            section, offset = data[offset], offset + 1
            size, offset = _leb128(data, offset)
            end = offset + size
            if end > len(data):
                return None
            if section == _EXPORT_SECTION:
                return _export_names(data[offset:end])
            offset = end
    except (IndexError, ValueError, UnicodeDecodeError):
        return None
    return {}


def _export_names(section: bytes) -> dict[str, int]:
    names: dict[str, int] = {}
    count, offset = _leb128(section, 0)
    for _ in range(count):
        length, offset = _leb128(section, offset)
        if offset + length > len(section):
            raise ValueError("export name runs past the section")
        name = section[offset : offset + length].decode("utf-8")
        kind = section[offset + length]
        _index, offset = _leb128(section, offset + length + 1)
        names[name] = kind
    return names


def _leb128(data: bytes, offset: int) -> tuple[int, int]:
    """An unsigned LEB128 u32 at ``offset``, and the offset after it."""
    value = shift = 0
    while True:
        byte = data[offset]
        offset += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, offset
        shift += 7
        if shift > 28:
            raise ValueError("LEB128 longer than a u32")


def has_startup(data: bytes) -> bool:
    """Whether the module is a reactor: it exports ``_initialize`` and no ``_start``."""
    found = exports(data) or {}
    return found.get(INIT_FUNC) == FUNC_KIND and "_start" not in found


# ── the compile child's step ────────────────────────────────────────────


@dataclass(frozen=True)
class Plan:
    """What to do with one module before compiling it.

    Attributes:
        inputs: The cache key's preinit part (``snapshot_inputs``) when a
            snapshot is to be tried; "" when the module compiles as it is.
        note: The compile event's ``preinit`` value when no snapshot is
            tried: "" (not a reactor), ``off`` or ``skipped: Wizer not found``.
    """

    inputs: str
    note: str


class Preinit:
    """Plans and makes snapshots for one compile child; finds Wizer on first need.

    Args:
        environ: Where ``$RUSM_WIZER`` and ``PATH`` come from.
        warn: Told once, when Wizer is wanted and missing, why and how to install it.
    """

    def __init__(self, environ: Mapping[str, str], warn: Callable[[str], None]) -> None:
        self.environ = environ
        self.warn = warn
        self._wizer: Wizer | None = None
        self._looked = False

    def plan(self, data: bytes, wanted: bool) -> Plan:
        """Whether to snapshot ``data`` (its component's ``pre-initialize`` is ``wanted``)."""
        if not has_startup(data):
            return Plan("", "")
        if not wanted:
            return Plan("", OFF)
        wizer = self._find()
        if wizer is None:
            return Plan("", SKIPPED + WIZER_NOT_FOUND)
        return Plan(snapshot_inputs(wizer), "")

    def snapshot(self, data: bytes, *, timeout_s: float, memory_bytes: int) -> Snapshot:
        """Run Wizer on ``data``; only after ``plan`` said to (Wizer was found)."""
        assert self._wizer is not None, "plan() found Wizer first"
        return run_wizer(self._wizer, data, timeout_s=timeout_s, memory_bytes=memory_bytes)

    def _find(self) -> Wizer | None:
        if not self._looked:
            self._looked = True
            try:
                self._wizer = find_wizer(self.environ)
            except WizerMissing as exc:
                self.warn(f"{exc}; {INSTALL_HINT}")
        return self._wizer


# ── running Wizer ───────────────────────────────────────────────────────


def run_wizer(wizer: Wizer, data: bytes, *, timeout_s: float, memory_bytes: int) -> Snapshot:
    """Run ``wizer`` on ``data`` within the limits; the snapshot or why there is none.

    Input, output and error output are memory files: the module Wizer
    reads is exactly the bytes the cache key was computed from.
    """
    files = [os.memfd_create(f"rusmd-wizer-{part}", os.MFD_CLOEXEC) for part in PARTS]
    try:
        os.write(files[0], data)
        os.lseek(files[0], 0, os.SEEK_SET)
        try:
            proc = subprocess.Popen(
                [wizer.path, *WIZER_FLAGS],
                stdin=files[0],
                stdout=files[1],
                stderr=files[2],
                close_fds=True,
                env=_wizer_environment(),
                process_group=0,
                # Safe here: the compile child runs one thread (its engine
                # compiles without a thread pool), so no lock is held at fork.
                preexec_fn=_dies_with(os.getpid()),  # noqa: PLW1509
            )
        except OSError as exc:
            return Snapshot(b"", f"Wizer ({wizer.path}) did not start: {exc}", lasting=False)
        limit = _watch(proc, timeout_s, memory_bytes)
        if limit:
            return Snapshot(b"", limit, lasting=False)
        if proc.returncode != 0:
            stderr = _read(files[2], MAX_STDERR_BYTES).decode("utf-8", "replace")
            # A signal from outside (the kernel's OOM killer, an operator) says
            # nothing about the module: not worth keeping.
            lasting = proc.returncode > 0
            return Snapshot(b"", wizer_reason(stderr, proc.returncode), lasting=lasting)
        size = os.fstat(files[1]).st_size
        if size > memory_bytes:
            return Snapshot(b"", f"the snapshot is {size} bytes, over the compile memory limit")
        return Snapshot(_read(files[1], size))
    finally:
        for fd in files:
            os.close(fd)


def _dies_with(parent: int) -> Callable[[], None]:
    """A pre-exec step: Wizer gets SIGKILL when the compile child dies (the main
    process kills only the compile child)."""
    prctl = ctypes.CDLL(None, use_errno=True).prctl

    def setup() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        # The compile child may have died before prctl: then no signal would come.
        if os.getppid() != parent:
            os._exit(1)

    return setup


def _watch(proc: subprocess.Popen[bytes], timeout_s: float, memory_bytes: int) -> str:
    """Wait for Wizer; kill it past ``timeout_s`` or ``memory_bytes``; why it was killed, or ""."""
    deadline = time.monotonic() + timeout_s
    pidfd = os.pidfd_open(proc.pid)
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    usage = psutil.Process(proc.pid)
    why = ""
    try:
        while not poller.poll(int(POLL_S * 1000)):
            if time.monotonic() > deadline:
                why = f"its _initialize ran longer than {timeout_s:g} s (half of compile-timeout-s)"
            elif _group_rss(usage) > memory_bytes:
                why = f"Wizer used more than {memory_bytes >> 20} MiB of memory"
            if why:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                break
        proc.wait()
    finally:
        os.close(pidfd)
    return f"{why}; killed" if why else ""


def _group_rss(usage: psutil.Process) -> int:
    try:
        members = [usage, *usage.children(recursive=True)]
        return sum(member.memory_info().rss for member in members)
    except psutil.Error:
        return 0


def _read(fd: int, limit: int) -> bytes:
    """Up to ``limit`` bytes of a memory file, from its start."""
    chunks = []
    offset = 0
    while offset < limit:
        chunk = os.pread(fd, min(limit - offset, 1 << 20), offset)
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def wizer_reason(stderr: str, status: int) -> str:
    """One line for why Wizer made no snapshot, from its error output.

    A start-up that called an import becomes ``its _initialize calls the
    import rusm.log``; a trap ``its _initialize trapped: wasm trap: …``;
    anything else Wizer's headline and its innermost cause.
    """
    called = _IMPORT_CALL.search(stderr)
    if called:
        return (
            f"its _initialize calls the import {called[1]}.{called[2]}, "
            "which a snapshot cannot hold"
        )
    lines = [line.strip() for line in stderr.split("Stack backtrace:", 1)[0].splitlines()]
    lines = [line for line in lines if line and line != "Caused by:"]
    lines = [line for line in lines if not _WASM_FRAME.match(line)]
    lines = [_CAUSE_NUMBER.sub("", line).removeprefix("Error: ") for line in lines]
    lines = [line for line in lines if not line.startswith("error while executing at wasm")]
    trap = next((line for line in lines if line.startswith("wasm trap:")), "")
    if trap:
        reason = f"its _initialize trapped: {trap}"
    elif lines:
        reason = f"{lines[0]}: {lines[-1]}" if len(lines) > 1 else lines[0]
    else:
        reason = f"Wizer exited with status {status} and said nothing"
    reason = re.sub(r"[\x00-\x1f\x7f]", "?", reason)
    if len(reason) > MAX_REASON_CHARS:
        reason = reason[: MAX_REASON_CHARS - 1] + "…"
    return reason
