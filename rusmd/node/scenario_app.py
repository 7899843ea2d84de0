"""The scenario app: the guests and the manifest the benchmark scenarios drive.

Runs in: the ``rusmd bench`` command's own process (it writes the app
and starts a daemon on it); the node endpoint reads only the names
(``COMPONENTS``, the routes) to tell whether a running node has them.

Every guest but one is a few lines of WAT compiled at run time, so
those scenarios measure the host, not a guest's libc. The exception is
``sc_kv``: it is the C guest of ``python -m bench http``'s ``kv``
workload, ``guests/kv_get.c`` (shipped in the package, ``C_GUESTS``),
so kv-storm measures what a user's C handler costs (libc, a route
parameter, a JSON answer) and the same thing its counterpart does. This
layer cannot load the builder (``rusmd.guest`` comes later): the caller
compiles it (``rusmd.guest.module_cache``, which keeps the module
between runs) and gives ``write_app`` the module. The components, and
which scenario uses each:

=================  ==========================================  ==================
component          what it does                                scenario
=================  ==========================================  ==================
``sc_quick``       ``run`` returns at once (exit ``normal``)   spawn-storm
``sc_spawner``     spawns ``sc_quick`` linked, trapping exits, spawn-storm
                   ``SPAWN_WINDOW`` at a time: another as each
                   one's ``EXIT`` comes, for as long as it runs
``sc_pong``        resident; replies ``P`` to every call       ping-pong
``sc_ping``        HTTP action: ``PING_TRIPS`` calls to        ping-pong
                   ``sc_pong``, each timed on the WASI
                   monotonic clock; answers its own pid and
                   the times (little-endian i64s)
``sc_sup``         ``rusm.supervise``: one_for_one, the        fault-recovery
                   permanent child ``sc_crasher``, an
                   intensity it never reaches; then waits
``sc_crasher``     ``run`` exits 1 at once (``crashed``)       fault-recovery
``sc_spin``        ``run`` loops forever (a big CPU budget)    fairness
``sc_http``        HTTP action: ``hello world`` (inline path)  http-throughput, fairness
``sc_echo``        WebSocket: each message back as it came     ws-echo
``sc_sse``         SSE action: ``BURST_EVENTS`` events, then   sse-fanout
                   the stream ends
``sc_kv``          HTTP action ``get`` (C, ``kv_get.c``):      kv-storm
                   one ``kv_get`` of the route parameter
                   ``key`` in the bucket ``bench``, answered
                   as JSON (the driver writes ``KV_VALUE``
                   under ``KV_KEY`` first)
=================  ==========================================  ==================

spawn-storm and fault-recovery run in the worker, as ``python -m bench
actors`` measures them: the driver starts ``sc_spawner`` or ``sc_sup``
and reads the workers' own counters (spawns, exits by reason).
"""

from __future__ import annotations

import json
import shutil
import struct
from collections.abc import Mapping
from pathlib import Path

# Round trips one ``GET /sc/ping`` makes and times; its answer carries
# each one's ns, so it stays a few hundred bytes.
PING_TRIPS = 100
PING_ANSWER_BYTES = 8 * (PING_TRIPS + 1)
# Events one ``GET /sc/burst`` stream carries before it ends: as python
# -m bench http's one SSE stream.
BURST_EVENTS = 20_000
# Each event's data, as python -m bench http's SSE stream sends.
SSE_DATA = b"0123456789abcdef"
# Children of sc_spawner alive at once: enough that the worker always
# has one to run while the spawner waits for an exit, far below a
# worker's process limit.
SPAWN_WINDOW = 100
# The spinner's CPU budget (ms): a little longer than the longest run
# (MAX_SECONDS), so the budget never ends a spinner mid-run (the driver
# kills them after) and one left behind by a driver that died spins no
# longer than that. sc_spawner and sc_sup get the same budget: they
# run for the whole run too.
SPIN_CPU_MS = 620_000
# sc_sup's intensity: restarts within 1 s it allows before it gives up,
# as python -m bench actors' supervisor (no worker restarts that many).
SUP_INTENSITY = 1_000_000

SCENARIO_NAMES = (
    "spawn-storm",
    "ping-pong",
    "fault-recovery",
    "fairness",
    "http-throughput",
    "ws-echo",
    "sse-fanout",
    "kv-storm",
)
"""Every scenario's name (``rusmd.node.scenario_drivers.SCENARIOS`` has them, in this order);
here so the command line can list them without loading the drivers."""
# The longest a scenario runs: a run from a page or a script must end by itself.
MAX_SECONDS = 600.0
DEFAULT_SECONDS = 5.0

ROUTES = {
    ("http", "sc_http", "hello"): "/sc/hello",
    ("http", "sc_ping", "ping"): "/sc/ping",
    ("http", "sc_kv", "get"): "/sc/kv/:key",
    ("sse", "sc_sse", "burst"): "/sc/burst",
}
"""(protocol, component, action) → the path ``rusmd bench`` routes it on."""

_RESPOND = '(import "rusm" "respond" (func $respond (param i32 i32 i32 i32 i32) (result i32)))'

QUICK_WAT = '(module (memory (export "memory") 1) (func (export "run")))'

SPIN_WAT = '(module (memory (export "memory") 1) (func (export "run") (loop $spin (br $spin))))'

# Header at 0 (32 bytes); kind 1 is EXIT. A spawn refused (the worker at
# its process limit) is tried again after 1 ms, so the window never
# shrinks to nothing.
SPAWNER_WAT = f"""(module
  (import "rusm" "trap_exit" (func $trap_exit (param i32) (result i32)))
  (import "rusm" "spawn_link" (func $spawn_link (param i32 i32) (result i64)))
  (import "rusm" "recv" (func $recv (param i32 i32 i32 i32) (result i32)))
  (import "rusm" "sleep" (func $sleep (param i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 256) "sc_quick")
  (func $child
    (loop $again
      (if (i64.lt_s (call $spawn_link (i32.const 256) (i32.const 8)) (i64.const 0))
        (then (drop (call $sleep (i32.const 1))) (br $again)))))
  (func (export "run")
    (local $i i32)
    (drop (call $trap_exit (i32.const 1)))
    (loop $fill
      (call $child)
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $fill (i32.lt_u (local.get $i) (i32.const {SPAWN_WINDOW}))))
    (loop $serve
      (if (i32.ge_s (call $recv (i32.const 0) (i32.const 64) (i32.const 64) (i32.const -1))
                    (i32.const 0))
        (then (if (i32.eq (i32.load (i32.const 0)) (i32.const 1)) (then (call $child)))))
      (br $serve))))"""

CRASHER_WAT = """(module
  (import "rusm" "exit" (func $exit (param i32)))
  (func (export "run") (call $exit (i32.const 1))))"""

SUP_SPEC = (
    f'{{"strategy":"one_for_one","intensity":{SUP_INTENSITY},"period_s":1,'
    '"children":[{"component":"sc_crasher","restart":"permanent","shutdown_ms":"brutal_kill"}]}'
)
"""sc_sup's supervisor, as python -m bench actors' (its child's name aside)."""
_SUP_SPEC_WAT = SUP_SPEC.replace('"', '\\"')
SUP_WAT = f"""(module
  (import "rusm" "supervise" (func $supervise (param i32 i32) (result i64)))
  (import "rusm" "recv" (func $recv (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 1024) "{_SUP_SPEC_WAT}")
  (func (export "run")
    (drop (call $supervise (i32.const 1024) (i32.const {len(SUP_SPEC)})))
    (drop (call $recv (i32.const 0) (i32.const 64) (i32.const 64) (i32.const -1)))))"""

# Header at 0 (32 bytes), payload at 64; kind 3 is CALL: reply "P".
PONG_WAT = """(module
  (import "rusm" "recv" (func $recv (param i32 i32 i32 i32) (result i32)))
  (import "rusm" "reply" (func $reply (param i64 i64 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 320) "P")
  (func (export "run")
    (loop $serve
      (if (i32.ge_s (call $recv (i32.const 0) (i32.const 64) (i32.const 256) (i32.const -1))
                    (i32.const 0))
        (then
          (if (i32.eq (i32.load (i32.const 0)) (i32.const 3))
            (then
              (drop (call $reply (i64.load (i32.const 8)) (i64.load (i32.const 16))
                                 (i32.const 320) (i32.const 1)))))))
      (br $serve))))"""

# The answer at 1024: its own pid, then each round trip's ns, as i64s.
# A round trip is timed as python -m bench actors' guest times one:
# the monotonic clock read before rusm.call and after it returns. The
# call waits forever (-1), as that guest's (RUSM_FOREVER): a timeout
# arms and cancels a loop timer a call, about 7 µs of a 60 µs round
# trip here. sc_pong answers every call, and a call to a process that
# is gone returns at once (NOPROC); the run's watchdog bounds the rest.
PING_WAT = f"""(module
  (import "wasi_snapshot_preview1" "clock_time_get"
    (func $clock (param i32 i64 i32) (result i32)))
  (import "rusm" "self" (func $self (result i64)))
  (import "rusm" "whereis" (func $whereis (param i32 i32) (result i64)))
  (import "rusm" "call" (func $call (param i64 i32 i32 i32 i32 i32) (result i32)))
  {_RESPOND}
  (memory (export "memory") 1)
  (data (i32.const 256) "sc_pong")
  (data (i32.const 264) "p")
  (data (i32.const 272) "sc_pong is not running")
  (data (i32.const 304) "a call to sc_pong failed")
  (func $now (result i64)
    (drop (call $clock (i32.const 1) (i64.const 1) (i32.const 528)))
    (i64.load (i32.const 528)))
  (func (export "ping")
    (local $pong i64) (local $i i32) (local $began i64)
    (local.set $pong (call $whereis (i32.const 256) (i32.const 7)))
    (if (i64.le_s (local.get $pong) (i64.const 0))
      (then
        (drop (call $respond (i32.const 503) (i32.const 0) (i32.const 0)
                             (i32.const 272) (i32.const 22)))
        (return)))
    (i64.store (i32.const 1024) (call $self))
    (loop $trip
      (local.set $began (call $now))
      (if (i32.lt_s (call $call (local.get $pong) (i32.const 264) (i32.const 1)
                                (i32.const 512) (i32.const 16) (i32.const -1))
                    (i32.const 0))
        (then
          (drop (call $respond (i32.const 502) (i32.const 0) (i32.const 0)
                               (i32.const 304) (i32.const 24)))
          (return)))
      (i64.store (i32.add (i32.const 1032) (i32.shl (local.get $i) (i32.const 3)))
                 (i64.sub (call $now) (local.get $began)))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $trip (i32.lt_u (local.get $i) (i32.const {PING_TRIPS}))))
    (drop (call $respond (i32.const 200) (i32.const 0) (i32.const 0)
                         (i32.const 1024) (i32.const {PING_ANSWER_BYTES})))))"""


def ping_answer(body: bytes) -> tuple[int, list[int]]:
    """``GET /sc/ping``'s answer: the handler's pid and each round trip's ns.

    Raises:
        ValueError: ``body`` is not ``PING_ANSWER_BYTES`` long (not sc_ping's answer).
    """
    if len(body) != PING_ANSWER_BYTES:
        raise ValueError(f"sc_ping answered {len(body)} bytes, not {PING_ANSWER_BYTES}")
    pid, *trips = struct.unpack(f"<{PING_TRIPS + 1}q", body)
    return pid, trips


HTTP_WAT = f"""(module
  {_RESPOND}
  (memory (export "memory") 1)
  (data (i32.const 256) "hello world")
  (func (export "hello")
    (drop (call $respond (i32.const 200) (i32.const 0) (i32.const 0)
                         (i32.const 256) (i32.const 11)))))"""

# FRAME (kind 5) goes back with its type (the header's reason, at 4);
# CLOSED (kind 6) ends the process.
ECHO_WAT = """(module
  (import "rusm" "recv" (func $recv (param i32 i32 i32 i32) (result i32)))
  (import "rusm" "ws_send" (func $ws_send (param i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (func (export "run")
    (local $n i32)
    (loop $serve
      (local.set $n (call $recv (i32.const 0) (i32.const 1024) (i32.const 65536) (i32.const -1)))
      (if (i32.eq (i32.load (i32.const 0)) (i32.const 6)) (then (return)))
      (if (i32.and (i32.ge_s (local.get $n) (i32.const 0))
                   (i32.eq (i32.load (i32.const 0)) (i32.const 5)))
        (then
          (drop (call $ws_send (i32.load (i32.const 4)) (i32.const 1024) (local.get $n)))))
      (br $serve))))"""

SSE_WAT = f"""(module
  (import "rusm" "sse_event" (func $event (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 256) "{SSE_DATA.decode()}")
  (func (export "burst")
    (local $i i32)
    (loop $next
      (if (i32.lt_s (call $event (i32.const 0) (i32.const 0) (i32.const 256)
                                 (i32.const {len(SSE_DATA)}))
                    (i32.const 0))
        (then (return)))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $next (i32.lt_u (local.get $i) (i32.const {BURST_EVENTS}))))))"""

KV_BUCKET = "bench"
"""The bucket sc_kv reads (``kv_get.c``'s ``BUCKET``)."""
KV_KEY = "session-7f3a9c"
KV_VALUE = json.dumps(
    {
        "session": KV_KEY,
        "user": 4217,
        "roles": ["reader", "writer"],
        "created_at": "2026-01-01T00:00:00Z",
        "expires_at": "2026-01-02T00:00:00Z",
        "csrf": "b4c9f0a1d2e3f4a5b6c7d8e9f0a1b2c3",
        "theme": "dark",
    },
    separators=(",", ":"),
).encode()
"""What sc_kv reads: a JSON document of about 200 bytes under ``KV_KEY``;
``python -m bench http``'s kv workload stores and reads these same ones."""
KV_VALUE_BYTES = len(KV_VALUE)
KV_SOURCE = Path(__file__).resolve().parent / "guests" / "kv_get.c"
C_GUESTS = {"sc_kv": KV_SOURCE}
"""Component → its C source, shipped in the package; compiled by the caller of ``write_app``."""


def request_path(route: str) -> str:
    """The path a scenario requests on ``route``: ``KV_KEY`` for its ``:key`` parameter."""
    return route.replace(":key", KV_KEY)


KV_PATH = request_path(ROUTES[("http", "sc_kv", "get")])
"""What kv-storm requests: sc_kv's route with ``KV_KEY`` as the parameter."""

GUESTS = {
    "sc_quick": QUICK_WAT,
    "sc_spawner": SPAWNER_WAT,
    "sc_pong": PONG_WAT,
    "sc_ping": PING_WAT,
    "sc_sup": SUP_WAT,
    "sc_crasher": CRASHER_WAT,
    "sc_spin": SPIN_WAT,
    "sc_http": HTTP_WAT,
    "sc_echo": ECHO_WAT,
    "sc_sse": SSE_WAT,
}
"""Component name → its WAT."""

COMPONENTS = (*GUESTS, *C_GUESTS)


def manifest(node_port: int, http_port: int, sse_port: int, ws_port: int) -> str:
    """The scenario app's ``rusm.toml`` on these loopback ports."""
    routes = {protocol: "" for protocol in ("http", "sse")}
    for (protocol, component, action), path in ROUTES.items():
        routes[protocol] += f'"GET {path}" = "{component}#{action}"\n'
    return (
        f'[node]\nlisten = "127.0.0.1:{node_port}"\nstore = "store"\n'
        '[log]\nlevel = "warn"\n'
        f'[[serve]]\nprotocol = "http"\nlisten = "127.0.0.1:{http_port}"\n'
        f"[serve.routes]\n{routes['http']}"
        f'[[serve]]\nprotocol = "sse"\nlisten = "127.0.0.1:{sse_port}"\n'
        f"[serve.routes]\n{routes['sse']}"
        f'[[serve]]\nprotocol = "ws"\nlisten = "127.0.0.1:{ws_port}"\nname = "sc_echo"\n'
        f"[capabilities.sc_spin]\nmax-cpu-ms = {SPIN_CPU_MS}\n"
        "[capabilities.sc_store]\nallow-storage = true\n"
        f"[capabilities.sc_boss]\nallow-spawn = true\nmax-cpu-ms = {SPIN_CPU_MS}\n"
        "[components.sc_quick]\n"
        '[components.sc_spawner]\ncapability = "sc_boss"\n'
        "[components.sc_pong]\nresident = true\n"
        "[components.sc_ping]\n"
        '[components.sc_sup]\ncapability = "sc_boss"\n'
        "[components.sc_crasher]\n"
        '[components.sc_spin]\ncapability = "sc_spin"\n'
        "[components.sc_http]\n[components.sc_echo]\n[components.sc_sse]\n"
        '[components.sc_kv]\ncapability = "sc_store"\n'
    )


def write_app(
    directory: Path, ports: tuple[int, int, int, int], c_modules: Mapping[str, Path]
) -> Path:
    """Write the app (``wasm/*.wasm`` and ``rusm.toml``) into ``directory``; its manifest.

    Args:
        directory: Where the app goes (created if missing).
        ports: The node endpoint's, then the HTTP, SSE and WebSocket listeners'.
        c_modules: The compiled module of each of ``C_GUESTS``, by component
            (``rusmd.guest.module_cache.build_all(C_GUESTS)`` gives them).

    Raises:
        ValueError: ``c_modules`` lacks one of ``C_GUESTS`` (named).
    """
    missing = sorted(set(C_GUESTS) - set(c_modules))
    if missing:
        raise ValueError(f"no compiled module for {', '.join(missing)} (C_GUESTS)")
    # wasmtime only here: the endpoint imports this module for its names
    # and must not load the wasm engine for them.
    import wasmtime

    wasm = directory / "wasm"
    wasm.mkdir(parents=True, exist_ok=True)
    for name, text in GUESTS.items():
        (wasm / f"{name}.wasm").write_bytes(wasmtime.wat2wasm(text))
    for name in C_GUESTS:
        shutil.copyfile(c_modules[name], wasm / f"{name}.wasm")
    path = directory / "rusm.toml"
    path.write_text(manifest(*ports))
    return path
