"""The store through the guest kv ABI, beside raw py-lmdb, in one run.

Runs in: a benchmark process of its own, which plays one worker: the real
``WasmHost`` (guest threads, the ``rusm`` host callbacks) with the real
``KvStore`` and ``GroupCommitter`` on an LMDB file in a temporary
directory (``--dir`` picks the disk: fsync cost is the disk's).

Figures, each rusm beside its baseline on the same disk, same flags
(``sync=True, metasync=True, writemap=False``):

1. durable writes/s, one writer: one guest loops ``rusm.kv_set`` (each
   returns after its commit) against one Python thread doing one py-lmdb
   write transaction per put;
2. durable writes/s, 32 concurrent writers: 32 guest processes looping
   ``kv_set`` (the group committer shares commits among them) against 32
   Python threads each doing a transaction per put (LMDB serialises
   them: one commit each);
3. reads/s: one guest looping ``rusm.kv_get`` against one Python thread
   doing a read transaction + get per key.

Each figure is the median of ``TRIALS`` runs; the ratio is rusm / raw.
"""

from __future__ import annotations

import argparse
import statistics
import struct
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import lmdb
import wasmtime

from rusmd.channel import ComponentImage
from rusmd.config import Overrides, load_environment, load_manifest
from rusmd.config.model import LogLevel
from rusmd.log import Logger
from rusmd.store.committer import GroupCommitter
from rusmd.store.kv import MAX_READERS, KvStore, Op, Write
from rusmd.wasm.cache import CompileCache
from rusmd.wasm.engine import compile_engine
from rusmd.wasm.host import WasmHost
from rusmd.wasm.process import ExitReport

TRIALS = 3
WRITES = 400  # per trial, single writer
WRITERS = 32
WRITES_EACH = 50  # per writer per trial
READS = 20_000
VALUE_BYTES = 100

# $n kv_set calls of key "k"+i (4-byte i plus a 4-byte writer id), a
# VALUE_BYTES value; or $n kv_get calls of keys "k"+(i mod 400).
GUEST = """(module
  (import "rusm" "kv_set" (func $set (param i32 i32 i32 i32 i32 i32) (result i32)))
  (import "rusm" "kv_get" (func $get (param i32 i32 i32 i32 i32 i32) (result i32)))
  (import "rusm" "self" (func $self (result i64)))
  (memory (export "memory") 1)
  (data (i32.const 0) "bench")
  (data (i32.const 16) "k")
  (func (export "write") (local $i i32)
    (i32.store (i32.const 21) (i32.wrap_i64 (call $self)))
    (loop $next
      (i32.store (i32.const 17) (local.get $i))
      (if (call $set (i32.const 0) (i32.const 5) (i32.const 16) (i32.const 9)
                     (i32.const 1024) (i32.const {value}))
        (then unreachable))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $next (i32.lt_u (local.get $i) (i32.const {writes})))))
  (func (export "read") (local $i i32)
    (i32.store (i32.const 21) (i32.const 0))
    (loop $next
      (i32.store (i32.const 17) (i32.rem_u (local.get $i) (i32.const 400)))
      (if (i32.lt_s (call $get (i32.const 0) (i32.const 5) (i32.const 16) (i32.const 9)
                               (i32.const 4096) (i32.const 4096)) (i32.const 0))
        (then unreachable))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $next (i32.lt_u (local.get $i) (i32.const {reads}))))))"""


def _host(app: Path, writes: int, reads: int) -> WasmHost:
    (app / "rusm.toml").write_text(
        '[node]\nstore = "kv.mdb"\n[capabilities.kv]\nallow-storage = true\n'
        "max-cpu-ms = 3600000\n"
        '[components.one]\ncapability = "kv"\n[components.many]\ncapability = "kv"\n'
        '[components.reader]\ncapability = "kv"\n'
    )
    manifest = load_manifest(str(app / "rusm.toml"), Overrides(), load_environment(app))
    log = Logger(LogLevel.WARN, lambda record: print(f"  log: {record.text}"))
    host = WasmHost(manifest, 0, log, load_environment(app), request_lease=lambda: None)
    host.add_lease(1, 10_000_000)
    host.store = KvStore(str(app / "kv.mdb"))
    host.committer = GroupCommitter(host.store, log)
    cache = CompileCache(app / "cache")
    engine = compile_engine()
    images = []
    for name, count in (("one", writes), ("many", WRITES_EACH), ("reader", writes)):
        wat = GUEST.format(value=VALUE_BYTES, writes=count, reads=reads)
        wasm = wasmtime.wat2wasm(wat.replace('(export "write")', '(export "run")'))
        entry = cache.store(cache.key(wasm), wasmtime.Module(engine, wasm).serialize(), name)
        images.append(ComponentImage(name=name, cwasm=str(entry.path), digest=entry.digest))
    host.load(images)
    return host


def _run(host: WasmHost, name: str, count: int, entry: str = "") -> float:
    """Seconds for ``count`` processes of ``name`` to run to their end."""
    left = [count]
    lock = threading.Lock()
    finished = threading.Event()

    def exited(report: ExitReport) -> None:
        if report.reason != "normal":
            print(f"  {name} exited {report.reason}: {report.detail}")
        with lock:
            left[0] -= 1
            if not left[0]:
                finished.set()

    start = time.perf_counter()
    for _ in range(count):
        host.spawn(name, entry=entry, on_exit=exited)
    finished.wait()
    return time.perf_counter() - start


def _raw_env(path: Path) -> lmdb.Environment:
    return lmdb.open(
        str(path),
        subdir=False,
        map_size=64 << 20,
        max_dbs=1000,
        max_readers=MAX_READERS,
        sync=True,
        metasync=True,
        writemap=False,
        max_spare_txns=0,
    )


def _raw_writes(env: lmdb.Environment, db: object, threads: int, each: int) -> float:
    value = b"v" * VALUE_BYTES

    def writer(n: int) -> None:
        for i in range(each):
            with env.begin(write=True, db=db) as txn:
                txn.put(b"k%d-%d" % (n, i), value)

    workers = [threading.Thread(target=writer, args=(n,)) for n in range(threads)]
    start = time.perf_counter()
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    return time.perf_counter() - start


def _raw_reads(env: lmdb.Environment, db: object, reads: int) -> float:
    start = time.perf_counter()
    for i in range(reads):
        with env.begin(db=db) as txn:
            assert txn.get(b"k%d-%d" % (0, i % 400)) is not None
    return time.perf_counter() - start


def _median(trial: Callable[[], float]) -> float:
    return statistics.median(trial() for _ in range(TRIALS))


def _row(what: str, rusm: float, raw: float, unit: str) -> None:
    print(
        f"{what:<40} rusm {rusm:>10,.0f} {unit:<9} raw py-lmdb {raw:>10,.0f} {unit:<9} "
        f"ratio {rusm / raw:5.2f}"
    )


def main(argv: list[str] | None = None) -> int:
    """Run the three figures and print them."""
    parser = argparse.ArgumentParser(prog="python -m bench kv", description=__doc__.split("\n")[0])
    parser.add_argument("--dir", help="directory for the store files (default: a temp dir)")
    parser.add_argument("--writes", type=int, default=WRITES, help=f"single-writer puts ({WRITES})")
    parser.add_argument("--reads", type=int, default=READS, help=f"gets ({READS})")
    args = parser.parse_args(argv or [])
    with tempfile.TemporaryDirectory(dir=args.dir) as directory:
        root = Path(directory)
        print(f"store files in {root}; {TRIALS} trials each, the median shown")
        host = _host(root, args.writes, args.reads)
        env = _raw_env(root / "raw.mdb")
        db = env.open_db(b"bench")
        try:
            single = _median(lambda: args.writes / _run(host, "one", 1))
            raw_single = _median(lambda: args.writes / _raw_writes(env, db, 1, args.writes))
            _row("durable writes/s, 1 writer", single, raw_single, "writes/s")
            total = WRITERS * WRITES_EACH
            grouped = _median(lambda: total / _run(host, "many", WRITERS))
            raw_grouped = _median(lambda: total / _raw_writes(env, db, WRITERS, WRITES_EACH))
            _row(f"durable writes/s, {WRITERS} writers", grouped, raw_grouped, "writes/s")
            assert host.store is not None
            print(f"  rusm commits: {host.store.commits:,} for {host.store.writes:,} writes")
            keys = [b"k" + struct.pack("<II", i, 0) for i in range(400)]
            host.store.apply(
                [Write(b"bench", tuple((Op.SET, k, b"v" * VALUE_BYTES) for k in keys))]
            )
            reads = _median(lambda: args.reads / _run(host, "reader", 1, entry="read"))
            raw_reads = _median(lambda: args.reads / _raw_reads(env, db, args.reads))
            _row("reads/s, 1 reader (a txn per get)", reads, raw_reads, "reads/s")
        finally:
            host.shutdown(5.0)
            if host.committer is not None:
                host.committer.close()
            env.close()
    return 0
