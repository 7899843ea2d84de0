"""Idle processes: how many one worker parks, the RSS and maps each costs, the time to stop them.

Runs in: a benchmark process of its own (``python -m bench actors``),
which runs each census in a child process of its own (``python -m
bench.actors_idle idle-rss|thread-rss COUNT``), so its memory is measured
from a clean start and freed when it ends.

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
says how far it got. The parent prints RSS per process, memory maps per
process (``/proc/self/maps`` lines, what ``vm.max_map_count`` limits), the
stop time, how far each got and why it stopped, beside Erlang's census of
as many processes parked in ``receive``.

The parent raises ``vm.max_map_count`` for the census when the machine
lets it (root, a writable ``/proc/sys``) and puts the old value back
afterwards; when it cannot, it says so and the census meets the limit.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil

from bench.actors_erlang import Erlang
from bench.actors_table import note, row
from bench.actors_worker import IDLE_GUEST, Worker, wat
from rusmd.config.model import LogLevel
from rusmd.wasm.host import WasmHost
from rusmd.wasm.process import ProcessState

# Processes the idle census parks by default: issue #20's goal for one worker.
IDLE = 100_000
# Spawned between two looks at how many are parked: small enough that a
# stall shows within one chunk, large enough that the looks cost little.
CHUNK = 1000
# Bounds, so a census always ends by itself: no chunk parks for this long,
# the spawns as a whole, the drain, and the child altogether.
STALL_S = 5.0
SPAWN_BUDGET_S = 120.0
SHUTDOWN_TIMEOUT_S = 120.0
CHILD_TIMEOUT_S = SPAWN_BUDGET_S + SHUTDOWN_TIMEOUT_S + 60.0
# Tasks (threads) the census leaves free below kernel.pid_max and
# kernel.threads-max, machine-wide: a census of a thread per process would
# otherwise take every pid, and every other program on the machine would
# fail to fork or start a thread until it ends.
PID_HEADROOM = 4096
# Maps a parked process may take at most (6 with a guest thread each),
# when sizing vm.max_map_count for the census.
MAPS_PER_PROCESS = 8
MAX_MAP_COUNT = Path("/proc/sys/vm/max_map_count")
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
    limits = [
        int(_read(Path(f"/proc/sys/kernel/{name}")) or 0) for name in ("pid_max", "threads-max")
    ]
    return min(limits) - PID_HEADROOM - tasks


def _headroom(chunk: int) -> str:
    """Why starting ``chunk`` more threads would crowd the machine, or ""."""
    left = _tasks_left()
    if left >= chunk:
        return ""
    return (
        f"{max(0, left):,} threads left before the machine's pid/thread limits less "
        f"{PID_HEADROOM:,} kept free for other programs (kernel.pid_max "
        f"{_read(KERNEL / 'pid_max')}, kernel.threads-max {_read(KERNEL / 'threads-max')})"
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
        worker.loop.close()
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


# ── the parent ──────────────────────────────────────────────────────────


@contextmanager
def map_limit(count: int) -> Iterator[str]:
    """``vm.max_map_count`` raised for ``count`` processes where allowed; yields what was done."""
    try:
        old = int(MAX_MAP_COUNT.read_text())
    except (OSError, ValueError) as exc:
        yield f"vm.max_map_count unreadable ({exc}); left alone"
        return
    wanted = old + count * MAPS_PER_PROCESS
    if old >= wanted:
        yield f"vm.max_map_count {old:,}, enough"
        return
    try:
        MAX_MAP_COUNT.write_text(str(wanted))
    except OSError as exc:
        yield f"vm.max_map_count {old:,} not raised ({exc.strerror}): the census meets it"
        return
    # A SIGTERM to the benchmark must still put the machine's value back.
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        yield f"vm.max_map_count raised from {old:,} to {wanted:,} for the census"
    finally:
        MAX_MAP_COUNT.write_text(str(old))
        signal.signal(signal.SIGTERM, previous)


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def census(mode: str, count: int) -> tuple[dict[str, Any], str]:
    """Run a census child: its last line (the census, or its last progress), and why it failed."""
    command = [sys.executable, "-m", "bench.actors_idle", mode, str(count)]
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S, check=False
        )
        stdout, stderr, failure = done.stdout, done.stderr, _exit_text(done.returncode)
    except subprocess.TimeoutExpired as exc:
        stdout, stderr = _text(exc.stdout), _text(exc.stderr)
        failure = f"killed after {CHILD_TIMEOUT_S:.0f} s"
    lines = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    tail = " | ".join(stderr.strip().splitlines()[-3:])
    if lines and "progress" not in lines[-1]:
        # The census is complete; a child that then fails to exit cleanly
        # (daemon threads at interpreter exit) only earns a note.
        lines[-1]["exit"] = f"{failure}: {tail}" if failure else ""
        return lines[-1], ""
    last: dict[str, Any] = lines[-1]["progress"] if lines else {}
    return last, f"{mode} {failure or 'printed no census'}: {tail}"


def _exit_text(code: int) -> str:
    if code == 0:
        return ""
    if code < 0:
        return f"died of {signal.Signals(-code).name}"
    return f"exited {code}"


def _text(data: bytes | str | None) -> str:
    if isinstance(data, bytes):
        return data.decode(errors="replace")
    return data or ""


def idle_processes(count: int, erlang: Erlang) -> None:
    """Park ``count`` processes on one worker, beside as many threads and Erlang processes."""
    with map_limit(count) as limit:
        rusm, rusm_failed = census("idle-rss", count)
        base, base_failed = census("thread-rss", count)
    erl = erlang.idle(count)
    if "rss_after" not in rusm:
        note(f"rusm's census failed before it parked anything: {rusm_failed}")
    else:
        in_receive = "" if isinstance(erl, str) else ", parked in receive"
        _idle_rows(rusm, base, erl, label=erlang.label(1) + in_receive)
        _how_far("rusm", rusm, rusm_failed)
        if rusm.get("pooling"):
            note(f"  {rusm['pool_slots']:,} pool slots")
        elif "pooling" in rusm:
            note(f"  on-demand allocation: {rusm['fallback'] or 'no pool'}")
        if "os_threads_after" in rusm:
            note(
                f"  {rusm['fibers']:,} processes on fibers, {rusm['threads_after']:,} threads "
                f"({rusm['os_threads_after']:,} in the kernel's count), "
                f"{rusm.get('crashed', 0):,} crashed"
            )
    _how_far("threads", base, base_failed)
    note(limit)
    if "rss_after" in rusm:
        _limits(rusm)


def _how_far(who: str, census: dict[str, Any], failed: str) -> None:
    """How many parked, why the census stopped, how the drain went."""
    if "parked" not in census:
        note(f"{who}: census failed: {failed}")
        return
    note(
        f"{who}: {census['parked']:,} of {census['wanted']:,} parked in "
        f"{census['spawn_s']:.1f} s; stopped: {census['stop'] or 'no, all parked'}"
    )
    if "shutdown_s" in census:
        note(f"  stopped them all in {census['shutdown_s']:.1f} s, {census['left']:,} left")
    if failed or census.get("exit"):
        note(f"  the census child failed: {failed or census['exit']}")


def _per(census: dict[str, Any], name: str) -> float | None:
    """The growth of ``rss`` or ``maps`` per parked process past the first (None if unmeasured)."""
    after = census.get("rss_after" if name == "rss" else "maps")
    if after is None or census.get("parked", 0) < 2:
        return None
    growth: float = (after - census[f"{name}_before"]) / (census["parked"] - 1)
    return growth


def _idle_rows(
    rusm: dict[str, Any], base: dict[str, Any], erl: dict[str, Any] | str, *, label: str
) -> None:
    parked = f"{rusm['parked']:,} parked"
    notes = f"{base.get('parked', 0):,} threads on an Event; {label}"
    base_rss = _per(base, "rss")
    erl_kib: float | str
    erl_maps: float | str
    erl_stop: float | str
    erl_kib = erl_maps = erl_stop = erl if isinstance(erl, str) else ""
    if isinstance(erl, dict):
        erl_kib = erl["rss_bytes"] / erl["n"] / 1024
        erl_maps = erl["maps"] / erl["n"]
        erl_stop = erl["stop_ns"] / 1e6
    row(
        f"RSS per idle process ({parked})",
        "KiB",
        (_per(rusm, "rss") or 0.0) / 1024,
        None if base_rss is None else base_rss / 1024,
        erl_kib,
        notes=notes,
    )
    if isinstance(erl, dict):
        note(
            f"(Erlang: erlang:memory(processes) {erl['processes_bytes'] / erl['n'] / 1024:.2f} "
            f"KiB each, process_info memory {erl['process_info_bytes']:,} bytes, "
            f"{erl['maps']} maps in all)"
        )
    maps = _per(rusm, "maps") or 0.0
    row(
        f"memory maps per idle process ({parked})",
        "maps",
        maps,
        _per(base, "maps"),
        erl_maps,
        notes=notes,
    )
    if "shutdown_s" not in rusm:
        note(f"stopping them all ({parked}): the drain did not end within the census's bound")
        return
    stop, base_stop = rusm["shutdown_s"] * 1000, base.get("shutdown_s")
    base_ms = None if base_stop is None else base_stop * 1000
    row(f"stopping them all ({parked})", "ms", stop, base_ms, erl_stop, notes=notes)


def _limits(rusm: dict[str, Any]) -> None:
    """How far the count could go on this machine, limit by limit."""
    per = max(1.0, _per(rusm, "rss") or 0.0)
    maps = _per(rusm, "maps") or 0.0
    max_maps = int(_read(MAX_MAP_COUNT) or 0)
    pid_max = int(_read(KERNEL / "pid_max") or 0)
    threads_max = int(_read(KERNEL / "threads-max") or 0)
    nproc = resource.getrlimit(resource.RLIMIT_NPROC)[0]
    memory = psutil.virtual_memory().total
    note("how far the count goes:")
    note(f"  memory, {memory / (1 << 30):.0f} GiB / RSS each: {memory / per:,.0f} processes")
    if max_maps and maps > 0:
        note(
            f"  vm.max_map_count {max_maps:,} (the machine's own value) per OS process, "
            f"{maps:.1f} maps each: {(max_maps - rusm['maps_before']) / maps:,.0f} per worker"
        )
    ulimit = "unlimited" if nproc == resource.RLIM_INFINITY else f"{nproc:,}"
    note(
        f"  a thread each: kernel.pid_max {pid_max:,} and kernel.threads-max {threads_max:,} "
        f"(all OS processes together), ulimit -u {ulimit}"
    )


def _read(path: Path) -> str:
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
