"""The store module on a real LMDB file: map growth, group commit, paging, other processes.

Runs in: the test process (plays a worker: ``KvStore`` and
``GroupCommitter`` as a worker opens them), plus plain Python child
processes where a second process must share the file.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from rusmd.abi import ErrorCode
from rusmd.config.model import LogLevel
from rusmd.log import Logger, LogRecord
from rusmd.store.committer import GroupCommitter
from rusmd.store.kv import KvStore, Op, Write

SMALL_MAP = 1 << 20
REPO = Path(__file__).resolve().parents[2]


def put(bucket: bytes, key: bytes, value: bytes) -> Write:
    return Write(bucket, ((Op.SET, key, value),))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[KvStore]:
    opened = KvStore(str(tmp_path / "data" / "kv.mdb"), initial_map_bytes=SMALL_MAP)
    yield opened
    opened.close()


def test_a_full_map_grows_and_the_write_that_hit_it_succeeds(store: KvStore) -> None:
    value = b"v" * (64 << 10)
    results = []
    for i in range(40):  # 2.5 MiB into a 1 MiB map
        results += store.apply([put(b"big", b"%03d" % i, value)])
    assert results == [ErrorCode.OK] * 40
    assert store.map_grown >= 1
    assert store.stats()["map_bytes"] > SMALL_MAP
    assert all(store.get(b"big", b"%03d" % i) == value for i in range(40))
    # One transaction larger than the whole map: grown until it fits, all of it applied.
    batch = Write(b"one", tuple((Op.SET, b"%03d" % i, value) for i in range(60)))
    assert store.apply([batch]) == [ErrorCode.OK]
    assert sum(1 for _ in store.items(b"one")) == 60


def test_a_map_grown_by_another_process_is_adopted(store: KvStore, tmp_path: Path) -> None:
    assert store.apply([put(b"b", b"before", b"1")]) == [ErrorCode.OK]
    store.get(b"b", b"before")
    child = (
        "import sys; from rusmd.store.kv import KvStore, Op, Write\n"
        "s = KvStore(sys.argv[1], initial_map_bytes=1 << 20)\n"
        "for i in range(60):\n"
        "    s.apply([Write(b'b', ((Op.SET, b'%03d' % i, b'x' * 65536),))])\n"
        "print(s.stats()['map_bytes'])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", child, store.path],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert int(done.stdout) > SMALL_MAP
    # This process still has the small map: reads and writes adopt the new size.
    assert store.get(b"b", b"059") == b"x" * 65536
    assert store.apply([put(b"b", b"after", b"2")]) == [ErrorCode.OK]
    assert len(store.keys(b"b", b"", b"", 1000)) == 62


def test_concurrent_writers_share_commits_and_every_write_lands(store: KvStore) -> None:
    records: list[LogRecord] = []
    committer = GroupCommitter(store, Logger(LogLevel.DEBUG, records.append))
    results: list[ErrorCode] = []
    lock = threading.Lock()

    def writer(n: int) -> None:
        for i in range(25):
            code = committer.write(put(b"g", b"%02d-%02d" % (n, i), b"%d" % i))
            with lock:
                results.append(code)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    committer.close()
    assert results == [ErrorCode.OK] * 800
    assert sum(1 for _ in store.items(b"g")) == 800
    assert store.writes == 800
    # Shared commits: far fewer than one per write.
    assert store.commits < 800, store.commits
    assert not records


def test_a_delete_reports_a_missing_key_only_when_asked(store: KvStore) -> None:
    assert store.apply([put(b"d", b"k", b"v")]) == [ErrorCode.OK]
    single = Write(b"d", ((Op.DELETE, b"k", b""),), report_missing=True)
    assert store.apply([single, single]) == [ErrorCode.OK, ErrorCode.NOTFOUND]
    quiet = Write(b"d", ((Op.DELETE, b"k", b""),))
    assert store.apply([quiet]) == [ErrorCode.OK]


def test_keys_page_by_prefix_and_cursor(store: KvStore) -> None:
    keys = [b"a", b"b", b"b/1", b"b/2", b"b/3", b"c"]
    store.apply([Write(b"p", tuple((Op.SET, k, b"") for k in keys))])
    assert store.keys(b"p", b"", b"", 100) == keys
    assert store.keys(b"p", b"b/", b"", 2) == [b"b/1", b"b/2"]
    assert store.keys(b"p", b"b/", b"b/2", 2) == [b"b/3"]
    assert store.keys(b"p", b"b/", b"b/3", 2) == []
    assert store.keys(b"p", b"b", b"a", 10) == [b"b", b"b/1", b"b/2", b"b/3"]
    assert store.keys(b"p", b"", b"bb", 10) == [b"c"]
    assert store.keys(b"p", b"d", b"", 10) == []
    assert store.keys(b"missing", b"", b"", 10) == []


def test_the_store_reopens_with_what_was_committed(tmp_path: Path) -> None:
    path = str(tmp_path / "kv.mdb")
    first = KvStore(path)
    first.apply([put(b"x", b"k", b"v"), put(b"y", b"k", b"w")])
    first.close()
    second = KvStore(path)
    try:
        assert second.get(b"x", b"k") == b"v"
        stats = second.stats()
        assert (stats["buckets"], stats["entries"]) == (2, 2)
        assert stats["file_bytes"] > 0 and stats["map_bytes"] >= stats["used_bytes"]
    finally:
        second.close()
