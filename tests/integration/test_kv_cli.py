"""``rusmctl kv`` on a running daemon and ``rusmd kv`` on a stopped one, and the store in status.

Runs in: any (the daemon through the ``Daemon`` harness in ``conftest.py``;
``rusmd kv`` and ``rusmctl`` as subprocesses; the test process itself may
open the store file while no daemon runs, to seed many keys at once).
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from rusmd.abi import MAX_LIST_KEYS
from rusmd.errors import EX_NOSUCH, EX_OK, EX_REFUSED, EX_UNAVAILABLE, EX_USAGE
from rusmd.store.kv import MAX_VALUE_BYTES, KvStore, Op, Write
from tests.integration.conftest import SCRUBBED_VARIABLES, App, Daemon, manifest_text

EX_CONFIG = 78
STORE = "data/app.mdb"
# Every byte value, and bytes that are not UTF-8 nor survive a text round trip.
BINARY_VALUE = bytes(range(256)) + b"\r\n\x00\xff\xfe" * 100


def write_store_manifest(app: App) -> Path:
    """Give ``app``'s manifest ``[node] store``; the store file's path."""
    text = manifest_text(app.node_port, app.serve_port)
    app.manifest.write_text(text.replace("[node]\n", f'[node]\nstore = "{STORE}"\n', 1))
    return app.directory / STORE


@pytest.fixture
def store_path(app: App) -> Path:
    return write_store_manifest(app)


@pytest.fixture
def store_daemon(store_path: Path, start_daemon: Callable[..., Daemon]) -> Daemon:
    """A running daemon whose manifest sets ``[node] store``."""
    return start_daemon()


def run_cli(
    module: str, *args: str, cwd: Path, stdin: bytes = b""
) -> subprocess.CompletedProcess[bytes]:
    """``python -m MODULE ARGS`` with bytes in and out (values are binary)."""
    environment = {k: v for k, v in os.environ.items() if k not in SCRUBBED_VARIABLES}
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        env=environment,
        input=stdin,
        capture_output=True,
        timeout=60,
        check=False,
    )


def ctl(daemon: Daemon, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    """``rusmctl kv ARGS`` against ``daemon``."""
    return run_cli(
        "rusmctl",
        "kv",
        *args,
        "--socket",
        str(daemon.socket_path),
        cwd=daemon.app.directory,
        stdin=stdin,
    )


def offline(app: App, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    """``rusmd kv ARGS --config <manifest>`` (no daemon involved)."""
    return run_cli(
        "rusmd", "kv", *args, "--config", str(app.manifest), cwd=app.directory, stdin=stdin
    )


def ok(result: subprocess.CompletedProcess[bytes]) -> bytes:
    assert result.returncode == EX_OK, result.stderr.decode()
    return result.stdout


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


# ── rusmctl kv on a running daemon ──────────────────────────────────────


def test_kv_set_get_list_rm_round_trip_in_text(store_daemon: Daemon) -> None:
    assert ok(ctl(store_daemon, "set", "users", "alice", "admin")) == b"set users/alice (5 bytes)\n"
    ok(ctl(store_daemon, "set", "users", "bob", "guest"))
    ok(ctl(store_daemon, "set", "other", "carol", "x"))

    assert ok(ctl(store_daemon, "get", "users", "alice")) == b"admin"
    assert ok(ctl(store_daemon, "list", "users")) == b"alice\nbob\n"
    assert ok(ctl(store_daemon, "list", "users", "b")) == b"bob\n"
    assert ok(ctl(store_daemon, "rm", "users", "alice")) == b"removed users/alice\n"
    assert ok(ctl(store_daemon, "list", "users")) == b"bob\n"
    assert ok(ctl(store_daemon, "list", "other")) == b"carol\n"


def test_kv_set_get_list_rm_round_trip_in_json(store_daemon: Daemon) -> None:
    written = json.loads(ok(ctl(store_daemon, "set", "users", "alice", "admin", "--json")))
    read = json.loads(ok(ctl(store_daemon, "--json", "get", "users", "alice")))
    listed = json.loads(ok(ctl(store_daemon, "list", "users", "--json")))
    removed = json.loads(ok(ctl(store_daemon, "rm", "users", "alice", "--json")))

    assert written == {"bucket": "users", "key_b64": b64(b"alice"), "bytes": 5}
    assert read == {"bucket": "users", "key_b64": b64(b"alice"), "value_b64": b64(b"admin")}
    assert listed == {"bucket": "users", "keys_b64": [b64(b"alice")], "next_b64": None}
    assert removed == {"bucket": "users", "key_b64": b64(b"alice"), "removed": True}
    assert json.loads(ok(ctl(store_daemon, "list", "users", "--json")))["keys_b64"] == []


def test_kv_binary_value_from_a_file_or_stdin_round_trips_byte_exact(
    store_daemon: Daemon, tmp_path: Path
) -> None:
    source = tmp_path / "value.bin"
    source.write_bytes(BINARY_VALUE)

    from_file = ctl(store_daemon, "set", "blobs", "file", f"@{source}")
    from_stdin = ctl(store_daemon, "set", "blobs", "stdin", "@-", stdin=BINARY_VALUE)

    assert ok(from_file) == f"set blobs/file ({len(BINARY_VALUE)} bytes)\n".encode()
    ok(from_stdin)
    assert ok(ctl(store_daemon, "get", "blobs", "file")) == BINARY_VALUE
    assert ok(ctl(store_daemon, "get", "blobs", "stdin")) == BINARY_VALUE
    document = json.loads(ok(ctl(store_daemon, "get", "blobs", "file", "--json")))
    assert base64.b64decode(document["value_b64"]) == BINARY_VALUE


def test_kv_value_of_the_maximum_size_round_trips_and_one_byte_more_is_refused(
    store_daemon: Daemon, tmp_path: Path
) -> None:
    largest = tmp_path / "largest.bin"
    largest.write_bytes(b"\xab" * MAX_VALUE_BYTES)
    too_big = tmp_path / "too-big.bin"
    too_big.write_bytes(b"\xab" * (MAX_VALUE_BYTES + 1))

    ok(ctl(store_daemon, "set", "blobs", "large", f"@{largest}"))
    refused = ctl(store_daemon, "set", "blobs", "huge", f"@{too_big}")

    assert ok(ctl(store_daemon, "get", "blobs", "large")) == largest.read_bytes()
    assert refused.returncode == EX_USAGE
    assert f"the limit is {MAX_VALUE_BYTES}" in refused.stderr.decode()
    assert ctl(store_daemon, "get", "blobs", "huge").returncode == EX_NOSUCH


def test_kv_get_of_a_missing_key_exits_3_naming_bucket_and_key(store_daemon: Daemon) -> None:
    text = ctl(store_daemon, "get", "users", "nobody")
    as_json = ctl(store_daemon, "get", "users", "nobody", "--json")
    removed = ctl(store_daemon, "rm", "users", "nobody")

    assert text.returncode == EX_NOSUCH
    assert text.stdout == b""
    assert "users/nobody: no such key" in text.stderr.decode()
    assert as_json.returncode == EX_NOSUCH
    assert json.loads(as_json.stdout) == {
        "ok": False,
        "error": "users/nobody: no such key",
        "code": EX_NOSUCH,
    }
    assert removed.returncode == EX_NOSUCH
    assert "users/nobody: no such key" in removed.stderr.decode()


def test_kv_bad_bucket_name_is_a_usage_error_and_writes_nothing(store_daemon: Daemon) -> None:
    before = {slot: worker["pid"] for slot, worker in store_daemon.workers().items()}

    result = ctl(store_daemon, "set", "no/slashes", "k", "v")

    assert result.returncode == EX_USAGE
    assert "bucket b'no/slashes': 1-64 bytes of A-Z a-z 0-9 _ . -" in result.stderr.decode()
    assert store_daemon.status()["store"]["buckets"] == 0
    assert {slot: w["pid"] for slot, w in store_daemon.workers().items()} == before


def test_kv_value_file_that_cannot_be_read_is_a_usage_error_naming_it(
    store_daemon: Daemon, tmp_path: Path
) -> None:
    missing = tmp_path / "missing.bin"

    result = ctl(store_daemon, "set", "blobs", "k", f"@{missing}")

    assert result.returncode == EX_USAGE
    assert f"cannot read the value from {missing}" in result.stderr.decode()
    assert ctl(store_daemon, "get", "blobs", "k").returncode == EX_NOSUCH


def test_kv_list_with_limit_and_after_pages_through_the_keys(store_daemon: Daemon) -> None:
    for index in range(5):
        ok(ctl(store_daemon, "set", "pages", f"key{index}", str(index)))

    first = ctl(store_daemon, "list", "pages", "--limit", "2")
    second = json.loads(
        ok(ctl(store_daemon, "list", "pages", "--limit", "2", "--after", "key1", "--json"))
    )
    last = ok(ctl(store_daemon, "list", "pages", "--limit", "2", "--after", "key3"))

    assert ok(first) == b"key0\nkey1\n"
    assert "--after key1" in first.stderr.decode()
    assert second == {
        "bucket": "pages",
        "keys_b64": [b64(b"key2"), b64(b"key3")],
        "next_b64": b64(b"key3"),
    }
    assert last == b"key4\n"


def test_kv_list_without_limit_follows_pages_past_the_list_cap(
    store_path: Path, start_daemon: Callable[..., Daemon]
) -> None:
    count = MAX_LIST_KEYS * 2 + 5
    keys = [f"k{index:05d}".encode() for index in range(count)]
    seeded = KvStore(str(store_path))  # no daemon runs yet: this process may write
    seeded.apply([Write(b"many", tuple((Op.SET, key, b"") for key in keys))])
    seeded.close()
    daemon = start_daemon()

    text = ok(ctl(daemon, "list", "many"))
    document = json.loads(ok(ctl(daemon, "list", "many", "--json")))
    limited = json.loads(ok(ctl(daemon, "list", "many", "--limit", "1500", "--json")))

    assert text.splitlines() == keys
    assert [base64.b64decode(key) for key in document["keys_b64"]] == keys
    assert document["next_b64"] is None
    assert [base64.b64decode(key) for key in limited["keys_b64"]] == keys[:1500]


def test_kv_without_a_store_configured_is_refused_naming_node_store(daemon: Daemon) -> None:
    result = ctl(daemon, "get", "users", "alice")

    assert result.returncode == EX_REFUSED
    message = result.stderr.decode()
    assert "no store configured" in message
    assert "[node] store" in message
    assert str(daemon.app.manifest) in message
    assert daemon.status()["store"] is None


# ── status ──────────────────────────────────────────────────────────────


def test_status_shows_the_store_entries_and_sizes(store_daemon: Daemon, store_path: Path) -> None:
    for key in ("a", "b", "c"):
        ok(ctl(store_daemon, "set", "letters", key, key))
    ok(ctl(store_daemon, "set", "digits", "1", "1"))

    document = json.loads(store_daemon.ctl("status", "--json").stdout)
    text = store_daemon.ctl("status").stdout

    store = document["store"]
    assert store["path"] == str(store_path)
    assert (store["entries"], store["buckets"]) == (4, 2)
    assert store["file_bytes"] == store_path.stat().st_size
    assert store["map_bytes"] >= 64 << 20
    for key in ("used_bytes", "readers", "max_readers", "commits", "writes", "worker"):
        assert key in store
    line = next(line for line in text.splitlines() if line.startswith("store "))
    assert str(store_path) in line
    assert "entries 4" in line and "buckets 2" in line and "map 64.0M" in line


# ── rusmd kv on a stopped node ──────────────────────────────────────────


def test_rusmd_kv_reads_what_the_daemon_wrote_and_the_next_daemon_sees_its_writes(
    app: App, store_path: Path, start_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    running = start_daemon()
    ok(ctl(running, "set", "users", "alice", "admin"))
    ok(ctl(running, "set", "users", "bob", "guest"))
    assert running.stop() == 0
    source = tmp_path / "value.bin"
    source.write_bytes(BINARY_VALUE)

    assert ok(offline(app, "get", "users", "alice")) == b"admin"
    assert ok(offline(app, "list", "users")) == b"alice\nbob\n"
    assert ok(offline(app, "rm", "users", "bob")) == b"removed users/bob\n"
    assert ok(offline(app, "set", "users", "carol", "ops")) == b"set users/carol (3 bytes)\n"
    ok(offline(app, "--json", "set", "blobs", "bin", f"@{source}"))
    restarted = start_daemon()

    assert ok(ctl(restarted, "list", "users")) == b"alice\ncarol\n"
    assert ok(ctl(restarted, "get", "users", "carol")) == b"ops"
    assert ok(ctl(restarted, "get", "blobs", "bin")) == BINARY_VALUE
    assert restarted.status()["store"]["entries"] == 3


def test_rusmd_kv_answers_like_rusmctl_kv(app: App, store_path: Path) -> None:
    written = json.loads(ok(offline(app, "set", "users", "alice", "admin", "--json")))
    read = json.loads(ok(offline(app, "get", "users", "alice", "--json")))
    listed = json.loads(ok(offline(app, "list", "users", "--limit", "1", "--json")))
    missing = offline(app, "get", "users", "nobody", "--json")
    bad_bucket = offline(app, "get", "no/slashes", "k")

    assert written == {"bucket": "users", "key_b64": b64(b"alice"), "bytes": 5}
    assert read == {"bucket": "users", "key_b64": b64(b"alice"), "value_b64": b64(b"admin")}
    assert listed == {"bucket": "users", "keys_b64": [b64(b"alice")], "next_b64": b64(b"alice")}
    assert missing.returncode == EX_NOSUCH
    assert json.loads(missing.stdout)["error"] == "users/nobody: no such key"
    assert bad_bucket.returncode == EX_USAGE
    assert "bucket b'no/slashes'" in bad_bucket.stderr.decode()


def test_rusmd_kv_reads_on_a_node_that_never_started_create_no_file(
    app: App, store_path: Path
) -> None:
    missing = offline(app, "get", "users", "alice")
    listed = offline(app, "list", "users")

    assert missing.returncode == EX_NOSUCH
    assert "users/alice: no such key" in missing.stderr.decode()
    assert ok(listed) == b""
    assert not store_path.exists()
    assert not store_path.parent.exists()


def test_rusmd_kv_without_a_store_in_the_manifest_exits_78_naming_node_store(app: App) -> None:
    result = offline(app, "get", "users", "alice")

    assert result.returncode == EX_CONFIG
    message = result.stderr.decode()
    assert f"{app.manifest}: [node] sets no store" in message
    assert not (app.directory / "data").exists()


def test_kv_on_a_store_that_cannot_open_exits_69_and_status_says_why(
    store_path: Path, start_daemon: Callable[..., Daemon]
) -> None:
    store_path.mkdir(parents=True)  # a directory where the file should be
    daemon = start_daemon()

    result = ctl(daemon, "get", "users", "alice")

    assert result.returncode == EX_UNAVAILABLE
    assert f"cannot open {store_path}" in result.stderr.decode()
    store = daemon.status()["store"]
    assert f"cannot open {store_path}" in store["error"]
    line = next(line for line in daemon.ctl("status").stdout.splitlines() if "store" in line)
    assert line.startswith(f"store {store_path}: cannot open {store_path}")
