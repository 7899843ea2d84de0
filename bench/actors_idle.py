"""Idle processes: how many one worker parks, the RSS and maps each costs, the time to stop them.

Runs in: a benchmark process of its own (``python -m bench actors``),
which runs each census in a child process of its own (``python -m
bench.actors_idle idle-rss|thread-rss COUNT``), so its memory is measured
from a clean start and freed when it ends.

``idle-rss``: one in-process worker (``bench.actors_worker.Worker``, a
real ``WasmHost`` with ``COUNT`` pool slots and a limit of ``COUNT``
processes) parks processes in ``rusm.recv`` forever, ``CHUNK`` at a time,
waiting for each chunk to park, until ``COUNT`` are parked or the host
refuses: a spawn that raises, processes that stop parking (no progress
for ``STALL_S``), or the ``SPAWN_BUDGET_S`` used up. It says which, and
then times ``host.shutdown`` (the drain of SIGTERM) of all of them.

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
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
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

IDLE = 100_000
# Spawned between two looks at how many are parked: small enough that a
# stall shows within one chunk, large enough that the looks cost little.
CHUNK = 1000
# Bounds, so a census always ends by itself: no chunk parks for this long,
# the spawns as a whole, the drain, and the child altogether.
STALL_S = 5.0
SPAWN_BUDGET_S = 180.0
SHUTDOWN_TIMEOUT_S = 120.0
CHILD_TIMEOUT_S = SPAWN_BUDGET_S + SHUTDOWN_TIMEOUT_S + 60.0
# Maps a parked process may take at most (6 with a guest thread each),
# when sizing vm.max_map_count for the census.
MAPS_PER_PROCESS = 8
MAX_MAP_COUNT = Path("/proc/sys/vm/max_map_count")
# The baseline threads' stack size: that of a guest thread when every
# process had one (16 MiB), kept so the baseline stays one figure.
THREAD_STACK_BYTES = 16 << 20


def _rss() -> int:
    rss: int = psutil.Process().memory_info().rss
    return rss


def _maps() -> int:
    with open("/proc/self/maps", encoding="ascii", errors="replace") as file:
        return sum(1 for _ in file)


def _progress(**fields: Any) -> None:
    print(json.dumps({"progress": fields}), flush=True)


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
        before = {"rss_before": _rss(), "maps_before": _maps()}
        result.update(before, threads_before=threading.active_count())
        started = time.perf_counter()
        stop = ""
        while not stop and len(host.processes) < count:
            stop = _spawn_chunk(host, min(CHUNK, count - len(host.processes)))
            parked = _wait_parked(host, len(host.processes))
            elapsed = time.perf_counter() - started
            if not stop and parked < len(host.processes):
                stop = _stall(host, parked, worker.records)
            if not stop and elapsed > SPAWN_BUDGET_S:
                stop = f"the spawn budget of {SPAWN_BUDGET_S:.0f} s was used up"
            _progress(parked=parked, rss=_rss(), maps=_maps(), spawn_s=round(elapsed, 3), **before)
        result.update(
            spawn_s=time.perf_counter() - started,
            parked=_count_parked(host),
            stop=stop,
            rss_after=_rss(),
            maps=_maps(),
            threads_after=threading.active_count(),
            os_threads_after=psutil.Process().num_threads(),
            crashed=host.exits.get("crashed", 0),
        )
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
        parked = _count_parked(host)
        if parked >= count:
            return parked
        if parked != last:
            last, last_change = parked, time.monotonic()
        elif time.monotonic() - last_change > STALL_S:
            return parked
        time.sleep(0.01)


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
        for _ in range(min(CHUNK, count - len(threads))):
            thread = threading.Thread(target=park, daemon=True)
            try:
                thread.start()
            except RuntimeError as exc:
                stop = f"thread start raised {exc}"
                break
            started.acquire()
            threads.append(thread)
        _progress(parked=len(threads), rss=_rss(), maps=_maps())
    result.update(
        spawn_s=time.perf_counter() - began,
        parked=len(threads),
        stop=stop,
        rss_after=_rss(),
        maps=_maps(),
    )
    began = time.perf_counter()
    gate.set()
    for thread in threads:
        thread.join(SHUTDOWN_TIMEOUT_S)
    result["shutdown_s"] = time.perf_counter() - began
    result["left"] = sum(1 for t in threads if t.is_alive())
    return result


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
    if lines and "progress" not in lines[-1] and not failure:
        return lines[-1], ""
    last: dict[str, Any] = lines[-1]["progress"] if lines else {}
    tail = stderr.strip().splitlines()[-3:]
    return last, f"{mode} {failure or 'printed no census'}: {' | '.join(tail)}"


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
    if rusm_failed:
        note(f"rusm's census failed: {rusm_failed}")
        if rusm:
            added = max(1, rusm["parked"] - 1)
            note(
                f"its last progress: {rusm['parked']:,} parked in {rusm['spawn_s']:.1f} s, "
                f"{(rusm['rss'] - rusm['rss_before']) / added / 1024:.1f} KiB of RSS and "
                f"{(rusm['maps'] - rusm['maps_before']) / added:.1f} maps each"
            )
        note(limit)
        return
    added = max(1, rusm["parked"] - 1)
    base_added = max(1, base.get("parked", 1) - 1) if not base_failed else 0
    erl_ok = isinstance(erl, dict)
    _idle_rows(rusm, added, base, base_added, erl, erl_label=erlang.label(1))
    if rusm["pooling"]:
        pool = f"{rusm['pool_slots']:,} pool slots"
    else:
        pool = f"on-demand allocation ({rusm['fallback'] or 'no pool'})"
    note(
        f"rusm parked {rusm['parked']:,} of {rusm['wanted']:,} in {rusm['spawn_s']:.1f} s with "
        f"{rusm['threads_after']:,} threads ({rusm['os_threads_after']:,} in the kernel's count), "
        f"{pool}; {rusm['left']} processes left after the drain"
    )
    note(f"rusm stopped: {rusm['stop'] or 'no, all parked'}")
    if base_failed:
        note(f"baseline census failed: {base_failed}")
    else:
        note(f"threads: {base['parked']:,} of {base['wanted']:,}; stopped: {base['stop'] or 'no'}")
    if not erl_ok:
        note(f"Erlang: {erl}")
    note(limit)
    _limits(rusm, added)


def _idle_rows(
    rusm: dict[str, Any],
    added: int,
    base: dict[str, Any],
    base_added: int,
    erl: dict[str, Any] | str,
    *,
    erl_label: str,
) -> None:
    parked = f"{rusm['parked']:,} parked"
    what = f"{base.get('parked', 0):,} threads on an Event; {erl_label}"
    per = (rusm["rss_after"] - rusm["rss_before"]) / added / 1024
    base_per = (base["rss_after"] - base["rss_before"]) / base_added / 1024 if base_added else None
    erl_per: float | str = erl["rss_bytes"] / erl["n"] / 1024 if isinstance(erl, dict) else "–"
    row(f"RSS per idle process ({parked})", "KiB", per, base_per, erl_per, notes=what)
    if isinstance(erl, dict):
        note(
            f"(Erlang: erlang:memory(processes) {erl['processes_bytes'] / erl['n'] / 1024:.2f} "
            f"KiB each, process_info memory {erl['process_info_bytes']:,} bytes)"
        )
    maps = (rusm["maps"] - rusm["maps_before"]) / added
    base_maps = (base["maps"] - base["maps_before"]) / base_added if base_added else None
    erl_maps: float | str = erl["maps"] / erl["n"] if isinstance(erl, dict) else "–"
    row(f"memory maps per idle process ({parked})", "maps", maps, base_maps, erl_maps, notes=what)
    stop = rusm["shutdown_s"]
    base_stop = base["shutdown_s"] if base_added else None
    erl_stop: float | str = erl["stop_ns"] / 1e9 if isinstance(erl, dict) else "–"
    row(f"stopping them all ({parked})", "s", stop, base_stop, erl_stop, notes=what)


def _limits(rusm: dict[str, Any], added: int) -> None:
    """How far the count could go on this machine, limit by limit."""
    per = max(1.0, (rusm["rss_after"] - rusm["rss_before"]) / added)
    maps = (rusm["maps"] - rusm["maps_before"]) / added
    max_maps = int(_read(MAX_MAP_COUNT) or 0)
    pid_max = int(_read(Path("/proc/sys/kernel/pid_max")) or 0)
    threads_max = int(_read(Path("/proc/sys/kernel/threads-max")) or 0)
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


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in CENSUS or not sys.argv[2].isdigit():
        print(f"usage: python -m bench.actors_idle {{{'|'.join(CENSUS)}}} COUNT", file=sys.stderr)
        sys.exit(2)
    print(json.dumps(CENSUS[sys.argv[1]](int(sys.argv[2]))), flush=True)
