"""Check a module's imports against its profile; build the linkers that grant them.

Runs in: worker.

Before a component can run, every import it declares is checked: ``rusm``
functions must exist in the ABI table with the documented signature and
be granted by the component's capability profile; WASI preview 1 is
provided; anything else is refused. A refusal names the component, the
import and the grant it needs, and no guest code has run.

One linker exists per set of grants, and it defines only the ``rusm``
functions those grants allow: even if the check were bypassed, an
ungranted import would find nothing to link against. The exception is
the functions checked per call (the kv functions): every linker has
them, and a caller without the grant gets DENIED from the call, as a
guest of a node without a store gets NOSTORE.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import wasmtime
from wasmtime import _ffi as ffi

from rusmd.config.model import Capability
from rusmd.errors import RusmError
from rusmd.wasm import capi
from rusmd.wasm.abi import (
    ABI_MODULE,
    ABI_VERSION,
    FUNCTIONS,
    INLINE_FUNCTIONS,
    WASI_BLOCKING,
    WASI_MODULE,
    Grant,
)

# Entry exports, in order of preference.
ENTRY_EXPORTS = ("run", "_start")


class LinkError(RusmError):
    """A module cannot run under its profile; the message says why."""


@dataclass(frozen=True)
class ModuleShape:
    """What linking learned about a module.

    Attributes:
        entry: The export a process runs (``run`` or ``_start``).
        entry_results: How many i32 results the entry returns (0 or 1).
        uses_wasi: True if it imports WASI preview 1 (it then gets a WASI context).
        rusm_imports: The ``rusm`` functions it imports.
        has_memory: True if it exports ``memory``.
        inline: True if it imports nothing that may wait, so a request
            handler of it may run on the worker's I/O thread.
        fiber: True unless it imports a WASI call that blocks its thread
            (``WASI_BLOCKING``): its processes run as fibers on the loop
            thread, else each on a guest thread.
        has_initialize: True if it exports ``_initialize`` (a WASI reactor),
            called on each fresh instance before an action or ``run``.
        initial_memory_bytes: Its exported memory's initial size (0 without
            one): for a pre-initialised module, the stack, data and heap
            its start-up left.
    """

    entry: str
    entry_results: int
    uses_wasi: bool
    rusm_imports: tuple[str, ...]
    has_memory: bool
    inline: bool = False
    has_initialize: bool = False
    fiber: bool = False
    initial_memory_bytes: int = 0


def takes_pointers(name: str) -> bool:
    """True if ``rusm.<name>`` takes (ptr, len) arguments into guest memory."""
    return any(param.endswith(("ptr", "len")) for param, _ in FUNCTIONS[name].params)


def action_results(component: str, module: wasmtime.Module, name: str) -> int | str:
    """Results of export ``name`` (0 or 1), or why it cannot be an action.

    An action is an exported function with no parameters returning
    nothing or one i32 (``docs/abi.md``, "Serving").
    """
    kind = next((e.type for e in module.exports if e.name == name), None)
    if not isinstance(kind, wasmtime.FuncType):
        return f"component {component} exports no function '{name}'"
    results = [str(t) for t in kind.results]
    if list(kind.params) or results not in ([], ["i32"]):
        return (
            f"component {component}: action '{name}' must take no parameters and "
            "return nothing or one i32"
        )
    return len(results)


def entrypoint_results(
    component: str, module: wasmtime.Module, name: str, params: list[str]
) -> int | str:
    """Results of entrypoint ``name`` (0 or 1) taking ``params``, or why it cannot run.

    An ad-hoc process's entrypoint (``docs/abi.md``, "Ad-hoc processes")
    takes exactly the wasm types its launch spec's arguments arrive as and
    returns nothing or one i32 status.
    """
    kind = next((e.type for e in module.exports if e.name == name), None)
    if not isinstance(kind, wasmtime.FuncType):
        exported = sorted(e.name for e in module.exports if isinstance(e.type, wasmtime.FuncType))
        return (
            f"{component} exports no function '{name}' "
            f"(its functions: {', '.join(exported) or 'none'})"
        )
    actual = [str(t) for t in kind.params]
    results = [str(t) for t in kind.results]
    if actual != params or results not in ([], ["i32"]):
        return (
            f"{component}: entrypoint '{name}' is {_signature(actual, results)}; the spec's "
            f"params need ({', '.join(params)}) -> () or -> (i32)"
        )
    return len(results)


def granted(capability: Capability) -> frozenset[Grant]:
    """The grants a profile gives, as ABI grant names."""
    grants = {Grant.ALWAYS}
    if capability.allow_network:
        grants.add(Grant.NETWORK)
    if capability.allow_spawn:
        grants.add(Grant.SPAWN)
    if capability.allow_process_control:
        grants.add(Grant.PROCESS_CONTROL)
    if capability.allow_storage:
        grants.add(Grant.STORAGE)
    return frozenset(grants)


def check_module(
    component: str,
    module: wasmtime.Module,
    grants: frozenset[Grant],
    entry_exports: tuple[str, ...] = ENTRY_EXPORTS,
) -> ModuleShape:
    """Check imports and exports; return the module's shape.

    ``entry_exports`` are the exports that may be its entry, in order of
    preference; a module launched ad hoc names its entrypoint instead
    (``entrypoint_results`` checks it), so it passes none.

    Raises:
        LinkError: An unknown, mistyped or ungranted import, or no entry export.
    """
    uses_wasi = False
    waits = False
    wasi_blocks = False
    rusm_imports: list[str] = []
    for item in module.imports:
        where = f"{item.module}.{item.name}"
        if item.module == WASI_MODULE:
            if not isinstance(item.type, wasmtime.FuncType):
                raise LinkError(f"component {component} imports {where}, which is not a function")
            uses_wasi = True
            wasi_blocks = wasi_blocks or item.name in WASI_BLOCKING
            waits = waits or wasi_blocks
            continue
        if item.module != ABI_MODULE:
            raise LinkError(
                f"component {component} imports {where}, which rusm does not provide "
                f"(imports come from '{ABI_MODULE}' and '{WASI_MODULE}')"
            )
        name = item.name or ""
        function = FUNCTIONS.get(name)
        if function is None:
            raise LinkError(
                f"component {component} imports unknown function {ABI_MODULE}.{name} "
                f"(ABI version {ABI_VERSION})"
            )
        wanted = _signature([t for _, t in function.params], list(function.results))
        if not isinstance(item.type, wasmtime.FuncType):
            raise LinkError(f"component {component} imports {where} as a non-function")
        actual = _signature([str(t) for t in item.type.params], [str(t) for t in item.type.results])
        if actual != wanted:
            raise LinkError(
                f"component {component} imports {where} as {actual}; "
                f"ABI version {ABI_VERSION} defines it as {wanted}"
            )
        if function.grant not in grants and not function.checked_per_call:
            raise LinkError(
                f"capability denied: {component} imports {where}, which needs {function.grant}"
            )
        rusm_imports.append(name)
    entry, results, has_memory, has_initialize = _entry(component, module, entry_exports)
    fiber = not wasi_blocks
    waits = waits or any(name not in INLINE_FUNCTIONS for name in rusm_imports)
    reading = [name for name in rusm_imports if takes_pointers(name)]
    if reading and not has_memory:
        raise LinkError(
            f"component {component} imports {ABI_MODULE}.{reading[0]} but exports no 'memory' "
            "for it to read"
        )
    return ModuleShape(
        entry,
        results,
        uses_wasi,
        tuple(rusm_imports),
        has_memory,
        inline=not waits,
        has_initialize=has_initialize,
        fiber=fiber,
        initial_memory_bytes=_initial_memory_bytes(module),
    )


def _entry(
    component: str, module: wasmtime.Module, entry_exports: tuple[str, ...]
) -> tuple[str, int, bool, bool]:
    """The entry export ("" for none: a handler-only module) and its shape."""
    exports = {item.name: item.type for item in module.exports}
    has_memory = isinstance(exports.get("memory"), wasmtime.MemoryType)
    initialize = exports.get("_initialize")
    has_initialize = isinstance(initialize, wasmtime.FuncType)
    if isinstance(initialize, wasmtime.FuncType) and (
        list(initialize.params) or list(initialize.results)
    ):
        raise LinkError(f"component {component} exports _initialize with parameters or results")
    for name in entry_exports:
        kind = exports.get(name)
        if isinstance(kind, wasmtime.FuncType):
            params = [str(t) for t in kind.params]
            results = [str(t) for t in kind.results]
            if params or results not in ([], ["i32"]):
                raise LinkError(
                    f"component {component} exports {name} as {_signature(params, results)}; "
                    "an entry takes no parameters and returns nothing or one i32"
                )
            return name, len(results), has_memory, has_initialize
    return "", 0, has_memory, has_initialize


def _initial_memory_bytes(module: wasmtime.Module) -> int:
    """The initial size of the module's exported ``memory`` in bytes (0 without one)."""
    kind = next((e.type for e in module.exports if e.name == "memory"), None)
    if not isinstance(kind, wasmtime.MemoryType):
        return 0
    return int(kind.limits.min) << kind.page_size_log2


def _signature(params: list[str], results: list[str]) -> str:
    return f"({', '.join(params)}) -> ({', '.join(results)})"


HostCallback = Any  # a ffi.wasmtime_func_unchecked_callback_t instance


class LinkerSet:
    """One linker per grant set, each defining WASI plus the granted ``rusm`` functions.

    Args:
        engine: The worker's engine.
        callbacks: The raw host callback for each ``rusm`` function name.
        async_callbacks: A fiber's linker's async functions, by name.
        fiber_callbacks: A fiber's linker's own synchronous callbacks, by
            name (for the others it has ``callbacks``').
    """

    def __init__(
        self,
        engine: wasmtime.Engine,
        callbacks: dict[str, HostCallback],
        async_callbacks: dict[str, Any] | None = None,
        fiber_callbacks: dict[str, HostCallback] | None = None,
    ) -> None:
        self.engine = engine
        self.callbacks = callbacks
        self.async_callbacks = async_callbacks or {}
        self.fiber_callbacks = fiber_callbacks or {}
        self._linkers: dict[tuple[frozenset[Grant], bool], wasmtime.Linker] = {}
        self._types: dict[str, wasmtime.FuncType] = {}

    def linker(self, grants: frozenset[Grant], *, fiber: bool = False) -> wasmtime.Linker:
        """The linker for ``grants`` (built once); with ``fiber``, its waiting
        functions are the async ones of ``async_callbacks``."""
        linker = self._linkers.get((grants, fiber))
        if linker is None:
            linker = self._linkers[grants, fiber] = self._build(grants, fiber)
        return linker

    def _build(self, grants: frozenset[Grant], fiber: bool = False) -> wasmtime.Linker:
        linker = wasmtime.Linker(self.engine)
        linker.define_wasi()
        module = ABI_MODULE.encode()
        for name, function in FUNCTIONS.items():
            if function.grant not in grants and not function.checked_per_call:
                continue
            func_type = self._type(name)
            encoded = name.encode()
            if fiber and name in self.async_callbacks:
                address = define_async(
                    linker, module, encoded, func_type, self.async_callbacks[name]
                )
                if address:
                    raise wasmtime.WasmtimeError._from_ptr(
                        ctypes.cast(address, ctypes.POINTER(ffi.wasmtime_error_t))
                    )
                continue
            callback = self.callbacks[name]
            if fiber:
                callback = self.fiber_callbacks.get(name, callback)
            error = ffi.wasmtime_linker_define_func_unchecked(
                linker.ptr(),
                module,
                len(module),
                encoded,
                len(encoded),
                func_type.ptr(),
                callback,
                None,
                _NO_FINALIZER,
            )
            if error:
                raise wasmtime.WasmtimeError._from_ptr(error)
        return linker

    def _type(self, name: str) -> wasmtime.FuncType:
        func_type = self._types.get(name)
        if func_type is None:
            function = FUNCTIONS[name]
            func_type = self._types[name] = wasmtime.FuncType(
                [_VALTYPES[t]() for _, t in function.params],
                [_VALTYPES[t]() for t in function.results],
            )
        return func_type


_VALTYPES: dict[str, Callable[[], wasmtime.ValType]] = {
    "i32": wasmtime.ValType.i32,
    "i64": wasmtime.ValType.i64,
    "f32": wasmtime.ValType.f32,
    "f64": wasmtime.ValType.f64,
}

# A NULL finalizer: the callbacks live as long as the worker's host.
_NO_FINALIZER: Any = ctypes.CFUNCTYPE(None, ctypes.c_void_p)(0)
# Bound raw (``capi.raw``), as the fibers' other async calls: it defines
# their async host functions (``fiber.AsyncCallback``).
_define_async = capi.raw("wasmtime_linker_define_async_func", ctypes.c_void_p)


def define_async(linker: Any, module: bytes, name: bytes, func_type: Any, callback: Any) -> Any:
    """Define ``module.name`` in ``linker`` as an async host function; the error pointer or 0."""
    return _define_async(
        ctypes.c_void_p(ctypes.cast(linker.ptr(), ctypes.c_void_p).value),
        module,
        ctypes.c_size_t(len(module)),
        name,
        ctypes.c_size_t(len(name)),
        ctypes.c_void_p(ctypes.cast(func_type.ptr(), ctypes.c_void_p).value),
        callback,
        None,
        None,
    )
