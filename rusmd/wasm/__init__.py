"""The wasm host: engine, AOT cache, the ``rusm`` ABI, capabilities, processes.

Runs in: worker (``engine``, ``host``, ``linking``, ``memory``), the
compile child (``compiler``), and any process for the pure-data modules
(``settings``, ``abi``, ``artifacts``, ``cache``). The main process
imports only the pure-data modules: it never loads wasmtime.
"""
