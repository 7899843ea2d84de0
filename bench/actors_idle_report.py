"""The idle census's report: rusm's, the threads' and Erlang's, side by side.

Runs in: a benchmark process of its own (``python -m bench actors``),
which runs each census in a child process (``bench.actors_idle``) and
Erlang's in a VM (``bench.actors_erlang``), then prints RSS per process,
memory maps per process (``/proc/self/maps`` lines, what
``vm.max_map_count`` limits), the time to stop them all, how far each got
and why it stopped, and how far the machine's limits would let the count
go.

It raises ``vm.max_map_count`` for the census when the machine lets it
(root, a writable ``/proc/sys``) and puts the old value back afterwards;
when it cannot, it says so and the census meets the limit.
"""

from __future__ import annotations

import json
import resource
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil

from bench.actors_erlang import Erlang
from bench.actors_idle import KERNEL, SHUTDOWN_TIMEOUT_S, SPAWN_BUDGET_S, read_text
from bench.actors_table import note, row

# Processes the idle census parks by default: issue #20's goal for one worker.
IDLE = 100_000
# A census child that outlives its spawn budget and its drain is stuck.
CHILD_TIMEOUT_S = SPAWN_BUDGET_S + SHUTDOWN_TIMEOUT_S + 60.0
# Maps a parked process may take at most (6 with a guest thread each),
# when sizing vm.max_map_count for the census.
MAPS_PER_PROCESS = 8
MAX_MAP_COUNT = Path("/proc/sys/vm/max_map_count")


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
    max_maps = int(read_text(MAX_MAP_COUNT) or 0)
    pid_max = int(read_text(KERNEL / "pid_max") or 0)
    threads_max = int(read_text(KERNEL / "threads-max") or 0)
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
