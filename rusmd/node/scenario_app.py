"""The scenario app: the guests (WAT) and the manifest the benchmark scenarios drive.

Runs in: the ``rusmd bench`` command's own process (it writes the app
and starts a daemon on it); the node endpoint reads only the names
(``COMPONENTS``, the routes) to tell whether a running node has them.

Every guest is a few lines of WAT compiled at run time, so the app
needs no build step and each scenario measures the host, not a guest's
libc. The components, and which scenario uses each:

===============  ============================================  ==================
component        what it does                                  scenario
===============  ============================================  ==================
``sc_quick``     ``run`` returns at once (exit ``normal``)     spawn-storm
``sc_pong``      resident; replies ``P`` to every call         ping-pong
``sc_ping``      HTTP action: 100 calls to ``sc_pong``, then   ping-pong
                 answers with its own pid
``sc_victim``    resident (same code as ``sc_pong``) with a    fault-recovery
                 restart intensity no benchmark exhausts
``sc_spin``      ``run`` loops forever (a big CPU budget)      fairness
``sc_http``      HTTP action: ``hello world`` (inline path)    http-throughput, fairness
``sc_echo``      WebSocket: each message back as it came       ws-echo
``sc_sse``       SSE action: ``BURST_EVENTS`` events, then     sse-fanout
                 the stream ends
``sc_kv``        HTTP action: one ``kv_set`` (waits for its    kv-storm
                 commit), then ``ok``
===============  ============================================  ==================
"""

from __future__ import annotations

from pathlib import Path

# Round trips one ``GET /sc/ping`` makes; the driver divides by it.
PING_TRIPS = 100
# Events one ``GET /sc/burst`` stream carries before it ends.
BURST_EVENTS = 100
# The spinner's CPU budget (ms): a little longer than the longest run
# (MAX_SECONDS), so the budget never ends a spinner mid-run (the driver
# kills them after) and one left behind by a driver that died spins no
# longer than that.
SPIN_CPU_MS = 620_000
# fault-recovery kills its resident as fast as it comes back: an
# intensity of 1,000 restarts a second (the most the manifest allows)
# keeps it from being quarantined at the rate one driver kills it.
VICTIM_INTENSITY = 1000

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
    ("http", "sc_kv", "kv"): "/sc/kv",
    ("sse", "sc_sse", "burst"): "/sc/burst",
}
"""(protocol, component, action) → the path ``rusmd bench`` routes it on."""

# Decimal digits of an i64 written to end at 240; returns where they start.
_ITOA = """
  (func $itoa (param $v i64) (result i32)
    (local $p i32)
    (local.set $p (i32.const 240))
    (loop $digit
      (local.set $p (i32.sub (local.get $p) (i32.const 1)))
      (i64.store8 (local.get $p)
        (i64.add (i64.const 48) (i64.rem_u (local.get $v) (i64.const 10))))
      (local.set $v (i64.div_u (local.get $v) (i64.const 10)))
      (br_if $digit (i64.ne (local.get $v) (i64.const 0))))
    (local.get $p))"""

_RESPOND = '(import "rusm" "respond" (func $respond (param i32 i32 i32 i32 i32) (result i32)))'

QUICK_WAT = '(module (memory (export "memory") 1) (func (export "run")))'

SPIN_WAT = '(module (memory (export "memory") 1) (func (export "run") (loop $spin (br $spin))))'

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

PING_WAT = f"""(module
  (import "rusm" "self" (func $self (result i64)))
  (import "rusm" "whereis" (func $whereis (param i32 i32) (result i64)))
  (import "rusm" "call" (func $call (param i64 i32 i32 i32 i32 i32) (result i32)))
  {_RESPOND}
  (memory (export "memory") 1)
  (data (i32.const 256) "sc_pong")
  (data (i32.const 264) "p")
  (data (i32.const 272) "sc_pong is not running")
  (data (i32.const 304) "a call to sc_pong failed")
  {_ITOA}
  (func (export "ping")
    (local $pong i64) (local $i i32) (local $p i32)
    (local.set $pong (call $whereis (i32.const 256) (i32.const 7)))
    (if (i64.le_s (local.get $pong) (i64.const 0))
      (then
        (drop (call $respond (i32.const 503) (i32.const 0) (i32.const 0)
                             (i32.const 272) (i32.const 22)))
        (return)))
    (loop $trip
      (if (i32.lt_s (call $call (local.get $pong) (i32.const 264) (i32.const 1)
                                (i32.const 512) (i32.const 16) (i32.const 5000))
                    (i32.const 0))
        (then
          (drop (call $respond (i32.const 502) (i32.const 0) (i32.const 0)
                               (i32.const 304) (i32.const 24)))
          (return)))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $trip (i32.lt_u (local.get $i) (i32.const {PING_TRIPS}))))
    (local.set $p (call $itoa (call $self)))
    (drop (call $respond (i32.const 200) (i32.const 0) (i32.const 0)
                         (local.get $p) (i32.sub (i32.const 240) (local.get $p))))))"""

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
  (data (i32.const 256) "tick")
  (func (export "burst")
    (local $i i32)
    (loop $next
      (if (i32.lt_s (call $event (i32.const 0) (i32.const 0) (i32.const 256) (i32.const 4))
                    (i32.const 0))
        (then (return)))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $next (i32.lt_u (local.get $i) (i32.const {BURST_EVENTS}))))))"""

KV_WAT = f"""(module
  (import "rusm" "kv_set" (func $set (param i32 i32 i32 i32 i32 i32) (result i32)))
  {_RESPOND}
  (memory (export "memory") 1)
  (data (i32.const 256) "bench")
  (data (i32.const 264) "storm")
  (data (i32.const 272) "ok")
  (data (i32.const 280) "kv_set failed")
  (data (i32.const 512) "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef")
  (func (export "kv")
    (if (i32.lt_s (call $set (i32.const 256) (i32.const 5) (i32.const 264) (i32.const 5)
                             (i32.const 512) (i32.const 64))
                  (i32.const 0))
      (then
        (drop (call $respond (i32.const 500) (i32.const 0) (i32.const 0)
                             (i32.const 280) (i32.const 13)))
        (return)))
    (drop (call $respond (i32.const 200) (i32.const 0) (i32.const 0)
                         (i32.const 272) (i32.const 2)))))"""

GUESTS = {
    "sc_quick": QUICK_WAT,
    "sc_pong": PONG_WAT,
    "sc_ping": PING_WAT,
    "sc_victim": PONG_WAT,
    "sc_spin": SPIN_WAT,
    "sc_http": HTTP_WAT,
    "sc_echo": ECHO_WAT,
    "sc_sse": SSE_WAT,
    "sc_kv": KV_WAT,
}
"""Component name → its WAT."""

COMPONENTS = tuple(GUESTS)


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
        "[components.sc_quick]\n"
        "[components.sc_pong]\nresident = true\n"
        "[components.sc_ping]\n"
        f"[components.sc_victim]\nresident = true\nintensity = {VICTIM_INTENSITY}\nperiod-s = 1\n"
        '[components.sc_spin]\ncapability = "sc_spin"\n'
        "[components.sc_http]\n[components.sc_echo]\n[components.sc_sse]\n"
        '[components.sc_kv]\ncapability = "sc_store"\n'
    )


def write_app(directory: Path, ports: tuple[int, int, int, int]) -> Path:
    """Write the app (``wasm/*.wasm`` and ``rusm.toml``) into ``directory``; its manifest."""
    # wasmtime only here: the endpoint imports this module for its names
    # and must not load the wasm engine for them.
    import wasmtime

    wasm = directory / "wasm"
    wasm.mkdir(parents=True, exist_ok=True)
    for name, text in GUESTS.items():
        (wasm / f"{name}.wasm").write_bytes(wasmtime.wat2wasm(text))
    path = directory / "rusm.toml"
    path.write_text(manifest(*ports))
    return path
