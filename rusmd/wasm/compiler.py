"""The compile child: turn untrusted wasm into cached ``.cwasm`` files, one at a time.

Runs in: the compile child, ``python -m rusmd.wasm.compiler``, a separate
OS process the main process starts (``rusmd.main.compile``) and kills
when a module takes too long or too much memory. Compiling is where
hostile input meets Cranelift, so it happens here, at nice +10, never in
the main process (which must not load wasmtime) nor in a worker.

Protocol. stdin carries one JSON job::

    {"cache_dir": "/var/cache/rusmd",
     "components": [{"name": "api", "path": "/etc/rusm/wasm/api.wasm"}],
     "parent_pid": 1234}

(``parent_pid`` is optional: when given, the child dies with that parent.)
For each component, in order, stdout gets JSON lines, each flushed:

- ``{"event": "start", "component", "bytes"}`` before the file is read;
- ``{"event": "compiling", "component"}`` on a cache miss, once the
  engine is ready and just before compiling (with ``"problem"`` when a bad
  cache entry was found and removed); the supervisor's per-module clock
  restarts here, so loading wasmtime never counts against a module;
- then exactly one of
  ``{"event": "hit", "component", "cwasm", "digest", "key"}``,
  ``{"event": "compiled", "component", "cwasm", "digest", "key", "seconds"}``
  (again with ``"problem"`` when it replaced a bad entry), or
  ``{"event": "error", "component", "message"}``;

and finally ``{"event": "done"}``. Exit status 0; a job that is not valid
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
from pathlib import Path
from typing import IO, Any

from rusmd.errors import EX_OK, EX_USAGE
from rusmd.wasm.artifacts import header_problem
from rusmd.wasm.cache import CacheError, CompileCache

# The compile child yields the CPU to workers serving requests.
NICE_INCREMENT = 10
# A wasmtime error is a chain of causes; one line of it is enough for a log.
MAX_MESSAGE_CHARS = 400
PR_SET_PDEATHSIG = 1
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

    def __init__(self) -> None:
        self._engine: Any = None

    def prepare(self) -> None:
        """Import wasmtime and build the engine (before the module's clock starts)."""
        if self._engine is None:
            # Imported here, on the first miss, on purpose: the engine module
            # loads wasmtime, which an all-hits run never needs.
            from rusmd.wasm.engine import compile_engine

            self._engine = compile_engine()

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


def run_job(job: dict[str, Any], events: _Events) -> None:
    """Compile or look up every component of ``job``, reporting each."""
    components = [(str(c["name"]), str(c["path"])) for c in job["components"]]
    try:
        cache = CompileCache(Path(job["cache_dir"]))
    except CacheError as exc:
        for name, _path in components:
            events.emit("error", component=name, message=f"component {name}: {exc}")
        return
    compiler = _Compiler()
    for name, path in components:
        _one(cache, compiler, events, name, path)


def _one(cache: CompileCache, compiler: _Compiler, events: _Events, name: str, path: str) -> None:
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
    key = cache.key(data)
    entry = cache.lookup(key)
    if entry is not None:
        events.emit("hit", component=name, cwasm=str(entry.path), digest=entry.digest, key=key)
        return
    extra = {"problem": cache.last_problem} if cache.last_problem else {}
    compiler.prepare()
    events.emit("compiling", component=name, **extra)
    started = time.monotonic()
    serialized, reason = compiler.compile(data)
    seconds = time.monotonic() - started
    if reason:
        events.emit("error", component=name, message=f"component {name}: {path}: {reason}")
        return
    try:
        entry = cache.store(key, serialized, source=path)
    except CacheError as exc:
        events.emit("error", component=name, message=f"component {name}: {exc}")
        return
    events.emit(
        "compiled",
        component=name,
        cwasm=str(entry.path),
        digest=entry.digest,
        key=key,
        seconds=round(seconds, 3),
        **extra,
    )


def _parse_job(raw: bytes) -> dict[str, Any]:
    """The job document, or ValueError saying what is wrong with it."""
    job = json.loads(raw)
    if not isinstance(job, dict) or not isinstance(job.get("cache_dir"), str):
        raise ValueError("the job needs a string 'cache_dir'")
    components = job.get("components")
    if not isinstance(components, list) or not all(
        isinstance(c, dict) and isinstance(c.get("name"), str) and isinstance(c.get("path"), str)
        for c in components
    ):
        raise ValueError("the job needs 'components': a list of objects with name and path")
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
