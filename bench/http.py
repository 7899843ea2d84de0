"""HTTP serving: a fresh wasm instance per request against uvicorn; WebSocket and SSE.

Runs in: a benchmark process of its own. It starts the real daemon and
the baselines' servers as subprocesses (``bench/http_servers.py``),
drives HTTP with ``wrk`` and the streams with clients of its own
(``bench/http_streams.py``). It needs ``wrk`` (``make bench-deps``) and
builds the C guests with ``make`` (``bench/guests/http_*.c``)::

    python -m bench http [--duration S] [--warmup S] [--reps N]
        [--sections http,ws,sse] [--workloads hello,users,items,kv]
        [--connections 64,1024] [--workers 1,2] [--clients N] [--events N]

Every option defaults to everything; a short check of one case is
``python -m bench http --sections http --workloads users --connections 64
--workers 1 --duration 1 --warmup 0.5``.

Side by side in one run, each rusmd figure beside its baseline:

1. HTTP (``--sections http``), the workloads of ``bench/http_workloads.py``
   (``--workloads``), each served by rusmd from a guest (a fresh
   instance per request) and by uvicorn serving a plain ASGI app
   (``bench/http_baseline.py``; uvloop, httptools, no access log) that
   gives the same answer:

   - ``hello``: ``GET /`` answering ``hello world`` (a WAT guest);
   - ``users``: ``GET /users/:id`` reading the id and the
     ``X-Request-Id`` header, answering ~1 KB of JSON (a C reactor);
   - ``items``: ``POST /items`` with a 4 KB JSON body, answering its
     ``name`` (C; a wrk Lua script sends the body);
   - ``kv``: ``GET /kv/:key`` answering a ~200-byte value read from the
     node store (C, ``rusm.kv_get``; the baseline reads an LMDB file of
     its own with py-lmdb, one read transaction per request); the same
     key and value are seeded in both before the run.

   Each at every ``--connections`` count (64 and 1,024: ``wrk -t1 -cN``)
   and every ``--workers`` count (1 and 2; rusmd: ``profile = "max"``
   with ``--cpus 2N``, uvicorn ``--workers N``). Taken in turn: for each
   repetition, worker count and workload, rusmd is started, its answer to
   the workload's sample request is checked (status 200, content type,
   the exact body: a broken handler cannot give a fast figure), then for
   each connection count a ``--warmup`` run (2 s) and a ``--duration``
   run (10 s) with ``--latency``; it is stopped, and uvicorn goes through
   the same. ``--reps`` (1) repeats it all, with medians at the end.
   Figures per row: requests/s, p50 and p99 latency, errors (wrk's
   connect, read, write and timeout socket errors, and non-2xx answers),
   the server's CPU time per request (user + system of its whole
   process tree during the measured run, over wrk's request count) and
   its minor page faults per request (``/proc/<pid>/stat``; the goal is
   0). wrk shares the machine's cores with the server, so requests/s may
   be wrk's limit rather than the server's; CPU per request holds either
   way. The soft limit on open files is raised, for wrk and the servers,
   to what the largest connection count needs.
2. WebSocket echo round trips/s (``--sections ws``), ``--clients`` (16)
   connections each sending and awaiting one message at a time, against
   a websockets echo server on uvloop.
3. SSE events/s (``--sections sse``) of one stream of ``--events``
   (20,000) events, against the ASGI app streaming the same events
   through uvicorn.

Ratios are rusmd/baseline: above 1 means rusmd's figure is the larger
one (better for a rate, worse for a time or CPU per request).
"""

from __future__ import annotations

import argparse
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from pathlib import Path

from bench import http_servers, http_streams, http_workloads
from bench.http_servers import Server, cpu_used_s
from bench.http_workloads import Workload
from bench.worker_restart import _free_port

CONNECTIONS = 64
WORKER_COUNTS = (1, 2)
SECTIONS = ("http", "ws", "sse")
# wrk's own bound on a run that hangs: the measured time plus this.
WRK_GRACE_S = 30.0
# Open files a connection costs: its socket in wrk and in the server, plus
# room for the servers' own files (modules, logs, the store, pipes).
FILES_PER_CONNECTION = 2
FILES_HEADROOM = 256

_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}
_LATENCY = re.compile(r"^\s*(50|99)%\s+([\d.]+)(us|ms|s|m)\s*$", re.MULTILINE)
_REQUESTS = re.compile(r"^\s*(\d+) requests in", re.MULTILINE)
_RATE = re.compile(r"^Requests/sec:\s+([\d.]+)", re.MULTILINE)
_SOCKET_ERRORS = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
_NON_2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")


@dataclass(frozen=True)
class WrkResult:
    """What one ``wrk --latency`` run reports, and the server's CPU during it."""

    requests: int
    rate: float
    p50_ms: float
    p99_ms: float
    connect_errors: int = 0
    read_errors: int = 0
    write_errors: int = 0
    timeouts: int = 0
    non_2xx: int = 0
    cpu_us: float = 0.0
    """Server CPU µs per request; 0 until ``measure`` fills it in."""
    minor_faults: float = 0.0
    """Server minor page faults per request; 0 until ``measure`` fills it in."""

    @property
    def socket_errors(self) -> int:
        """Connect, read, write and timeout errors together."""
        return self.connect_errors + self.read_errors + self.write_errors + self.timeouts


def parse_wrk(output: str) -> WrkResult:
    """The figures of ``wrk --latency`` output (socket errors and non-2xx default to 0)."""
    latency = {pct: float(value) * _UNIT_MS[unit] for pct, value, unit in _LATENCY.findall(output)}
    requests, rate = _REQUESTS.search(output), _RATE.search(output)
    if requests is None or rate is None or set(latency) != {"50", "99"}:
        raise ValueError(f"wrk: cannot read its output:\n{output}")
    errors = _SOCKET_ERRORS.search(output)
    connect, read, write, timeout = (int(n) for n in errors.groups()) if errors else (0,) * 4
    non_2xx = _NON_2XX.search(output)
    return WrkResult(
        requests=int(requests.group(1)),
        rate=float(rate.group(1)),
        p50_ms=latency["50"],
        p99_ms=latency["99"],
        connect_errors=connect,
        read_errors=read,
        write_errors=write,
        timeouts=timeout,
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
    )


def wrk(url: str, duration_s: float, connections: int = CONNECTIONS, script: str = "") -> str:
    """``wrk -t1 -cN -dS --latency [-s SCRIPT] URL``; its output.

    One thread whatever the connection count: wrk and the server share the
    machine's cores, and a second wrk thread would take the server's.
    """
    seconds = max(1, round(duration_s))
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency"]
    with tempfile.NamedTemporaryFile("w", suffix=".lua", prefix="rusm-wrk-") as lua:
        if script:
            lua.write(script)
            lua.flush()
            argv += ["-s", lua.name]
        done = subprocess.run(
            [*argv, url],
            capture_output=True,
            text=True,
            timeout=seconds + WRK_GRACE_S,
            check=False,
        )
    if done.returncode != 0:
        raise RuntimeError(f"wrk exited {done.returncode}:\n{done.stdout}{done.stderr}")
    return done.stdout


def measure(
    server: Server, port: int, workload: Workload, connections: int, args: argparse.Namespace
) -> WrkResult:
    """A warm-up run, then the measured one with the server's CPU and faults around it."""
    url = f"http://127.0.0.1:{port}{workload.path}"
    wrk(url, args.warmup, connections, workload.script)
    before, faults_before = server.cpu(), server.minor_faults()
    result = parse_wrk(wrk(url, args.duration, connections, workload.script))
    used_s = cpu_used_s(before, server.cpu())
    faulted = sum(n - faults_before.get(pid, 0) for pid, n in server.minor_faults().items())
    per = 1 / result.requests if result.requests else float("nan")
    return replace(result, cpu_us=used_s * 1e6 * per, minor_faults=faulted * per)


# ── the HTTP table ──────────────────────────────────────────────────────

_COLUMNS = (
    ("workload", 8),
    ("conns", 5),
    ("workers", 8),
    ("rusmd req/s", 11),
    ("uvicorn req/s", 13),
    ("ratio", 5),
    ("rusmd p50/p99 ms", 16),
    ("uvicorn p50/p99 ms", 18),
    ("rusmd CPU µs/req", 16),
    ("uvicorn CPU µs/req", 18),
    ("ratio", 5),
    ("minflt/req rusmd/uvicorn", 24),
    ("errors rusmd", 12),
    ("errors uvicorn", 14),
)


def _header() -> None:
    print(" | ".join(f"{name:<{width}}" for name, width in _COLUMNS))
    print("-+-".join("-" * width for _, width in _COLUMNS))


def _row(config: tuple[str, str, str], rusm: WrkResult, base: WrkResult) -> None:
    cells = (
        *config,
        f"{rusm.rate:,.0f}",
        f"{base.rate:,.0f}",
        _ratio(rusm.rate, base.rate),
        f"{rusm.p50_ms:.2f} / {rusm.p99_ms:.2f}",
        f"{base.p50_ms:.2f} / {base.p99_ms:.2f}",
        f"{rusm.cpu_us:.1f}",
        f"{base.cpu_us:.1f}",
        _ratio(rusm.cpu_us, base.cpu_us),
        f"{rusm.minor_faults:.3f} / {base.minor_faults:.3f}",
        _errors(rusm),
        _errors(base),
    )
    print(
        " | ".join(
            f"{cell:<{width}}" for cell, (_, width) in zip(cells, _COLUMNS, strict=True)
        ).rstrip()
    )


def _ratio(rusm: float, base: float) -> str:
    return f"{rusm / base:.2f}" if base else "-"


def _errors(result: WrkResult) -> str:
    counts = (
        ("connect", result.connect_errors),
        ("read", result.read_errors),
        ("write", result.write_errors),
        ("timeout", result.timeouts),
        ("non-2xx", result.non_2xx),
    )
    return ", ".join(f"{what} {n}" for what, n in counts if n) or "0"


def _median(results: list[WrkResult]) -> WrkResult:
    def mid(field: str) -> float:
        return float(statistics.median(getattr(r, field) for r in results))

    return WrkResult(
        requests=round(mid("requests")),
        rate=mid("rate"),
        p50_ms=mid("p50_ms"),
        p99_ms=mid("p99_ms"),
        connect_errors=sum(r.connect_errors for r in results),
        read_errors=sum(r.read_errors for r in results),
        write_errors=sum(r.write_errors for r in results),
        timeouts=sum(r.timeouts for r in results),
        non_2xx=sum(r.non_2xx for r in results),
        cpu_us=mid("cpu_us"),
        minor_faults=mid("minor_faults"),
    )


# ── the HTTP section ────────────────────────────────────────────────────

# (workload, connections, workers) → one (rusmd, uvicorn) pair a repetition.
Runs = dict[tuple[str, int, int], list[tuple[WrkResult, WrkResult]]]


def http_section(app: http_servers.RusmApp, args: argparse.Namespace) -> None:
    """For each repetition, worker count and workload: rusmd, then uvicorn, at
    every connection count; one row per (workload, connections, workers)."""
    chosen = [args.all_workloads[name] for name in args.workloads]
    print(
        f"HTTP: wrk -t1 -c{{{','.join(map(str, args.connections))}}}, {args.warmup:g} s "
        f"warm-up, {args.duration:g} s measured; rusmd {{{','.join(map(str, args.workers))}}} "
        "workers (profile max, --cpus 2N) against uvicorn --workers N"
    )
    for workload in chosen:
        print(f"  {workload.name}: {workload.title}")
    _header()
    port = _free_port()
    runs: Runs = {}
    for rep in range(args.reps):
        for workers in args.workers:
            for workload in chosen:
                rusm = _series(
                    "rusmd", http_servers.rusmd(app, workers), app.http_port, workload, args
                )
                uvicorn = http_servers.uvicorn(port, workers, app.directory, args.baseline_store)
                base = _series("uvicorn", uvicorn, port, workload, args)
                for connections in args.connections:
                    pair = rusm[connections], base[connections]
                    runs.setdefault((workload.name, connections, workers), []).append(pair)
                    label = str(workers) if args.reps == 1 else f"{workers} #{rep + 1}"
                    _row((workload.name, str(connections), label), *pair)
    if args.reps > 1:
        for (name, connections, workers), pairs in runs.items():
            rusm_median = _median([p[0] for p in pairs])
            base_median = _median([p[1] for p in pairs])
            _row((name, str(connections), f"{workers} median"), rusm_median, base_median)


def _series(
    name: str,
    server: AbstractContextManager[Server],
    port: int,
    workload: Workload,
    args: argparse.Namespace,
) -> dict[int, WrkResult]:
    """One server up: its answer checked, then measured at every connection count."""
    with server as running:
        http_workloads.check(name, port, workload)
        return {
            connections: measure(running, port, workload, connections, args)
            for connections in args.connections
        }


def raise_file_limit(connections: int) -> None:
    """Raise the soft limit on open files to what ``connections`` need; wrk
    and the servers inherit it.

    Raises:
        RuntimeError: The hard limit is below what is needed.
    """
    needed = FILES_PER_CONNECTION * connections + FILES_HEADROOM
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed or soft == resource.RLIM_INFINITY:
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise RuntimeError(
            f"{connections} connections need {needed} open files; the hard limit is {hard} "
            "(raise it, e.g. `ulimit -Hn`, or pass fewer --connections)"
        )
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


# ── entry ───────────────────────────────────────────────────────────────


def _choices(allowed: Sequence[str]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        names = [name.strip() for name in text.split(",") if name.strip()]
        unknown = [name for name in names if name not in allowed]
        if not names or unknown:
            raise argparse.ArgumentTypeError(
                f"{text!r}: a comma-separated list of {', '.join(allowed)}"
            )
        return names

    return parse


def _counts(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",")]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: a comma-separated list of whole numbers >= 1")
    return counts


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench http",
        description="rusmd against uvicorn and websockets: HTTP req/s, WS round trips, SSE.",
    )
    workloads = list(http_workloads.workloads())
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds (10)")
    parser.add_argument("--warmup", type=float, default=2.0, help="HTTP warm-up seconds (2)")
    parser.add_argument("--reps", type=int, default=1, help="times to repeat every figure (1)")
    parser.add_argument(
        "--sections",
        type=_choices(SECTIONS),
        default=list(SECTIONS),
        help=f"which to run ({','.join(SECTIONS)})",
    )
    parser.add_argument(
        "--workloads",
        type=_choices(workloads),
        default=workloads,
        help=f"HTTP workloads ({','.join(workloads)})",
    )
    parser.add_argument(
        "--connections", type=_counts, default=[64, 1024], help="wrk connections (64,1024)"
    )
    parser.add_argument(
        "--workers", type=_counts, default=list(WORKER_COUNTS), help="worker counts (1,2)"
    )
    parser.add_argument("--clients", type=int, default=16, help="WebSocket connections (16)")
    parser.add_argument("--events", type=int, default=20_000, help="SSE events a stream (20000)")
    return parser.parse_args(list(argv))


def main(argv: Sequence[str] = ()) -> int:
    args = parse_args(argv)
    if "http" in args.sections and shutil.which("wrk") is None:
        print("bench http: wrk is not on PATH; install it with `apt-get install -y wrk` (Debian)")
        print("            or `make bench-deps`")
        return 2
    if "http" in args.sections:
        raise_file_limit(max(args.connections))
    args.all_workloads = http_workloads.workloads()
    with tempfile.TemporaryDirectory(prefix="rusm-bench-") as directory:
        app_dir = Path(directory) / "app"
        guests = http_workloads.build_guests() if "http" in args.sections else None
        app = http_servers.write_app(app_dir, args.events, guests)
        args.baseline_store = Path(directory) / "baseline.lmdb"
        if guests:
            http_workloads.seed(app_dir, args.baseline_store)
        sections: dict[str, Callable[[http_servers.RusmApp, argparse.Namespace], None]] = {
            "http": http_section,
            "ws": http_streams.ws_section,
            "sse": http_streams.sse_section,
        }
        for name in args.sections:
            sections[name](app, args)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
