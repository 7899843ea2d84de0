"""wasmtime's C API, bound so that short calls keep the GIL.

Runs in: worker.

wasmtime-py loads the library with ``ctypes.cdll``: every call releases
the GIL and takes it back. That is right for calls that run guest code
(instantiation runs a start function; an export call runs the guest),
and costly for the many short bookkeeping calls around them (create a
store, set its limits, look up an export, read a memory's size): on a
busy worker each release invites a thread switch. The functions here are
the same symbols of the same library loaded with ``ctypes.PyDLL``, so
they run without dropping the GIL. Their argument and result types are
copied from wasmtime-py's own bindings.

Only functions that never run guest code and never block may be listed.
Also here: the small helpers over them that several modules share
(``pid_of``, ``export``).
"""

from __future__ import annotations

import ctypes
from typing import Any

from wasmtime import _bindings
from wasmtime import _ffi as ffi

_LIBRARY = ctypes.PyDLL(ffi.dll._name)


def _bind(name: str) -> Any:
    source = getattr(_bindings, f"_{name}")
    function = getattr(_LIBRARY, name)
    function.argtypes = source.argtypes
    function.restype = source.restype
    return function


def raw(name: str, restype: Any, *, release_gil: bool = False) -> Any:
    """A separate binding of ``name`` that converts none of its arguments.

    With argument types declared, ctypes runs each argument's
    ``from_param`` on every call; for a pointer type that is most of the
    call (~0.55 µs against ~0.16 µs without). A raw binding takes ctypes
    objects as they are: pointers, ``byref`` references, arrays, bytes for
    a ``const char *``, and ``c_size_t``/``c_uint64`` for integers. Never
    a bare ``int``: ctypes would pass it as a C ``int``.

    ``release_gil`` for the calls that run guest code (see ``host``). The
    binding is a new function object: ctypes shares one per symbol and
    library, and wasmtime-py's own calls rely on its declared types.
    """
    prototype = ctypes.CFUNCTYPE(restype) if release_gil else ctypes.PYFUNCTYPE(restype)
    return ctypes.cast(getattr(ffi.dll if release_gil else _LIBRARY, name), prototype)


store_new = _bind("wasmtime_store_new")
store_context = _bind("wasmtime_store_context")
store_limiter = _bind("wasmtime_store_limiter")
store_delete = _bind("wasmtime_store_delete")
store_epoch_deadline_callback = _bind("wasmtime_store_epoch_deadline_callback")
context_set_epoch_deadline = _bind("wasmtime_context_set_epoch_deadline")
context_get_data = _bind("wasmtime_context_get_data")
instance_export_get = _bind("wasmtime_instance_export_get")
trap_new = _bind("wasmtime_trap_new")
error_new = _bind("wasmtime_error_new")
engine_increment_epoch = _bind("wasmtime_engine_increment_epoch")


# A host function's arguments and results, as wasmtime passes them to an
# unchecked callback: an array of ``wasmtime_val_raw_t``, 16 bytes each.
# ``Values`` indexes them (``values[1].i32``); ``I32Args`` reads the i32 of
# value ``k`` as ``args[4 * k]``, without making an object per value (for
# the hottest calls). The longest ABI signature has 9 values.
MAX_VALUES = 9
Values = ffi.wasmtime_val_raw_t * MAX_VALUES
I32Args = ctypes.c_int32 * (4 * MAX_VALUES)
# The callback as rusm declares it: every pointer a plain integer (ctypes
# would make an object of each, ~0.15 µs a call). ``ctypes.cast`` it to
# ``ffi.wasmtime_func_unchecked_callback_t`` for the linker.
HostCallback = ctypes.CFUNCTYPE(
    ctypes.c_size_t, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t
)

# Raw (``raw``) bindings the inline path and the fibers share.
export_get_raw = raw("wasmtime_instance_export_get", ctypes.c_bool)
caller_context_raw = raw("wasmtime_caller_context", ctypes.POINTER(ffi.wasmtime_context_t))
# A NULL finalizer for a store's data (a pid: nothing to free).
NULL_FINALIZER: Any = ctypes.CFUNCTYPE(None, ctypes.c_void_p)(0)


def pid_of(context: Any) -> int:
    """The pid a store was created with (its user data)."""
    value: Any = context_get_data(context)
    return int(value or 0)


def export(context: Any, instance: Any, name: bytes) -> Any:
    """Export ``name`` of ``instance`` as a ``wasmtime_extern_t``, or None if it has none."""
    item = ffi.wasmtime_extern_t()
    if instance_export_get(context, ctypes.byref(instance), name, len(name), ctypes.byref(item)):
        return item
    return None


_VALUE_KINDS = {
    "i32": ffi.WASMTIME_I32.value,
    "i64": ffi.WASMTIME_I64.value,
    "f32": ffi.WASMTIME_F32.value,
    "f64": ffi.WASMTIME_F64.value,
}


def raw_arguments(arguments: tuple[tuple[str, int | float], ...]) -> Any:
    """An unchecked call's value array holding ``arguments`` ((wasm type, value) each).

    It has room for one result too: an unchecked call writes its results
    over its arguments.
    """
    values = (ffi.wasmtime_val_raw_t * max(1, len(arguments)))()
    for index, (kind, value) in enumerate(arguments):
        setattr(values[index], kind, value)
    return values


def typed_arguments(arguments: tuple[tuple[str, int | float], ...]) -> Any:
    """A checked (async) call's argument array for ``arguments``; None when there are none."""
    if not arguments:
        return None
    values = (ffi.wasmtime_val_t * len(arguments))()
    for index, (kind, value) in enumerate(arguments):
        values[index].kind = ctypes.c_uint8(_VALUE_KINDS[kind])
        setattr(values[index].of, kind, value)
    return values
