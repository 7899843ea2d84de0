"""The idle census: how many processes one worker parks, and what each costs.

Runs in: a child process of the actors benchmark of its own (``python -m
bench.actors_idle idle-rss|thread-rss COUNT``, started by
``bench.actors_idle_report``), so its memory is measured from a clean
start and freed when it ends.

``idle-rss``: one in-process worker (``bench.actors_worker.Worker``, a
real ``WasmHost`` with ``COUNT`` pool slots and a limit of ``COUNT``
processes) parks processes in ``rusm.recv`` forever, ``CHUNK`` at a time,
waiting for each chunk to park, until ``COUNT`` are parked or it has to
stop: a spawn that raises, processes that stop parking (no progress for
``STALL_S``), the ``SPAWN_BUDGET_S`` used up, or the machine's pids and
threads down to ``PID_HEADROOM``. It says which, and then times
``host.shutdown`` (the drain of SIGTERM) of all of them.

``thread-rss``: the baseline, as many Python threads parked on one
``threading.Event`` with the guest threads' stack size; its stop time is
setting the event and joining them all.

Both print a JSON line of progress after each chunk and a last JSON line
with the census, so a child the kernel kills (or one that aborts) still
says how far it got.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from bench.actors_worker import IDLE_GUEST, Worker, wat
from rusmd.config.model import LogLevel
from rusmd.wasm.host import WasmHost
from rusmd.wasm.process import ProcessState

# Spawned between two looks at how many are parked: small enough that a
# stall shows within one chunk, large enough that the looks cost little.
CHUNK = 1000
# Bounds, so a census always ends by itself: no chunk parks for this long,
# the spawns as a whole, the drain.
STALL_S = 5.0
SPAWN_BUDGET_S = 120.0
SHUTDOWN_TIMEOUT_S = 120.0
# Tasks (threads) the census leaves free below kernel.pid_max and
# kernel.threads-max, machine-wide: a census of a thread per process would
# otherwise take every pid, and every other program on the machine would
# fail to fork or start a thread until it ends.
PID_HEADROOM = 4096
KERNEL = Path("/proc/sys/kernel")
# The baseline threads' stack size: that of a guest thread when every
# process had one (16 MiB), kept so the baseline stays one figure.
THREAD_STACK_BYTES = 16 << 20


def _rss() -> int:
    rss: int = psutil.Process().memory_info().rss
    return rss


def _maps() -> int:
    with open("/proc/self/maps", encoding="ascii", errors="replace") as file:
        return sum(1 for _ in file)


def _progress(fields: dict[str, Any]) -> None:
    print(json.dumps({"progress": fields}), flush=True)


def _tasks_left() -> int:
    """Threads the machine may still start before ``PID_HEADROOM`` (``/proc/loadavg``'s total)."""
    tasks = int(Path("/proc/loadavg").read_text().split()[3].split("/")[1])
    limits = [int(read_text(KERNEL / name) or 0) for name in ("pid_max", "threads-max")]
    return min(limits) - PID_HEADROOM - tasks


def _headroom(chunk: int) -> str:
    """Why starting ``chunk`` more threads would crowd the machine, or ""."""
    left = _tasks_left()
    if left >= chunk:
        return ""
    return (
        f"{max(0, left):,} threads left before the machine's pid/thread limits less "
        f"{PID_HEADROOM:,} kept free for other programs (kernel.pid_max "
        f"{read_text(KERNEL / 'pid_max')}, kernel.threads-max {read_text(KERNEL / 'threads-max')})"
    )


# ── the children ────────────────────────────────────────────────────────


def idle_rss(count: int) -> dict[str, Any]:
    """Park up to ``count`` processes in recv on one worker; the census."""
    result: dict[str, Any] = {"wanted": count}
    with tempfile.TemporaryDirectory(prefix="rusm-bench-") as directory:
        worker = Worker(
            Path(directory),
            {"idle": wat(IDLE_GUEST)},
            pool_slots=count,
            max_processes=count,
            level=LogLevel.WARN,
        )
        host = worker.host
        info = host.engine_info
        result.update(pooling=info.pooling, pool_slots=info.pool_slots)
        result["fallback"] = info.fallback_reason
        # One process first: module code, runner, first store pages are not per-process.
        host.spawn("idle")
        _wait_parked(host, 1)
        result.update(rss_before=_rss(), maps_before=_maps())
        started = time.perf_counter()
        stop = ""
        while not stop and len(host.processes) < count:
            chunk = min(CHUNK, count - len(host.processes))
            # A process may hold a thread: leave the machine its pids.
            stop = _headroom(chunk) or _spawn_chunk(host, chunk)
            parked = _wait_parked(host, len(host.processes))
            elapsed = time.perf_counter() - started
            if not stop and parked < len(host.processes):
                stop = _stall(host, parked, worker.records)
            if not stop and elapsed > SPAWN_BUDGET_S:
                stop = f"the spawn budget of {SPAWN_BUDGET_S:.0f} s was used up"
            result.update(parked=parked, spawn_s=elapsed, stop=stop, rss_after=_rss(), maps=_maps())
            _progress(result)
        result.update(
            parked=_count_parked(host),
            # How the parked processes run: on fibers of the loop, or a guest thread each.
            fibers=sum(1 for p in list(host.processes.values()) if getattr(p, "fiber", None)),
            threads_after=threading.active_count(),
            os_threads_after=psutil.Process().num_threads(),
            crashed=host.exits.get("crashed", 0),
        )
        # Everything but the drain, in case the drain outlives the child's bound.
        _progress(result)
        started = time.perf_counter()
        host.shutdown(SHUTDOWN_TIMEOUT_S)
        result["shutdown_s"] = time.perf_counter() - started
        result["left"] = len(host.processes)
    return result


def _spawn_chunk(host: WasmHost, chunk: int) -> str:
    """Spawn ``chunk`` idle processes; why not all of them, or ""."""
    for _ in range(chunk):
        try:
            host.spawn("idle")
        except Exception as exc:
            return f"spawn raised {type(exc).__name__}: {exc}"
    return ""


def _count_parked(host: WasmHost) -> int:
    return sum(1 for p in list(host.processes.values()) if p.state == ProcessState.WAITING)


def _wait_parked(host: WasmHost, count: int) -> int:
    """Wait until ``count`` processes wait in recv, or nothing changes for ``STALL_S``."""
    last, last_change = -1, time.monotonic()
    while True:
        looked = time.perf_counter()
        parked = _count_parked(host)
        if parked >= count:
            return parked
        if parked != last:
            last, last_change = parked, time.monotonic()
        elif time.monotonic() - last_change > STALL_S:
            return parked
        # A look walks every process under the GIL the guests need too:
        # at tens of thousands of processes, looking every 10 ms would
        # slow the spawns it waits for. Look at most a fifth of the time.
        time.sleep(max(0.01, 4 * (time.perf_counter() - looked)))


def _stall(host: WasmHost, parked: int, records: list[Any]) -> str:
    """Why processes stopped parking: their states, threads refused, the host's last words."""
    states = Counter(str(p.state) for p in list(host.processes.values()))
    refused = getattr(getattr(host, "runners", None), "refused", None)
    said = "; ".join(r.text for r in records[-3:])
    return (
        f"{len(host.processes) - parked:,} processes did not park within {STALL_S:.0f} s "
        f"(states {dict(states)}"
        + (f", {refused:,} guest threads refused by the system" if refused else "")
        + (f"; the host logged: {said}" if said else "")
        + ")"
    )


def thread_rss(count: int) -> dict[str, Any]:
    """Park up to ``count`` Python threads on an Event, with the guests' stack size; the census."""
    threading.stack_size(THREAD_STACK_BYTES)
    gate = threading.Event()
    started = threading.Semaphore(0)

    def park() -> None:
        started.release()
        gate.wait()

    threads = [threading.Thread(target=park, daemon=True)]
    threads[0].start()
    started.acquire()
    result: dict[str, Any] = {"wanted": count, "rss_before": _rss(), "maps_before": _maps()}
    stop = ""
    began = time.perf_counter()
    while not stop and len(threads) < count:
        chunk = min(CHUNK, count - len(threads))
        stop = _headroom(chunk) or _start_parked(threads, chunk, park, started)
        result.update(
            parked=len(threads),
            spawn_s=time.perf_counter() - began,
            stop=stop,
            rss_after=_rss(),
            maps=_maps(),
        )
        _progress(result)
    began = time.perf_counter()
    gate.set()
    for thread in threads:
        thread.join(SHUTDOWN_TIMEOUT_S)
    result["shutdown_s"] = time.perf_counter() - began
    result["left"] = sum(1 for t in threads if t.is_alive())
    return result


def _start_parked(
    threads: list[threading.Thread],
    chunk: int,
    park: Callable[[], None],
    started: threading.Semaphore,
) -> str:
    """Start ``chunk`` more parked threads; why not all of them, or ""."""
    for _ in range(chunk):
        thread = threading.Thread(target=park, daemon=True)
        try:
            thread.start()
        except RuntimeError as exc:
            return f"thread start raised {exc}"
        started.acquire()
        threads.append(thread)
    return ""


CENSUS = {"idle-rss": idle_rss, "thread-rss": thread_rss}
"""The child modes: ``python -m bench.actors_idle MODE COUNT``."""


def read_text(path: Path) -> str:
    """A ``/proc`` value, stripped; "" if it cannot be read."""
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def census_main(argv: list[str]) -> None:
    """``MODE COUNT``: run one census, print it, end the process."""
    if len(argv) != 2 or argv[0] not in CENSUS or not argv[1].isdigit():
        print(f"usage: python -m bench.actors_idle {{{'|'.join(CENSUS)}}} COUNT", file=sys.stderr)
        sys.exit(2)
    print(json.dumps(CENSUS[argv[0]](int(argv[1]))), flush=True)
    # The census is out. Guest threads a drain did not end would hold the
    # interpreter's exit for ever; the kernel frees all of it at once.
    os._exit(0)


if __name__ == "__main__":
    census_main(sys.argv[1:])
