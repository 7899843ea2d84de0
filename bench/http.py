"""HTTP serving: a fresh wasm instance per request against uvicorn; WebSocket and SSE.

Runs in: a benchmark process of its own. It starts the real daemon and
the baselines' servers as subprocesses (``bench/http_servers.py``),
drives HTTP with ``wrk`` and the streams with clients of its own
(``bench/http_streams.py``). ``python -m bench http [--duration S]
[--warmup S] [--reps N] [--clients N] [--events N]``; it needs ``wrk``
(``make bench-deps``).

Side by side in one run, each rusmd figure beside its baseline:

1. HTTP ``GET /`` answering ``hello world``: rusmd (``api#home``, a fresh
   sandboxed instance per request) against uvicorn serving a plain ASGI
   app (``bench/http_baseline.py``; uvloop, httptools, no access log),
   each with 1 and then 2 workers, on the same cores and with the same
   ``wrk -t1 -c64``: a ``--warmup`` run (2 s), then a ``--duration`` run
   (10 s) with ``--latency``. Taken in turn, rusmd-1, uvicorn-1, rusmd-2,
   uvicorn-2, ``--reps`` times (1), each server started for its run and
   stopped after it. Figures: requests/s, p50 and p99 latency, socket
   errors and non-2xx answers, and the server's CPU time per request
   (user + system of its whole process tree during the measured run,
   over wrk's request count), and its page faults (minor + major, per
   1,000 requests, from ``/proc/<pid>/stat``). wrk shares the machine's cores with the
   server, so requests/s may be wrk's limit rather than the server's;
   CPU per request holds either way.
2. WebSocket echo round trips/s, ``--clients`` (16) connections each
   sending and awaiting one message at a time, against a websockets
   echo server on uvloop.
3. SSE events/s of one stream of ``--events`` (20,000) events, against
   the ASGI app streaming the same events through uvicorn.

Ratios are rusmd/baseline: above 1 means rusmd's figure is the larger
one (better for a rate, worse for a time or CPU per request).
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

from bench import http_servers, http_streams
from bench.http_servers import Server, cpu_used_s
from bench.worker_restart import _free_port

CONNECTIONS = 64
WORKER_COUNTS = (1, 2)
# wrk's own bound on a run that hangs: the measured time plus this.
WRK_GRACE_S = 30.0

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
    socket_errors: int
    non_2xx: int
    cpu_us: float = 0.0
    """Server CPU µs per request; 0 until ``measure`` fills it in."""
    faults: float = 0.0
    """Server page faults per 1,000 requests; 0 until ``measure`` fills it in."""


def parse_wrk(output: str) -> WrkResult:
    """The figures of ``wrk --latency`` output (socket errors and non-2xx default to 0)."""
    latency = {pct: float(value) * _UNIT_MS[unit] for pct, value, unit in _LATENCY.findall(output)}
    requests, rate = _REQUESTS.search(output), _RATE.search(output)
    if requests is None or rate is None or set(latency) != {"50", "99"}:
        raise ValueError(f"wrk: cannot read its output:\n{output}")
    errors = _SOCKET_ERRORS.search(output)
    non_2xx = _NON_2XX.search(output)
    return WrkResult(
        requests=int(requests.group(1)),
        rate=float(rate.group(1)),
        p50_ms=latency["50"],
        p99_ms=latency["99"],
        socket_errors=sum(int(n) for n in errors.groups()) if errors else 0,
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
    )


def wrk(url: str, duration_s: float) -> str:
    """``wrk -t1 -c64 -dS --latency URL``; its output."""
    seconds = max(1, round(duration_s))
    done = subprocess.run(
        ["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{seconds}s", "--latency", url],
        capture_output=True,
        text=True,
        timeout=seconds + WRK_GRACE_S,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"wrk exited {done.returncode}:\n{done.stdout}{done.stderr}")
    return done.stdout


def measure(server: Server, url: str, warmup_s: float, duration_s: float) -> WrkResult:
    """A warm-up run, then the measured one with the server's CPU time around it."""
    wrk(url, warmup_s)
    before, faults_before = server.cpu(), server.faults()
    result = parse_wrk(wrk(url, duration_s))
    used_s = cpu_used_s(before, server.cpu())
    faulted = sum(n - faults_before.get(pid, 0) for pid, n in server.faults().items())
    per = 1 / result.requests if result.requests else float("nan")
    return WrkResult(
        **{**result.__dict__, "cpu_us": used_s * 1e6 * per, "faults": faulted * 1000 * per}
    )


# ── the HTTP table ──────────────────────────────────────────────────────

_COLUMNS = (
    ("config", 11),
    ("rusmd req/s", 12),
    ("uvicorn req/s", 13),
    ("ratio", 6),
    ("rusmd p50/p99 ms", 17),
    ("uvicorn p50/p99 ms", 18),
    ("rusmd CPU µs/req", 16),
    ("uvicorn CPU µs/req", 18),
    ("ratio", 6),
    ("faults/1k req rusmd/uvicorn", 27),
    ("errors rusmd/uvicorn", 20),
)


def _header() -> None:
    print(" | ".join(f"{name:<{width}}" for name, width in _COLUMNS))
    print("-+-".join("-" * width for _, width in _COLUMNS))


def _row(config: str, rusm: WrkResult, base: WrkResult) -> None:
    cells = (
        config,
        f"{rusm.rate:,.0f}",
        f"{base.rate:,.0f}",
        f"{rusm.rate / base.rate:.2f}",
        f"{rusm.p50_ms:.2f} / {rusm.p99_ms:.2f}",
        f"{base.p50_ms:.2f} / {base.p99_ms:.2f}",
        f"{rusm.cpu_us:.1f}",
        f"{base.cpu_us:.1f}",
        f"{rusm.cpu_us / base.cpu_us:.2f}",
        f"{rusm.faults:.1f} / {base.faults:.1f}",
        f"{_errors(rusm)} / {_errors(base)}",
    )
    print(
        " | ".join(
            f"{cell:<{width}}" for cell, (_, width) in zip(cells, _COLUMNS, strict=True)
        ).rstrip()
    )


def _errors(result: WrkResult) -> str:
    if not result.socket_errors and not result.non_2xx:
        return "0"
    return f"{result.socket_errors} sock, {result.non_2xx} non-2xx"


def _median(results: list[WrkResult]) -> WrkResult:
    def mid(field: str) -> float:
        return float(statistics.median(getattr(r, field) for r in results))

    return WrkResult(
        requests=round(mid("requests")),
        rate=mid("rate"),
        p50_ms=mid("p50_ms"),
        p99_ms=mid("p99_ms"),
        socket_errors=sum(r.socket_errors for r in results),
        non_2xx=sum(r.non_2xx for r in results),
        cpu_us=mid("cpu_us"),
        faults=mid("faults"),
    )


def http_section(app: http_servers.RusmApp, args: argparse.Namespace) -> None:
    """rusmd-1, uvicorn-1, rusmd-2, uvicorn-2, ``--reps`` times; one row per run."""
    print(
        f"HTTP GET / 'hello world': wrk -t1 -c{CONNECTIONS}, {args.warmup:g} s warm-up, "
        f"{args.duration:g} s measured; rusmd {{1,2}} workers (profile max, --cpus 2N) "
        "against uvicorn --workers {1,2}"
    )
    _header()
    port = _free_port()
    runs: dict[int, list[tuple[WrkResult, WrkResult]]] = {n: [] for n in WORKER_COUNTS}
    for rep in range(args.reps):
        for workers in WORKER_COUNTS:
            pair = (
                _run(http_servers.rusmd(app, workers), app.http_port, args),
                _run(http_servers.uvicorn(port, workers, app.directory), port, args),
            )
            runs[workers].append(pair)
            label = f"{workers} worker{'s' if workers > 1 else ''}"
            _row(label if args.reps == 1 else f"{label} #{rep + 1}", *pair)
    if args.reps > 1:
        for workers, pairs in runs.items():
            rusm, base = _median([p[0] for p in pairs]), _median([p[1] for p in pairs])
            _row(f"{workers} median", rusm, base)


def _run(server: AbstractContextManager[Server], port: int, args: argparse.Namespace) -> WrkResult:
    with server as running:
        return measure(running, f"http://127.0.0.1:{port}/", args.warmup, args.duration)


# ── entry ───────────────────────────────────────────────────────────────


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench http",
        description="rusmd against uvicorn and websockets: HTTP req/s, WS round trips, SSE.",
    )
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds (10)")
    parser.add_argument("--warmup", type=float, default=2.0, help="HTTP warm-up seconds (2)")
    parser.add_argument("--reps", type=int, default=1, help="times to repeat every figure (1)")
    parser.add_argument("--clients", type=int, default=16, help="WebSocket connections (16)")
    parser.add_argument("--events", type=int, default=20_000, help="SSE events a stream (20000)")
    return parser.parse_args(list(argv))


def main(argv: Sequence[str] = ()) -> int:
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        print("bench http: wrk is not on PATH; install it with `apt-get install -y wrk` (Debian)")
        print("            or `make bench-deps`")
        return 2
    with tempfile.TemporaryDirectory(prefix="rusm-bench-") as directory:
        app = http_servers.write_app(Path(directory) / "app", args.events)
        sections: list[Callable[[http_servers.RusmApp, argparse.Namespace], None]] = [
            http_section,
            http_streams.ws_section,
            http_streams.sse_section,
        ]
        for section in sections:
            section(app, args)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
