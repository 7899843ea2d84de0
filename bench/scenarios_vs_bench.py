"""Each node scenario beside its ``python -m bench`` counterpart, measured in one session.

Runs in: a benchmark process of its own (``python -m bench
scenarios-vs-bench``). It runs, each as a child process and in turn:

- ``python -m bench http`` once (the ``hello`` and ``kv`` workloads at
  64 connections on 2 workers, WebSocket echo and SSE on 1 worker);
- ``python -m bench actors`` once (spawns, restarts, the daemon's round
  trips on the same worker and across workers);
- ``rusmd bench SCENARIO --json`` for each scenario that has a
  counterpart, on a daemon sized as its counterpart's (``--cpus`` and
  ``--profile``: the worker count of the counterpart).

It prints one Markdown table: the scenario's figure, its counterpart's,
their ratio, and what still differs between the two (docs/operations.md
says it at length). Figures on a shared or busy machine are noise; take
them on a quiet one::

    python -m bench scenarios-vs-bench [--seconds S]

``--seconds`` (10) is each scenario's run, warm-up included, and the
``--duration`` of ``bench http``; ``--quick`` checks the wiring with short
runs (not figures).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
# Any one child: a run that hangs must still end the comparison.
CHILD_TIMEOUT_S = 3600
# Daemon sizes: profile max with --cpus 2N gives N workers, as bench http
# sizes rusmd; light on 8 cores gives 2, as bench actors' daemon.
ONE_WORKER = ["--cpus", "2", "--profile", "max"]
TWO_WORKERS = ["--cpus", "4", "--profile", "max"]
DAEMON_TWO_WORKERS = ["--cpus", "8", "--profile", "light"]
HTTP_ARGS = [
    *("--sections", "http,ws,sse", "--workloads", "hello,kv"),
    *("--connections", "64", "--workers", "2"),
]
ACTORS_ARGS = ["--sections", "spawn,restarts,daemon"]


@dataclass(frozen=True)
class Pair:
    """One scenario and the figure of ``python -m bench`` it is compared with.

    Attributes:
        scenario: The ``rusmd bench`` scenario.
        daemon: The scenario daemon's flags (its worker count).
        figure: What is compared: ``rate`` (units/s) or a part's ``p50``
            round trip (µs).
        part: The scenario's part for ``p50`` (ping-pong).
        source: ``http`` or ``actors``: which bench output holds the counterpart.
        counterpart: How the counterpart is named in the table.
        find: Reads the counterpart's figure from that output (None if absent).
        differs: What still differs, in a few words.
    """

    scenario: str
    daemon: list[str]
    figure: str
    part: str
    source: str
    counterpart: str
    find: Callable[[str], float | None]
    differs: str


def _number(text: str) -> float:
    return float(text.replace(",", ""))


def http_row(workload: str, workers: int) -> Callable[[str], float | None]:
    """rusmd's req/s in ``bench http``'s table row for ``workload`` at 64 connections."""

    def find(output: str) -> float | None:
        for line in output.splitlines():
            cells = [cell.strip() for cell in line.split("|")]
            if len(cells) > 3 and cells[:3] == [workload, "64", str(workers)]:
                return _number(cells[3])
        return None

    return find


def line_figure(prefix: str, pattern: str = r"rusmd\s+([\d,.]+)") -> Callable[[str], float | None]:
    """The first figure after ``prefix`` on the line that starts with it."""

    def find(output: str) -> float | None:
        for line in output.splitlines():
            if line.startswith(prefix):
                found = re.search(pattern, line[len(prefix) :])
                return _number(found.group(1)) if found else None
        return None

    return find


ACTORS_FIGURE = r"^\s*([\d,.]+)"
"""The rusm column of a ``bench actors`` row: the first figure after its label."""

PAIRS = (
    Pair(
        "http-throughput",
        TWO_WORKERS,
        "rate",
        "",
        "http",
        "bench http hello, 64 conns, 2 workers (req/s)",
        http_row("hello", 2),
        "same guest answer, client (wrk -t1 -c64) and workers when wrk drives both; "
        "the scenario's daemon logs at warn",
    ),
    Pair(
        "kv-storm",
        TWO_WORKERS,
        "rate",
        "",
        "http",
        "bench http kv, 64 conns, 2 workers (req/s)",
        http_row("kv", 2),
        "same guest (kv_get.c: one kv_get of the route's key, a ~200-byte JSON value), "
        "key, value, client (wrk -t1 -c64) and workers when wrk drives both; the scenario "
        "builds the guest with rusmd build's flags (name section kept), its daemon logs at warn",
    ),
    Pair(
        "ws-echo",
        ONE_WORKER,
        "rate",
        "",
        "http",
        "bench http WebSocket echo, 16 clients (trips/s)",
        line_figure("WebSocket echo"),
        "same clients, message and worker; the scenario's client also times and records "
        "each trip, its daemon logs at warn",
    ),
    Pair(
        "sse-fanout",
        ONE_WORKER,
        "rate",
        "",
        "http",
        "bench http SSE, one stream of 20,000 events (events/s)",
        line_figure("SSE,"),
        "same stream (20,000 events of 16 bytes) and worker; the scenario reads streams back "
        "to back on a raw socket for its whole run, bench the median of 3 with http.client",
    ),
    Pair(
        "spawn-storm",
        ONE_WORKER,
        "rate",
        "",
        "actors",
        "bench actors spawn+run+exit, one worker (/s)",
        line_figure("spawn+run+exit, one worker", ACTORS_FIGURE),
        "both spawn in the worker: the scenario from a guest (spawn_link, 100 alive at a time) "
        "counted by the workers' exits every 0.1 s; bench calls the host's spawn 3,000 times",
    ),
    Pair(
        "ping-pong",
        DAEMON_TWO_WORKERS,
        "p50",
        "same_worker",
        "actors",
        "bench actors call/reply p50, same worker, daemon (µs)",
        line_figure("call/reply round trip p50, same worker, daemon", ACTORS_FIGURE),
        "same rusm.call, timed by the caller on the WASI clock; the caller is an HTTP "
        "action making 100 calls a request (bench: a process making 2,000), parts alternating",
    ),
    Pair(
        "ping-pong",
        DAEMON_TWO_WORKERS,
        "p50",
        "across_workers",
        "actors",
        "bench actors call/reply p50, across workers (µs)",
        line_figure("call/reply round trip p50, across workers", ACTORS_FIGURE),
        "as above",
    ),
    Pair(
        "fault-recovery",
        ONE_WORKER,
        "rate",
        "",
        "actors",
        "bench actors restarts under a supervisor (/s)",
        line_figure("restarts under a supervisor", ACTORS_FIGURE),
        "same supervisor spec and crashing child on one worker; the daemon logs each crash, "
        "and the scenario counts exits crashed every 0.1 s (bench: over 2 s)",
    ),
)
"""Every compared figure, in table order (fairness has no counterpart)."""


def _run(command: list[str]) -> str:
    """Run ``command`` from the repository; its stdout (stderr passes through)."""
    print(f"$ {' '.join(command)}", file=sys.stderr, flush=True)
    done = subprocess.run(
        command,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        text=True,
        timeout=CHILD_TIMEOUT_S,
        check=False,
    )
    print(done.stdout, file=sys.stderr, flush=True)
    return done.stdout


def scenario_figure(result: dict[str, Any], pair: Pair) -> float | None:
    """The scenario's side of ``pair`` from its ``rusmd bench --json`` result."""
    if result.get("state") != "done":
        return None
    if pair.figure == "rate":
        return float(result["rate_per_s"])
    part = result.get("parts", {}).get(pair.part)
    return float(part["latency_us"]["p50"]) if part else None


def table(rows: list[tuple[Pair, float | None, float | None, str]]) -> str:
    """The comparison as Markdown."""
    lines = [
        "| scenario | its figure | `python -m bench` counterpart | its figure | ratio | "
        "what still differs |",
        "|---|---|---|---|---|---|",
    ]
    for pair, mine, theirs, note in rows:
        name = f"{pair.scenario} ({pair.part})" if pair.part else pair.scenario
        unit = "µs p50" if pair.figure == "p50" else "/s"
        mine_text = f"{mine:,.1f} {unit}" if mine is not None else "failed"
        theirs_text = f"{theirs:,.1f}" if theirs is not None else "not found"
        ratio = f"{mine / theirs:.2f}" if mine is not None and theirs else "–"
        differs = f"{pair.differs}{'; ' + note if note else ''}"
        lines.append(
            f"| {name} | {mine_text} | {pair.counterpart} | {theirs_text} | {ratio} | {differs} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run every pair; print the table."""
    parser = argparse.ArgumentParser(prog="python -m bench scenarios-vs-bench", description=__doc__)
    parser.add_argument("--seconds", type=float, default=10.0, help="each run's seconds (10)")
    parser.add_argument("--quick", action="store_true", help="short runs, to check the wiring")
    args = parser.parse_args(argv or [])
    seconds = 2.0 if args.quick else args.seconds
    timing = ["--duration", f"{seconds:g}", "--warmup", f"{max(1.0, seconds / 5):g}"]
    outputs = {
        "http": _run([sys.executable, "-m", "bench", "http", *HTTP_ARGS, *timing]),
        "actors": _run([sys.executable, "-m", "bench", "actors", *ACTORS_ARGS]),
    }
    results: dict[tuple[str, tuple[str, ...]], dict[str, Any]] = {}
    rows = []
    for pair in PAIRS:
        key = (pair.scenario, tuple(pair.daemon))
        if key not in results:
            flags = ["bench", pair.scenario, "--seconds", f"{seconds:g}", "--json"]
            text = _run([sys.executable, "-m", "rusmd", *pair.daemon, *flags])
            try:
                results[key] = json.loads(text)
            except ValueError:
                results[key] = {"state": "failed"}
        result = results[key]
        note = result.get("note", "")
        rows.append((pair, scenario_figure(result, pair), pair.find(outputs[pair.source]), note))
    print(table(rows))
    return 0
