"""The ``rusm`` host functions against hostile arguments, on a real in-process host.

Runs in: the test process, which plays a worker: a real ``WasmHost``
(real wasmtime, the pooling engine, guest threads, the epoch ticker)
with guests compiled through the real AOT cache (``conftest.Host``).
The daemon-level tests are in ``tests/integration/test_wasm_processes.py``;
this file drives many small generated guests, which would be slow
through a daemon.

Property: whatever (ptr, len) a guest hands a host function, the host
never reads outside ``[ptr, ptr + len)`` of the guest's own memory; an
out-of-range pair crashes that guest alone (exit reason crashed, "bad
pointer"), and processes around it keep running. The kv functions check
every pair before anything else, their per-call grant check included.
"""

from __future__ import annotations

import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from rusmd.abi import ErrorCode
from rusmd.wasm.abi import FUNCTIONS, Grant
from tests.inprocess.conftest import Host

PAGE = 65536
# Random cases per pointer-taking import; each is its own module.
CASES = 60

# Host functions taking (ptr, len) pairs: name → WAT for a call with the
# hostile pair as {p}/{n} (every other argument is harmless: pid 1 lives on
# no worker, timeouts are 0, other buffers are empty).
POINTER_CALLS = {
    "log": "(drop (call $f (i32.const 2) (i32.const {p}) (i32.const {n})))",
    "spawn": "(drop (call $f (i32.const {p}) (i32.const {n})))",
    "spawn_link": "(drop (call $f (i32.const {p}) (i32.const {n})))",
    "supervise": "(drop (call $f (i32.const {p}) (i32.const {n})))",
    "send": "(drop (call $f (i64.const 1) (i32.const {p}) (i32.const {n})))",
    "recv": "(drop (call $f (i32.const 0) (i32.const {p}) (i32.const {n}) (i32.const 0)))",
    "call": (
        "(drop (call $f (i64.const 1) (i32.const {p}) (i32.const {n})"
        " (i32.const 0) (i32.const 0) (i32.const 0)))"
    ),
    "reply": "(drop (call $f (i64.const 1) (i64.const 0) (i32.const {p}) (i32.const {n})))",
    "register": "(drop (call $f (i32.const {p}) (i32.const {n})))",
    "unregister": "(drop (call $f (i32.const {p}) (i32.const {n})))",
    "whereis": "(drop (call $f (i32.const {p}) (i32.const {n})))",
    "info": "(drop (call $f (i64.const 1) (i32.const {p}) (i32.const {n})))",
    "send_after": (
        "(drop (call $f (i64.const 1) (i32.const 1000) (i32.const {p}) (i32.const {n})))"
    ),
    "set_label": "(drop (call $f (i32.const {p}) (i32.const {n})))",
    # Serving functions check their ranges before anything else: outside a
    # request they still crash on a bad pointer (and return UNAVAILABLE on a
    # good one).
    "request": (
        "(drop (call $f (i32.const 3) (i32.const {p}) (i32.const {n}) (i32.const 0) (i32.const 0)))"
    ),
    "respond": (
        "(drop (call $f (i32.const 200) (i32.const {p}) (i32.const {n})"
        " (i32.const 0) (i32.const 0)))"
    ),
    "write": "(drop (call $f (i32.const {p}) (i32.const {n})))",
    "sse_event": "(drop (call $f (i32.const 0) (i32.const 0) (i32.const {p}) (i32.const {n})))",
    "ws_send": "(drop (call $f (i32.const 1) (i32.const {p}) (i32.const {n})))",
    "ws_close": "(drop (call $f (i32.const 1000) (i32.const {p}) (i32.const {n})))",
}
# list(buf, max) checks max * 8 bytes; it has its own test below.
OWN_TESTS = {"list"}
# The kv functions are linked for every profile and check allow-storage per
# call; this fixture's profile lacks it, so an in-range call returns DENIED.
# They take up to four (ptr, len) pairs, and each is checked before the
# grant: every pair in turn is the hostile one ("kv_list/2": the third).
KV_FUNCTIONS = sorted(name for name, f in FUNCTIONS.items() if f.grant is Grant.STORAGE)


def _pairs(name: str) -> list[int]:
    """Indexes of ``name``'s params that start a (ptr, len) or (ptr, cap) pair."""
    params = [param for param, _ in FUNCTIONS[name].params]
    return [i for i, param in enumerate(params) if param.endswith("ptr")]


def _kv_call(name: str, hostile: int) -> str:
    """WAT calling ``name`` with its ``hostile``-th pair as {p}/{n}, other pairs
    (0, 0) and any other argument (kv_list's limit) 0."""
    starts = _pairs(name)
    args = ["(i32.const 0)"] * len(FUNCTIONS[name].params)
    args[starts[hostile]] = "(i32.const {p})"
    args[starts[hostile] + 1] = "(i32.const {n})"
    return f"(drop (call $f {' '.join(args)}))"


POINTER_CALLS.update(
    {
        f"{name}/{hostile}": _kv_call(name, hostile)
        for name in KV_FUNCTIONS
        for hostile in range(len(_pairs(name)))
    }
)


def _import_name(case: str) -> str:
    """The function a POINTER_CALLS case calls ("kv_list/2" calls kv_list)."""
    return case.partition("/")[0]


def _signature(name: str) -> str:
    function = FUNCTIONS[name]
    params = " ".join(kind for _, kind in function.params)
    results = " ".join(function.results)
    text = f"(param {params})" if params else ""
    return text + (f" (result {results})" if results else "")


SIGNATURES = {name: _signature(name) for name in map(_import_name, POINTER_CALLS)}


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Host]:
    components = "".join(
        f'[components.{name}]\ncapability = "all"\n' for name in ("case", "sleeper", "hello")
    )
    h = Host(
        tmp_path,
        "[capabilities.all]\nallow-spawn = true\nallow-process-control = true\n"
        "max-memory-mb = 1\n" + components,
    )
    yield h
    h.host.shutdown(5.0)


def _case_module(case: str, ptr: int, length: int) -> str:
    call = POINTER_CALLS[case].format(p=ptr, n=length)
    function = _import_name(case)
    return (
        f'(module (import "rusm" "{function}" (func $f {SIGNATURES[function]}))'
        f' (memory (export "memory") 1) (data (i32.const 0) "hello")'
        f' (func (export "run") {call}))'
    )


def _hostile_pairs(rng: random.Random) -> Iterator[tuple[int, int]]:
    """Pairs that must be refused: negative, just past the end, near 2**32, wrapping."""
    edge = [
        (-1, 1),
        (0, -1),
        (PAGE, 1),
        (PAGE - 1, 2),
        (PAGE, 0),  # len 0 exactly at the end is in range: handled below
        (-(2**31), 2**31 - 1),
        (2**31 - 1, 2**31 - 1),
        (1, -1),
    ]
    yield from edge
    for _ in range(CASES - len(edge)):
        ptr = rng.randrange(-(2**31), 2**31)
        length = rng.randrange(-(2**31), 2**31)
        yield ptr, length


def _in_range(ptr: int, length: int) -> bool:
    start, count = ptr & 0xFFFFFFFF, length & 0xFFFFFFFF
    return start + count <= PAGE


@pytest.mark.parametrize("case", sorted(POINTER_CALLS))
def test_out_of_range_pointers_crash_only_the_calling_guest(host: Host, case: str) -> None:
    function = _import_name(case)
    rng = random.Random(f"rusm-{case}")
    sleeper = (
        '(module (import "rusm" "sleep" (func $s (param i32) (result i32)))'
        ' (func (export "run") (loop $l (drop (call $s (i32.const 20))) (br $l))))'
    )
    host.load({"sleeper": sleeper, "hello": '(module (func (export "run")))'})
    neighbour = host.host.spawn("sleeper")
    for ptr, length in _hostile_pairs(rng):
        host.load(
            {
                "case": _case_module(case, ptr, length),
                "sleeper": sleeper,
                "hello": '(module (func (export "run")))',
            }
        )
        pid = host.host.spawn("case")
        line = host.wait_exit(pid, "case")
        if _in_range(ptr, length):
            assert "bad pointer" not in line, (ptr, length, line)
        else:
            start, count = ptr & 0xFFFFFFFF, length & 0xFFFFFFFF
            assert line == (
                f"exit case#{pid} crashed (bad pointer: rusm.{function}(ptr={start}, "
                f"len={count}) outside memory of {PAGE} bytes)"
            ), (ptr, length)
        assert neighbour in host.host.processes, "the neighbour must keep running"
    assert host.host.kill(neighbour)
    assert host.wait_exit(neighbour, "sleeper").endswith("killed")


def test_every_pointer_taking_function_is_covered() -> None:
    takes_pointers = {
        name
        for name, f in FUNCTIONS.items()
        if any(p.endswith(("ptr", "len")) for p, _ in f.params)
    }
    assert takes_pointers == set(map(_import_name, POINTER_CALLS)) | OWN_TESTS
    for name in KV_FUNCTIONS:
        # Every pointer param is in a pair that some case makes hostile.
        params = [param for param, _ in FUNCTIONS[name].params]
        paired = {i + k for i in _pairs(name) for k in (0, 1)}
        assert all(params[i + 1].endswith(("len", "cap")) for i in _pairs(name)), name
        assert {p for i, p in enumerate(params) if i not in paired} <= {"limit"}, name
        assert {f"{name}/{hostile}" for hostile in range(len(_pairs(name)))} <= set(POINTER_CALLS)


# Each kv function called with in-range arguments: bucket "b", key "k",
# value "v" (all at 0..2), an empty batch, list limit 10 into 64..127.
KV_GOOD_ARGS = {
    "kv_get": (0, 1, 1, 1, 64, 64),
    "kv_exists": (0, 1, 1, 1),
    "kv_set": (0, 1, 1, 1, 2, 1),
    "kv_delete": (0, 1, 1, 1),
    "kv_batch": (0, 1, 0, 0),
    "kv_list": (0, 1, 0, 0, 0, 0, 10, 64, 64),
}


def _kv_guest(expected: ErrorCode) -> str:
    """A guest calling every kv function once: exit code 10 + i when the i-th
    (in KV_FUNCTIONS order) does not return ``expected``, else normal."""
    imports = "".join(
        f' (import "rusm" "{name}" (func ${name} {_signature(name)}))' for name in KV_FUNCTIONS
    )
    args = {name: " ".join(f"(i32.const {a})" for a in KV_GOOD_ARGS[name]) for name in KV_FUNCTIONS}
    checks = "".join(
        f"(if (i32.ne (call ${name} {args[name]}) (i32.const {int(expected)}))"
        f" (then (call $exit (i32.const {10 + i}))))"
        for i, name in enumerate(KV_FUNCTIONS)
    )
    return (
        f'(module{imports} (import "rusm" "exit" (func $exit (param i32)))'
        ' (memory (export "memory") 1) (data (i32.const 0) "bkv")'
        f' (func (export "run") {checks}))'
    )


def test_kv_calls_without_allow_storage_link_and_return_denied(host: Host) -> None:
    # Linked for every profile: the module spawns, and each call says DENIED.
    host.load({"case": _kv_guest(ErrorCode.DENIED)})
    pid = host.host.spawn("case")
    assert host.wait_exit(pid, "case") == f"exit case#{pid} normal"
    denied = [r.text for r in host.records if "denied (needs allow-storage)" in r.text]
    assert denied == [f"case#{pid}: rusm.{KV_FUNCTIONS[0]}: denied (needs allow-storage)"]


def test_kv_calls_on_a_node_without_a_store_return_nostore(tmp_path: Path) -> None:
    h = Host(
        tmp_path,
        '[capabilities.kv]\nallow-storage = true\n[components.case]\ncapability = "kv"\n',
    )
    try:
        h.load({"case": _kv_guest(ErrorCode.NOSTORE)})
        pid = h.host.spawn("case")
        assert h.wait_exit(pid, "case") == f"exit case#{pid} normal"
    finally:
        h.host.shutdown(5.0)


def test_list_checks_its_whole_buffer_and_refuses_a_negative_count(host: Host) -> None:
    wat = (
        '(module (import "rusm" "list" (func $f (param i32 i32) (result i32)))'
        ' (import "rusm" "exit" (func $exit (param i32)))'
        ' (memory (export "memory") 1)'
        ' (func (export "run")'
        "   (if (i32.ne (call $f (i32.const 0) (i32.const -1)) (i32.const -3))"
        "     (then (call $exit (i32.const 10))))"
        "   (if (i32.ne (call $f (i32.const 65528) (i32.const 1)) (i32.const 1))"
        "     (then (call $exit (i32.const 11))))"
        "   (drop (call $f (i32.const 65528) (i32.const 2)))))"
    )
    host.load({"case": wat})
    pid = host.host.spawn("case")
    assert host.wait_exit(pid, "case") == (
        f"exit case#{pid} crashed (bad pointer: rusm.list(ptr=65528, len=16) "
        f"outside memory of {PAGE} bytes)"
    )


def test_log_reads_exactly_the_bytes_asked_for(host: Host) -> None:
    wat = (
        '(module (import "rusm" "log" (func $f (param i32 i32 i32) (result i32)))'
        ' (memory (export "memory") 1) (data (i32.const 65530) "abcdef")'
        ' (func (export "run") (drop (call $f (i32.const 2) (i32.const 65531) (i32.const 5)))))'
    )
    host.load({"case": wat})
    pid = host.host.spawn("case")
    assert host.wait_exit(pid, "case") == f"exit case#{pid} normal"
    said = [r.text for r in host.records if r.source == f"case#{pid}"]
    assert said == ["bcdef"]


def test_log_with_bad_utf8_or_level_returns_invalid_without_crashing(host: Host) -> None:
    wat = (
        '(module (import "rusm" "log" (func $f (param i32 i32 i32) (result i32)))'
        ' (import "rusm" "exit" (func $exit (param i32)))'
        ' (memory (export "memory") 1) (data (i32.const 0) "\\ff\\fe ok")'
        ' (func (export "run")'
        "   (if (i32.ne (call $f (i32.const 2) (i32.const 0) (i32.const 2)) (i32.const -3))"
        "     (then (call $exit (i32.const 10))))"
        "   (if (i32.ne (call $f (i32.const 9) (i32.const 3) (i32.const 2)) (i32.const -3))"
        "     (then (call $exit (i32.const 11))))))"
    )
    host.load({"case": wat})
    pid = host.host.spawn("case")
    assert host.wait_exit(pid, "case") == f"exit case#{pid} normal"


def test_spawn_of_an_unknown_name_returns_notfound_to_the_guest(host: Host) -> None:
    wat = (
        '(module (import "rusm" "spawn" (func $f (param i32 i32) (result i64)))'
        ' (import "rusm" "exit" (func $exit (param i32)))'
        ' (memory (export "memory") 1) (data (i32.const 0) "nobody")'
        ' (func (export "run")'
        "   (if (i64.ne (call $f (i32.const 0) (i32.const 6)) (i64.const -4))"
        "     (then (call $exit (i32.const 10))))))"
    )
    host.load({"case": wat})
    pid = host.host.spawn("case")
    assert host.wait_exit(pid, "case") == f"exit case#{pid} normal"


def test_a_guest_can_kill_another_and_see_it_gone(host: Host) -> None:
    sleeper = (
        '(module (import "rusm" "sleep" (func $s (param i32) (result i32)))'
        ' (func (export "run") (loop $l (drop (call $s (i32.const 20))) (br $l))))'
    )
    host.load({"sleeper": sleeper, "hello": '(module (func (export "run")))', "case": sleeper})
    target = host.host.spawn("sleeper")
    killer = (
        '(module (import "rusm" "kill" (func $k (param i64) (result i32)))'
        ' (import "rusm" "is_alive" (func $a (param i64) (result i32)))'
        ' (import "rusm" "exit" (func $exit (param i32)))'
        f' (func (export "run")'
        f"   (if (i32.ne (call $k (i64.const {target})) (i32.const 0))"
        "      (then (call $exit (i32.const 10))))"
        "   (if (i32.ne (call $k (i64.const 999999)) (i32.const -1))"
        "      (then (call $exit (i32.const 11))))))"
    )
    host.load({"sleeper": sleeper, "hello": '(module (func (export "run")))', "case": killer})
    pid = host.host.spawn("case")
    assert host.wait_exit(pid, "case") == f"exit case#{pid} normal"
    assert (
        host.wait_exit(target, "sleeper") == f"exit sleeper#{target} killed (killed by case#{pid})"
    )


FALLBACK_SCRIPT = """
import resource, sys, time
from pathlib import Path
resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))
sys.path.insert(0, {root!r})
from tests.inprocess.conftest import Host
h = Host(Path({app!r}), '[components.case]\\n')
h.load({{"case": '(module (memory (export "memory") 1) (func (export "run")))'}})
pid = h.host.spawn("case")
print(h.wait_exit(pid, "case"))
for record in h.records:
    if "pooling" in record.text:
        print(record.level, record.text)
h.host.shutdown(1.0)
"""


def test_without_address_space_for_the_pool_the_host_warns_and_still_runs(
    tmp_path: Path,
) -> None:
    """A tight ``ulimit -v`` leaves no room for the pool: on-demand allocation, a warning."""
    root = Path(__file__).resolve().parents[2]
    script = FALLBACK_SCRIPT.format(root=str(root), app=str(tmp_path))
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].endswith(" normal")
    assert lines[1].startswith("warn worker 7: pooling allocator unavailable")
    assert "cannot reserve" in lines[1]
