"""The compile child: turn untrusted wasm into cached ``.cwasm`` files, one at a time.

Runs in: the compile child, ``python -m rusmd.wasm.compiler``, a separate
OS process the main process starts (``rusmd.main.compile``) and kills
when a module takes too long or too much memory. Compiling is where
hostile input meets Cranelift, so it happens here, at nice +10, never in
the main process (which must not load wasmtime) nor in a worker.

Protocol. stdin carries one JSON job::

    {"cache_dir": "/var/cache/rusmd",
     "components": [{"name": "api", "path": "/etc/rusm/wasm/api.wasm",
                     "pre_initialize": true}],
     "timeout_s": 60, "memory_mb": 2048,
     "memory_layout": [4294967296, 33554432],
     "parent_pid": 1234}

(``parent_pid`` is optional: when given, the child dies with that parent.
``memory_layout``, the reservation and guard bytes of every linear memory
(``capacity.manifest_layout``), defaults to ``settings.FULL_LAYOUT``; it
is part of the cache key.
``pre_initialize`` defaults to true; ``timeout_s`` and ``memory_mb``, the
``[node]`` compile limits, to 60 and 2048: they bound Wizer, see
``rusmd.wasm.preinit``.) For each component, in order, stdout gets JSON
lines, each flushed:

- ``{"event": "start", "component", "bytes"}`` before the file is read;
- ``{"event": "preinit", "component"}`` on a cache miss of a reactor to
  pre-initialise, once the engine is ready and just before Wizer runs;
- ``{"event": "compiling", "component"}`` on a cache miss, once the
  engine is ready and just before compiling (with ``"problem"`` when a bad
  cache entry was found and removed); the supervisor's per-module clock
  restarts at each of these two, so loading wasmtime never counts against
  a module, and the start-up and the compile each get the whole limit;
- then exactly one of
  ``{"event": "hit", "component", "cwasm", "digest", "key"}``,
  ``{"event": "compiled", "component", "cwasm", "digest", "key", "seconds"}``
  (again with ``"problem"`` when it replaced a bad entry), or
  ``{"event": "error", "component", "message"}``. ``hit`` and ``compiled``
  carry ``"preinit"`` for a reactor: ``pre-initialized``, ``off``
  (``pre-initialize = false``) or ``skipped: <why>`` (the original was
  compiled; its start-up runs per request).

Once, before the first component that needs Wizer when it cannot be
found: ``{"event": "warning", "message"}``, saying how to install it.
Finally ``{"event": "done"}``. Exit status 0; a job that is not valid
JSON is reported on stderr with exit status 2.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from rusmd.errors import EX_OK, EX_USAGE
from rusmd.wasm.artifacts import header_problem
from rusmd.wasm.cache import CacheEntry, CacheError, CompileCache
from rusmd.wasm.preinit import PREINITIALIZED, SKIPPED, SNAPSHOT_TIME_SHARE, Preinit
from rusmd.wasm.settings import FULL_LAYOUT, MemoryLayout

# The compile child yields the CPU to workers serving requests.
NICE_INCREMENT = 10
# A wasmtime error is a chain of causes; one line of it is enough for a log.
MAX_MESSAGE_CHARS = 400
PR_SET_PDEATHSIG = 1
# The [node] compile limits, when a job does not say (the manifest's defaults).
DEFAULT_TIMEOUT_S = 60.0
DEFAULT_MEMORY_MB = 2048
# The memory layout of a job that names none.
_FULL = [FULL_LAYOUT.reservation_bytes, FULL_LAYOUT.guard_bytes]
# wasmtime numbers a chain of several causes: "0: ...", "1: ...".
_CAUSE_NUMBER = re.compile(r"^\d+: ")


class _Events:
    """JSON lines on a private copy of stdout, so stray prints cannot corrupt them."""

    def __init__(self) -> None:
        self._out: IO[str] = os.fdopen(os.dup(1), "w", encoding="utf-8")
        # Anything else that writes to fd 1 (a library, a warning) lands on stderr.
        os.dup2(2, 1)

    def emit(self, event: str, **fields: Any) -> None:
        self._out.write(json.dumps({"event": event, **fields}) + "\n")
        self._out.flush()


class _Compiler:
    """Loads wasmtime on the first miss: an all-hits run never does."""

    def __init__(self, layout: MemoryLayout) -> None:
        self._engine: Any = None
        self._layout = layout

    def prepare(self) -> None:
        """Import wasmtime and build the engine (before the module's clock starts)."""
        if self._engine is None:
            # Imported here, on the first miss, on purpose: the engine module
            # loads wasmtime, which an all-hits run never needs.
            from rusmd.wasm.engine import compile_engine

            self._engine = compile_engine(self._layout)

    def compile(self, data: bytes) -> tuple[bytes, str]:
        """The serialized module, or b"" and wasmtime's reason."""
        import wasmtime  # loaded by ``prepare`` already (see there)

        self.prepare()
        try:
            module = wasmtime.Module(self._engine, data)
            return bytes(module.serialize()), ""
        except wasmtime.WasmtimeError as exc:
            return b"", summarize_wasmtime_error(str(exc))


def summarize_wasmtime_error(text: str) -> str:
    """One line from wasmtime's cause chain: the headline and the innermost cause.

    ``failed to parse WebAssembly module\\n\\nCaused by:\\n    unexpected
    end-of-file (at offset 0x9)`` becomes ``failed to parse WebAssembly
    module: unexpected end-of-file (at offset 0x9)``.
    """
    lines = [line.strip() for line in text.splitlines()]
    lines = [line for line in lines if line and line != "Caused by:"]
    causes = [_CAUSE_NUMBER.sub("", line) for line in lines[1:]]
    summary = f"{lines[0]}: {causes[-1]}" if lines and causes else (lines or ["unknown error"])[0]
    if len(summary) > MAX_MESSAGE_CHARS:
        summary = summary[: MAX_MESSAGE_CHARS - 1] + "…"
    return summary


@dataclass(frozen=True)
class _Job:
    """One component of the job."""

    name: str
    path: str
    pre_initialize: bool


@dataclass
class _Context:
    """What every component of one job shares."""

    cache: CompileCache
    compiler: _Compiler
    events: _Events
    preinit: Preinit
    timeout_s: float
    memory_mb: int


def run_job(job: dict[str, Any], events: _Events) -> None:
    """Compile or look up every component of ``job``, reporting each."""
    components = [
        _Job(str(c["name"]), str(c["path"]), bool(c.get("pre_initialize", True)))
        for c in job["components"]
    ]
    layout = MemoryLayout(*job.get("memory_layout", _FULL))
    try:
        cache = CompileCache(Path(job["cache_dir"]), layout)
    except CacheError as exc:
        for component in components:
            name = component.name
            events.emit("error", component=name, message=f"component {name}: {exc}")
        return
    context = _Context(
        cache=cache,
        compiler=_Compiler(layout),
        events=events,
        preinit=Preinit(os.environ, lambda text: events.emit("warning", message=text)),
        timeout_s=float(job.get("timeout_s", DEFAULT_TIMEOUT_S)),
        memory_mb=int(job.get("memory_mb", DEFAULT_MEMORY_MB)),
    )
    for component in components:
        _one(context, component)


def _one(context: _Context, job: _Job) -> None:
    events, name, path = context.events, job.name, job.path
    try:
        size = os.stat(path).st_size
        events.emit("start", component=name, bytes=size)
        data = Path(path).read_bytes()
    except OSError as exc:
        events.emit(
            "error", component=name, message=f"component {name}: cannot read {path}: {exc.strerror}"
        )
        return
    problem = header_problem(data)
    if problem:
        events.emit("error", component=name, message=f"component {name}: {path} {problem}")
        return
    plan = context.preinit.plan(data, job.pre_initialize)
    key = context.cache.key(data, plan.inputs)
    entry = context.cache.lookup(key)
    if entry is not None:
        # A snapshot's outcome is the entry's; otherwise the plan says why there is none.
        preinit = entry.preinit if plan.inputs else plan.note
        _report(events, "hit", name, entry, key=key, preinit=preinit)
        return
    extra = {"problem": context.cache.last_problem} if context.cache.last_problem else {}
    context.compiler.prepare()
    if plan.inputs:
        _build_snapshot(context, job, data, key, extra)
    else:
        _build(context, job, (data, data), key=key, preinit=plan.note, extra=extra)


def _build_snapshot(
    context: _Context, job: _Job, data: bytes, key: str, extra: dict[str, str]
) -> None:
    """Pre-initialise ``data`` with Wizer, then compile the snapshot (or, failing, ``data``)."""
    context.events.emit("preinit", component=job.name)
    shot = context.preinit.snapshot(
        data,
        timeout_s=context.timeout_s * SNAPSHOT_TIME_SHARE,
        memory_bytes=context.memory_mb << 20,
    )
    if shot.wasm:
        _build(context, job, (shot.wasm, data), key=key, preinit=PREINITIALIZED, extra=extra)
        return
    if not shot.lasting:
        # A kill at a limit depends on the machine's load: keep the original
        # under its own key, so the next compile tries the snapshot again.
        key = context.cache.key(data)
    _build(context, job, (data, data), key=key, preinit=SKIPPED + shot.reason, extra=extra)


def _build(
    context: _Context,
    job: _Job,
    modules: tuple[bytes, bytes],
    *,
    key: str,
    preinit: str,
    extra: dict[str, str],
) -> None:
    """Compile ``modules[0]`` (falling back to the original ``modules[1]``), store, report."""
    events, name, path = context.events, job.name, job.path
    wasm, original = modules
    events.emit("compiling", component=name, **extra)
    started = time.monotonic()
    serialized, reason = context.compiler.compile(wasm)
    if reason and wasm is not original:
        preinit = f"{SKIPPED}wasmtime refused the snapshot: {reason}"
        serialized, reason = context.compiler.compile(original)
    seconds = time.monotonic() - started
    if reason:
        events.emit("error", component=name, message=f"component {name}: {path}: {reason}")
        return
    try:
        entry = context.cache.store(key, serialized, source=path, preinit=preinit)
    except CacheError as exc:
        events.emit("error", component=name, message=f"component {name}: {exc}")
        return
    more = {"seconds": round(seconds, 3), **extra}
    _report(events, "compiled", name, entry, key=key, preinit=preinit, **more)


def _report(
    events: _Events, kind: str, name: str, entry: CacheEntry, *, key: str, preinit: str, **more: Any
) -> None:
    fields: dict[str, Any] = {"cwasm": str(entry.path), "digest": entry.digest, "key": key}
    if preinit:
        fields["preinit"] = preinit
    events.emit(kind, component=name, **fields, **more)


def _parse_job(raw: bytes) -> dict[str, Any]:
    """The job document, or ValueError saying what is wrong with it."""
    job = json.loads(raw)
    if not isinstance(job, dict) or not isinstance(job.get("cache_dir"), str):
        raise ValueError("the job needs a string 'cache_dir'")
    components = job.get("components")
    if not isinstance(components, list) or not all(
        isinstance(c, dict)
        and isinstance(c.get("name"), str)
        and isinstance(c.get("path"), str)
        and isinstance(c.get("pre_initialize", True), bool)
        for c in components
    ):
        raise ValueError(
            "the job needs 'components': a list of objects with name, path "
            "and optionally pre_initialize (a boolean)"
        )
    layout = job.get("memory_layout", _FULL)
    if not (
        isinstance(layout, list)
        and len(layout) == 2
        and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in layout)
    ):
        raise ValueError("the job's 'memory_layout' must be [reservation bytes, guard bytes]")
    for limit in ("timeout_s", "memory_mb"):
        value = job.get(limit, 1)
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise ValueError(f"the job's {limit!r} must be a positive number")
    return job


def _die_with_parent(parent_pid: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    # The parent may have died before prctl: then no signal would come.
    if os.getppid() != parent_pid:
        os._exit(EX_OK)


def main() -> int:
    """Read the job from stdin, report on stdout; exit 0 (2 for a bad job)."""
    try:
        job = _parse_job(sys.stdin.buffer.read())
    except ValueError as exc:
        print(f"rusmd compile child: bad job on stdin: {exc}", file=sys.stderr)
        return EX_USAGE
    if isinstance(job.get("parent_pid"), int):
        _die_with_parent(job["parent_pid"])
    os.nice(NICE_INCREMENT)
    events = _Events()
    run_job(job, events)
    events.emit("done")
    return EX_OK


if __name__ == "__main__":
    sys.exit(main())
