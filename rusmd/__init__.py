"""rusmd: the rusm daemon.

Runs in: main (the package itself does nothing at import time).

The OS processes: the *main process* (``main``) loads the manifest, forks
the workers and supervises them, and answers ``rusmctl`` on the control
socket; each *worker* (``worker``) runs one event loop that serves the
listeners and hosts many wasm *processes* (``wasm``, ``actors``); a
*compile child* turns components into AOT images; the *node endpoint*
(``node``) is a child that serves the dashboard and ``/metrics``. Every module's
docstring says which of them it runs in.

The layers, lowest first. A module imports only from its own package and
from the packages listed before it; ``tests/unit/test_layers.py`` reads
this list and fails on an import from a later package into an earlier
one, and on any import cycle:

1. ``errors``       the one ``RusmError`` hierarchy and the exit codes.
2. ``abi``          the ABI's shared data: error codes, pids, exit reasons, limits.
3. ``supervision``  OTP supervisor semantics as pure decision logic.
4. ``config``       the manifest (``rusm.toml``): load, validate, resolve; routes.
5. ``log``          log records, levels, per-process line budgets, the writers.
6. ``meter``        request counters and latency histograms, shared by workers and the endpoint.
7. ``channel``      frames between the main process and the workers.
8. ``control``      the control socket: its protocol (shared with ``rusmctl``), its server.
9. ``store``        the node's durable key-value store (LMDB) and the ``kv`` command line.
10. ``actors``      mailboxes, links, monitors, names, timers, guest supervisors.
11. ``wasm``        the wasm host: engine, AOT cache, the ABI's calls, processes.
12. ``serving``     HTTP, SSE and WebSocket listeners on a worker's loop.
13. ``worker``      the forked worker: its loop, its channel to main, the mesh.
14. ``node``        the node endpoint: dashboard, attach stream, JSON API, ``/metrics``.
15. ``main``        the main process: fork, reap, signals, systemd, the commands.
16. ``guest``       guest authoring: ``rusmd build``, ``new`` and ``dev``; the C SDK's path.
17. ``cli``         the ``rusmd`` command line.
"""

__version__ = "0.1.0"
