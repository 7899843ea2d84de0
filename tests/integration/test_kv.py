"""The node store through the guest kv ABI, on the real daemon and a real LMDB file.

Runs in: any (the test process; ``rusmd`` runs as a subprocess). The guest
is ``tests/guests/kv_http.wat``: one route per kv function, each answering
with the call's result, so a test reads what the guest saw. Handlers that
import kv run as full processes on guest threads, never inline.

Must-shows of the store issue: a granted guest sets and gets across daemon
restarts; a guest without ``allow-storage`` gets DENIED; a node without a
store gets NOSTORE; buckets never see each other's keys; a value over the
limit is refused; a batch is all or nothing; list pages by prefix and
cursor. The crash-safety test is ``test_kv_crash.py``.
"""

from __future__ import annotations

import http.client
import struct
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
import wasmtime

from rusmd.abi import ErrorCode
from rusmd.store.kv import MAX_VALUE_BYTES, KvStore
from tests.integration.conftest import App, Daemon

GUESTS = Path(__file__).resolve().parent.parent / "guests"
STORE = "data/app.mdb"
ROUTES = """[serve.routes]
"POST /kv/:bucket/:key" = "store#set"
"GET /kv/:bucket/:key" = "store#get"
"DELETE /kv/:bucket/:key" = "store#del"
"GET /exists/:bucket/:key" = "store#exists"
"POST /batch/:bucket" = "store#batch"
"GET /list/:bucket" = "store#list"
"GET /denied/:bucket/:key" = "plain#get"
"POST /denied/:bucket/:key" = "plain#set"
"""


def write_kv_app(app: App, *, store: bool = True) -> None:
    wasm = app.directory / "wasm"
    wasm.mkdir(exist_ok=True)
    module = wasmtime.wat2wasm((GUESTS / "kv_http.wat").read_text())
    for name in ("store", "plain"):
        (wasm / f"{name}.wasm").write_bytes(module)
    node = f'[node]\nlisten = "127.0.0.1:{app.node_port}"\n'
    if store:
        node += f'store = "{STORE}"\n'
    app.manifest.write_text(
        f'{node}[log]\nlevel = "info"\n'
        f'[[serve]]\nprotocol = "http"\nlisten = "127.0.0.1:{app.serve_port}"\n'
        "timeout-s = 30\nmax-body-bytes = 4194304\n"
        f"{ROUTES}"
        '[capabilities.kv]\ninherits = "sandboxed"\nallow-storage = true\n'
        '[components.store]\ncapability = "kv"\n'
        '[components.plain]\ncapability = "sandboxed"\n'
    )


class Client:
    """HTTP calls to the kv routes; each returns (status, body)."""

    def __init__(self, port: int) -> None:
        self.port = port

    def call(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request(method, path, body=body if method == "POST" else None)
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def code(self, method: str, path: str, body: bytes = b"") -> int:
        """The kv call's result the guest answered as text."""
        status, text = self.call(method, path, body)
        assert status == 200, (status, text)
        return int(text)

    def set(self, bucket: str, key: str, value: bytes) -> int:
        return self.code("POST", f"/kv/{bucket}/{key}", value)

    def get(self, bucket: str, key: str) -> bytes | int:
        status, body = self.call("GET", f"/kv/{bucket}/{key}")
        assert status == 200, (status, body)
        try:
            return int(body) if body.lstrip(b"-").isdigit() and body.startswith(b"-") else body
        except ValueError:
            return body

    def list(self, bucket: str, query: str = "") -> list[bytes] | int:
        status, body = self.call("GET", f"/list/{bucket}?{query}")
        assert status == 200, (status, body)
        if body.startswith(b"-"):
            return int(body)
        keys, offset = [], 0
        while offset < len(body):
            (size,) = struct.unpack_from("<H", body, offset)
            keys.append(body[offset + 2 : offset + 2 + size])
            offset += 2 + size
        return keys


def batch(*ops: tuple[int, bytes, bytes]) -> bytes:
    return b"".join(struct.pack("<BHI", op, len(k), len(v)) + k + v for op, k, v in ops)


@pytest.fixture
def kv_daemon(app: App, start_daemon: Callable[..., Daemon]) -> tuple[Daemon, Client]:
    write_kv_app(app)
    return start_daemon(), Client(app.serve_port)


def test_a_granted_guest_sets_and_gets_and_it_survives_a_restart(
    app: App, start_daemon: Callable[..., Daemon]
) -> None:
    write_kv_app(app)
    daemon = start_daemon()
    client = Client(app.serve_port)
    assert client.set("users", "7", b"ada") == ErrorCode.OK
    assert client.get("users", "7") == b"ada"
    assert client.code("GET", "/exists/users/7") == 1
    assert client.code("GET", "/exists/users/8") == 0
    assert client.get("users", "8") == ErrorCode.NOTFOUND
    assert daemon.stop() == 0

    daemon = start_daemon()
    assert client.get("users", "7") == b"ada"
    assert client.code("DELETE", "/kv/users/7") == ErrorCode.OK
    assert client.code("DELETE", "/kv/users/7") == ErrorCode.NOTFOUND
    assert daemon.stop() == 0
    # The file is where the manifest says, and holds what was acknowledged.
    store = KvStore(str(app.directory / STORE))
    try:
        assert store.get(b"users", b"7") is None
        assert store.buckets() == [b"users"]
    finally:
        store.close()


def test_a_guest_without_allow_storage_gets_denied_and_nothing_else_happens(
    kv_daemon: tuple[Daemon, Client],
) -> None:
    daemon, client = kv_daemon
    assert client.set("users", "1", b"x") == ErrorCode.OK
    assert client.code("POST", "/denied/users/1", b"overwrite") == ErrorCode.DENIED
    assert client.code("GET", "/denied/users/1") == ErrorCode.DENIED
    assert client.get("users", "1") == b"x"
    warnings = daemon.wait_for(
        lambda: [r for r in daemon.log_records() if "denied (needs allow-storage)" in r["text"]],
        20,
        "the denial to be logged",
    )
    assert warnings[0]["level"] == "warn" and "plain#" in warnings[0]["text"]


def test_without_a_store_every_kv_call_says_no_store_configured(
    app: App, start_daemon: Callable[..., Daemon]
) -> None:
    write_kv_app(app, store=False)
    daemon = start_daemon()
    client = Client(app.serve_port)
    assert client.set("users", "1", b"x") == ErrorCode.NOSTORE
    assert client.get("users", "1") == ErrorCode.NOSTORE
    assert client.list("users") == ErrorCode.NOSTORE
    assert any("no store configured" in r["text"] for r in daemon.log_records())
    assert not (app.directory / "data").exists()


def test_buckets_never_see_each_others_keys(kv_daemon: tuple[Daemon, Client]) -> None:
    _, client = kv_daemon
    assert client.set("a", "bc", b"in a") == ErrorCode.OK
    assert client.set("ab", "c", b"in ab") == ErrorCode.OK
    assert client.set("a.b", "c", b"in a.b") == ErrorCode.OK
    assert client.get("a", "bc") == b"in a"
    assert client.get("ab", "c") == b"in ab"
    assert client.get("a", "b") == ErrorCode.NOTFOUND
    assert client.get("ab", "bc") == ErrorCode.NOTFOUND
    assert client.get("a", "c") == ErrorCode.NOTFOUND
    assert client.list("a") == [b"bc"]
    assert client.list("ab") == [b"c"]
    assert client.list("a", "prefix=b") == [b"bc"]
    assert client.list("never") == []
    # Not bucket names: a guest can't reach another bucket through one.
    assert client.set("a%2Fb", "c", b"x") == ErrorCode.INVALID
    assert client.set("..", "c", b"x") == ErrorCode.OK  # dots are plain characters
    assert client.list("a") == [b"bc"]


def test_keys_up_to_511_bytes_values_up_to_the_limit(kv_daemon: tuple[Daemon, Client]) -> None:
    _, client = kv_daemon
    longest = "k" * 511
    assert client.set("b", longest, b"v") == ErrorCode.OK
    assert client.get("b", longest) == b"v"
    assert client.set("b", "k" * 512, b"v") == ErrorCode.INVALID
    big = bytes(range(256)) * (MAX_VALUE_BYTES // 256)
    assert client.set("b", "big", big) == ErrorCode.OK
    assert client.get("b", "big") == big
    assert client.set("b", "bigger", big + b"!") == ErrorCode.TOOBIG
    assert client.get("b", "bigger") == ErrorCode.NOTFOUND


def test_a_batch_applies_all_or_nothing(kv_daemon: tuple[Daemon, Client]) -> None:
    _, client = kv_daemon
    assert client.set("t", "old", b"1") == ErrorCode.OK
    good = batch((1, b"x", b"1"), (1, b"y", b"2"), (2, b"old", b""))
    assert client.code("POST", "/batch/t", good) == ErrorCode.OK
    assert client.list("t") == [b"x", b"y"]
    # The last op is malformed (a delete with a value): none of it applies.
    bad = batch((1, b"z", b"3"), (2, b"x", b"not allowed"))
    assert client.code("POST", "/batch/t", bad) == ErrorCode.INVALID
    truncated = batch((1, b"z", b"3"))[:-1]
    assert client.code("POST", "/batch/t", truncated) == ErrorCode.INVALID
    assert client.list("t") == [b"x", b"y"]


def test_list_pages_by_prefix_limit_and_cursor(kv_daemon: tuple[Daemon, Client]) -> None:
    _, client = kv_daemon
    keys = [f"user:{i:02}".encode() for i in range(12)] + [b"group:1", b"zzz"]
    ops = batch(*((1, key, b"v") for key in keys))
    assert client.code("POST", "/batch/p", ops) == ErrorCode.OK
    pages: list[bytes] = []
    after = ""
    while True:
        page = client.list("p", f"prefix=user:&limit=5&after={after}")
        assert isinstance(page, list)
        if not page:
            break
        assert len(page) <= 5
        pages.extend(page)
        after = page[-1].decode()
    assert pages == sorted(k for k in keys if k.startswith(b"user:"))
    assert client.list("p", "limit=0") == []


def test_concurrent_writers_all_land_and_share_commits(
    app: App, kv_daemon: tuple[Daemon, Client]
) -> None:
    daemon, client = kv_daemon
    results: list[int] = []

    def writer(n: int) -> None:
        for i in range(10):
            results.append(client.set("c", f"{n}-{i}", str(i).encode()))

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [ErrorCode.OK] * 160
    listed = client.list("c", "limit=99")
    assert isinstance(listed, list) and len(listed) == 99
    assert daemon.stop() == 0
    store = KvStore(str(app.directory / STORE))
    try:
        assert sum(1 for _ in store.items(b"c")) == 160
    finally:
        store.close()
