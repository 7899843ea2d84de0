"""The headline benchmarks side by side with their baselines, written into docs/benchmarks.md.

Runs in: a benchmark process of its own (``make bench``, which runs
``python -m bench headline``). It runs, each as a child process:

- ``python -m bench http`` (rusm beside uvicorn for HTTP and beside
  websockets for WebSocket and SSE, driven by wrk and Python clients);
- ``python -m bench actors`` (spawns, messages, calls and restarts
  beside a plain baseline and beside Erlang/OTP on the same machine);
- ``rusmd bench SCENARIO --json`` for every node scenario (each on a
  daemon of its own; the scenarios have no outside baseline: they are
  the node's own figures, as the dashboard shows them).

It prints each as it ends and replaces the part of docs/benchmarks.md
between ``BEGIN`` and ``END`` (appending it, with a heading, the first
time) with the tables and the command that produced them. ``--quick``
runs short versions (for checking the wiring, not for figures), and
``--no-write`` leaves the document alone.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from rusmd.node.scenario_app import SCENARIO_NAMES

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "benchmarks.md"
BEGIN = "<!-- headline: begin (written by `make bench`; edits here are overwritten) -->"
END = "<!-- headline: end -->"
HEADING = "## Headline: `make bench`"
# The baselines' own runs: one HTTP workload at 64 connections on 1 and 2
# workers, every actors section but the 100,000-process idle census
# (python -m bench actors --sections idle runs it alone).
HTTP_ARGS = ["--workloads", "hello", "--connections", "64"]
ACTORS_ARGS = ["--sections", "spawn,one-worker,restarts,daemon"]
QUICK_HTTP_ARGS = [
    *HTTP_ARGS,
    "--duration",
    "2",
    "--warmup",
    "1",
    "--workers",
    "1",
    "--events",
    "2000",
]
QUICK_ACTORS_ARGS = ["--sections", "spawn,one-worker"]
# Two workers whatever the machine (a quarter of 8 cores, as bench
# actors' daemon), so ping-pong measures calls across workers too.
SCENARIO_DAEMON = ["--cpus", "8", "--profile", "light"]
SCENARIO_SECONDS = 5.0
QUICK_SCENARIO_SECONDS = 1.5
# Any one child: a run that hangs must still end the benchmark.
CHILD_TIMEOUT_S = 3600


def _run(command: list[str]) -> str:
    """Run ``command`` from the repository; its stdout (stderr passes through)."""
    print(f"$ {' '.join(command)}", flush=True)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        command,
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
        timeout=CHILD_TIMEOUT_S,
        check=False,
    )
    print(done.stdout, flush=True)
    if done.returncode:
        return f"{done.stdout}\n(exited {done.returncode})"
    return done.stdout


def _scenarios(seconds: float) -> tuple[str, list[dict[str, Any]]]:
    rows: list[dict[str, Any]] = []
    for name in SCENARIO_NAMES:
        flags = ["--seconds", f"{seconds:g}", "--json"]
        text = _run([sys.executable, "-m", "rusmd", *SCENARIO_DAEMON, "bench", name, *flags])
        try:
            rows.append(json.loads(text))
        except ValueError:
            rows.append({"scenario": name, "state": "failed", "first_error": text.strip()[:200]})
    return scenario_table(rows), rows


def scenario_table(rows: list[dict[str, Any]]) -> str:
    """The scenarios' results as a Markdown table."""
    lines = [
        "| scenario | rate | p50 | p99 | counted | what it counts |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        if row.get("state") != "done":
            lines.append(f"| {row['scenario']} | failed: {row.get('first_error', '')} | | | | |")
            continue
        latency = row["latency_us"]
        lines.append(
            f"| {row['scenario']} | {row['rate_per_s']:,.0f} {row['unit']}/s "
            f"| {latency['p50']:,.0f} µs | {latency['p99']:,.0f} µs | {row['count']:,} "
            f"| {row['counts']} |"
        )
        if row.get("note"):
            lines.append(f"| ↳ note | {row['note']} | | | | |")
        for part, figures in row.get("parts", {}).items():
            lines.append(
                f"| ↳ {part} | {figures['rate_per_s']:,.0f} {row['unit']}/s "
                f"| {figures['latency_us']['p50']:,.0f} µs "
                f"| {figures['latency_us']['p99']:,.0f} µs | {figures['count']:,} | |"
            )
    return "\n".join(lines)


def section(
    command: str,
    runs: tuple[list[str], str, list[str], str],
    scenarios: str,
    seconds: float,
) -> str:
    """The generated part of docs/benchmarks.md."""
    http_args, http, actors_args, actors = runs
    when = time.strftime("%Y-%m-%d", time.gmtime())
    cores = len(os.sched_getaffinity(0))
    return "\n".join(
        [
            BEGIN,
            "",
            f"Run {when} with `{command}` on {cores} usable cores "
            f"(Python {platform.python_version()}). Every figure of one run comes from "
            "the same machine in the same minutes; the ratios matter more than the "
            "absolute numbers.",
            "",
            f"### HTTP, WebSocket, SSE beside uvicorn and websockets "
            f"(`python -m bench http {' '.join(http_args)}`)",
            "",
            "```text",
            http.strip(),
            "```",
            "",
            f"### Actors beside a plain baseline and Erlang/OTP "
            f"(`python -m bench actors {' '.join(actors_args)}`)",
            "",
            "```text",
            actors.strip(),
            "```",
            "",
            f"### Node scenarios (`rusmd {' '.join(SCENARIO_DAEMON)} bench SCENARIO "
            f"--seconds {seconds:g} --json`)",
            "",
            "Driven from the same machine, so each figure includes the client's side; "
            "docs/operations.md says what each scenario counts and how it differs from its "
            "`python -m bench` counterpart. http-throughput and kv-storm are driven by "
            "wrk -t1 -c64 when wrk is installed, as `bench http` is (else by the Python "
            "client, and the row's note says so); the other scenarios by a Python client on "
            "uvloop (a handful of connections), which shares the cores with the node. "
            "`python -m bench scenarios-vs-bench` puts each beside its counterpart.",
            "",
            scenarios,
            "",
            END,
        ]
    )


def write(text: str) -> None:
    """Replace the generated part of docs/benchmarks.md (or append it the first time)."""
    document = DOC.read_text()
    if BEGIN in document and END in document:
        head, rest = document.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
        document = head + text + tail
    else:
        document = document.rstrip("\n") + f"\n\n{HEADING}\n\n{text}\n"
    DOC.write_text(document)


def main(argv: list[str] | None = None) -> int:
    """Run the headline benchmarks; update docs/benchmarks.md."""
    parser = argparse.ArgumentParser(prog="python -m bench headline", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="short runs, to check the wiring")
    parser.add_argument("--no-write", action="store_true", help="leave docs/benchmarks.md alone")
    args = parser.parse_args(argv or [])
    http_args = QUICK_HTTP_ARGS if args.quick else HTTP_ARGS
    actors_args = QUICK_ACTORS_ARGS if args.quick else ACTORS_ARGS
    seconds = QUICK_SCENARIO_SECONDS if args.quick else SCENARIO_SECONDS
    http = _run([sys.executable, "-m", "bench", "http", *http_args])
    actors = _run([sys.executable, "-m", "bench", "actors", *actors_args])
    scenarios, _rows = _scenarios(seconds)
    print(scenarios)
    if args.no_write:
        return 0
    command = "make bench" if not args.quick else "python -m bench headline --quick"
    write(section(command, (http_args, http, actors_args, actors), scenarios, seconds))
    print(f"updated {DOC.relative_to(REPO)}")
    return 0
