"""Crash safety of the store: SIGKILL a writing worker at random moments, many times.

Runs in: any (the test process; ``rusmd`` runs as a subprocess with two
workers). The writer is ``tests/guests/kv_writer.wat``, a resident that
commits transaction after transaction with ``rusm.kv_batch`` — each sets
``a<i>``, ``b<i>`` and ``next`` together — and logs ``acked <i>`` only
after the call returned 0. The test kills the worker hosting it with
SIGKILL at a random moment; the resident comes back on the other worker
and resumes from ``next``. After the last kill the daemon stops and the
test opens the file itself.

What must hold:

- every transaction acknowledged to the guest before a kill is present;
- no transaction is partly visible: ``a<i>`` exists exactly when ``b<i>``
  does, and they are the unbroken run ``0 .. next-1``;
- each restarted worker opened the store (no open error), and the file
  opens cleanly and walks whole at the end.
"""

from __future__ import annotations

import os
import random
import re
import signal
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import wasmtime

from rusmd.store.kv import KvStore
from tests.integration.conftest import App, Daemon

GUESTS = Path(__file__).resolve().parent.parent / "guests"
STORE = "data/crash.mdb"
SETTLE_S = 30.0
# Seconds between kills: a worker killed more than 3 times in 5 s is
# quarantined (rusmd/main/pool.py), and the two workers take turns.
KILL_SPACING_S = 1.3
ACKED = re.compile(r"writer#\d+\s+info\s+acked (\d+)$")


def write_app(app: App) -> None:
    wasm = app.directory / "wasm"
    wasm.mkdir(exist_ok=True)
    (wasm / "writer.wasm").write_bytes(wasmtime.wat2wasm((GUESTS / "kv_writer.wat").read_text()))
    app.manifest.write_text(
        f'[node]\nlisten = "127.0.0.1:{app.node_port}"\nstore = "{STORE}"\n'
        '[log]\nlevel = "info"\n'
        '[capabilities.kv]\ninherits = "sandboxed"\nallow-storage = true\n'
        '[components.writer]\ncapability = "kv"\nresident = true\n'
        "intensity = 1000\nperiod-s = 1\n"
    )


def acked(daemon: Daemon) -> list[int]:
    return [
        int(match.group(1))
        for line in daemon.read_log().splitlines()
        if (match := ACKED.search(line.rstrip()))
    ]


def writer_row(daemon: Daemon) -> dict[str, Any] | None:
    reply = daemon.request("list")
    if not reply["ok"]:
        return None
    rows = [r for r in reply["result"]["processes"] if r["component"] == "writer"]
    return rows[0] if rows else None


def run_kills(app: App, start_daemon: Callable[..., Daemon], kills: int, seed: int) -> None:
    rng = random.Random(seed)
    write_app(app)
    daemon = start_daemon()
    killed_pids: list[int] = []
    last_kill = 0.0
    for _ in range(kills):
        before = len(acked(daemon))
        row = daemon.wait_for(
            lambda: (r := writer_row(daemon)) and r["pid"] not in killed_pids and r,
            SETTLE_S,
            "the writer to run",
        )
        daemon.wait_for(
            lambda seen=before: len(acked(daemon)) > seen, SETTLE_S, "the writer to commit"
        )
        worker = daemon.workers()[row["worker"]]
        time.sleep(max(0.0, last_kill + KILL_SPACING_S - time.monotonic()))
        time.sleep(rng.uniform(0.0, 0.2))
        os.kill(worker["pid"], signal.SIGKILL)
        last_kill = time.monotonic()
        killed_pids.append(row["pid"])
    daemon.wait_for(
        lambda: (r := writer_row(daemon)) and r["pid"] not in killed_pids,
        SETTLE_S,
        "the writer to run after the last kill",
    )
    assert daemon.stop() == 0
    assert "cannot open" not in daemon.read_log()

    acknowledged = acked(daemon)
    assert len(acknowledged) > kills
    store = KvStore(str(app.directory / STORE))
    try:
        present = {key: int.from_bytes(value, "little") for key, value in store.items(b"crash")}
        assert store.stats()["entries"] == len(present)
    finally:
        store.close()
    following = present.pop(b"next")
    a = {struct.unpack("<I", k[1:])[0]: v for k, v in present.items() if k[:1] == b"a"}
    b = {struct.unpack("<I", k[1:])[0]: v for k, v in present.items() if k[:1] == b"b"}
    assert len(a) + len(b) == len(present)
    # Acknowledged means present, with the value written.
    missing = [i for i in acknowledged if a.get(i) != i or b.get(i) != i]
    assert not missing, f"acknowledged but lost: {missing[:10]}"
    # All or nothing, and nothing out of order: exactly transactions 0..next-1.
    assert set(a) == set(b) == set(range(following))
    assert all(v == i for i, v in a.items())


def test_acknowledged_writes_survive_sigkill_of_the_writing_worker(
    app: App, start_daemon: Callable[..., Daemon]
) -> None:
    run_kills(app, start_daemon, kills=12, seed=7)


@pytest.mark.slow
# 100 kills at least KILL_SPACING_S apart, each waiting for the new worker:
# longer than the suite's 120 s default.
@pytest.mark.timeout(600)
def test_acknowledged_writes_survive_a_hundred_sigkills(
    app: App, start_daemon: Callable[..., Daemon]
) -> None:
    run_kills(app, start_daemon, kills=100, seed=11)
