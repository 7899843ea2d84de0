"""The wasm host: engine, AOT cache, the ``rusm`` ABI, capabilities, processes.

Runs in: worker (every module that loads wasmtime), the compile child
(``compiler``, ``preinit``), and any process for the pure-data modules
(``settings``, ``abi``, ``artifacts``, ``cache``). The main process
imports only the pure-data modules and ``preinit``'s constants: it never
loads wasmtime.

The modules, lowest first: each imports only modules listed before it.

- ``abi``          the ABI's tables: functions, error codes, limits, pid layout.
- ``settings``     engine settings and version facts (part of the cache key).
- ``artifacts``    what a ``.cwasm`` file is and why one may be unusable.
- ``cache``        the AOT cache of compiled modules.
- ``preinit``      a reactor's start-up run once by Wizer, before compiling.
- ``capacity``     how many processes a worker can hold: address space, memory maps.
- ``engine``       wasmtime engines (the pooling allocator, its limits).
- ``compiler``     the compile child (``python -m rusmd.wasm.compiler``).
- ``capi``         wasmtime's C API bound to keep the GIL; ``pid_of``, ``export``.
- ``memory``       bounds-checked reads and writes of guest memory.
- ``runners``      guest threads, for processes whose module imports a blocking WASI call.
- ``linking``      a module's imports checked against its profile; the linkers.
- ``process``      the records: ``LoadedComponent``, ``Process``, ``ExitReport``.
- ``traps``        traps and errors: made for wasmtime, read back into exit reports.
- ``pids``         the pid serials the main process leases to the worker.
- ``exchange``     the request a guest serves, as the serving functions see it.
- ``components``   loading components' compiled code; WASI for their instances.
- ``inline``       the inline HTTP path: a handler run on the I/O thread.
- ``calls``        the actor host functions (messages, links, names, timers).
- ``serve_calls``  the serving host functions (request, respond, SSE, WebSocket).
- ``kv_calls``     the store's host functions.
- ``callbacks``    the C callback of every host function; the core functions.
- ``fiber``        one fiber's record; wasmtime's async C API, bound raw.
- ``fiber_callbacks`` the fibers' async and synchronous host callbacks; ``park``.
- ``fiber_recv``   ``rusm.recv`` on a fiber, and messages handed straight into it.
- ``fibers``       the scheduler: every process a fiber on the loop thread.
- ``fiber_calls``  the waiting actor and kv calls as a fiber makes them (it parks).
- ``fiber_writes`` the serving writes as a fiber makes them (parked while the client is slow).
- ``guest_threads`` a process on a guest thread (a blocking WASI import).
- ``epochs``       the epoch ticker and callback: CPU limits, a fiber's yield.
- ``process_table`` the process table and the processes' life: spawn, finish, kill.
- ``host``         ``WasmHost``: assembles the rest; loading and teardown.

``tests/unit/test_layers.py`` reads this list: every module of the
package is in it, and none imports one listed after it (imports inside
functions count), so the package is a one-way chain. The parts below
``host`` that need it (``calls``, ``kv_calls``, ``fibers``,
``fiber_calls``, ``callbacks``, ``inline``, ``guest_threads``) take it as
a ``Protocol`` of what they use; ``host`` is imported only from above
(the worker, serving).
"""
