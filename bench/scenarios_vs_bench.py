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

All of it ``--repeat`` times (3), round after round, so each figure has
a spread. It prints one Markdown table: each side's median and range
over the rounds, the ratio of the medians, whether the two agree *within
the noise* (their ranges overlap: the scenario's figure is one its
counterpart's runs also gave, or the other way round), and what still
differs between the two (docs/operations.md says it at length). Figures
on a shared or busy machine are noise; take them on a quiet one::

    python -m bench scenarios-vs-bench [--seconds S] [--repeat N]

``--seconds`` (10) is each scenario's run, warm-up included, and the
``--duration`` of ``bench http``; ``--quick`` checks the wiring with short
runs, once (not figures).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
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
        "same clients, message and worker, no timer a trip; the scenario's client also times "
        "and records each trip, its daemon logs at warn",
    ),
    Pair(
        "sse-fanout",
        ONE_WORKER,
        "rate",
        "",
        "http",
        "bench http SSE, one stream of 20,000 events (events/s)",
        line_figure("SSE,"),
        "same stream (20,000 events of 16 bytes) and worker, read on a raw socket; the "
        "scenario reads streams back to back for its whole run, bench the median of 3",
    ),
    Pair(
        "spawn-storm",
        ONE_WORKER,
        "rate",
        "",
        "actors",
        "bench actors spawn+run+exit, one worker (/s)",
        line_figure("spawn+run+exit, one worker", ACTORS_FIGURE),
        "the same guest spawner (spawn_link, 100 alive at a time); the scenario's in the "
        "daemon's worker, counted over the control socket every 0.1 s, bench's on an "
        "in-process host, counted over 2 s",
    ),
    Pair(
        "ping-pong",
        DAEMON_TWO_WORKERS,
        "p50",
        "same_worker",
        "actors",
        "bench actors call/reply p50, same worker, daemon (µs)",
        line_figure("call/reply round trip p50, same worker, daemon", ACTORS_FIGURE),
        "same rusm.call (no timeout), timed by the caller on the WASI clock; the caller is an "
        "HTTP action making 100 calls a request (bench: a process making 2,000), parts "
        "alternating",
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
        "same supervisor spec and crashing child on one worker, both logging its first 100 "
        "exit lines, then 20 a second; the scenario counts exits crashed every 0.1 s "
        "(bench: over 2 s)",
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


@dataclass
class Compared:
    """One pair's figures over the rounds.

    Attributes:
        pair: What is compared.
        mine: The scenario's figure of each round that gave one.
        theirs: The counterpart's figure of each round that gave one.
        note: The scenario result's ``note`` (wrk missing, say), if any.
    """

    pair: Pair
    mine: list[float]
    theirs: list[float]
    note: str = ""

    def agrees(self) -> bool | None:
        """Whether the two ranges overlap (None without two figures on each side)."""
        if len(self.mine) < 2 or len(self.theirs) < 2:
            return None
        return max(self.mine) >= min(self.theirs) and max(self.theirs) >= min(self.mine)

    def ratio(self) -> float | None:
        """The scenario's median over its counterpart's."""
        if not self.mine or not self.theirs:
            return None
        theirs = statistics.median(self.theirs)
        return statistics.median(self.mine) / theirs if theirs else None


def spread(values: list[float], unit: str = "") -> str:
    """``median (min–max)`` of ``values``, or the one value, or ``failed``."""
    if not values:
        return "failed"
    median = f"{statistics.median(values):,.1f}{unit}"
    if len(values) == 1:
        return median
    return f"{median} ({min(values):,.0f}–{max(values):,.0f})"


def table(rows: list[Compared]) -> str:
    """The comparison as Markdown."""
    lines = [
        "| scenario | its figure, median (range) | `python -m bench` counterpart | its figure, "
        "median (range) | ratio | within the noise | what still differs |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        pair = row.pair
        name = f"{pair.scenario} ({pair.part})" if pair.part else pair.scenario
        unit = " µs p50" if pair.figure == "p50" else " /s"
        ratio = row.ratio()
        agrees = {True: "yes", False: "no", None: "–"}[row.agrees()]
        differs = f"{pair.differs}{'; ' + row.note if row.note else ''}"
        lines.append(
            f"| {name} | {spread(row.mine, unit)} | {pair.counterpart} | "
            f"{spread(row.theirs) if row.theirs else 'not found'} | "
            f"{f'{ratio:.2f}' if ratio is not None else '–'} | {agrees} | {differs} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run every pair; print the table."""
    parser = argparse.ArgumentParser(prog="python -m bench scenarios-vs-bench", description=__doc__)
    parser.add_argument("--seconds", type=float, default=10.0, help="each run's seconds (10)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds of every run (3)")
    parser.add_argument("--quick", action="store_true", help="short runs, to check the wiring")
    args = parser.parse_args(argv or [])
    if args.repeat < 1:
        parser.error(f"--repeat {args.repeat}: at least 1")
    seconds = 2.0 if args.quick else args.seconds
    rows = [Compared(pair, [], []) for pair in PAIRS]
    for round_ in range(1 if args.quick else args.repeat):
        print(f"== round {round_ + 1}", file=sys.stderr, flush=True)
        one_round(seconds, rows)
    print(table(rows))
    return 0


def one_round(seconds: float, rows: list[Compared]) -> None:
    """Run ``bench http``, ``bench actors`` and every scenario once; add each figure to ``rows``."""
    timing = ["--duration", f"{seconds:g}", "--warmup", f"{max(1.0, seconds / 5):g}"]
    outputs = {
        "http": _run([sys.executable, "-m", "bench", "http", *HTTP_ARGS, *timing]),
        "actors": _run([sys.executable, "-m", "bench", "actors", *ACTORS_ARGS]),
    }
    results: dict[tuple[str, tuple[str, ...]], dict[str, Any]] = {}
    for row in rows:
        pair = row.pair
        key = (pair.scenario, tuple(pair.daemon))
        if key not in results:
            flags = ["bench", pair.scenario, "--seconds", f"{seconds:g}", "--json"]
            text = _run([sys.executable, "-m", "rusmd", *pair.daemon, *flags])
            try:
                results[key] = json.loads(text)
            except ValueError:
                results[key] = {"state": "failed"}
        result = results[key]
        row.note = result.get("note", row.note)
        mine, theirs = scenario_figure(result, pair), pair.find(outputs[pair.source])
        if mine is not None:
            row.mine.append(mine)
        if theirs is not None:
            row.theirs.append(theirs)
