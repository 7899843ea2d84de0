"""One LMDB file of buckets: reads on any thread, durable writes, a map that grows.

Runs in: worker (opened after fork: one environment per process, never
inherited), or the ``rusmd kv`` command on a stopped node. Never the
daemon's main process: it forks, and an LMDB environment must not cross
a fork.

Layout: each bucket is a named LMDB database, so no key of one bucket can
ever be read through another (there is no shared prefix to trick) and
every key may use LMDB's whole 511 bytes. Bucket names are 1-64 bytes of
``A-Z a-z 0-9 _ . -``; a store holds up to ``MAX_BUCKETS`` of them.

Durability: ``sync=True, metasync=True, writemap=False``:
a commit returns after its pages and meta page reached the disk, so a
write acknowledged to a guest survives a killed worker and a power cut.
LMDB never overwrites live pages, so opening after a crash needs no
recovery; ``reader_check()`` at open frees the reader slots of processes
that died inside a read.

The map (LMDB's address-space reservation for the file) starts at
``INITIAL_MAP_BYTES`` and doubles whenever a write finds it full: the
aborted transaction is run again in the bigger map, so the write that
hit the limit succeeds. Changing the map needs no transaction open in
this process, so every transaction passes a gate a resize closes. Other
processes see ``MapResizedError`` and adopt the new size.

Threads: a read is one short read transaction on the caller's thread.
Writes in a worker go through ``GroupCommitter`` (``committer.py``): one
writer thread, so that concurrent writers share one commit and its fsync.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lmdb

from rusmd.abi import ErrorCode
from rusmd.errors import RusmError
from rusmd.meter import Histogram

# LMDB's compiled-in key limit, all of it available to each bucket's keys.
MAX_KEY_BYTES = 511
# The largest value one key holds.
MAX_VALUE_BYTES = 1 << 20
# Bucket names: 1-64 bytes of these characters.
MAX_BUCKET_BYTES = 64
BUCKET_PATTERN = re.compile(rb"[A-Za-z0-9_.-]{1,64}")
# Buckets one store holds (LMDB named databases; each costs every
# transaction a little, so the number is bounded).
MAX_BUCKETS = 1000
# The map a new store starts with; it doubles each time it fills.
INITIAL_MAP_BYTES = 64 << 20
# Reader slots in the lock file: every guest thread of every worker may
# read at once (LMDB's default of 126 would refuse the 127th).
MAX_READERS = 4096


class Op:
    """One operation of a write."""

    SET = 1
    DELETE = 2


class KvError(RusmError):
    """A kv request refused before it reached LMDB; ``code`` is what the guest gets."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class Write:
    """Operations on one bucket applied all together or not at all.

    Attributes:
        bucket: The bucket name.
        ops: (Op.SET or Op.DELETE, key, value) in order; value is b"" for a delete.
        report_missing: A delete of a missing key makes the result NOTFOUND
            (a single ``delete`` says so; a batch does not care).
    """

    bucket: bytes
    ops: tuple[tuple[int, bytes, bytes], ...]
    report_missing: bool = False


def check_bucket(bucket: bytes) -> None:
    """Raises KvError(INVALID) unless ``bucket`` is a valid bucket name."""
    if not BUCKET_PATTERN.fullmatch(bucket):
        raise KvError(
            ErrorCode.INVALID,
            f"bucket {bucket[:80]!r}: 1-{MAX_BUCKET_BYTES} bytes of A-Z a-z 0-9 _ . -",
        )


def check_key(key: bytes) -> None:
    """Raises KvError(INVALID) unless ``key`` is 1-511 bytes."""
    if not 0 < len(key) <= MAX_KEY_BYTES:
        raise KvError(ErrorCode.INVALID, f"key of {len(key)} bytes: keys are 1-{MAX_KEY_BYTES}")


def check_value(value: bytes) -> None:
    """Raises KvError(TOOBIG) for a value over ``MAX_VALUE_BYTES``."""
    if len(value) > MAX_VALUE_BYTES:
        raise KvError(
            ErrorCode.TOOBIG, f"value of {len(value)} bytes: the limit is {MAX_VALUE_BYTES}"
        )


class _Gate:
    """Any number of transactions at once, or one map resize with none."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._active = 0
        self._resizing = False

    def enter(self) -> None:
        """A transaction starts (waits while a resize runs)."""
        with self._lock:  # the fast path: a plain lock, no Condition call
            if not self._resizing:
                self._active += 1
                return
        with self._cond:
            while self._resizing:
                self._cond.wait()
            self._active += 1

    def leave(self) -> None:
        """A transaction ended."""
        with self._lock:
            self._active -= 1
            if self._resizing and not self._active:
                self._cond.notify_all()

    @contextmanager
    def txn(self) -> Iterator[None]:
        self.enter()
        try:
            yield
        finally:
            self.leave()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            while self._resizing:
                self._cond.wait()
            self._resizing = True
            while self._active:
                self._cond.wait()
        try:
            yield
        finally:
            with self._cond:
                self._resizing = False
                self._cond.notify_all()


class KvStore:
    """The store file, open in this process.

    Args:
        path: The LMDB file (its lock file is ``path-lock``); its directory
            is created if missing.
        initial_map_bytes: The map a new (or smaller) store starts with.

    Raises:
        lmdb.Error: The file cannot be opened (its message names the reason).
    """

    def __init__(self, path: str, *, initial_map_bytes: int = INITIAL_MAP_BYTES) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.env = lmdb.open(
            path,
            subdir=False,
            map_size=initial_map_bytes,
            max_dbs=MAX_BUCKETS,
            max_readers=MAX_READERS,
            sync=True,
            metasync=True,
            writemap=False,
            map_async=False,
            max_spare_txns=0,
            lock=True,
        )
        # Reader slots left by processes that died inside a read.
        self.stale_readers_cleared = self.env.reader_check()
        self._dbs: dict[bytes, Any] = {}
        # mdb_dbi_open must not run in two transactions of a process at once.
        self._open_lock = threading.Lock()
        self._gate = _Gate()
        self.commits = 0
        self.writes = 0
        # Guest threads bump it without a lock: a rare lost count is the
        # price of not taking one on the hot read path.
        self.reads = 0
        # Time from a write transaction's start to its durable commit.
        self.commit_duration = Histogram()
        self.map_grown = 0

    def close(self) -> None:
        """Close the environment (no transaction may be open)."""
        self.env.close()

    # ── transactions ────────────────────────────────────────────────────

    @contextmanager
    def _read(self) -> Iterator[Any]:
        while True:
            with self._gate.txn():
                try:
                    txn = self.env.begin(buffers=False)
                except lmdb.MapResizedError:
                    pass
                else:
                    try:
                        yield txn
                    finally:
                        txn.abort()
                    return
            self._adopt_map()

    def _adopt_map(self) -> None:
        """Another process grew the map: use its size."""
        with self._gate.exclusive():
            self.env.set_mapsize(0)

    def _grow_map(self) -> None:
        with self._gate.exclusive():
            self.env.set_mapsize(self.env.info()["map_size"] * 2)
            self.map_grown += 1

    def _existing(self, bucket: bytes) -> Any:
        """The bucket's database handle, or None if it does not exist (yet)."""
        db = self._dbs.get(bucket)
        if db is not None:
            return db
        # A bucket's name is a key of LMDB's main database: a missing bucket
        # is answered from there, without waiting for the open lock (which a
        # commit holds through its fsync).
        with self._read() as txn:
            if txn.get(bucket) is None:
                return None
        with self._open_lock:
            db = self._dbs.get(bucket)
            if db is not None:
                return db
            # In a write transaction: a handle opened in a read-only one
            # does not outlive it (py-lmdb ends read transactions with a
            # reset, not a commit). Nothing is written.
            while True:
                with self._gate.txn():
                    try:
                        txn = self.env.begin(write=True)
                    except lmdb.MapResizedError:
                        pass
                    else:
                        try:
                            db = self.env.open_db(bucket, txn=txn, create=False)
                        except lmdb.NotFoundError:
                            txn.abort()
                            return None
                        except BaseException:
                            txn.abort()
                            raise
                        txn.commit()
                        break
                self._adopt_map()
            self._dbs[bucket] = db
            return db

    # ── reads ───────────────────────────────────────────────────────────

    def get(self, bucket: bytes, key: bytes) -> bytes | None:
        """The value of ``key`` in ``bucket``, or None."""
        self.reads += 1
        db = self._dbs.get(bucket) or self._existing(bucket)
        if db is None:
            return None
        # The hot read path, without the context managers of _read (a third
        # of its cost): enter the gate, one read transaction, leave.
        gate = self._gate
        while True:
            gate.enter()
            try:
                txn = self.env.begin(buffers=False)
            except lmdb.MapResizedError:
                gate.leave()
                self._adopt_map()
                continue
            try:
                value: bytes | None = txn.get(key, db=db)
                return value
            finally:
                txn.abort()
                gate.leave()

    def exists(self, bucket: bytes, key: bytes) -> bool:
        """True if ``bucket`` holds ``key``."""
        return self.get(bucket, key) is not None

    def keys(self, bucket: bytes, prefix: bytes, after: bytes, limit: int) -> list[bytes]:
        """Up to ``limit`` keys of ``bucket`` starting with ``prefix``, in order,
        strictly after ``after`` (the last key of the previous page; b"" to start)."""
        db = self._existing(bucket)
        if db is None or limit <= 0:
            return []
        found: list[bytes] = []
        with self._read() as txn:
            cursor = txn.cursor(db)
            start = after if after > prefix else prefix
            if not cursor.set_range(start):
                return found
            if after and cursor.key() == after and not cursor.next():
                return found
            for key in cursor.iternext(keys=True, values=False):
                if not key.startswith(prefix) or len(found) >= limit:
                    break
                found.append(key)
        return found

    def items(self, bucket: bytes, prefix: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
        """Every (key, value) of ``bucket`` starting with ``prefix`` (one read transaction)."""
        db = self._existing(bucket)
        if db is None:
            return
        with self._read() as txn:
            cursor = txn.cursor(db)
            if not cursor.set_range(prefix):
                return
            for key, value in cursor.iternext():
                if not key.startswith(prefix):
                    break
                yield key, value

    def buckets(self) -> list[bytes]:
        """Every bucket's name, in order."""
        with self._read() as txn:
            return [key for key, _ in txn.cursor()]

    # ── writes ──────────────────────────────────────────────────────────

    def apply(self, writes: list[Write]) -> list[ErrorCode]:
        """Apply ``writes`` in one transaction and commit it durably.

        Each write gets its own result (OK, NOTFOUND for a reported missing
        delete, LIMIT when a new bucket would pass MAX_BUCKETS); a write
        refused that way changes nothing. A full map is grown and the
        transaction run again.

        Raises:
            lmdb.Error: The commit failed (disk full, I/O error): nothing
                of ``writes`` was applied.
        """
        while True:
            try:
                # Lock order: the open lock, then the gate (as in _existing).
                with self._open_lock, self._gate.txn():
                    return self._apply_once(writes)
            except lmdb.MapFullError:
                pass
            except lmdb.MapResizedError:
                self._adopt_map()
                continue
            self._grow_map()

    def _apply_once(self, writes: list[Write]) -> list[ErrorCode]:
        results: list[ErrorCode] = []
        opened: dict[bytes, Any] = {}
        started = time.perf_counter()
        txn = self.env.begin(write=True)
        try:
            for write in writes:
                results.append(self._apply_write(txn, write, opened))
            txn.commit()
        except BaseException:
            txn.abort()
            raise
        self.commit_duration.observe(time.perf_counter() - started)
        self._dbs.update(opened)
        self.commits += 1
        self.writes += len(writes)
        return results

    def _apply_write(self, txn: Any, write: Write, opened: dict[bytes, Any]) -> ErrorCode:
        db = self._dbs.get(write.bucket) or opened.get(write.bucket)
        if db is None:
            try:
                db = self.env.open_db(write.bucket, txn=txn, create=True)
            except lmdb.DbsFullError:
                return ErrorCode.LIMIT
            opened[write.bucket] = db
        result = ErrorCode.OK
        for op, key, value in write.ops:
            if op == Op.SET:
                txn.put(key, value, db=db)
            elif not txn.delete(key, db=db) and write.report_missing:
                result = ErrorCode.NOTFOUND
        return result

    # ── stats ───────────────────────────────────────────────────────────

    def counters(self) -> dict[str, Any]:
        """What this process did to the store: commits, writes, reads, commit latency."""
        return {
            "commits": self.commits,
            "writes": self.writes,
            "reads": self.reads,
            "commit_duration": self.commit_duration.export(),
        }

    def stats(self) -> dict[str, Any]:
        """File and map size, buckets, entries, readers, commits."""
        info = self.env.info()
        names = self.buckets()
        entries = 0
        for name in names:
            db = self._existing(name)
            if db is not None:
                with self._read() as txn:
                    entries += txn.stat(db)["entries"]
        return {
            "path": self.path,
            "file_bytes": os.path.getsize(self.path),
            "map_bytes": info["map_size"],
            "used_bytes": (info["last_pgno"] + 1) * self.env.stat()["psize"],
            "buckets": len(names),
            "entries": entries,
            "readers": info["num_readers"],
            "max_readers": info["max_readers"],
            **self.counters(),
            "map_grown": self.map_grown,
        }
